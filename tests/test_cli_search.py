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
    assert "step 1: best" in stdout   # one line per step
    # stderr is a pipe, not a terminal: no progress bars redrawing into it (they would fill a log file)
    assert "NASH steps" not in stderr and "\r" not in stderr


# ------------------------------------------------------------------ the run folder is untrusted input


def _copy_run(run_dir, tmp_path, name="copy"):
    import shutil

    dst = tmp_path / name
    shutil.copytree(run_dir, dst)
    return dst


def _sql(run, *statements):
    con = sqlite3.connect(run / "ledger.sqlite")
    for st in statements:
        con.execute(st)
    con.commit()
    con.close()


def _refused(capsys, run, argv, *patterns, outside=()):
    """``argv`` exits 2 with one line and the patterns; the run folder (and files outside) unchanged."""
    before = snapshot(run)
    others = {p: p.read_bytes() for p in outside}
    err = _fails(capsys, argv, *patterns)
    assert err.count("\n") == 1, err
    assert snapshot(run) == before
    assert {p: p.read_bytes() for p in outside} == others
    return err


def _final_id(run):
    con = sqlite3.connect(run / "ledger.sqlite")
    (cid,) = con.execute("SELECT id FROM candidates WHERE kind = 'final'").fetchone()
    con.close()
    return cid


@pytest.mark.parametrize("where", ["../x.onnx", "ABS", "candidates/../../x.onnx"])
def test_candidate_path_outside_the_run_is_refused(capsys, run_dir, tmp_path, where):
    """A ledger row pointing at a model outside the run folder is never read (nor made best.onnx)."""
    run = _copy_run(run_dir, tmp_path)
    evil = tmp_path / "x.onnx"
    evil.write_bytes((run / "candidates" / "start.onnx").read_bytes())
    path = str(evil) if where == "ABS" else where
    _sql(run, f"UPDATE candidates SET onnx = '{path}' WHERE id = '{_final_id(run)}'")
    for argv in (["search", "--resume", "--out", str(run), "--quiet"],):
        _refused(capsys, run, argv, "outside the run's candidates/ folder", outside=[evil])


@pytest.mark.parametrize("change", ["swapped", "garbage", "truncated", "missing"])
def test_changed_candidate_file_is_refused_on_resume(capsys, run_dir, tmp_path, change):
    run = _copy_run(run_dir, tmp_path)
    f = run / "candidates" / f"{_final_id(run)}.onnx"
    if change == "swapped":   # another valid model
        f.write_bytes((run / "candidates" / "start.onnx").read_bytes())
    elif change == "garbage":
        f.write_bytes(b"\x00garbage" * 50)
    elif change == "truncated":
        f.write_bytes(f.read_bytes()[:100])
    else:
        f.unlink()
    pat = "is missing" if change == "missing" else "is not the file the search wrote"
    _refused(capsys, run, ["search", "--resume", "--out", str(run), "--quiet"], pat, f.name)


def test_step_winner_that_is_not_a_trained_candidate_is_refused_on_resume(capsys, run_dir, tmp_path):
    """A steps row naming no trained candidate was found only after the resume's log line was written."""
    run = _copy_run(run_dir, tmp_path)
    _sql(run, "INSERT OR REPLACE INTO steps (step, best, best_val_acc, finished) VALUES (1, 'nope', 0.5, 0)")
    _refused(capsys, run, ["search", "--resume", "--out", str(run), "--quiet"], "step 1", "'nope'")


def test_swapped_start_model_is_refused_on_resume(capsys, run_dir, tmp_path):
    run = _copy_run(run_dir, tmp_path)
    start = run / "candidates" / "start.onnx"
    start.write_bytes((run / "candidates" / f"{_final_id(run)}.onnx").read_bytes())
    _refused(capsys, run, ["search", "--resume", "--out", str(run), "--quiet"], "start.onnx")


@pytest.mark.parametrize("damage, pattern", [
    ("DROP TABLE steps", "has no table 'steps'"),
    ("UPDATE candidates SET history = '{oops' WHERE kind = 'final'", "has a corrupt 'history' column"),
    ("UPDATE candidates SET morphisms = 'x' WHERE kind = 'init'", "has a corrupt 'morphisms' column"),
    ("UPDATE meta SET value = 'not json' WHERE key = 'config'", "(meta key 'config') is not a JSON"),
    ("UPDATE meta SET value = '{oops' WHERE key = 'final'", "meta key 'final'"),
])
def test_damaged_ledger_in_resume_and_report(capsys, run_dir, tmp_path, damage, pattern):
    run = _copy_run(run_dir, tmp_path)
    _sql(run, damage)
    _refused(capsys, run, ["search", "--resume", "--out", str(run), "--quiet"], pattern)
    _refused(capsys, run, ["report", str(run), "-o", str(tmp_path / "rep")], pattern)
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("cut", [0, 1000, 5000])
def test_garbage_or_truncated_ledger_in_resume_and_report(capsys, run_dir, tmp_path, cut):
    run = _copy_run(run_dir, tmp_path)
    p = run / "ledger.sqlite"
    p.write_bytes(p.read_bytes()[:cut] if cut else b"garbage, not sqlite" * 100)
    _refused(capsys, run, ["search", "--resume", "--out", str(run), "--quiet"], "ledger.sqlite")
    _refused(capsys, run, ["report", str(run), "-o", str(tmp_path / "rep")], "ledger.sqlite")


