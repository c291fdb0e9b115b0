"""net2wider across the site gaps of issue 16: grouped convolutions (widened by the same factor in
every group), squeeze-and-excitation and SiLU gates (Mul of two data tensors couples, as Add does),
a depthwise conv as producer, Conv1d models. Four kinds: structure, sites and reasons, numerical
preservation, verifier/guard failures."""

from __future__ import annotations

import numpy as np
import pytest
from test_passes_nets import conv1d_net, rand_bn

from nashir import GraphBuilder
from nashir.errors import PassError
from nashir.ir import Graph
from nashir.passes import NodeSite, channel_flow, check_preservation, get_pass
from nashir.passes import net2wider as N2W
from nashir.passes.transforms import grouped_widen_mapping, split_columns_grouped, widen_mapping


def widen(g, node, seed=0, **opts):
    g2 = g.clone()
    res = get_pass("net2wider", **opts).apply(g2, NodeSite(node), np.random.default_rng(seed))
    g2.verify()
    return g2, res


def preserved(g, g2):
    rep = check_preservation(g, g2)
    assert rep.ok, rep
    return rep


def resnext_net(groups: int = 4, seed: int = 0) -> Graph:
    """stem s (8) -> BN -> relu (r0) -> [1x1 a (16) -> BN -> relu -> 3x3 grouped g (16, `groups`) -> BN
    -> relu -> 1x1 c (8) -> BN] + r0 -> relu -> GAP -> fc: a ResNeXt bottleneck."""
    b = GraphBuilder("resnext", (3, 6, 6), seed=seed)
    r0 = b.relu(rand_bn(b, b.conv(b.input, 8, name="s", bias=False), "bn_s"), name="r0")
    h = b.relu(rand_bn(b, b.conv(r0, 16, kernel=1, name="a", bias=False), "bn_a"), name="ra")
    h = b.relu(rand_bn(b, b.conv(h, 16, group=groups, name="g", bias=False), "bn_g"), name="rg")
    h = rand_bn(b, b.conv(h, 8, kernel=1, name="c", bias=False), "bn_c")
    h = b.relu(b.add(h, r0, name="sum"), name="r2")
    return b.build(b.gemm(b.flatten(b.global_avgpool(h)), 5, name="fc"))


def se_net(seed: int = 0) -> Graph:
    """EfficientNet's MBConv: expand e (1x1, 12) -> BN -> SiLU -> depthwise d -> BN -> SiLU (h) ->
    h * sigmoid(x2(relu(x1(gap(h))))) -> project p (1x1) -> GAP -> fc."""
    b = GraphBuilder("se", (3, 6, 6), seed=seed)
    g = b.graph

    def silu(x, name):
        return g.add_node("Mul", [x, b.op("Sigmoid", x, name=f"{name}_sig")], name=name).output

    h = silu(rand_bn(b, b.conv(b.input, 12, kernel=1, name="e"), "bn_e"), "silu_e")
    h = silu(rand_bn(b, b.conv(h, 12, group=12, name="d"), "bn_d"), "silu_d")
    s = b.relu(b.conv(b.global_avgpool(h), 4, kernel=1, name="x1"), name="rx")
    s = b.op("Sigmoid", b.conv(s, 12, kernel=1, name="x2"), name="gate")
    h = g.add_node("Mul", [h, s], name="excite").output
    h = rand_bn(b, b.conv(h, 6, kernel=1, name="p"), "bn_p")
    return b.build(b.gemm(b.flatten(b.global_avgpool(h)), 4, name="fc"))


# ---------------------------------------------------------------------------------------------- transforms


def test_grouped_widen_mapping_keeps_the_groups():
    rng = np.random.default_rng(0)
    g = grouped_widen_mapping(12, 24, 4, rng)
    assert len(g) == 24
    for k in range(4):
        blk = g[k * 6:(k + 1) * 6]
        assert list(blk[:3]) == [3 * k, 3 * k + 1, 3 * k + 2]
        assert ((blk >= 3 * k) & (blk < 3 * k + 3)).all()
    assert np.array_equal(grouped_widen_mapping(5, 9, 1, np.random.default_rng(1)),
                          widen_mapping(5, 9, np.random.default_rng(1)))
    with pytest.raises(ValueError, match="multiples of groups=4"):
        grouped_widen_mapping(12, 18, 4, rng)


def test_split_columns_grouped_equals_the_dense_equivalent():
    """A grouped conv is a dense conv with a block-diagonal weight: the grouped split must equal the
    ungrouped split of that dense weight, restricted to the diagonal blocks."""
    rng = np.random.default_rng(1)
    G, m, r = 3, 2, 4                    # 3 groups, 2 inputs and 4 outputs per group
    w = rng.standard_normal((G * r, m, 3, 3))
    idx = grouped_widen_mapping(G * m, G * 3, G, rng)
    s = rng.uniform(0.2, 1.0, len(idx))
    dense = np.zeros((G * r, G * m, 3, 3))
    for k in range(G):
        dense[k * r:(k + 1) * r, k * m:(k + 1) * m] = w[k * r:(k + 1) * r]
    want = dense[:, idx] * s[None, :, None, None]
    got = split_columns_grouped(w, idx, s, G)
    for k in range(G):
        np.testing.assert_allclose(got[k * r:(k + 1) * r], want[k * r:(k + 1) * r, k * 3:(k + 1) * 3])
    with pytest.raises(ValueError, match="outside old group"):
        split_columns_grouped(w, np.full(G * 3, 5), s, G)   # group 0 would copy channel 5 (group 2)


