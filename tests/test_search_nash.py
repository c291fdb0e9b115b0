"""The NASH driver: Algorithm 1's bookkeeping with a scripted executor (fast), and a tiny real
search on digits (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nashir.errors import SearchError
from nashir.search import SearchConfig, nash
from nashir.search.executor import DataSpec, Executor, Result
from nashir.search.ledger import Ledger
from nashir.search.nash import candidate_id, candidate_seed


@pytest.fixture(scope="module")
def digits():
    return DataSpec("digits", seed=0).load()


class Scripted(Executor):
    """Returns the job's own network (untrained) with a validation accuracy from ``score``."""

    def __init__(self, score, crash_at=None):
        self.score = score
        self.jobs = []
        self.queue = []
        self.crash_at = crash_at
        self.prepared = []

    def prepare(self, spec, data=None):
        self.prepared.append(spec)

    def submit(self, job):
        self.queue.append(job)
        self.jobs.append(job)

    def as_completed(self):
        while self.queue:
            job = self.queue.pop(0)
            if job.candidate_id == self.crash_at:
                raise KeyboardInterrupt("simulated crash")
            val = self.score(job)
            if isinstance(val, str):
                yield Result(job.candidate_id, val, reason=f"scripted {val}")
                continue
            yield Result(
                job.candidate_id,
                "ok",
                onnx=job.onnx,
                val_acc=val,
                history=[{"epoch": 0, "val_acc": val}],
                seconds=0.01,
                train_seconds=0.005,
                metrics={"test_acc": 0.5} if "test" in job.evaluate else {},
            )


def _cfg(**kw):
    base = dict(
        n_steps=2,
        n_neigh=3,
        n_nm=1,
        epoch_neigh=2,
        epochs_init=1,
        epoch_final=1,
        widths=(4, 8, 8),
        device="cpu",
    )
    base.update(kw)
    return SearchConfig(**base)


def _by_idx(table):
    """score(job) from a {candidate_id: value} table, default 0.1."""
    return lambda job: table.get(job.candidate_id, 0.1)


def test_algorithm_1_bookkeeping(tmp_path, digits):
    scores = {
        "init": 0.3,
        "s1-c1": 0.4,
        "s1-c2": 0.6,
        "s1-c3": 0.5,
        "s2-c1": 0.65,
        "s2-c2": 0.7,
        "s2-c3": 0.69,
    }
    ex = Scripted(_by_idx(scores))
    res = nash(None, digits, _cfg(), executor=ex, run_dir=tmp_path / "run", onnx_check=False)
    ids = [j.candidate_id for j in ex.jobs]
    assert ids == ["init", "s1-c1", "s1-c2", "s1-c3", "s2-c1", "s2-c2", "s2-c3", "final"]
    assert [s["best"] for s in res.steps] == ["init", "s1-c2", "s2-c2"]
    assert res.best_id == "s2-c2" and res.test_acc == 0.5 and res.val_acc == 0.7
    jobs = {j.candidate_id: j for j in ex.jobs}
    # neighbours: epoch_neigh epochs of SGDR on train, scored on val
    for cid in ("s1-c1", "s1-c2", "s1-c3", "s2-c1"):
        assert jobs[cid].train["epochs"] == 2 and jobs[cid].train["train_split"] == "train"
        assert jobs[cid].train["eval_split"] == "val" and jobs[cid].train["sgdr"] is True
        assert not jobs[cid].reinit
    assert jobs["init"].train["epochs"] == 1
    with Ledger.open(tmp_path / "run") as led:
        rows = {r["id"]: r for r in led.candidates()}
        init_file = (tmp_path / "run" / rows["init"]["onnx"]).read_bytes()
        assert jobs["s1-c3"].onnx == init_file  # the incumbent = the best so far, as trained
        assert rows["s1-c3"]["kind"] == "incumbent" and rows["s1-c3"]["morphisms"] == []
        assert rows["s1-c3"]["params"] == rows["init"]["params"]
        s1_file = (tmp_path / "run" / rows["s1-c2"]["onnx"]).read_bytes()
        assert jobs["s2-c3"].onnx == s1_file
        for cid in ("s1-c1", "s1-c2"):
            assert rows[cid]["parent"] == "init" and rows[cid]["kind"] == "child"
            assert len(rows[cid]["morphisms"]) == 1 and {"pass", "site", "info"} <= set(
                rows[cid]["morphisms"][0]
            )
        for cid in ("s2-c1", "s2-c2", "s2-c3"):
            assert rows[cid]["parent"] == "s1-c2"
        assert rows["final"]["parent"] == "s2-c2" and rows["final"]["kind"] == "final"
        assert all(r["status"] == "ok" for r in rows.values())
        assert led.get_meta("state") == "done"
        # each candidate's trained network is on disk
        for r in rows.values():
            assert (tmp_path / "run" / r["onnx"]).is_file()
    # the final training: epoch_final epochs on train + validation, no eval split, then test
    f = jobs["final"]
    assert f.train["train_split"] == "trainval" and f.train["eval_split"] is None
    assert f.train["epochs"] == 1 and f.evaluate == ("test",) and not f.reinit
    assert (tmp_path / "run" / "best.onnx").read_bytes() == f.onnx
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines][0] == "start" and lines[-1]["event"] == "final"
    assert "s2-c2" in (tmp_path / "run" / "summary.txt").read_text()