def _npz(path, seed=0, flip=False):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (80, 1, 8, 8), dtype=np.uint8)
    y = np.arange(80) % 4
    if flip:
        x[0, 0, 0, 0] ^= 1   # same shapes, one pixel differs
    np.savez(path, x=x, y=y)
    return path


def test_resume_refuses_a_changed_data_set(capsys, tmp_path):
    data = _npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    assert main(["search", *NO_TRAIN, "--dataset", f"npz:{data}", "--out", str(run), "--quiet"]) == 0
    _npz(data, flip=True)
    _refused(capsys, run, ["search", "--resume", "--out", str(run), "--quiet"],
             "the data set is not the one the run", "its contents (the SHA-256 fingerprint")
    _npz(data)
    assert main(["search", "--resume", "--out", str(run), "--quiet"]) == 0


# ------------------------------------------------------------------ exclusive creation


def test_a_second_search_on_a_locked_folder_writes_nothing(capsys, tmp_path):
    from nashir.search.ledger import lock_run_dir, unlock_run_dir

    out = tmp_path / "run"
    out.mkdir()
    lock = lock_run_dir(out)   # as a search that is deciding / creating / running holds it
    try:
        _refused(capsys, out, ["search", *NO_TRAIN, "--out", str(out), "--quiet"],
                 "another nashir search is using the run folder")
        assert list(out.iterdir()) == []
    finally:
        unlock_run_dir(lock)


