"""Review regression tests for ``nashir search`` (bad input found by trying the CLI as a user)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nashir.cli import main

# a search that trains nothing: a real run folder in a second or two
NO_TRAIN = ["--steps", "0", "--epochs-init", "0", "--epochs-final", "0", "--widths", "4,8,8"]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("device", ["tpu", "cuda:x"])
def test_bad_device_with_force_exits_2_and_keeps_the_run(tmp_path, capsys, device):
    # before the fix the device was only checked when the start network trained, after --force had
    # replaced the run folder: exit 1 ("the start network did not train") and the old run lost
    out = tmp_path / "run"
    assert main(["search", *NO_TRAIN, "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    before = snapshot(out)
    capsys.readouterr()
    code = main(["search", *NO_TRAIN, "--device", device, "--out", str(out), "--force", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and device in err
    assert snapshot(out) == before


def test_cuda_without_cuda_exits_2_and_writes_nothing(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "run"
    code = main(["search", *NO_TRAIN, "--device", "cuda", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "CUDA" in err and "Traceback" not in err
    assert not out.exists()


def test_child_over_max_params_is_failed_with_no_size(tmp_path, capsys):
    # a child that no morphism could keep under --max-params was recorded with its parent's size,
    # which read as a child within the limit; it has no size (NULL) and says why
    import sqlite3

    from nashir.search import start_network

    start = start_network((1, 8, 8), 10, (4, 8, 8), seed=0).param_count()
    out = tmp_path / "run"
    args = ["search", "--steps", "1", "--neighbors", "3", "--morphs", "1", "--epochs-neighbor", "1",
            "--epochs-init", "0", "--epochs-final", "0", "--widths", "4,8,8", "--threads", "1",
            "--max-params", str(start + 1), "--out", str(out), "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    con = sqlite3.connect(out / "ledger.sqlite")
    query = "SELECT id, kind, status, params, macs, reason FROM candidates WHERE step = 1"
    rows = con.execute(query).fetchall()
    children = [r for r in rows if r[1] == "child"]
    assert children and all(r[2] == "failed" for r in children), rows
    assert all(r[3] is None and r[4] is None and "max_params" in r[5] for r in children), rows
    incumbent = [r for r in rows if r[1] == "incumbent"]
    assert incumbent and incumbent[0][3] == start
