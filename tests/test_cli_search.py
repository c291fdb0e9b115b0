"""``nashir search`` / ``nashir report`` on the command line: bad input exits 2 with one clear
message and leaves an existing run folder intact; a tiny run; SIGKILL in the middle of a step and
``--resume`` reach the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nashir.cli import main

# a search that trains nothing: enough to make a real run folder in a second or two
NO_TRAIN = [
    "--steps",
    "0",
    "--epochs-init",
    "0",
    "--epochs-final",
    "0",
    "--widths",
    "4,8,8",
    "--device",
    "cpu",
]


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["search", *NO_TRAIN, "--out", str(out), "--quiet"]) == 0
    return out


def _fails(capsys, argv, *patterns):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for p in patterns:
        assert p in err, (p, err)
    return err


def test_the_tiny_run_folder(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"ledger.sqlite", "candidates", "best.onnx", "log.jsonl", "summary.txt"} <= names


@pytest.mark.parametrize(
    "flags, patterns",
    [
        (["--neighbors", "0"], ["--neighbors (n_neigh) must be an integer >= 1, got 0"]),
        (["--lr-start", "0.01", "--lr-end", "0.1"], ["--lr-end 0.1 is above --lr-start 0.01"]),
        (["--no-sgdr", "--lr-end", "0.001"], ["--lr-end has no effect with --no-sgdr"]),
        (["--morphs", "0"], ["--morphs"]),
        (["--epochs-neighbor", "0"], ["--epochs-neighbor"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--widths", "8,x,9"], ["--widths takes comma-separated integers"]),
        (["--widths", "8,9"], ["--widths (widths) must be three positive integers"]),
        (["--dataset", "imagenet-1k"], ["unknown data set 'imagenet-1k'", "digits"]),
        (["--passes", "net2widr"], ["--passes: no pass named 'net2widr'", "net2wider"]),
        (["--resume", "--force", "--out", "x"], ["contradict"]),
        (["--resume"], ["--resume needs --out"]),
        (["--max-macs", "0"], ["--max-macs (max_macs) must be a positive integer"]),
        (["--final-warmup", "-1"], ["--final-warmup (final_warmup) must be a finite number of epochs >= 0"]),
        (["--precision", "fp16"], ["fp16"]),
    ],
)
def test_contradictory_or_bad_flags(capsys, tmp_path, flags, patterns):
    out = tmp_path / "new"
    argv = (
        ["search", *flags]
        if "--out" in flags or "--resume" in flags
        else ["search", *flags, "--out", str(out)]
    )
    _fails(capsys, argv, *patterns)
    assert not out.exists()


def test_data_folder_without_the_data_set(capsys, tmp_path):
    empty = tmp_path / "cifar"
    empty.mkdir()
    _fails(
        capsys,
        ["search", "--dataset", "cifar10", "--data-dir", str(empty), "--out", str(tmp_path / "o")],
        str(empty),
    )
    assert not (tmp_path / "o").exists()
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("fault", ["missing-folder", "missing-file", "bad-magic", "truncated"])
def test_fashion_mnist_faults_exit_2_before_anything_is_written(capsys, tmp_path, fault, run_dir):
    from test_data import idx_bytes, write_idx_set

    folder = tmp_path / "fm"
    if fault != "missing-folder":
        over = {}
        if fault == "bad-magic":
            over = {"train_x": b"PK\x03\x04 a zip file"}
        elif fault == "truncated":
            over = {"test_x": idx_bytes(np.zeros((10, 6, 6), np.uint8))[:-1]}
        write_idx_set(folder, overrides=over)
        if fault == "missing-file":
            (folder / "train-labels-idx1-ubyte.gz").unlink()
    files_before = snapshot(folder) if folder.exists() else {}
    run_before = snapshot(run_dir)
    expect = {
        "missing-folder": "no such folder",
        "missing-file": "lacks train-labels-idx1-ubyte[.gz]",
        "bad-magic": "bad IDX magic number",
        "truncated": "truncated IDX file",
    }[fault]
    for out, extra in ((tmp_path / "o", []), (run_dir, ["--force"])):
        _fails(capsys, ["search", "--dataset", "fashion-mnist", "--data-dir", str(folder), *NO_TRAIN,
                        "--out", str(out), *extra], expect)
    assert not (tmp_path / "o").exists()
    assert snapshot(run_dir) == run_before
    assert (snapshot(folder) if folder.exists() else {}) == files_before


def test_fashion_mnist_gets_the_fashion_preset(tmp_path):
    import click

    from nashir.commands.search import build_config, search

    def config(argv):
        ctx = search.make_context("search", list(argv))
        with ctx:
            return build_config(ctx, ctx.params)

    c = config(["--dataset", "fashion-mnist"])
    assert c.preset == "fashion" and c.precision == "bf16" and c.max_macs == 16_000_000
    assert config(["--dataset", "mnist"]).preset == "fashion"
    assert config([]).preset == "demo" and config([]).precision == "auto"
    assert config(["--dataset", "cifar10"]).preset == "paper"
    c = config(["--dataset", "fashion-mnist", "--preset", "demo", "--precision", "fp32",
                "--final-warmup", "0", "--widen-split", "equal", "--max-macs", "1000000"])
    assert (c.preset, c.precision, c.final_warmup, c.widen_split, c.max_macs) == ("demo", "fp32", 0, "equal",
                                                                                 1_000_000)
    assert isinstance(search, click.Command)


def test_init_model_that_does_not_fit_the_data(capsys, tmp_path):
    from nashir import save
    from nashir.search.startnet import start_network

    m = tmp_path / "cifar_model.onnx"
    save(start_network((3, 32, 32), 10, widths=(4, 8, 8)), m)
    before = m.read_bytes()
    _fails(
        capsys,
        ["search", "--init", str(m), "--out", str(tmp_path / "o")],
        "(N, 3, 32, 32)",
        "(N, 1, 8, 8)",
        str(m),
    )
    assert m.read_bytes() == before and not (tmp_path / "o").exists()
    _fails(
        capsys,
        ["search", "--init", str(m), "--widths", "4,4,4", "--out", str(tmp_path / "o")],
        "--widths sizes the generated start network",
    )


def test_run_folder_that_is_not_a_nashir_run(capsys, tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("precious")
    for extra in ([], ["--resume"], ["--force"]):
        _fails(capsys, ["search", *NO_TRAIN, "--out", str(d), *extra], "is not a nashir run")
    assert snapshot(d) == {Path("thesis.tex"): b"precious"}
    _fails(capsys, ["report", str(d)], "is not a nashir run")
    assert snapshot(d) == {Path("thesis.tex"): b"precious"}


def test_existing_run_is_kept_on_bad_input(capsys, run_dir):
    before = snapshot(run_dir)
    _fails(capsys, ["search", *NO_TRAIN, "--out", str(run_dir)], "exists already", "--resume", "--force")
    # --force with bad input: refused before anything is removed
    _fails(
        capsys,
        ["search", *NO_TRAIN, "--out", str(run_dir), "--force", "--dataset", "nope"],
        "unknown data set",
    )
    _fails(capsys, ["search", *NO_TRAIN, "--out", str(run_dir), "--force", "--neighbors", "0"], "--neighbors")
    # --resume with a flag that differs from the run's: the keys are listed
    _fails(
        capsys,
        ["search", "--out", str(run_dir), "--resume", "--seed", "5", "--morphs", "4"],
        "differing keys",
        "seed: ledger=0, given=5",
        "n_nm: ledger=3, given=4",
    )
    assert snapshot(run_dir) == before


def test_resume_of_a_finished_run_changes_no_result(capsys, run_dir):
    before = snapshot(run_dir)
    assert main(["search", "--out", str(run_dir), "--resume", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "best model:" in out and len(out.strip().splitlines()) == 1
    after = snapshot(run_dir)
    # only the log grows; the ledger's candidates and every model stay the same
    for k, v in before.items():
        if k.name not in ("log.jsonl", "ledger.sqlite"):
            assert after[k] == v, k
    con = sqlite3.connect(run_dir / "ledger.sqlite")
    assert [r[0] for r in con.execute("SELECT id FROM candidates ORDER BY step, idx")] == ["init", "final"]
    con.close()


def test_report_command(capsys, run_dir, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "report.md" in text
    assert {p.name for p in out.iterdir()} == {"val_acc.png", "lineage.png", "params_acc.png", "curves.png",
                                               "report.md"}
    assert (out / "val_acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_out_folder(monkeypatch):
    from nashir.commands.search import default_out

    p = default_out("digits", "demo", now=0)
    assert p.parent == Path("runs") and p.name.startswith("digits-demo-")
    assert default_out("npz:/data/My Set.npz", "paper", now=0).name.startswith("npz-my-set-paper-")


# ------------------------------------------------------------------------------------- slow, real
TINY = [
    "--dataset",
    "digits",
    "--steps",
    "2",
    "--neighbors",
    "3",
    "--morphs",
    "1",
    "--epochs-neighbor",
    "3",
    "--epochs-init",
    "1",
    "--epochs-final",
    "1",
    "--widths",
    "8,16,16",
    "--threads",
    "1",
    "--device",
    "cpu",
    "--seed",
    "3",
]


def _cli(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "nashir.cli", "search", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _ledger_state(run: Path):
    db = run / "ledger.sqlite"
    if not db.is_file():
        return {}, []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            cands = dict(con.execute("SELECT id, status FROM candidates").fetchall())
            steps = [r[0] for r in con.execute("SELECT step FROM steps").fetchall()]
        finally:
            con.close()
    except sqlite3.Error:
        return {}, []
    return cands, steps


def _result(run: Path):
    con = sqlite3.connect(run / "ledger.sqlite")
    rows = con.execute(
        "SELECT id, status, val_acc, params, morphisms FROM candidates ORDER BY step, idx"
    ).fetchall()
    steps = con.execute("SELECT step, best, best_val_acc FROM steps ORDER BY step").fetchall()
    final = json.loads(con.execute("SELECT value FROM meta WHERE key = 'final'").fetchone()[0])
    con.close()
    return rows, steps, final


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_step_then_resume_gives_the_uninterrupted_result(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = _cli(*TINY, "--out", str(ref_dir), "--quiet")
    assert ref.wait() == 0, ref.stderr.read()

    proc = _cli(*TINY, "--out", str(run_dir), "--quiet")
    killed_state = None
    while proc.poll() is None:
        cands, steps = _ledger_state(run_dir)
        # mid-step: a neighbour of step 1 is finished, step 1 is not
        if cands.get("s1-c1") == "ok" and 1 not in steps:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_state = (cands, steps)
            break
        time.sleep(0.01)
    assert killed_state is not None, "the search finished before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    cands, steps = _ledger_state(run_dir)
    assert 1 not in steps and "final" not in cands
    finished_before = {c for c, s in cands.items() if s != "pending"}

    res = _cli("--out", str(run_dir), "--resume", "--quiet")
    out, err = res.communicate()
    assert res.returncode == 0, err
    rows, steps, final = _result(run_dir)
    ref_rows, ref_steps, ref_final = _result(ref_dir)
    assert rows == ref_rows  # every candidate: same morphisms, parameters, validation accuracy
    assert steps == ref_steps  # same best architecture per step
    assert final["test_acc"] == ref_final["test_acc"] and final["best"] == ref_final["best"]
    assert (run_dir / "best.onnx").read_bytes() == (ref_dir / "best.onnx").read_bytes()
    # finished candidates were not trained again
    events = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    trained = [e["id"] for e in events if e["event"] == "candidate"]
    for c in finished_before:
        assert trained.count(c) == 1, c
    assert [e["event"] for e in events].count("resume") == 1


@pytest.mark.slow
def test_search_prints_progress_and_summary(tmp_path):
    out = tmp_path / "run"
    p = _cli(*TINY, "--steps", "1", "--out", str(out))
    stdout, stderr = p.communicate()
    assert p.returncode == 0, stderr
    assert "step  best" in stdout and "final test accuracy" in stdout and "best model:" in stdout
    assert "NASH steps" in stderr  # tqdm bars go to stderr
