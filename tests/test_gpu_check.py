"""benchmarks/gpu_check.py (issue 13) runs: its --smoke path at toy sizes on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_without_a_gpu_it_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    p = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert p.returncode == 2 and "no CUDA device" in p.stderr and "--smoke" in p.stderr


@pytest.mark.slow
def test_smoke_prints_every_section(tmp_path):
    p = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--no-processes", "--device", "cpu"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for part in ("(a) lowered vs hand-written", "(b) training images/s, start network",
                 "(b) training images/s, grown", "(c) 2 candidates at once", "(d) NASH search",
                 "total wall time"):
        assert part in p.stdout, part


def test_device_cuda_without_a_gpu_is_a_message_not_a_traceback():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    p = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda"], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "CUDA is not available" in p.stderr and "--smoke" in p.stderr