def test_ties_go_to_fewer_parameters(tmp_path, digits):
    # every candidate scores the same: the incumbent (no morphism: fewest parameters) wins
    ex = Scripted(lambda job: 0.5)
    res = nash(
        None,
        digits,
        _cfg(n_steps=1, passes=("net2wider",)),
        executor=ex,
        run_dir=tmp_path / "r",
        onnx_check=False,
    )
    with Ledger.open(tmp_path / "r") as led:
        rows = led.candidates(step=1)
    fewest = min(rows, key=lambda r: (r["params"], r["idx"]))
    assert res.steps[-1]["best"] == fewest["id"] == "s1-c3"
    assert all(r["params"] > fewest["params"] for r in rows if r["kind"] == "child")


def test_diverged_and_failed_neighbours_are_recorded_and_the_search_goes_on(tmp_path, digits):
    table = {"init": 0.3, "s1-c1": "diverged", "s1-c2": "failed", "s1-c3": 0.2}
    ex = Scripted(lambda job: table.get(job.candidate_id, 0.4))
    res = nash(None, digits, _cfg(n_steps=2), executor=ex, run_dir=tmp_path / "r", onnx_check=False)
    with Ledger.open(tmp_path / "r") as led:
        r1 = {r["id"]: r for r in led.candidates(step=1)}
    assert r1["s1-c1"]["status"] == "diverged" and r1["s1-c1"]["reason"] == "scripted diverged"
    assert r1["s1-c2"]["status"] == "failed"
    assert res.steps[1]["best"] == "s1-c3"  # the only one that trained
    assert res.best_id.startswith("s2-")


def test_a_step_where_nothing_trains_keeps_the_best(tmp_path, digits):
    ex = Scripted(lambda job: 0.3 if job.candidate_id in ("init", "final") else "failed")
    res = nash(None, digits, _cfg(n_steps=1), executor=ex, run_dir=tmp_path / "r", onnx_check=False)
    assert [s["best"] for s in res.steps] == ["init", "init"]
    assert res.best_id == "init"


def test_random_networks_baseline_accepts_the_child_whatever_its_accuracy(tmp_path, digits):
    # n_neigh = 1: one morphed child per step, and it replaces the model (arXiv 1711.04528, Table 1)
    ex = Scripted(_by_idx({"init": 0.9, "s1-c1": 0.1, "s2-c1": 0.05}))
    res = nash(None, digits, _cfg(n_neigh=1), executor=ex, run_dir=tmp_path / "r", onnx_check=False)
    assert [j.candidate_id for j in ex.jobs] == ["init", "s1-c1", "s2-c1", "final"]
    assert [s["best"] for s in res.steps] == ["init", "s1-c1", "s2-c1"]