def test_stale_ledger_temp_file_of_a_killed_creation(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".ledger.k1ll3d.tmp"
    stale.write_bytes(b"SQLite format 3\x00 half-built")
    err = _fails(capsys, ["search", "--resume", "--out", str(out), "--quiet"], ".ledger.k1ll3d.tmp")
    assert stale.exists()
    assert main(["search", *NO_TRAIN, "--out", str(out), "--quiet"]) == 0
    assert not stale.exists()
    stale.write_bytes(b"again")
    assert main(["search", *NO_TRAIN, "--out", str(out), "--force", "--quiet"]) == 0
    assert not stale.exists()
    assert main(["search", "--resume", "--out", str(out), "--quiet"]) == 0
    del err


@pytest.mark.slow
def test_two_fresh_searches_on_one_empty_out(tmp_path):
    """Started together on one empty folder: one runs, the other is refused in one line and writes
    nothing into the winner's folder; the winner then resumes its own run."""
    out = tmp_path / "run"
    out.mkdir()
    cmd = [sys.executable, "-m", "nashir.cli", "search", *NO_TRAIN, "--out", str(out), "--quiet"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    res = [(p.wait(), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in res)
    assert codes in ([0, 2], [0, 0]), res   # [0, 0]: the second started after the first had finished
    if codes == [0, 2]:
        loser = next(r for r in res if r[0] == 2)
        assert "Traceback" not in loser[2] and loser[2].count("\n") == 1, loser
    assert main(["search", "--resume", "--out", str(out), "--quiet"]) == 0


# ------------------------------------------------------------------ unwritable outputs


def test_out_under_a_file_is_refused_before_the_data_loads(capsys, tmp_path):
    f = tmp_path / "f"
    f.write_text("a file")
    _fails(capsys, ["search", "--dataset", "npz:/nonexistent.npz", "--out", str(f / "run")],
           f"--out {f / 'run'}", "is a file")
    _fails(capsys, ["report", str(f / "run")], "is a file")
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_unwritable_out_is_refused_before_the_data_loads(capsys, tmp_path, monkeypatch):
    """/proc/self is not writable even for root: a genuinely unwritable place."""
    _fails(capsys, ["search", "--dataset", "npz:/nonexistent.npz", "--out", "/proc/self/run"],
           "--out /proc/self/run", "not writable")
    monkeypatch.chdir("/proc/self")   # the default runs/ in a current folder nobody can write
    _fails(capsys, ["search", "--dataset", "npz:/nonexistent.npz"], "runs", "not writable")


def test_report_into_an_unwritable_folder(capsys, run_dir, tmp_path):
    run = _copy_run(run_dir, tmp_path)
    f = tmp_path / "f"
    f.write_text("x")
    _refused(capsys, run, ["report", str(run), "-o", str(f / "rep")], "is a file")
    _refused(capsys, run, ["report", str(run), "-o", "/proc/self/rep"], "not writable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits; see docs/limits.md")
def test_read_only_run_on_resume_force_and_report(capsys, run_dir, tmp_path):
    run = _copy_run(run_dir, tmp_path)
    os.chmod(run, 0o555)
    try:
        for flag in ("--resume", "--force"):
            _refused(capsys, run, ["search", *NO_TRAIN, flag, "--out", str(run), "--quiet"], "not writable")
        _refused(capsys, run, ["report", str(run)], "not writable")
    finally:
        os.chmod(run, 0o755)


# ------------------------------------------------------------------ plugins and --input-shape


@pytest.fixture
def search_plugins(tmp_path, monkeypatch):
    from nashir.passes import base as B

    saved, src = dict(B._REGISTRY), dict(B._SOURCES)
    (tmp_path / "nashir_search_badplugins.py").write_text(
        "from nashir.passes import register_pass\n"
        "from nashir.passes.net2deeper import Net2Deeper\n"
        "@register_pass\n"
        "class SitesBoom(Net2Deeper):\n"
        "    name = 'sites-boom'\n"
        "    def sites(self, graph):\n"
        "        raise ZeroDivisionError('sites broke')\n"
        "@register_pass\n"
        "class InfoBoom(Net2Deeper):\n"
        "    name = 'info-boom'\n"
        "    def apply(self, graph, site, rng):\n"
        "        res = super().apply(graph, site, rng)\n"
        "        res.info['handle'] = object()\n"
        "        return res\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("nashir_search_badplugins", None)
    B._REGISTRY.clear()
    B._REGISTRY.update(saved)
    B._SOURCES.clear()
    B._SOURCES.update(src)


@pytest.mark.parametrize("name, reason", [
    ("sites-boom", "pass 'sites-boom': sites() raised ZeroDivisionError: sites broke"),
    ("info-boom", "returned info that is not JSON-serialisable"),
])
def test_a_misbehaving_plugin_pass_is_a_failed_child(capsys, tmp_path, search_plugins, name, reason):
    out = tmp_path / "run"
    argv = ["search", "--plugin", "nashir_search_badplugins", "--passes", name, "--steps", "1", "--neighbors",
            "3", "--morphs", "1", "--epochs-neighbor", "1", "--epochs-init", "0", "--epochs-final", "0",
            "--widths", "4,8,8", "--device", "cpu", "--out", str(out), "--quiet"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    con = sqlite3.connect(out / "ledger.sqlite")
    rows = con.execute("SELECT status, reason FROM candidates WHERE kind = 'child'").fetchall()
    state = con.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()[0]
    con.close()
    assert len(rows) == 2 and all(s == "failed" and reason in r for s, r in rows), rows
    assert state != "running"


def test_search_without_plugin_suggests_it(capsys, tmp_path):
    _fails(capsys, ["search", "--passes", "sites-boom", "--out", str(tmp_path / "r")], "--plugin MODULE")


def test_init_with_input_shape(capsys, tmp_path):
    import onnx

    from nashir.backends.onnx import model_bytes
    from nashir.search.startnet import start_network

    m = onnx.load_from_string(model_bytes(start_network((1, 8, 8), 10, (4, 8, 8))))
    for d, name in zip(m.graph.input[0].type.tensor_type.shape.dim[2:], ("h", "w")):
        d.ClearField("dim_value")
        d.dim_param = name
    init = tmp_path / "sym.onnx"
    init.write_bytes(m.SerializeToString())
    base = ["search", "--steps", "0", "--epochs-final", "0", "--device", "cpu", "--init", str(init),
            "--quiet"]
    _fails(capsys, [*base, "--out", str(tmp_path / "a")], "--input-shape")
    assert main([*base, "--input-shape", "1,8,8", "--out", str(tmp_path / "b")]) == 0
    _fails(capsys, ["search", "--input-shape", "1,8,8", "--out", str(tmp_path / "c")], "give --init")
    _fails(capsys, [*base, "--input-shape", "1,x,8", "--out", str(tmp_path / "d")], "--input-shape '1,x,8'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "sym.onnx"]


def test_oversized_widths_are_refused_before_allocating(capsys, tmp_path):
    out = tmp_path / "run"
    err = _fails(capsys, ["search", "--widths", "100000,100000,100000", "--device", "cpu", "--out", str(out)],
                 "widths 100000,100000,100000", "GiB of float32", "above the 2.0 GiB")
    assert err.count("\n") == 1 and not out.exists()
