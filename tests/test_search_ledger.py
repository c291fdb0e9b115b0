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
        with pytest.raises(SearchError, match="is read-only"):
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


# ------------------------------------------------------------------ the run folder is untrusted input


def _digest_tree(folder):
    import hashlib

    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _sql(run, *statements):
    con = sqlite3.connect(run / LEDGER_NAME)
    for st in statements:
        con.execute(st)
    con.commit()
    con.close()


def _run_with_candidate(tmp_path, data=b"onnx bytes of s1-c1"):
    led = _new(tmp_path)
    led.add_candidate("s1-c1", 1, 1, "child")
    rel = led.write_candidate_onnx("s1-c1", data)
    led.finish_candidate("s1-c1", "ok", val_acc=0.5, onnx=rel)
    led.close()
    return tmp_path / "run"


def test_candidate_files_are_hashed_and_read_back(tmp_path):
    run = _run_with_candidate(tmp_path)
    with Ledger.open(run) as led:
        row = led.candidate("s1-c1")
        assert row["onnx"] == "candidates/s1-c1.onnx" and len(row["sha256"]) == 64
        assert led.read_candidate_onnx("s1-c1") == b"onnx bytes of s1-c1"


@pytest.mark.parametrize("record, match", [
    ("../x.onnx", r"records the file '\.\./x\.onnx', outside the run's candidates/ folder"),
    ("ABS", r"outside the run's candidates/ folder"),
    ("candidates/../ledger.sqlite", r"outside the run's candidates/ folder"),
    ("candidates/link.onnx", r"outside the run's candidates/ folder"),          # a symlink leading out
    ("candidates/s1-c1.txt", r"outside the run's candidates/ folder"),
    ("candidates/absent.onnx", r"candidates/absent\.onnx \(candidate 's1-c1'\) is missing"),
    ("candidates", r"outside the run's candidates/ folder"),
])
def test_candidate_paths_are_confined_to_the_run_folder(tmp_path, record, match):
    run = _run_with_candidate(tmp_path)
    outside = tmp_path / "x.onnx"
    outside.write_bytes(b"onnx bytes of s1-c1")            # same bytes: only the path is wrong
    (run / "candidates" / "link.onnx").symlink_to(outside)
    if record == "ABS":
        record = str(outside)
    _sql(run, f"UPDATE candidates SET onnx = '{record}' WHERE id = 's1-c1'")
    before = _digest_tree(tmp_path)
    with Ledger.open(run) as led, pytest.raises(SearchError, match=match):
        led.read_candidate_onnx("s1-c1")
    assert _digest_tree(tmp_path) == before


@pytest.mark.parametrize("change, match", [
    ("swap", r"is not the file the search wrote \(its SHA-256 differs"),
    ("truncate", r"is not the file the search wrote"),
    ("garbage", r"is not the file the search wrote"),
    ("no hash", r"has no recorded SHA-256"),
    ("folder", r"is missing or not a file"),
])
def test_changed_candidate_files_are_refused(tmp_path, change, match):
    run = _run_with_candidate(tmp_path)
    f = run / "candidates" / "s1-c1.onnx"
    if change == "swap":
        f.write_bytes(b"another valid model")
    elif change == "truncate":
        f.write_bytes(f.read_bytes()[:5])
    elif change == "garbage":
        f.write_bytes(os.urandom(64))
    elif change == "no hash":
        _sql(run, "UPDATE candidates SET sha256 = NULL")
    else:
        f.unlink()
        f.mkdir()
    with Ledger.open(run) as led, pytest.raises(SearchError, match=match):
        led.read_candidate_onnx("s1-c1")


@pytest.mark.parametrize("damage, match", [
    ("DROP TABLE steps", r"has no table 'steps'"),
    ("DROP TABLE candidates", r"has no table 'candidates'"),
    ("ALTER TABLE candidates DROP COLUMN history", r"table 'candidates' lacks column\(s\) \['history'\]"),
    ("UPDATE meta SET value = 'not json {' WHERE key = 'config'", r"its config .* is not a JSON object"),
    ("UPDATE meta SET value = '[1, 2]' WHERE key = 'config'", r"its config .* is not a JSON object"),
    ("DELETE FROM meta WHERE key = 'config'", r"its config .* is missing"),
    ("UPDATE meta SET value = 'two' WHERE key = 'schema_version'", r"schema_version 'two' is not a version"),
    ("UPDATE meta SET value = '99' WHERE key = 'schema_version'", r"schema 99 is newer"),
])
def test_damaged_ledgers_are_refused_on_open(tmp_path, damage, match):
    run = _run_with_candidate(tmp_path)
    _sql(run, damage)
    before = _digest_tree(run)
    for ro in (False, True):
        with pytest.raises(SearchError, match=match):
            Ledger.open(run, readonly=ro)
    assert _digest_tree(run) == before