def test_no_morph_reinitialises_children_only(tmp_path, digits):
    ex = Scripted(lambda job: 0.5)
    nash(None, digits, _cfg(n_steps=1, morph=False), executor=ex, run_dir=tmp_path / "r", onnx_check=False)
    flags = {j.candidate_id: j.reinit for j in ex.jobs}
    assert flags == {"init": False, "s1-c1": True, "s1-c2": True, "s1-c3": False, "final": False}


def test_no_sgdr_and_retrain_from_scratch(tmp_path, digits):
    ex = Scripted(lambda job: 0.5)
    cfg = _cfg(n_steps=1, sgdr=False, retrain_from_scratch=True)
    nash(None, digits, cfg, executor=ex, run_dir=tmp_path / "r", onnx_check=False)
    assert all(j.train["sgdr"] is False for j in ex.jobs)
    final = ex.jobs[-1]
    assert final.reinit and final.train["epochs"] == cfg.lineage_epochs() == 1 + 1 * 2 + 1


def test_seeds_are_derived_from_the_run_seed(tmp_path, digits):
    ex = Scripted(lambda job: 0.5)
    nash(None, digits, _cfg(n_steps=1, seed=7), executor=ex, run_dir=tmp_path / "r", onnx_check=False)
    seeds = {j.candidate_id: j.seed for j in ex.jobs}
    # common random numbers: every candidate of step 1 trains with the step's one seed
    step1 = {cid: s for cid, s in seeds.items() if cid.startswith("s1-")}
    assert len(step1) == 3 and set(step1.values()) == {candidate_seed(7, 1, 0, 1)}
    assert len({seeds["init"], seeds["final"], candidate_seed(7, 1, 0, 1)}) == 3
    ex2 = Scripted(lambda job: 0.5)
    nash(None, digits, _cfg(n_steps=1, seed=7), executor=ex2, run_dir=tmp_path / "r2", onnx_check=False)
    assert [(j.candidate_id, j.seed, j.onnx) for j in ex2.jobs] == [
        (j.candidate_id, j.seed, j.onnx) for j in ex.jobs
    ]
    ex3 = Scripted(lambda job: 0.5)
    nash(None, digits, _cfg(n_steps=1, seed=8), executor=ex3, run_dir=tmp_path / "r3", onnx_check=False)
    assert [j.onnx for j in ex3.jobs] != [j.onnx for j in ex.jobs]


def test_resume_after_a_crash_skips_finished_candidates(tmp_path, digits):
    scores = {
        "init": 0.3,
        "s1-c1": 0.4,
        "s1-c2": 0.6,
        "s1-c3": 0.5,
        "s2-c1": 0.65,
        "s2-c2": 0.7,
        "s2-c3": 0.69,
    }
    full = Scripted(_by_idx(scores))
    ref = nash(None, digits, _cfg(), executor=full, run_dir=tmp_path / "ref", onnx_check=False)
    crash = Scripted(_by_idx(scores), crash_at="s2-c2")  # dies in the middle of step 2
    with pytest.raises(KeyboardInterrupt):
        nash(None, digits, _cfg(), executor=crash, run_dir=tmp_path / "run", onnx_check=False)
    with Ledger.open(tmp_path / "run") as led:
        assert [s["step"] for s in led.steps()] == [1]
        assert led.candidate("s2-c1")["status"] == "ok"
        assert led.candidate("s2-c2")["status"] == "pending"
    again = Scripted(_by_idx(scores))
    res = nash(None, digits, _cfg(), executor=again, run_dir=tmp_path / "run", resume=True, onnx_check=False)
    assert [j.candidate_id for j in again.jobs] == ["s2-c2", "s2-c3", "final"]
    assert res.trained == ["s2-c2", "s2-c3", "final"]
    assert [s["best"] for s in res.steps] == [s["best"] for s in ref.steps]
    assert str(res.best) == str(ref.best)
    assert [(j.candidate_id, j.onnx) for j in again.jobs] == [(j.candidate_id, j.onnx) for j in full.jobs[5:]]
    # resuming a finished run trains nothing and gives the same result
    done = Scripted(_by_idx(scores))
    res2 = nash(None, digits, _cfg(), executor=done, run_dir=tmp_path / "run", resume=True, onnx_check=False)
    assert done.jobs == [] and res2.best_id == res.best_id and res2.test_acc == res.test_acc


