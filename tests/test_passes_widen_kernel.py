"""widen-kernel: structure, sites and reasons, preservation (strides, dilations, asymmetric pads),
failures."""

from __future__ import annotations

import numpy as np
import pytest
from test_passes_nets import plain_net

from nashir import GraphBuilder
from nashir.errors import PassError
from nashir.ir import Graph
from nashir.passes import NodeSite, Sequential, check_preservation, get_pass
from nashir.passes import widen_kernel as WK


def test_structure():
    g = plain_net()
    c2 = g.node("c2")
    w = c2.inputs[1].const.copy()
    res = get_pass("widen-kernel").apply(g, NodeSite("c2"))
    g.verify()
    assert res.modified and res.info["from"] == [3, 3] and res.info["to"] == [5, 5]
    assert g.node("c2") is c2
    assert c2.attrs["kernel_shape"] == [5, 5] and c2.attrs["pads"] == [2, 2, 2, 2]
    assert c2.attrs["strides"] == [1, 1] and c2.attrs["dilations"] == [1, 1]
    new = c2.inputs[1].const
    assert new.shape == (6, 4, 5, 5)
    np.testing.assert_array_equal(new[:, :, 1:4, 1:4], w)
    assert new.sum() == pytest.approx(w.sum())
    assert g.value("c2").shape == ("N", 6, 6, 6)


@pytest.mark.parametrize("kernel,stride,pads,dil,group", [
    (3, 1, [1, 1, 1, 1], 1, 1), (1, 1, [0, 0, 0, 0], 1, 1), (3, 2, [1, 1, 1, 1], 1, 1),
    ((1, 3), 1, [0, 1, 0, 1], 1, 1), (3, 2, [0, 1, 1, 0], 1, 1), (3, 1, [2, 2, 2, 2], 2, 1),
    (2, 1, [0, 0, 1, 1], 1, 1), (3, 1, [1, 1, 1, 1], 1, 4),
])
def test_preserves(kernel, stride, pads, dil, group):
    b = GraphBuilder("wk", (4, 9, 9), seed=1)
    h = b.conv(b.input, 4, kernel=kernel, stride=stride, pads=pads, dilation=dil, group=group, name="k")
    g = b.build(b.gemm(b.flatten(b.relu(h)), 3))
    g2 = g.clone()
    get_pass("widen-kernel").apply(g2, NodeSite("k"))
    g2.verify()
    assert g2.node("k").attrs["strides"] == g.node("k").attrs["strides"]
    assert g2.value("k").shape == g.value("k").shape
    rep = check_preservation(g, g2)
    assert rep.ok, rep


def test_sites_and_reasons():
    g = plain_net()
    p = get_pass("widen-kernel")
    assert [str(s) for s in p.sites(g)] == ["c1", "c2", "c3"]
    assert "is a Gemm, not a Conv" in p.check(g, NodeSite("fc"))
    assert "no node named" in p.check(g, NodeSite("zz"))
    small = get_pass("widen-kernel", max_kernel=3)
    assert "exceed max_kernel=3" in small.check(g, NodeSite("c1"))
    assert small.sites(g) == []
    with pytest.raises(PassError):
        get_pass("widen-kernel", max_kernel=2)


def test_shared_kernel_is_copied():
    b = GraphBuilder("sh", (3, 5, 5), seed=0)
    h1 = b.conv(b.input, 2, name="k1", bias=False)
    w = b.graph.node("k1").inputs[1]
    h2 = b.graph.add_node("Conv", [b.input, w], {"pads": [1, 1, 1, 1]}, name="k2").output
    g = b.build(b.gemm(b.flatten(b.add(h1, h2)), 2))
    g2 = g.clone()
    get_pass("widen-kernel").apply(g2, NodeSite("k1"))
    g2.verify()
    assert g2.node("k1").inputs[1].const.shape == (2, 3, 5, 5)
    assert g2.node("k2").inputs[1].const.shape == (2, 3, 3, 3)
    assert check_preservation(g, g2).ok


def test_wrong_padding_is_caught_by_the_verifier(monkeypatch):
    g = plain_net()
    monkeypatch.setattr(WK, "pad_kernel", lambda w, by=1: np.pad(w, [(0, 0), (0, 0), (2, 2), (2, 2)]))
    monkeypatch.setattr(Graph, "infer_shapes", lambda self: None)
    with pytest.raises(PassError, match=r"step 1 \(widen-kernel\) at c2 left a graph that does not verify"):
        Sequential((get_pass("widen-kernel"), "c2")).run(g)


# ---------------------------------------------------------------------------------------------- per axis


@pytest.mark.parametrize("kernel,want", [((1, 7), [3, 7]), ((7, 1), [7, 3]), ((5, 7), [7, 7]),
                                         ((1, 5), [3, 7])])
def test_only_the_axes_below_the_maximum_grow(kernel, want):
    """A 1x7 kernel under max_kernel=7 grows only its first axis (it was refused before)."""
    b = GraphBuilder("wk", (4, 9, 9), seed=2)
    h = b.relu(b.conv(b.input, 5, kernel=kernel, name="c"), name="r")
    g = b.build(b.gemm(b.flatten(h), 3))
    p = get_pass("widen-kernel")
    assert p.check(g, NodeSite("c")) is None and "c" in [str(s) for s in p.sites(g)]
    g2 = g.clone()
    w = g.node("c").inputs[1].const
    res = p.apply(g2, NodeSite("c"))
    g2.verify()
    assert res.info["to"] == want and g2.node("c").attrs["kernel_shape"] == want
    grown = [(t - k) // 2 for t, k in zip(want, kernel)]
    pads = g.node("c").attrs["pads"]
    assert g2.node("c").attrs["pads"] == [p + grown[i % 2] for i, p in enumerate(pads)]
    new = g2.node("c").inputs[1].const
    np.testing.assert_array_equal(new[:, :, grown[0]:grown[0] + kernel[0], grown[1]:grown[1] + kernel[1]], w)
    assert np.count_nonzero(new) == np.count_nonzero(w)
    rep = check_preservation(g, g2)
    assert rep.ok, rep


def test_a_kernel_at_the_maximum_on_every_axis_is_refused():
    b = GraphBuilder("wk", (4, 9, 9), seed=2)
    h = b.relu(b.conv(b.input, 5, kernel=(7, 6), name="c"), name="r")
    g = b.build(b.gemm(b.flatten(h), 3))
    p = get_pass("widen-kernel")
    assert "would exceed max_kernel=7" in p.check(g, NodeSite("c"))
    assert p.sites(g) == []


def test_conv1d_kernel_grows():
    from test_passes_nets import conv1d_net

    g = conv1d_net()
    p = get_pass("widen-kernel")
    assert [str(s) for s in p.sites(g)] == ["c1", "c2", "c3"]
    g2 = g.clone()
    res = p.apply(g2, NodeSite("c2"))
    g2.verify()
    assert res.info == {"node": "c2", "from": [3], "to": [5], "pads": [2, 2]}
    assert g2.node("c2").inputs[1].const.shape == (6, 4, 5)
    assert check_preservation(g, g2).ok