@pytest.mark.parametrize("column", ["morphisms", "history", "metrics"])
def test_corrupt_json_columns_name_the_candidate(tmp_path, column):
    run = _run_with_candidate(tmp_path)
    _sql(run, f"UPDATE candidates SET {column} = '{{oops' WHERE id = 's1-c1'")
    with Ledger.open(run, readonly=True) as led:
        for read in (lambda: led.candidate("s1-c1"), led.candidates):
            with pytest.raises(SearchError, match=rf"candidate 's1-c1' has a corrupt '{column}' column"):
                read()


@pytest.mark.parametrize("cut", [0.0, 0.3, 0.6])
def test_truncated_ledger_is_a_search_error(tmp_path, cut):
    run = _run_with_candidate(tmp_path)
    p = run / LEDGER_NAME
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(SearchError):
        with Ledger.open(run, readonly=True) as led:
            led.candidates()
            led.steps()


def test_schema_1_ledgers_are_still_read(tmp_path):
    """A run made before candidate hashes (schema 1): opened, and its files read without a hash check."""
    run = _run_with_candidate(tmp_path)
    _sql(run, "ALTER TABLE candidates DROP COLUMN sha256",
         "UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with Ledger.open(run) as led:
        assert led.read_candidate_onnx("s1-c1") == b"onnx bytes of s1-c1"
        led.add_candidate("s1-c2", 1, 2, "child")
        rel = led.write_candidate_onnx("s1-c2", b"two")
        led.finish_candidate("s1-c2", "ok", onnx=rel)
        assert led.read_candidate_onnx("s1-c2") == b"two"


# ------------------------------------------------------------------ exclusive creation and the folder lock


def _create_in_child(run, barrier, results, k):
    try:
        barrier.wait()
        Ledger.create(run, {"who": k}).close()
        results.put((k, "created"))
    except SearchError as e:
        results.put((k, f"SearchError: {e}"))
    except Exception as e:  # pragma: no cover - what the test is about
        results.put((k, f"{type(e).__name__}: {e}"))


def test_two_creators_one_wins_the_other_is_refused(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for attempt in range(5):
        run = tmp_path / f"run{attempt}"
        run.mkdir()
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_create_in_child, args=(run, barrier, results, k)) for k in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        got = sorted(results.get() for _ in procs)
        assert [r for _, r in got].count("created") == 1, got
        loser = next(r for _, r in got if r != "created")
        assert loser.startswith("SearchError: ")
        assert "exists already" in loser or "at the same time" in loser
        with Ledger.open(run) as led:
            assert led.config["who"] in (0, 1)
        assert sorted(p.name for p in run.iterdir()) == [LEDGER_NAME]   # no temp file left


def test_run_folder_lock_is_exclusive(tmp_path):
    from nashir.search.ledger import lock_run_dir, unlock_run_dir

    lock = lock_run_dir(tmp_path)
    try:
        import subprocess
        import sys

        code = ("import sys; from nashir.search.ledger import lock_run_dir\n"
                "try:\n    lock_run_dir(sys.argv[1])\n"
                "except Exception as e:\n    print(type(e).__name__, e)\n")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                             text=True).stdout
        assert out.startswith("SearchError another nashir search is using the run folder")
    finally:
        unlock_run_dir(lock)
    unlock_run_dir(lock_run_dir(tmp_path))   # free again


def test_stale_temp_files_of_a_killed_creator(tmp_path):
    from nashir.search.ledger import remove_stale_temp_files, stale_temp_files

    run = tmp_path / "run"
    run.mkdir()
    (run / ".ledger.k1ll3d.tmp").write_bytes(b"SQLite format 3\0 half")
    (run / "mine.txt").write_text("keep")
    assert [p.name for p in stale_temp_files(run)] == [".ledger.k1ll3d.tmp"]
    assert [p.name for p in remove_stale_temp_files(run)] == [".ledger.k1ll3d.tmp"]
    assert sorted(p.name for p in run.iterdir()) == ["mine.txt"]