def test_resume_with_another_config_is_refused_and_changes_nothing(tmp_path, digits):
    run = tmp_path / "run"
    nash(None, digits, _cfg(n_steps=1), executor=Scripted(lambda j: 0.5), run_dir=run, onnx_check=False)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(SearchError) as e:
        nash(
            None,
            digits,
            _cfg(n_steps=1, seed=3, n_nm=2),
            executor=Scripted(lambda j: 0.5),
            run_dir=run,
            resume=True,
            onnx_check=False,
        )
    msg = str(e.value)
    assert "differing keys" in msg and "seed: ledger=0, given=3" in msg and "n_nm: ledger=1, given=2" in msg
    assert "start_sha256" not in msg  # resuming takes the run's stored start network
    # another start model is a difference too
    from nashir.search.startnet import start_network

    other = start_network((1, 8, 8), 10, widths=(4, 8, 8), seed=123)
    with pytest.raises(SearchError, match="start_sha256"):
        nash(
            other,
            digits,
            _cfg(n_steps=1),
            executor=Scripted(lambda j: 0.5),
            run_dir=run,
            resume=True,
            onnx_check=False,
        )
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


def test_existing_run_without_resume_or_force_is_refused(tmp_path, digits):
    run = tmp_path / "run"
    nash(None, digits, _cfg(n_steps=0), executor=Scripted(lambda j: 0.5), run_dir=run, onnx_check=False)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(SearchError, match="exists already"):
        nash(None, digits, _cfg(n_steps=0), executor=Scripted(lambda j: 0.5), run_dir=run, onnx_check=False)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # --force replaces nashir's files only
    (run / "my_notes.txt").write_text("keep me")
    ex = Scripted(lambda j: 0.25)
    res = nash(None, digits, _cfg(n_steps=0), executor=ex, run_dir=run, force=True, onnx_check=False)
    assert (run / "my_notes.txt").read_text() == "keep me"
    assert res.steps[0]["best_val_acc"] == 0.25


def test_start_model_checks(tmp_path, digits):
    from nashir.search.startnet import start_network

    big = start_network((1, 8, 8), 10, widths=(4, 8, 8))
    with pytest.raises(SearchError, match=r"start model has \d+ parameters, above --max-params 100"):
        nash(big, digits, _cfg(max_params=100), executor=Scripted(lambda j: 0.5), run_dir=tmp_path / "r")
    wrong = start_network((3, 32, 32), 10, widths=(4, 8, 8))
    with pytest.raises(SearchError, match=r"\(N, 3, 32, 32\).*\(N, 1, 8, 8\)"):
        nash(wrong, digits, _cfg(), executor=Scripted(lambda j: 0.5), run_dir=tmp_path / "r2")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()


def test_max_params_bounds_every_child(tmp_path, digits):
    from nashir.search.startnet import start_network

    start = start_network((1, 8, 8), 10, widths=(4, 8, 8))
    limit = start.param_count() + 600
    ex = Scripted(lambda job: 0.5)
    nash(
        None,
        digits,
        _cfg(n_steps=2, n_nm=2, max_params=limit),
        executor=ex,
        run_dir=tmp_path / "r",
        onnx_check=False,
    )
    with Ledger.open(tmp_path / "r") as led:
        rows = led.candidates()
    assert all(r["params"] <= limit for r in rows)


def test_without_run_dir_a_temporary_folder_is_used(digits):
    res = nash(None, digits, _cfg(n_steps=1), executor=Scripted(lambda j: 0.5), onnx_check=False)
    assert res.run_dir is None and res.best is not None


