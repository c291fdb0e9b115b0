"""The executor interface: jobs as ONNX bytes + config, results as ONNX bytes + metrics."""

from __future__ import annotations

import pytest

from nashir.errors import DataError, SearchError
from nashir.search import executor as ex
from nashir.search.executor import DataSpec, InProcessExecutor, Job, Result, make_executor, run_job
from nashir.search.startnet import start_network

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def digits():
    return DataSpec("digits", seed=0).load()


@pytest.fixture(scope="module")
def net_bytes(digits):
    from nashir.backends.onnx import model_bytes

    return model_bytes(start_network(digits.input_shape, digits.num_classes, widths=(4, 8, 8), seed=0))


def _train(epochs=1, **kw):
    d = dict(
        epochs=epochs,
        lr_start=0.05,
        lr_end=0.0,
        batch_size=64,
        device="cpu",
        train_split="train",
        eval_split="val",
    )
    d.update(kw)
    return d


def test_run_job_trains_and_returns_onnx_and_metrics(digits, net_bytes):
    import onnx

    from nashir.backends.onnx import load
    from nashir.backends.torch import evaluate

    job = Job("c1", net_bytes, _train(2), DataSpec("digits"), seed=3, evaluate=("test",))
    res = run_job(job, digits, threads=1)
    assert res.status == "ok", res.reason
    assert res.candidate_id == "c1" and res.worker == "inprocess"
    assert len(res.history) == 2 and res.val_acc == res.history[-1]["val_acc"]
    assert 0.0 <= res.val_acc <= 1.0
    assert res.seconds >= res.train_seconds > 0
    trained = load(onnx.load_model_from_string(res.onnx))
    # the returned weights are the trained ones: scoring them again gives the reported numbers
    acc, _ = evaluate(trained, digits, split="val", device="cpu")
    assert acc == pytest.approx(res.val_acc)
    acc_t, _ = evaluate(trained, digits, split="test", device="cpu")
    assert acc_t == pytest.approx(res.metrics["test_acc"])


def test_same_job_same_result_on_cpu(digits, net_bytes):
    job = Job("c1", net_bytes, _train(1), DataSpec("digits"), seed=11)
    a = run_job(job, digits, threads=1)
    b = run_job(job, digits, threads=1)
    assert a.onnx == b.onnx and a.val_acc == b.val_acc
    c = run_job(Job("c1", net_bytes, _train(1), DataSpec("digits"), seed=12), digits, threads=1)
    assert c.onnx != a.onnx


def test_zero_epochs_still_scores_validation(digits, net_bytes):
    res = run_job(Job("c0", net_bytes, _train(0), DataSpec("digits"), seed=0), digits)
    assert res.status == "ok" and res.history == []
    assert res.val_acc == res.metrics["val_acc"]


def test_reinit_changes_the_weights(digits, net_bytes):
    a = run_job(
        Job("a", net_bytes, _train(0, eval_split="val"), DataSpec("digits"), seed=1, reinit=True), digits
    )
    b = run_job(Job("b", net_bytes, _train(0, eval_split="val"), DataSpec("digits"), seed=1), digits)
    assert a.status == b.status == "ok"
    assert a.onnx != b.onnx


def test_diverged_and_failed_jobs_do_not_raise(digits, net_bytes):
    div = run_job(Job("d", net_bytes, _train(1, lr_start=1e12), DataSpec("digits"), seed=0), digits)
    assert div.status == "diverged" and "loss became" in div.reason and div.onnx is None
    assert 0 < div.train_seconds <= div.seconds  # time spent training before it diverged
    bad = run_job(Job("b", b"not an onnx model", _train(1), DataSpec("digits"), seed=0), digits)
    assert bad.status == "failed" and bad.reason
    meta = run_job(
        Job(
            "m",
            net_bytes,
            _train(1),
            DataSpec("digits"),
            seed=0,
            node_meta={"no_such_node": {"calibrate": "identity"}},
        ),
        digits,
    )
    assert meta.status == "failed" and "no_such_node" in meta.reason


def test_node_meta_is_restored_before_training(digits, net_bytes, monkeypatch):
    import nashir.backends.torch as ntorch

    seen = {}
    real = ntorch.train

    def spy(graph, data, cfg):
        seen.update({n.name: dict(n.meta) for n in graph.nodes if n.meta})
        return real(graph, data, cfg)

    monkeypatch.setattr(ntorch, "train", spy)
    res = run_job(
        Job(
            "m",
            net_bytes,
            _train(1),
            DataSpec("digits"),
            seed=0,
            node_meta={"bn2": {"calibrate": "identity"}},
        ),
        digits,
    )
    assert res.status == "ok"
    assert seen == {"bn2": {"calibrate": "identity"}}


def test_inprocess_executor_is_lazy_and_in_order(digits, monkeypatch):
    calls = []

    def fake_run_job(job, data, **kw):
        calls.append(job.candidate_id)
        assert data is digits  # the prepared object, not a reload
        return Result(job.candidate_id, "ok", val_acc=0.1)

    monkeypatch.setattr(ex, "run_job", fake_run_job)
    monkeypatch.setattr(DataSpec, "load", lambda self: (_ for _ in ()).throw(AssertionError("reloaded")))
    spec = DataSpec("digits")
    with InProcessExecutor() as e:
        e.prepare(spec, digits)
        it = e.run([Job(c, b"", {}, spec, seed=0) for c in ("a", "b", "c")])
        assert calls == []  # nothing trained before the driver asks
        first = next(it)
        assert first.candidate_id == "a" and calls == ["a"]  # one at a time
        assert [r.candidate_id for r in it] == ["b", "c"]
        assert list(e.as_completed()) == []


def test_inprocess_executor_loads_and_caches_unprepared_data(monkeypatch):
    loads = []
    monkeypatch.setattr(ex, "run_job", lambda job, data, **kw: Result(job.candidate_id, "ok"))
    monkeypatch.setattr(DataSpec, "load", lambda self: loads.append(self.dataset) or object())
    e = InProcessExecutor()
    spec = DataSpec("digits", seed=4)
    list(e.run([Job("a", b"", {}, spec, seed=0), Job("b", b"", {}, spec, seed=0)]))
    assert loads == ["digits"]


def test_bad_data_spec_raises_data_error():
    with pytest.raises(DataError, match="unknown data set"):
        DataSpec("mnist-but-not-really").load()


def test_make_executor():
    assert isinstance(make_executor("inprocess", threads=1), InProcessExecutor)
    with pytest.raises(SearchError, match="unknown executor 'slurm'"):
        make_executor("slurm")


def test_data_spec_key_distinguishes_specs():
    assert DataSpec("digits", seed=1).key() != DataSpec("digits", seed=2).key()
    assert DataSpec("digits").key() == DataSpec("digits").key()