def test_fuzz_damaged_run_folders_give_search_errors(tmp_path):
    """200 random damages of a run folder (ledger bytes truncated or bit-flipped, candidate files
    truncated, flipped, swapped or replaced by a huge sparse file): opening the ledger, reading every row
    and every candidate file either works or raises SearchError, never another exception; a changed
    candidate file is never returned as if it were the recorded one."""
    import random
    import shutil

    rng = random.Random(7)
    master = tmp_path / "master"
    led = Ledger.create(master, {"seed": 0})
    blobs = {}
    for k in range(3):
        cid = f"s1-c{k + 1}"
        blobs[cid] = os.urandom(200 + 50 * k)
        led.add_candidate(cid, 1, k + 1, "child", morphisms=[{"pass": "net2wider", "site": f"c{k}"}])
        led.finish_candidate(cid, "ok", val_acc=0.1 * k, history=[{"epoch": 0}],
                             onnx=led.write_candidate_onnx(cid, blobs[cid]))
    led.finish_step(1, "s1-c1", 0.0)
    led.close()
    outcomes = {"ok": 0, "SearchError": 0}
    for i in range(200):
        run = tmp_path / f"r{i}"
        shutil.copytree(master, run)
        target = rng.choice([run / LEDGER_NAME, *sorted((run / "candidates").iterdir())])
        data = bytearray(target.read_bytes())
        hows = ["truncate", "flip", "swap", "huge"] if target.suffix == ".onnx" else ["truncate", "flip"]
        how = rng.choice(hows)
        if how == "truncate":
            data = data[: rng.randrange(len(data))]
        elif how == "flip":
            for _ in range(rng.randint(1, 16)):
                j = rng.randrange(len(data))
                data[j] ^= 1 << rng.randrange(8)
        elif how == "swap":
            data = bytearray(os.urandom(len(data)))
        if how == "huge":
            with open(target, "wb") as f:
                f.truncate(3 << 30)
        else:
            target.write_bytes(bytes(data))
        try:
            with Ledger.open(run, readonly=rng.random() < 0.5) as led:
                rows = led.candidates()
                led.steps()
                for r in rows:
                    if r["status"] == "ok":
                        got = led.read_candidate_onnx(r["id"])
                        assert got == blobs.get(r["id"]), (i, how, target.name)
            outcomes["ok"] += 1
        except SearchError:
            outcomes["SearchError"] += 1
        shutil.rmtree(run)
    assert outcomes["SearchError"] > 50


def test_meta_values_that_are_not_json(tmp_path):
    run = _run_with_candidate(tmp_path)
    _sql(run, "INSERT INTO meta (key, value) VALUES ('final', '{oops')")
    with Ledger.open(run, readonly=True) as led:
        assert led.get_meta("state") == "running"          # a plain-text key
        with pytest.raises(SearchError, match=r"meta key 'final' holds '\{oops', which is not JSON"):
            led.get_meta("final")


@pytest.mark.parametrize("column, value", [("morphisms", "{}"), ("history", "5"), ("metrics", "[1]")])
def test_json_columns_of_the_wrong_kind(tmp_path, column, value):
    run = _run_with_candidate(tmp_path)
    _sql(run, f"UPDATE candidates SET {column} = '{value}' WHERE id = 's1-c1'")
    with Ledger.open(run, readonly=True) as led:
        with pytest.raises(SearchError, match=rf"candidate 's1-c1' has a corrupt '{column}' column \(a JSON"):
            led.candidates()


@pytest.mark.parametrize("column, value, what", [
    ("val_acc", "'abc'", r"corrupt 'val_acc' column \('abc', expected a number\)"),
    ("params", "'abc'", r"corrupt 'params' column"),
    ("step", "'abc'", r"corrupt 'step' column"),
    ("parent", "x'6162'", r"corrupt 'parent' column \(\"b'ab'\", expected text\)"),   # a BLOB
    ("morphisms", """'[{"pass": 3}]'""", r"corrupt 'morphisms' column \(entry"),
    ("morphisms", "'[1]'", r"corrupt 'morphisms' column \(entry '1'"),
    ("history", "'[1]'", r"corrupt 'history' column \(entry '1'"),
    ("history", """'[{"epoch": "a", "loss": 0.1}]'""", r"corrupt 'history' column \(entry"),
])
def test_rows_with_values_of_the_wrong_type_name_the_candidate(tmp_path, column, value, what):
    """SQLite keeps any value in any column: an edited row is refused here, not a TypeError in the report."""
    run = _run_with_candidate(tmp_path)
    _sql(run, f"UPDATE candidates SET {column} = {value} WHERE id = 's1-c1'")
    with Ledger.open(run, readonly=True) as led:
        with pytest.raises(SearchError, match=rf"candidate 's1-c1' has a {what}"):
            led.candidates()


@pytest.mark.parametrize("column, value", [("best_val_acc", "'abc'"), ("finished", "'x'"), ("best", "x'00'")])
def test_steps_rows_with_values_of_the_wrong_type(tmp_path, column, value):
    """A text best_val_acc was a ValueError in --resume (after it had written) and in nashir report."""
    run = _run_with_candidate(tmp_path)
    with Ledger.open(run) as led:
        led.finish_step(1, "s1-c1", 0.5)
    _sql(run, f"UPDATE steps SET {column} = {value}")
    with Ledger.open(run, readonly=True) as led:
        with pytest.raises(SearchError, match=rf"step .* has a corrupt '{column}' column"):
            led.steps()