def test_candidate_ids_and_seeds():
    assert candidate_id(3, 7) == "s3-c7"
    a = candidate_seed(0, 1, 2, 0)
    assert (
        a == candidate_seed(0, 1, 2, 0)
        and a != candidate_seed(0, 1, 2, 1)
        and a != candidate_seed(1, 1, 2, 0)
    )
    assert 0 <= a < 2**32
    assert isinstance(np.random.default_rng(a).integers(10), np.integer)


@pytest.mark.slow
def test_tiny_real_search_on_digits(tmp_path, digits):
    import onnxruntime as ort

    from nashir import load
    from nashir.backends.torch import evaluate

    cfg = _cfg(n_steps=2, n_neigh=3, n_nm=1, epoch_neigh=1, epochs_init=2, epoch_final=2, threads=1)
    res = nash(None, digits, cfg, run_dir=tmp_path / "run")
    assert res.test_acc > 0.5  # far above chance (0.1) after a few epochs
    with Ledger.open(tmp_path / "run") as led:
        rows = led.candidates()
        steps = led.steps()
    assert len(rows) == 1 + 2 * 3 + 1 and all(r["status"] == "ok" for r in rows)
    for s in steps:
        cands = [r for r in rows if r["step"] == s["step"]]
        want = max(cands, key=lambda r: (r["val_acc"], -r["params"], -r["idx"]))
        assert s["best"] == want["id"]
    # best.onnx under onnxruntime scores the test set like torch does (within 0.2 points)
    best = load(tmp_path / "run" / "best.onnx")
    torch_acc, _ = evaluate(best, digits, split="test", device="cpu")
    assert torch_acc == pytest.approx(res.test_acc)
    sess = ort.InferenceSession(str(tmp_path / "run" / "best.onnx"), providers=["CPUExecutionProvider"])
    x = (digits.x_test - digits.mean.reshape(1, -1, 1, 1)) / digits.std.reshape(1, -1, 1, 1)
    logits = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]
    ort_acc = float((logits.argmax(1) == digits.y_test).mean())
    assert abs(ort_acc - torch_acc) <= 0.002
    assert res.test_acc_onnx == pytest.approx(ort_acc)


def test_a_run_being_written_by_another_search_is_refused(tmp_path, digits):
    import fcntl
    import os

    run = tmp_path / "run"
    nash(None, digits, _cfg(n_steps=0), executor=Scripted(lambda j: 0.5), run_dir=run, onnx_check=False)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    fd = os.open(run / "ledger.sqlite", os.O_RDONLY)  # what a running search holds
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for kw in (dict(resume=True), dict(force=True)):
            with pytest.raises(SearchError, match="another nashir search is writing the run"):
                nash(
                    None,
                    digits,
                    _cfg(n_steps=0),
                    executor=Scripted(lambda j: 0.5),
                    run_dir=run,
                    onnx_check=False,
                    **kw,
                )
    finally:
        os.close(fd)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # released: resuming works again
    res = nash(
        None,
        digits,
        _cfg(n_steps=0),
        executor=Scripted(lambda j: 0.5),
        run_dir=run,
        resume=True,
        onnx_check=False,
    )
    assert res.best_id == "init"


# ----------------------------------------------------------------------------------------------
# Morphisms that earn their parameters; the final training's guard
# ----------------------------------------------------------------------------------------------


def _widened_then_trained(digits, split: str):
    """conv2 of a small start network widened 8 -> 16 by the search's Net2WiderNet with ``split``,
    then trained 3 epochs; returns conv2's trained OIHW weight (16, C_in, 3, 3)."""
    from nashir.backends.torch import TrainConfig, train
    from nashir.search.nash import search_passes
    from nashir.search.startnet import start_network

    g = start_network(digits.input_shape, 10, (8, 8, 8), seed=0)
    wider = next(p for p in search_passes(SearchConfig(widen_split=split)) if p.name == "net2wider")
    assert wider.split == split
    site = next(s for s in wider.sites(g) if "conv2" in str(s))
    res = wider.apply(g, site, np.random.default_rng(0))
    assert res.modified
    conv2 = res.graph.node("conv2")
    w0 = conv2.inputs[1].const
    assert w0.shape[0] in (16, 32)
    # the replicas start as exact copies of their source filter (that is what Net2WiderNet does)
    assert any(np.array_equal(w0[i], w0[j]) for i in range(len(w0)) for j in range(i))
    trained, _ = train(res.graph, digits, TrainConfig(epochs=3, batch_size=64, seed=1, device="cpu"))
    return trained.node("conv2").inputs[1].const