# ---------------------------------------------------------------------------------------------- grouped


def test_grouped_conv_and_its_producer_are_sites():
    g = resnext_net()
    sites = [str(s) for s in get_pass("net2wider").sites(g)]
    assert sites == ["s", "a", "g"]   # s widens the whole residual stream (s and c)
    assert channel_flow(g, "a").groups == 4 and channel_flow(g, "g").groups == 4


@pytest.mark.parametrize("node,factor", [("a", 2), ("g", 2), ("a", 1.5), ("g", 4)])
@pytest.mark.parametrize("split", ["equal", "random"])
def test_grouped_widening_structure_and_preservation(node, factor, split):
    g = resnext_net()
    g2, res = widen(g, node, factor=factor, split=split, seed=3)
    q = res.info["to"]
    assert q % 4 == 0 and q >= 16 * factor and res.info["groups"] == 4
    gc = g2.node("g")
    assert gc.attrs["group"] == 4
    if node == "a":   # the grouped conv reads q channels: q/4 per group
        assert gc.inputs[1].const.shape == (16, q // 4, 3, 3) and gc.outputs[0].shape[1] == 16
    else:             # it writes q channels: c reads them
        assert gc.inputs[1].const.shape == (q, 4, 3, 3) and g2.node("c").inputs[1].const.shape[1] == q
    preserved(g, g2)


def test_width_not_a_multiple_of_the_groups_is_refused():
    g = resnext_net()
    p = get_pass("net2wider", width=18)
    assert "multiple of 4" in p.check(g, NodeSite("a"))
    assert p.check(g, NodeSite("s")) is None   # s is not tied to the grouped conv


def test_a_layout_that_ignores_the_groups_is_refused_and_leaves_the_graph(monkeypatch):
    """Guard: a plain Net2Net mapping (copies land in the last groups) would change the grouped conv's
    function; remap_channels refuses it before changing anything."""
    g = resnext_net()
    before = str(g)
    w = g.node("g").inputs[1].const.copy()
    monkeypatch.setattr(N2W, "grouped_widen_mapping", lambda n, q, G, rng: widen_mapping(n, q, rng))
    with pytest.raises(PassError, match="does not keep the 4 groups"):
        get_pass("net2wider", factor=2).apply(g, NodeSite("a"), np.random.default_rng(0))
    assert str(g) == before and np.array_equal(g.node("g").inputs[1].const, w)
    g.verify()


def test_depthwise_conv_as_a_producer():
    b = GraphBuilder("dw", (4, 6, 6), seed=0)
    h = b.relu(rand_bn(b, b.conv(b.input, 4, group=4, name="dw"), "bn"), name="r")
    g = b.build(b.gemm(b.flatten(b.global_avgpool(b.conv(h, 3, kernel=1, name="pw"))), 2))
    g2, res = widen(g, "dw", factor=2, split="random")
    dw = g2.node("dw")
    assert dw.attrs["group"] == 4 and dw.inputs[1].const.shape == (8, 1, 3, 3)   # channel multiplier 2
    assert res.info["groups"] == 4
    preserved(g, g2)


# ---------------------------------------------------------------------------------------------- gates


def test_squeeze_excitation_couples_the_excitation():
    g = se_net()
    p = get_pass("net2wider")
    flow = channel_flow(g, "e")
    assert flow.ok, flow.reason
    assert [x.name for x in flow.producers] == ["e", "x2"]
    assert sorted(a.node.name for a in flow.absorbers) == ["p", "x1"]
    sites = [str(s) for s in p.sites(g)]
    assert sites == ["e", "d", "x1", "p"]   # x2 is in e's group; d is a depthwise producer
    for site in sites:
        g2, res = widen(g, site, factor=2, split="random", seed=1)
        preserved(g, g2)
    g2, res = widen(g, "e", factor=2)
    assert res.info["producers"] == ["e", "x2"]
    assert g2.node("x2").inputs[1].const.shape[0] == 24 and g2.node("x1").inputs[1].const.shape[1] == 24


def test_a_gate_of_another_width_blocks():
    b = GraphBuilder("gate1", (3, 6, 6), seed=0)
    h = b.relu(b.conv(b.input, 6, name="c"), name="r")
    s = b.op("Sigmoid", b.conv(b.global_avgpool(h), 1, kernel=1, name="x"), name="gate")   # one channel
    h = b.graph.add_node("Mul", [h, s], name="excite").output
    g = b.build(b.gemm(b.flatten(b.global_avgpool(b.conv(h, 2, kernel=1))), 2))
    assert "'excite' (Mul)" in get_pass("net2wider").check(g, NodeSite("c"))


# ---------------------------------------------------------------------------------------------- Conv1d


@pytest.mark.parametrize("node", ["c1", "c2", "c3"])
def test_conv1d_widening(node):
    g = conv1d_net()
    assert [str(s) for s in get_pass("net2wider").sites(g)] == ["c1", "c2", "c3"]
    g2, res = widen(g, node, factor=2, split="random")
    assert g2.node(node).inputs[1].const.ndim == 3
    preserved(g, g2)
