"""check_preservation: both runtimes, inputs, tolerance, failures."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from test_passes_nets import plain_net

import nashir
from nashir import GraphBuilder
from nashir.errors import BackendError
from nashir.passes import check_preservation
from nashir.passes.preservation import compare_outputs, random_inputs

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_identical_graphs():
    g = plain_net()
    rep = check_preservation(g, g.clone())
    assert rep.ok and rep.max_abs == 0 and rep.max_rel == 0
    assert rep.runtime.startswith("onnxruntime")
    assert "preserved" in str(rep)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_both_runtimes_run_by_default():
    g = plain_net()
    rep = check_preservation(g, g.clone())
    assert rep.runtime == "onnxruntime, torch" and set(rep.details) == {"onnxruntime", "torch"}
    only = check_preservation(g, g.clone(), runtimes=["torch"])
    assert only.runtime == "torch" and only.ok


def test_a_changed_weight_is_detected_in_every_runtime():
    g = plain_net()
    g2 = g.clone()
    w = g2.node("c2").inputs[1]
    g2.set_const(w, w.const * 1.01)
    rep = check_preservation(g, g2)
    assert not rep.ok and rep.max_abs > rep.tolerance
    for d in rep.details.values():
        assert d["ok"] is False
    assert "NOT preserved" in str(rep)


def test_tolerance_scales_with_the_output():
    g = plain_net()
    g2 = g.clone()
    fc = g2.node("fc").inputs[1]
    g2.set_const(fc, fc.const * 1000)
    big = check_preservation(g2, g2.clone(), runtimes=["onnxruntime"])
    from nashir.backends.onnx import run

    (y,) = run(g2, random_inputs(g2, 8, 0))
    assert big.tolerance == pytest.approx(1e-4 * max(1.0, float(np.abs(y).max())), rel=1e-6)
    assert big.tolerance > 1e-4


def test_inputs_forms():
    g = plain_net()
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 6)).astype(np.float32)
    for inputs in (x, [x], {"input": x}):
        assert check_preservation(g, g.clone(), inputs=inputs, runtimes=["onnxruntime"]).ok


def test_compare_outputs():
    a = [np.array([1.0, -2.0], np.float32)]
    assert compare_outputs(a, [a[0] + 1e-5])["ok"]
    r = compare_outputs(a, [a[0] + 1e-3])
    assert not r["ok"] and r["max_abs"] == pytest.approx(1e-3, rel=1e-3)
    assert r["tolerance"] == pytest.approx(2e-4)
    assert r["max_rel"] == pytest.approx(5e-4, rel=1e-3)
    assert compare_outputs(a, [np.zeros(3, np.float32)])["max_abs"] == float("inf")
    assert not compare_outputs(a, [np.array([np.nan, 0], np.float32)])["ok"]


def test_different_output_shapes_are_not_preserved():
    b = GraphBuilder("x", (3, 4, 4), seed=0)
    g = b.build(b.gemm(b.flatten(b.input), 2))
    b2 = GraphBuilder("x", (3, 4, 4), seed=0)
    g2 = b2.build(b2.gemm(b2.flatten(b2.input), 3))
    rep = check_preservation(g, g2, runtimes=["onnxruntime"])
    assert not rep.ok and rep.max_abs == float("inf")


def test_errors():
    g = plain_net()
    with pytest.raises(BackendError, match="runtimes"):
        check_preservation(g, g, runtimes=["tvm"])
    b = GraphBuilder("sym", (3, 4, 4), seed=0)
    b.graph.inputs[0].shape = ("N", 3, "H", 4)
    with pytest.raises(BackendError, match="symbolic dimension 'H'"):
        random_inputs(b.graph)


def test_top_level_delegates():
    g = plain_net()
    rep = nashir.check_preservation(g, g.clone(), n=2, seed=1)
    assert rep.ok and rep.runtime.startswith("onnxruntime")


def _big_net(hw):
    b = GraphBuilder("big", (3, hw, hw), seed=0)
    y = b.relu(b.conv(b.graph.inputs[0], 16, 3, pads=1, name="c1"), name="r1")
    return b.build(y)


def test_check_too_large_for_one_sample_is_refused_before_allocating():
    """3 x 8192 x 8192 input, 16 channels: about 5.6 GiB for one sample, above the 1 GiB cap."""
    from nashir.passes.preservation import MAX_CHECK_BYTES, CheckTooLarge

    g = _big_net(8192)
    assert MAX_CHECK_BYTES == 1 << 30
    msg = r"graph 'big' .*needs about [\d.]+ GiB for a single sample, above the cap of 1\.0 GiB"
    with pytest.raises(CheckTooLarge, match=msg):
        check_preservation(g, g.clone(), runtimes=["onnxruntime"])


def test_check_batch_shrinks_to_fit(monkeypatch):
    from nashir.passes import preservation as P

    g = _big_net(16)                       # 3*256*12 + 2*16*256*4 = 41984 bytes per sample
    assert P.check_batch([g], 8) == 8
    monkeypatch.setattr(P, "MAX_CHECK_BYTES", 3 * 41984)
    assert P.check_batch([g, g.clone()], 8) == 3
    assert check_preservation(g, g.clone(), runtimes=["onnxruntime"]).ok