def _closest_pair(w: np.ndarray) -> float:
    flat = w.reshape(len(w), -1).astype(np.float64)
    d = np.abs(flat[:, None, :] - flat[None, :, :]).max(axis=2)
    d[np.diag_indices(len(w))] = np.inf
    return float(d.min())


def test_search_widening_breaks_the_symmetry_between_replicas(digits):
    """The search's default random split: after 3 epochs no two filters of the widened layer are
    equal. Net2Net's equal split, trained the same way, keeps exact copies (so the check can fail)."""
    assert SearchConfig().widen_split == "random"
    w_random = _widened_then_trained(digits, "random")
    scale = float(np.abs(w_random).max())
    assert _closest_pair(w_random) > 1e-3 * scale
    w_equal = _widened_then_trained(digits, "equal")
    assert _closest_pair(w_equal) < 1e-6 * float(np.abs(w_equal).max())


def _row(id, history, val_acc=None, test_acc=None):
    return {"id": id, "history": history, "val_acc": val_acc, "test_acc": test_acc}


def test_final_warnings_flag_a_collapse_and_nothing_else():
    from nashir.search.nash import COLLAPSE_POINTS, final_warnings

    cfg = SearchConfig()
    winner = _row("s3-c2", [{"train_acc": 0.80}, {"train_acc": 0.95}], val_acc=0.90)
    fine = _row("final", [{"train_acc": 0.90}, {"train_acc": 0.96}], test_acc=0.89)
    assert final_warnings(winner, fine, cfg) == []
    edge = _row("final", [{"train_acc": 0.95 - COLLAPSE_POINTS / 100 + 1e-3}], test_acc=0.90 - 0.049)
    assert final_warnings(winner, edge, cfg) == []
    collapsed = _row("final", [{"train_acc": 0.97}, {"train_acc": 0.60}], test_acc=0.49)
    w = final_warnings(winner, collapsed, cfg)
    assert len(w) == 2
    assert "60.00%" in w[0] and "35.0 points below s3-c2's 95.00%" in w[0] and "--final-warmup" in w[0]
    assert "49.00%" in w[1] and "90.00%" in w[1]
    # retrained from scratch: the final model does not continue from the winner's training
    assert len(final_warnings(winner, collapsed, cfg.replace(retrain_from_scratch=True))) == 1
    assert final_warnings(None, collapsed, cfg) == []


def test_a_collapsed_final_training_is_reported_not_hidden(tmp_path, digits):
    """A scripted final training whose accuracy collapses: the warning lands in the result, the
    ledger's final entry, the summary file and the log."""

    def score(job):
        return 0.9

    class Collapsing(Scripted):
        def as_completed(self):
            for r in super().as_completed():
                if r.candidate_id == "final":
                    r.history = [{"epoch": 0, "loss": 9.0, "train_acc": 0.2, "lr": 0.05}]
                    r.metrics = {"test_acc": 0.3}
                else:
                    r.history = [{"epoch": 0, "loss": 0.3, "train_acc": 0.95, "lr": 0.0, "val_acc": 0.9}]
                yield r

    ex = Collapsing(score)
    res = nash(None, digits, _cfg(n_steps=1), executor=ex, run_dir=tmp_path / "r", onnx_check=False)
    assert len(res.warnings) == 2 and "final training collapsed" in res.warnings[0]
    with Ledger.open(tmp_path / "r", readonly=True) as led:
        final = led.get_meta("final")
    assert final["warnings"] == res.warnings
    assert final["curve"] == [{"epoch": 0, "loss": 9.0, "train_acc": 0.2, "lr": 0.05}]
    summary = (tmp_path / "r" / "summary.txt").read_text()
    assert "WARNING: final training collapsed" in summary and "final training: loss 9.000" in summary
    assert "WARNING" in res.summary_table()
    log = [json.loads(x) for x in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "warning" for e in log) == 2
    # the final job warms its learning rate up
    assert ex.jobs[-1].train["warmup_epochs"] == 1.0


