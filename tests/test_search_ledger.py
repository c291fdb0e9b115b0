"""The run ledger: creation, transactions (all or nothing), resume bookkeeping, refusing folders."""

from __future__ import annotations

import os
import sqlite3

import pytest

from nashir.errors import SearchError
from nashir.search.ledger import LEDGER_NAME, Ledger, atomic_write, is_run
from nashir.search.nash import prepare_run_dir


def _new(tmp_path, cfg=None):
    return Ledger.create(tmp_path / "run", cfg or {"seed": 0, "n_steps": 2})


def test_create_open_and_config(tmp_path):
    led = _new(tmp_path, {"seed": 3, "widths": [1, 2, 3]})
    led.close()
    assert is_run(tmp_path / "run")
    with Ledger.open(tmp_path / "run") as led:
        assert led.config == {"seed": 3, "widths": [1, 2, 3]}
        assert led.get_meta("state") == "running"
    # no temp files left behind
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LEDGER_NAME]


def test_create_twice_is_refused(tmp_path):
    _new(tmp_path).close()
    with pytest.raises(SearchError, match="exists already"):
        _new(tmp_path)


def test_candidate_lifecycle(tmp_path):
    led = _new(tmp_path)
    morphs = [{"pass": "net2wider", "site": "conv1", "info": {"to": 24}}]
    led.add_candidate("s1-c1", 1, 1, "child", "init", morphs, params=100, macs=1000, seed=42, epochs=3)
    row = led.candidate("s1-c1")
    assert row["status"] == "pending" and row["morphisms"] == morphs and row["params"] == 100
    assert not led.is_finished("s1-c1")
    # a pending candidate may be recorded again (an interrupted run redoes it)
    led.add_candidate("s1-c1", 1, 1, "child", "init", morphs, params=100, macs=1000, seed=42, epochs=3)
    led.finish_candidate(
        "s1-c1",
        "ok",
        val_acc=0.5,
        train_seconds=1.5,
        job_seconds=2.0,
        history=[{"epoch": 0, "val_acc": 0.5}],
        metrics={"x": 1.0},
        onnx="candidates/s1-c1.onnx",
    )
    row = led.candidate("s1-c1")
    assert row["status"] == "ok" and row["val_acc"] == 0.5 and row["history"][0]["epoch"] == 0
    assert led.is_finished("s1-c1")
    with pytest.raises(SearchError, match="already finished"):
        led.add_candidate("s1-c1", 1, 1, "child", "init")
    with pytest.raises(SearchError, match="no candidate 'nope'"):
        led.finish_candidate("nope", "ok")
    with pytest.raises(SearchError, match="status must be one of"):
        led.finish_candidate("s1-c1", "pending")
    led.close()


def test_failed_candidate_keeps_reason(tmp_path):
    led = _new(tmp_path)
    led.add_candidate("s1-c2", 1, 2, "child", "init")
    led.finish_candidate("s1-c2", "diverged", reason="loss became nan at epoch 0")
    assert led.candidate("s1-c2")["reason"] == "loss became nan at epoch 0"
    assert [r["id"] for r in led.candidates(status="diverged")] == ["s1-c2"]
    led.close()


def test_step_needs_finished_candidates(tmp_path):
    led = _new(tmp_path)
    led.add_candidate("init", 0, 0, "init")
    led.finish_candidate("init", "ok", val_acc=0.3)
    led.add_candidate("s1-c1", 1, 1, "child", "init")
    with pytest.raises(SearchError, match="pending candidates s1-c1"):
        led.finish_step(1, "s1-c1", 0.4)
    assert led.steps() == []
    led.finish_candidate("s1-c1", "ok", val_acc=0.4)
    led.finish_step(1, "s1-c1", 0.4)
    assert [(s["step"], s["best"]) for s in led.steps()] == [(1, "s1-c1")]
    assert led.step(2) is None
    led.close()


def test_transaction_is_all_or_nothing(tmp_path):
    led = _new(tmp_path)
    with pytest.raises(RuntimeError):
        with led.transaction():
            led.add_candidate("a", 1, 1, "child")
            led.add_candidate("b", 1, 2, "child")
            raise RuntimeError("killed in the middle")
    assert led.candidates() == []
    with led.transaction():
        led.add_candidate("a", 1, 1, "child")
        led.add_candidate("b", 1, 2, "child")
    assert [r["id"] for r in led.candidates()] == ["a", "b"]
    led.close()
    # another connection sees the committed rows
    con = sqlite3.connect(tmp_path / "run" / LEDGER_NAME)
    assert con.execute("SELECT count(*) FROM candidates").fetchone()[0] == 2
    con.close()


def test_readonly_open_cannot_write(tmp_path):
    _new(tmp_path).close()
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        with pytest.raises(sqlite3.OperationalError):
            led.set_meta("x", 1)


def test_open_refuses_folders_that_are_not_runs(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(SearchError, match="is not a nashir run: it has no ledger.sqlite"):
        Ledger.open(d)
    (d / LEDGER_NAME).write_bytes(b"this is not sqlite at all, just some bytes" * 10)
    assert not is_run(d)
    with pytest.raises(SearchError, match="not a nashir run"):
        Ledger.open(d)
    other = tmp_path / "other"
    other.mkdir()
    con = sqlite3.connect(other / LEDGER_NAME)
    con.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    con.execute("INSERT INTO meta VALUES ('format', 'something-else')")
    con.commit()
    con.close()
    assert not is_run(other)
    with pytest.raises(SearchError, match="is not a nashir ledger"):
        Ledger.open(other)


def test_prepare_run_dir_decisions(tmp_path):
    new = tmp_path / "new"
    assert prepare_run_dir(new, resume=False, force=False) == "create"
    assert not new.exists()  # deciding writes nothing
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_run_dir(empty, resume=False, force=False) == "create"
    with pytest.raises(SearchError, match="--resume: .* holds no nashir run"):
        prepare_run_dir(empty, resume=True, force=False)
    run = tmp_path / "run"
    Ledger.create(run, {}).close()
    with pytest.raises(SearchError, match="exists already; add --resume .* or --force"):
        prepare_run_dir(run, resume=False, force=False)
    assert prepare_run_dir(run, resume=True, force=False) == "resume"
    assert prepare_run_dir(run, resume=False, force=True) == "replace"
    with pytest.raises(SearchError, match="contradict"):
        prepare_run_dir(run, resume=True, force=True)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    for resume, force in ((False, False), (True, False), (False, True)):
        with pytest.raises(SearchError, match="is not a nashir run"):
            prepare_run_dir(junk, resume=resume, force=force)
    assert (junk / "notes.txt").read_text() == "mine"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SearchError, match="is a file"):
        prepare_run_dir(f, resume=False, force=False)


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "x.bin"
    atomic_write(p, b"one")
    atomic_write(p, b"two")
    assert p.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["x.bin"]
