"""The Ray executor (issue 7): optional import, flag checks (fast); on a local Ray instance with 2
CPUs (slow, one instance shared by the module): the same ledger as the in-process executor, a
worker killed once is retried, a worker killed on every attempt gives a failed candidate and the
search goes on, the data set is loaded once per worker process, ``--workers`` bounds the trials
at once; and ``nashir search --executor ray`` end to end in a fresh process (its own instance)."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nashir.cli import main
from nashir.errors import SearchError
from nashir.search import SearchConfig, nash
from nashir.search.executor import DataSpec, Job, Result, make_executor, run_job
from nashir.search.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]

# the tiny search of every slow test: start network + one step of 3 candidates + final training
CFG = dict(
    n_steps=1,
    n_neigh=3,
    n_nm=1,
    epoch_neigh=1,
    epochs_init=1,
    epoch_final=1,
    widths=(4, 8, 8),
    device="cpu",
    threads=1,
    seed=3,
)
CLI_ARGS = [
    "--steps", "1", "--neighbors", "3", "--morphs", "1", "--epochs-neighbor", "1", "--epochs-init", "1",
    "--epochs-final", "1", "--widths", "4,8,8", "--device", "cpu", "--threads", "1", "--seed", "3",
]  # fmt: skip
FIELDS = ("id", "step", "idx", "kind", "parent", "morphisms", "params", "macs", "seed", "epochs",
          "status", "val_acc", "test_acc")  # fmt: skip


def ledger_rows(run_dir: Path) -> dict[str, dict]:
    """Every candidate's architecture, accuracies and trained ONNX bytes (not timings)."""
    out = {}
    with Ledger.open(run_dir, readonly=True) as led:
        for r in led.candidates():
            row = {k: r[k] for k in FIELDS}
            row["onnx_bytes"] = (run_dir / r["onnx"]).read_bytes() if r["onnx"] else None
            out[r["id"]] = row
    return out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: nothing listens there


# --------------------------------------------------------------------------------------------------
# without Ray (or without starting it)


def test_missing_ray_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(SearchError, match=r"pip install 'nashir\[ray\]'"):
        make_executor("ray")