def test_max_macs_bounds_every_child(tmp_path, digits):
    from nashir.search.startnet import start_network

    g0 = start_network(digits.input_shape, 10, (4, 8, 8), seed=0)
    cap = int(g0.mac_count() * 1.5)
    ex = Scripted(lambda job: 0.5)
    nash(None, digits, _cfg(n_steps=2, max_macs=cap), executor=ex, run_dir=tmp_path / "r", onnx_check=False)
    with Ledger.open(tmp_path / "r", readonly=True) as led:
        rows = led.candidates()
    assert all(r["macs"] is None or r["macs"] <= cap for r in rows)
    assert any(r["kind"] == "child" and r["macs"] is not None and r["macs"] > g0.mac_count() for r in rows)
    with pytest.raises(SearchError, match="above --max-macs"):
        nash(None, digits, _cfg(max_macs=10), executor=Scripted(lambda j: 0.5), run_dir=tmp_path / "r2")


def test_a_memory_error_while_morphing_a_child_fails_that_child_only(tmp_path, digits, monkeypatch):
    import nashir.passes as P

    real = P.sample_morphisms
    calls = []

    def sample(graph, n, rng, *a, **k):
        calls.append(1)
        if len(calls) == 1:   # the first child of step 1
            raise MemoryError("simulated: a morph too large for memory")
        return real(graph, n, rng, *a, **k)

    monkeypatch.setattr(P, "sample_morphisms", sample)
    ex = Scripted(lambda job: 0.4 if job.candidate_id != "init" else 0.3)
    res = nash(None, digits, _cfg(n_steps=2), executor=ex, run_dir=tmp_path / "r", onnx_check=False)
    with Ledger.open(tmp_path / "r") as led:
        rows = {r["id"]: r for r in led.candidates()}
    assert rows["s1-c1"]["status"] == "failed"
    assert "MemoryError" in rows["s1-c1"]["reason"] and "too large" in rows["s1-c1"]["reason"]
    assert rows["s1-c1"]["params"] is None   # no child was built: its size is unknown
    assert rows["s1-c2"]["status"] == "ok" and rows["s2-c1"]["status"] == "ok"
    assert res.test_acc is not None and len(res.steps) == 3


def test_in_process_graphs_give_the_search_of_onnx_jobs(tmp_path, digits):
    # the in-process executor takes the child graphs themselves (no ONNX export and import); the
    # search must be the one an executor fed ONNX bytes (as Ray is) makes, bit for bit
    from nashir.search.executor import InProcessExecutor

    class OnnxJobs(InProcessExecutor):
        takes_graphs = False

    cfg = _cfg(n_steps=2, n_neigh=3, n_nm=2, epoch_neigh=1, epochs_init=1, epoch_final=1, threads=1)
    out = {}
    for name, ex in (("graphs", InProcessExecutor(threads=1)), ("onnx", OnnxJobs(threads=1))):
        assert ex.takes_graphs is (name == "graphs")
        nash(None, digits, cfg, executor=ex, run_dir=tmp_path / name, onnx_check=False)
        with Ledger.open(tmp_path / name) as led:
            out[name] = [{k: (v if k != "history" else [{a: b for a, b in h.items() if a != "seconds"}
                                                         for h in v])
                          for k, v in r.items() if k not in ("train_seconds", "job_seconds", "created",
                                                             "finished")}
                         for r in led.candidates()]
    assert out["graphs"] == out["onnx"]
    assert (tmp_path / "graphs" / "best.onnx").read_bytes() == (tmp_path / "onnx" / "best.onnx").read_bytes()
