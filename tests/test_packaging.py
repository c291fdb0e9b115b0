"""Packaging: the wheel's file list, lazy heavy imports, the README's commands and example, .ci/run."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"
# top-level source folder -> the package it is installed as (pyproject's package-dir mapping)
SOURCE_DIRS = {"nashir": "nashir", "passes": "nashir/passes", "backends": "nashir/backends"}


def _fenced_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


# --------------------------------------------------------------------------------------------------
# import hygiene


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    ).stdout.split()
    return set(out)


def test_import_nashir_imports_neither_torch_nor_onnxruntime():
    mods = _modules_after("import nashir\nnashir.GraphBuilder('x').build()")
    assert "nashir" in mods and "nashir.ir" in mods  # the check itself sees imports
    heavy = {m.split(".")[0] for m in mods} & {"torch", "onnxruntime"}
    assert not heavy, f"`import nashir` imported {sorted(heavy)}; import them lazily inside functions"


def test_cli_help_imports_neither_torch_nor_onnxruntime():
    code = (
        "import contextlib, io\nfrom nashir.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['--help']) == 0"
    )
    mods = _modules_after(code)
    assert not {m.split(".")[0] for m in mods} & {"torch", "onnxruntime"}


def test_installed_subpackages_resolve_to_the_mapped_folders():
    for name, folder in [("nashir.passes", "passes"), ("nashir.backends", "backends"),
                         ("nashir.backends.onnx", "backends/onnx"),
                         ("nashir.backends.torch", "backends/torch")]:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        # editable install: <repo>/passes/...; regular install: site-packages/nashir/passes/...
        assert Path(spec.origin).parent.as_posix().endswith("/" + folder), (name, spec.origin)


# --------------------------------------------------------------------------------------------------
# the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """Build the wheel from a copy of the sources (nothing is written into the working tree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for d in SOURCE_DIRS:
        shutil.copytree(ROOT / d, src / d, ignore=ignore)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    out = tmp / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out.glob("nashir-*.whl"))
    assert len(wheels) == 1, wheels
    return zipfile.ZipFile(wheels[0])


@pytest.mark.slow
def test_wheel_contains_passes_and_backends(wheel):
    names = set(wheel.namelist())
    pkgs = ("nashir", "nashir/passes", "nashir/backends", "nashir/backends/onnx", "nashir/backends/torch")
    for pkg in pkgs:
        assert f"{pkg}/__init__.py" in names, f"{pkg}/ is missing from the wheel"
    assert not any(n.startswith(("passes/", "backends/", "tests/")) for n in names), "stray top-level folders"


@pytest.mark.slow
def test_wheel_contains_every_source_module(wheel):
    """Every .py under nashir/, passes/ and backends/ lands in the wheel (a subpackage missing from
    pyproject's ``packages`` list would silently vanish from ``pip install .``)."""
    names = set(wheel.namelist())
    missing = []
    for d, pkg in SOURCE_DIRS.items():
        for f in (ROOT / d).rglob("*.py"):
            if "__pycache__" in f.parts:
                continue
            rel = f.relative_to(ROOT / d).as_posix()
            if f"{pkg}/{rel}" not in names:
                missing.append(f"{d}/{rel}")
    assert not missing, f"not in the wheel (add the package to pyproject's packages): {missing}"


@pytest.mark.slow
def test_wheel_metadata(wheel):
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    text = wheel.read(meta).decode()
    assert "Requires-Python: >=3.10" in text
    for dep in ("numpy", "networkx", "onnx", "onnxruntime", "torch"):
        assert re.search(rf"^Requires-Dist: {dep}\b", text, flags=re.M), dep
    for extra in ("gpu", "ray", "dev"):
        assert f"Provides-Extra: {extra}" in text, extra
    assert re.search(r"^Requires-Dist: onnxruntime-gpu.*extra == \"gpu\"", text, flags=re.M)
    eps = wheel.read(next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))).decode()
    assert re.search(r"^nashir = nashir\.cli:_entry$", eps, flags=re.M)


# --------------------------------------------------------------------------------------------------
# README


def test_readme_example_runs_and_prints_what_the_readme_shows():
    text = README.read_text()
    code = _fenced_blocks(text, "python")
    assert len(code) == 1, "the README should have exactly one python example"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code[0], "README.md", "exec"), {"__name__": "readme_example"})
    shown = _fenced_blocks(text, "text")
    assert shown, "the README should show the example's output in a text block"
    assert buf.getvalue() == shown[0]


def test_readme_has_the_two_setup_commands():
    text = README.read_text()
    cmds = [b.strip() for b in _fenced_blocks(text, "bash")]
    venv = "python -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0"
    main_job = [c for c in cmds if c.startswith(venv) and "pip install . &&" in c]
    tests = [c for c in cmds if c.startswith(venv) and "pip install -e '.[dev,ray]'" in c]
    assert len(main_job) == 1 and len(tests) == 1, cmds
    assert tests[0].endswith("&& pytest -q")
    assert main_job[0].endswith("&& nashir search")
    assert "CUDA" in text and "onnxruntime-gpu" in text and "never have both" in text


# --------------------------------------------------------------------------------------------------
# .ci/run


def test_ci_run_is_strict_and_runs_the_readme_test_command():
    assert CI_RUN.exists()
    assert os.access(CI_RUN, os.X_OK), ".ci/run must be executable"
    script = CI_RUN.read_text()
    assert script.startswith("#!/usr/bin/env bash") or script.startswith("#!/bin/bash")
    assert "set -euo pipefail" in script
    assert "pip install torch==2.13.0" in script
    assert "pip install -e '.[dev,ray]'" in script
    assert re.search(r"^\s*pytest -q(\s|$)", script, flags=re.M), "must run the README's `pytest -q`"
    assert re.search(r"^\s*ruff check \.", script, flags=re.M)
    assert "5" in script and "no tests" in script  # pytest's exit code 5 is a failure
    bash = shutil.which("bash")
    if bash:
        subprocess.run([bash, "-n", str(CI_RUN)], check=True)
    # the README's test command's pytest part is what CI runs
    readme_tests = next(c for c in _fenced_blocks(README.read_text(), "bash") if "'.[dev,ray]'" in c)
    assert readme_tests.strip().rsplit("&& ", 1)[1] == "pytest -q"
