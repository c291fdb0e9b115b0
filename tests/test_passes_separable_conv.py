"""separable-conv: structure, the rank-1 factors, sites and reasons, the reported error against an
independent measurement, the verifier after rewriting."""

from __future__ import annotations

import numpy as np
import pytest
from test_passes_approx_common import assert_reported_error
from test_passes_nets import concat_net, conv1d, plain_net

from nashir import GraphBuilder
from nashir.errors import PassError
from nashir.ir import Graph
from nashir.passes import NodeSite, Sequential, check_preservation, get_pass
from nashir.passes.approximate import separable_factors


def test_structure():
    g = plain_net()
    before = g.clone()
    c2 = g.node("c2")
    bias = c2.inputs[2]
    res = get_pass("separable-conv").apply(g, NodeSite("c2"))
    g.verify()
    assert res.info["nodes"] == ["c2_dw", "c2_pw"] and "c2" not in [n.name for n in g.nodes]
    dw, pw = g.node("c2_dw"), g.node("c2_pw")
    assert dw.inputs[0] is g.value("r1") and dw.attrs["group"] == 4 and dw.inputs[1].shape == (4, 1, 3, 3)
    assert dw.attrs["pads"] == [1, 1, 1, 1] and dw.attrs["strides"] == [1, 1]
    assert pw.inputs[0] is dw.outputs[0] and pw.inputs[1].shape == (6, 4, 1, 1) and pw.inputs[2] is bias
    assert g.node("bn2").inputs[0] is pw.outputs[0] and pw.outputs[0].shape == ("N", 6, 6, 6)
    assert res.info["params_before"] - res.info["params_after"] == 6 * 4 * 9 - (4 * 9 + 6 * 4)
    assert_reported_error(before, g, res.info)


def test_factors_are_the_rank1_svd():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    d, p, res = separable_factors(w)
    approx = p[:, :, 0, 0][:, :, None, None] * d[None, :, 0]
    for i in range(3):
        m = w[:, i].reshape(5, 9).astype(np.float64)
        u, s, vt = np.linalg.svd(m)
        best = s[0] * np.outer(u[:, 0], vt[0])
        np.testing.assert_allclose(approx[:, i].reshape(5, 9), best, atol=1e-5)
    assert res == pytest.approx(np.linalg.norm(w - approx) / np.linalg.norm(w), rel=1e-5)


def test_a_rank1_weight_is_split_exactly_with_strides_and_asymmetric_pads():
    b = GraphBuilder("r1", (3, 9, 9), seed=2)
    h = b.conv(b.input, 6, kernel=3, stride=2, pads=[0, 1, 1, 0], dilation=1, name="k")
    g = b.build(b.gemm(b.flatten(b.relu(h)), 3, name="fc"))
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((6, 3, 1, 1)) * rng.standard_normal((1, 3, 3, 3))).astype(np.float32)
    g.set_const(g.node("k").inputs[1], w)
    before = g.clone()
    res = get_pass("separable-conv").apply(g, NodeSite("k"))
    g.verify()
    assert res.info["rank1_residual"] < 1e-6
    assert res.info["error"]["within_tolerance"] is True
    assert check_preservation(before, g).ok
    assert_reported_error(before, g, res.info)


def test_conv1d_and_dilation():
    b = GraphBuilder("c1d", (3, 12), seed=0)
    h = conv1d(b, b.input, 6, k=5, name="k1")
    g = b.build(b.gemm(b.flatten(b.relu(h)), 2))
    before = g.clone()
    res = get_pass("separable-conv").apply(g, NodeSite("k1"))
    g.verify()
    assert g.node("k1_dw").inputs[1].shape == (3, 1, 5) and g.node("k1_pw").inputs[1].shape == (6, 3, 1)
    assert_reported_error(before, g, res.info)


def test_sites_and_reasons():
    p = get_pass("separable-conv")
    assert [str(s) for s in p.sites(plain_net())] == ["c1", "c2", "c3"]
    g = concat_net()
    assert "1x1 kernel" in p.check(g, NodeSite("after2"))
    assert "is a Gemm, not a Conv" in p.check(g, NodeSite("fc"))
    b = GraphBuilder("small", (1, 5, 5), seed=0)
    h = b.relu(b.conv(b.input, 1, name="tiny"), name="r")
    h = b.relu(b.conv(h, 4, group=1, name="c4"), name="r4")
    h = b.conv(h, 4, group=2, name="grp")
    gs = b.build(b.gemm(b.flatten(h), 2))
    assert "would not get smaller" in p.check(gs, NodeSite("tiny"))
    assert "is grouped (group=2)" in p.check(gs, NodeSite("grp"))


def test_a_broken_rewrite_is_caught_by_the_verifier(monkeypatch):
    g = plain_net()
    real = Graph.add_node

    def lose_the_bias(self, op_type, inputs, *a, **kw):   # the pointwise conv "forgets" its bias input
        node = real(self, op_type, inputs, *a, **kw)
        if node.name.endswith("_pw"):
            node.inputs.pop()
        return node

    monkeypatch.setattr(Graph, "add_node", lose_the_bias)
    with pytest.raises(PassError, match=r"step 1 \(separable-conv\) at c2 left a graph that does not verify"):
        Sequential((get_pass("separable-conv", measure=False), "c2")).run(g)