def test_cli_without_ray_exits_2_and_writes_nothing(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "run"
    code = main(["search", "--executor", "ray", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "pip install 'nashir[ray]'" in err and "Traceback" not in err
    assert not out.exists()


def test_import_nashir_search_and_cli_help_do_not_import_ray():
    code = (
        "import contextlib, io, sys\nimport nashir.search\nfrom nashir.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    main(['search', '--help'])\n"
        "print('ray' in sys.modules, 'nashir.search' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "True"]


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["--workers", "2"], "--workers only apply to --executor ray"),
        (["--ray-address", "auto", "--gpus-per-trial", "1"], "--ray-address, --gpus-per-trial only apply"),
        (["--executor", "ray", "--device", "cpu", "--gpus-per-trial", "1"], "--device cpu contradicts"),
        (["--executor", "ray", "--device", "cuda"], "needs a GPU per trial; give --gpus-per-trial 1"),
        (["--executor", "ray", "--workers", "0"], "--workers must be an integer >= 1"),
        (["--executor", "ray", "--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
        (["--executor", "ray", "--gpus-per-trial", "1.5"], "above 1 must be a whole number"),
        (["--executor", "ray", "--ray-address", "nowhere"], "is not HOST:PORT"),
    ],
)
def test_cli_ray_flag_errors(capsys, tmp_path, argv, pattern):
    out = tmp_path / "run"
    code = main(["search", *argv, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert pattern in err and "Traceback" not in err
    assert not out.exists()


def test_cli_unreachable_address_exits_2_at_once(capsys, tmp_path):
    port = _closed_port()
    out = tmp_path / "run"
    code = main(
        ["search", "--executor", "ray", "--ray-address", f"127.0.0.1:{port}", "--out", str(out), "-q"]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"127.0.0.1:{port}: no Ray cluster answers there" in err and "ray start --head" in err
    assert not out.exists()


def test_trial_device_follows_the_gpus_ray_gives():
    from nashir.search.ray_executor import _task_device

    job = Job("c", b"", {"device": "auto"}, DataSpec("digits"), seed=0)
    assert _task_device(job, []) == "cpu"  # no GPU reserved: never touch one, whatever is visible
    assert _task_device(job, [3]) == "cuda"  # Ray's CUDA_VISIBLE_DEVICES leaves that one GPU as cuda:0
    job.train["device"] = "cuda:1"
    assert _task_device(job, [1]) == "cuda"
    job.train["device"] = "cpu"
    assert _task_device(job, [0]) == "cpu"


def test_executor_settings():
    ex = make_executor("ray", cpus_per_trial=2, gpus_per_trial=0.5, workers=3)
    assert (ex.threads, ex.workers, ex.gpus_per_trial) == (2, 3, 0.5) and not ex.started
    assert make_executor("ray", cpus_per_trial=0.5).threads == 1
    assert make_executor("ray", cpus_per_trial=4, threads=2).threads == 2
    with pytest.raises(SearchError, match="max_retries"):
        make_executor("ray", max_retries=-1)
    ex.close()  # never started: nothing to release, no error


# --------------------------------------------------------------------------------------------------
# worker bodies for the tests below (pickled by value for the workers: see ray_instance)


def die_after_training(job, data, *, marker_dir, kills, **kw):
    """Train, then SIGKILL the worker process before the result is returned, on the first
    ``kills[candidate_id]`` attempts (counted by marker files, which outlive the process)."""
    res = run_job(job, data, **kw)
    done = len(list(Path(marker_dir).glob(f"{job.candidate_id}.*")))
    if done < kills.get(job.candidate_id, 0):
        Path(marker_dir, f"{job.candidate_id}.{done}").write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return res


def report_process(job, data, *, threads, device, worker, sleep=0.0):
    """No training: say which process ran the job, with which data object and settings."""
    t0 = time.time()
    if job.candidate_id == "boom":
        raise ValueError("boom raised on purpose")
    time.sleep(sleep)
    return Result(
        job.candidate_id,
        "ok",
        metrics={
            "pid": os.getpid(),
            "data_id": id(data),
            "n_train": len(data.y_train),
            "threads": threads,
            "start": t0,
            "end": time.time(),
        },
        reason=device,
        worker=worker,
    )


# --------------------------------------------------------------------------------------------------
# on a local Ray instance with 2 CPUs (shared by the tests of this module)


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    pytest.importorskip("torch")
    import logging

    assert not ray.is_initialized()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    # the workers cannot import this test module by name: send its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny search with the in-process executor (1 torch thread)."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("inprocess") / "run"
    nash(None, None, SearchConfig(**CFG), run_dir=out, onnx_check=False)
    return ledger_rows(out)


def _ray_search(out: Path, **kw):
    ex = make_executor("ray", workers=2, cpus_per_trial=1, **kw)
    with ex:
        result = nash(None, None, SearchConfig(**CFG), executor=ex, run_dir=out, onnx_check=False)
    return result, ledger_rows(out)


@pytest.mark.slow
def test_ray_search_gives_the_in_process_ledger(ray_instance, reference, tmp_path):
    result, rows = _ray_search(tmp_path / "run")
    assert rows.keys() == reference.keys() == {"init", "s1-c1", "s1-c2", "s1-c3", "final"}
    for cid, ref in reference.items():
        assert rows[cid] == ref, cid  # architecture, morphisms, accuracies and trained weights
    assert all(r["status"] == "ok" for r in rows.values())
    assert (tmp_path / "run" / "best.onnx").read_bytes() == reference["final"]["onnx_bytes"]
    assert ray_instance.is_initialized()  # an instance the executor did not start is left running


@pytest.mark.slow
def test_killed_workers_retried_once_then_failed_and_the_search_goes_on(ray_instance, reference, tmp_path):
    """init and s1-c2 lose their worker once (retried), s1-c1 on every attempt (failed)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    kills = {"init": 1, "s1-c2": 1, "s1-c1": 5}
    fn = functools.partial(die_after_training, marker_dir=str(marks), kills=kills)
    _, rows = _ray_search(tmp_path / "run", job_fn=fn)
    # each died once, except s1-c1: two attempts (one retry, not more)
    assert sorted(p.name for p in marks.iterdir()) == ["init.0", "s1-c1.0", "s1-c1.1", "s1-c2.0"]
    for cid in ("init", "s1-c2", "s1-c3"):
        assert rows[cid] == reference[cid], cid  # a retry trains the same network to the same weights
    lost = rows["s1-c1"]
    assert lost["status"] == "failed" and lost["onnx_bytes"] is None and lost["val_acc"] is None
    with Ledger.open(tmp_path / "run", readonly=True) as led:
        assert "lost on every attempt (2 in all)" in led.candidate("s1-c1")["reason"]
        winner = led.step(1)["best"]
    assert winner != "s1-c1"
    assert rows["final"]["status"] == "ok" and rows["final"]["parent"] == winner
    if reference[winner]["val_acc"] == max(r["val_acc"] for r in reference.values() if r["step"] == 1):
        assert rows["final"] == reference["final"]  # the same winner as without failures


@pytest.mark.slow
def test_data_loaded_once_per_worker_and_errors_become_results(ray_instance):
    spec = DataSpec("digits", seed=0)
    ex = make_executor("ray", workers=2, cpus_per_trial=1, job_fn=report_process)
    with ex:
        ex.prepare(spec, None)
        jobs = [Job(f"j{i}", b"", {"device": "auto"}, spec, seed=0) for i in range(8)]
        results = {r.candidate_id: r for r in ex.run([*jobs, Job("boom", b"", {}, spec, seed=0)])}
    assert len(results) == 9
    boom = results.pop("boom")
    assert boom.status == "failed" and "raised ValueError: boom raised on purpose" in boom.reason
    by_pid: dict[int, set] = {}
    for r in results.values():
        assert r.status == "ok" and r.reason == "cpu" and r.metrics["threads"] == 1
        assert r.worker.startswith("ray:") and f"pid{r.metrics['pid']}" in r.worker
        by_pid.setdefault(r.metrics["pid"], set()).add(r.metrics["data_id"])
    # one data object per worker process (a per-task copy would differ from task to task)
    assert all(len(ids) == 1 for ids in by_pid.values()), by_pid
    assert len(results) > len(by_pid)  # some process did run several jobs on its cached copy
    assert {r.metrics["n_train"] for r in results.values()} == {len(spec.load().y_train)}


@pytest.mark.slow
def test_workers_bounds_the_trials_at_once(ray_instance):
    spec = DataSpec("digits", seed=0)
    fn = functools.partial(report_process, sleep=0.3)
    with make_executor("ray", workers=1, job_fn=fn) as ex:
        res = list(ex.run([Job(f"j{i}", b"", {}, spec, seed=0) for i in range(3)]))
    spans = sorted((r.metrics["start"], r.metrics["end"]) for r in res)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans


@pytest.mark.slow
def test_resources_no_node_has_warn_on_a_running_instance(ray_instance):
    ex = make_executor("ray", gpus_per_trial=1)  # the shared instance has no GPU
    with pytest.warns(RuntimeWarning, match="--gpus-per-trial 1 .* 0 GPUs in all.*wait until such a node"):
        ex.start()
    ex.close()
    assert ray_instance.is_initialized()  # not started by the executor: left running


def _has_gpu() -> bool:
    torch = pytest.importorskip("torch")
    return torch.cuda.is_available()


@pytest.mark.slow
def test_cli_ray_search_end_to_end(reference, tmp_path):
    """A fresh process: `nashir search --executor ray` starts its own local instance, trains, shuts
    it down, and writes the in-process run's results (and refuses a GPU request without GPUs)."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if not _has_gpu():  # a local instance that can never run one trial is refused before any output
        proc = subprocess.run(
            [sys.executable, "-m", "nashir.cli", "search", "--executor", "ray", "--gpus-per-trial", "1",
             "--out", str(out), "-q"],
            capture_output=True, text=True, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "no Ray node can run a trial: --gpus-per-trial 1 (the Ray cluster has 0 GPUs" in proc.stderr
        assert "Traceback" not in proc.stderr and not out.exists()
    proc = subprocess.run(
        [sys.executable, "-m", "nashir.cli", "search", *CLI_ARGS, "--executor", "ray", "--workers", "2",
         "--out", str(out), "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best model:" in proc.stdout
    rows = ledger_rows(out)
    for cid, ref in reference.items():
        assert rows[cid] == ref, cid
