"""add-skip and concat-skip: structure, sites and reasons, preservation, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_passes_nets import plain_net, residual_net

from nashir import GraphBuilder
from nashir.errors import GraphError, NotApplicable, PassError
from nashir.ir import Graph
from nashir.passes import Sequential, SkipSite, check_preservation, get_pass
from nashir.passes.skip import parse_skip


def skip(kind, g, src, dst, seed=0, **opts):
    g2 = g.clone()
    res = get_pass(kind, **opts).apply(g2, SkipSite(src, dst), np.random.default_rng(seed))
    g2.verify()
    return g2, res


def preserved(g, g2, **kw):
    rep = check_preservation(g, g2, **kw)
    assert rep.ok, rep
    return rep


def strided_net(hw=8, seed=0):
    """r1 (hw) -> conv stride 2 -> r2 (ceil(hw/2)) -> conv -> r3 -> flatten -> fc."""
    b = GraphBuilder("strided", (3, hw, hw), seed=seed)
    r1 = b.relu(b.bn(b.conv(b.input, 4, name="c1"), random_stats=True), name="r1")
    r2 = b.relu(b.conv(r1, 5, kernel=3, stride=2, name="c2"), name="r2")
    r3 = b.relu(b.conv(r2, 6, name="c3"), name="r3")
    return b.build(b.gemm(b.flatten(r3, name="flat"), 3, name="fc"))


# ---------------------------------------------------------------------------------------------- add-skip


def test_add_skip_structure():
    g = plain_net()
    r1, r2, c3 = g.value("r1"), g.value("r2"), g.node("c3")
    res = get_pass("add-skip").apply(g, SkipSite("r1", "r2"))
    g.verify()
    assert res.modified and res.info["pooling"] == []
    json.dumps(res.info)
    conv, add = (g.node(n) for n in res.info["nodes"])
    assert conv.op_type == "Conv" and add.op_type == "Add"
    assert conv.inputs[0] is r1 and len(conv.inputs) == 2  # no bias
    assert conv.inputs[1].const.shape == (6, 4, 1, 1) and not conv.inputs[1].const.any()
    assert add.inputs[0] is r2 and add.inputs[1] is conv.outputs[0]
    assert g.node("c3") is c3 and c3.inputs[0] is add.outputs[0]
    assert [u.name for u in r2.consumers()] == [add.name]


@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("hw", [8, 7])
def test_skip_spanning_a_stride_2_conv_gets_the_right_spatial_size(pool, hw):
    """Known failure kind: the skip path must be pooled to the strided size (7 -> 4 needs ceil)."""
    g = strided_net(hw)
    for kind in ("add-skip", "concat-skip"):
        g2, res = skip(kind, g, "r1", "r3", pool=pool)
        (pn,) = [g2.node(n) for n in res.info["pooling"]]
        assert pn.op_type == ("MaxPool" if pool == "max" else "AveragePool")
        assert pn.attrs["kernel_shape"] == [2, 2] and pn.attrs["strides"] == [2, 2]
        assert pn.attrs["ceil_mode"] == (1 if hw == 7 else 0)
        assert pn.outputs[0].shape[2:] == g.value("r3").shape[2:]
        preserved(g, g2)


def test_add_skip_preserves_in_a_residual_net_and_flat_values():
    g = residual_net(seed=1)
    for src, dst in (("r0", "ra"), ("r0", "r2"), ("ra", "bn_b")):
        g2, _ = skip("add-skip", g, src, dst)
        preserved(g, g2)
    b = GraphBuilder("mlp", (6,), seed=0)
    h1 = b.relu(b.gemm(b.input, 5), name="h1")
    h2 = b.relu(b.gemm(h1, 4), name="h2")
    h3 = b.relu(b.gemm(h2, 4), name="h3")
    mlp = b.build(b.gemm(h3, 2))
    for kind in ("add-skip", "concat-skip"):
        g2, res = skip(kind, mlp, "h1", "h3")
        assert g2.node(res.info["nodes"][0]).op_type == "Gemm"
        preserved(mlp, g2)


# ---------------------------------------------------------------------------------------------- concat-skip


def test_concat_skip_structure_and_zero_consumer_weights():
    g = plain_net(seed=2)
    w3 = g.node("c3").inputs[1].const.copy()
    r2, c3 = g.value("r2"), g.node("c3")
    res = get_pass("concat-skip").apply(g, SkipSite("r1", "r2"), np.random.default_rng(0))
    g.verify()
    conv, cat = (g.node(n) for n in res.info["nodes"])
    assert res.info["channels"] == 4
    assert cat.op_type == "Concat" and cat.inputs[0] is r2 and cat.inputs[1] is conv.outputs[0]
    assert g.node("c3") is c3 and c3.inputs[0] is cat.outputs[0]
    assert conv.inputs[1].const.shape == (4, 4, 1, 1) and np.abs(conv.inputs[1].const).min() > 0  # trainable
    new3 = c3.inputs[1].const
    assert new3.shape == (6, 10, 3, 3)
    np.testing.assert_array_equal(new3[:, :6], w3)
    assert not new3[:, 6:].any()
    assert cat.outputs[0].shape == ("N", 10, 6, 6)


def test_concat_skip_into_batchnorm_and_flatten():
    g = strided_net(8, seed=3)
    g2, res = skip("concat-skip", g, "r1", "r3", channels=3)
    fc_old, fc_new = g.node("fc").inputs[1].const, g2.node("fc").inputs[1].const
    hw = 16
    assert fc_new.shape == (3, (6 + 3) * hw)
    np.testing.assert_array_equal(fc_new[:, :6 * hw], fc_old)
    assert not fc_new[:, 6 * hw:].any()
    preserved(g, g2)
    # into a value followed by BatchNorm: the new channels get neutral statistics
    g3, _ = skip("concat-skip", plain_net(seed=4), "r1", "c2")
    bn = g3.node("bn2")
    scale, bias, mean, var = (bn.inputs[i].const for i in (1, 2, 3, 4))
    assert scale.shape == (10,) and (scale[6:] == 1).all() and (bias[6:] == 0).all()
    assert (mean[6:] == 0).all() and (var[6:] == 1).all()
    preserved(plain_net(seed=4), g3)


def test_concat_skip_through_a_per_channel_mul_and_a_depthwise_conv():
    b = GraphBuilder("dw", (3, 6, 6), seed=0)
    r1 = b.relu(b.conv(b.input, 4, name="c1"), name="r1")
    h = b.relu(b.conv(r1, 5, name="c2"), name="r2")
    k = b.graph.add_const(np.arange(1, 6, dtype=np.float32).reshape(5, 1, 1), "k")
    h = b.graph.add_node("Mul", [h, k], name="mul").output
    h = b.bn(b.conv(h, 5, group=5, name="dw"), random_stats=True)
    g = b.build(b.gemm(b.flatten(b.conv(b.relu(h), 3, name="abs")), 2))
    g2, _ = skip("concat-skip", g, "r1", "r2")
    assert g2.node("dw").attrs["group"] == 9 and g2.value("k").const.shape == (9, 1, 1)
    assert (g2.value("k").const[5:] == 1).all()  # neutral scale for the new channels
    assert not g2.node("abs").inputs[1].const[:, 5:].any()
    preserved(g, g2)


def test_concat_skip_zero_init_option():
    g = plain_net(seed=5)
    g2, res = skip("concat-skip", g, "r1", "r3", init="zeros", channels=2)
    conv = g2.node(res.info["nodes"][1])  # pool, conv, concat
    assert conv.op_type == "Conv" and conv.inputs[1].const.shape == (2, 4, 1, 1)
    assert not conv.inputs[1].const.any()
    preserved(g, g2)
    with pytest.raises(PassError):
        get_pass("concat-skip", init="ones")


def test_concat_skip_into_a_residual_sum_is_not_applicable():
    g = residual_net()
    reason = get_pass("concat-skip").check(g, SkipSite("r0", "bn_b"))
    assert "'bn_b' cannot take new channels" in reason and "residual" in reason
    assert get_pass("add-skip").check(g, SkipSite("r0", "bn_b")) is None


# ---------------------------------------------------------------------------------------------- sites


def test_sites():
    g = plain_net()
    want = ["r1->r2", "r1->r3", "r2->r3", "r1->flat", "r2->flat", "r3->flat"]   # maps into the vector too
    assert [str(s) for s in get_pass("add-skip").sites(g)] == want
    assert [str(s) for s in get_pass("concat-skip").sites(g)] == want
    r = residual_net()
    assert "r0->bn_b" in [str(s) for s in get_pass("add-skip").sites(r)]
    assert "r0->bn_b" not in [str(s) for s in get_pass("concat-skip").sites(r)]


@pytest.mark.parametrize("src,dst,match", [
    ("r2", "r1", "'r2' is not an ancestor of 'r1'"),
    ("r1", "r1", "same value"),
    ("r1", "fc", "graph output"),
    ("c1.weight", "r2", "constant"),
    ("nope", "r2", "no value or node named 'nope'"),
])
def test_reasons(src, dst, match):
    g = plain_net()
    for kind in ("add-skip", "concat-skip"):
        assert match in get_pass(kind).check(g, SkipSite(src, dst))


def test_a_vector_into_a_map_is_refused():
    from nashir.passes.skip import shape_reason

    g = plain_net()
    assert "a map into a vector" in shape_reason(g.value("flat"), g.value("r3"))
    assert shape_reason(g.value("r3"), g.value("flat")) is None


def test_spatial_sizes_no_pooling_can_match():
    b = GraphBuilder("nomatch", (3, 6, 6), seed=0)
    r1 = b.relu(b.conv(b.input, 3, name="c1"), name="r1")  # 6x6
    r2 = b.relu(b.conv(r1, 3, kernel=3, pads=0, name="c2"), name="r2")  # 4x4
    g = b.build(b.gemm(b.flatten(b.relu(b.conv(r2, 2), name="r3")), 2))
    reason = get_pass("add-skip").check(g, SkipSite("r1", "r2"))
    assert "spatial sizes [6, 6]" in reason and "[4, 4]" in reason and "no factor" in reason
    with pytest.raises(NotApplicable, match="no factor"):
        get_pass("add-skip").apply(g, SkipSite("r1", "r2"))


def test_parse_skip():
    g = plain_net()
    assert parse_skip(g, "r1:r2") == SkipSite("r1", "r2")
    assert parse_skip(g, "r1->r3") == SkipSite("r1", "r3")
    assert parse_skip(g, "c2:c3") == SkipSite("c2", "c3")  # node names mean their outputs
    with pytest.raises(GraphError, match="'r9'"):
        parse_skip(g, "r9:r2")
    with pytest.raises(GraphError, match="SRC:DST"):
        parse_skip(g, "r1")
    b = GraphBuilder("colon", (3, 4, 4), seed=0)
    h = b.graph.add_node("Relu", [b.conv(b.input, 2)], name="a:0", outputs=["a:0"]).output
    h2 = b.graph.add_node("Relu", [b.conv(h, 2)], name="b:0", outputs=["b:0"]).output
    g2 = b.build(b.gemm(b.flatten(b.conv(h2, 2)), 2))
    assert parse_skip(g2, "a:0:b:0") == SkipSite("a:0", "b:0")


# ---------------------------------------------------------------------------------------------- failures


def test_a_stale_shape_after_concat_skip_is_caught_by_the_verifier(monkeypatch):
    g = plain_net()
    monkeypatch.setattr(Graph, "infer_shapes", lambda self: None)
    msg = r"step 1 \(concat-skip\) at r1->r2 left a graph that does not verify"
    with pytest.raises(PassError, match=msg):
        Sequential((get_pass("concat-skip"), "r1:r2")).run(g)


def test_a_nonzero_add_skip_is_caught_by_preservation(monkeypatch):
    from nashir.passes import skip as S

    real = S._path

    def noisy(graph, a, b, out_channels, weight, pool):
        return real(graph, a, b, out_channels, weight + 0.1, pool)

    g = plain_net()
    monkeypatch.setattr(S, "_path", noisy)
    g2, _ = skip("add-skip", g, "r1", "r2")
    assert not check_preservation(g, g2).ok


# ---------------------------------------------------------------------------------------------- issue 16


@pytest.mark.parametrize("kind", ["add-skip", "concat-skip"])
@pytest.mark.parametrize("pool,op", [("avg", "GlobalAveragePool"), ("max", "GlobalMaxPool")])
def test_skip_from_a_map_into_a_vector(kind, pool, op):
    """r2 (N x 6 x 6 x 6) -> flat (N x 54): global pooling, Flatten, then a Gemm."""
    g = plain_net()
    g2, res = skip(kind, g, "r2", "flat", pool=pool)
    ops = [g2.node(n).op_type for n in res.info["nodes"]]
    assert ops == [op, "Flatten", "Gemm", "Add" if kind == "add-skip" else "Concat"]
    gemm = g2.node(res.info["nodes"][2])
    m = 6 if kind == "add-skip" else res.info["channels"]
    assert gemm.inputs[1].const.shape == ((54, 6) if kind == "add-skip" else (m, 6))
    if kind == "concat-skip":
        assert m == 6   # min(C_a, C_b) = min(6, 54)
        fc = g2.node("fc").inputs[1].const
        assert fc.shape == (5, 54 + m) and not fc[:, 54:].any()
    preserved(g, g2)


@pytest.mark.parametrize("kind", ["add-skip", "concat-skip"])
def test_skips_between_conv1d_maps(kind):
    from test_passes_nets import conv1d_net

    g = conv1d_net()
    sites = [str(s) for s in get_pass(kind).sites(g)]
    assert "r1->r3" in sites and "r1->flat" in sites
    g2, res = skip(kind, g, "r1", "r3")
    pool = g2.node(res.info["pooling"][0])
    assert pool.attrs["kernel_shape"] == [2] and pool.attrs["pads"] == [0, 0]
    assert g2.node(res.info["nodes"][1]).inputs[1].const.shape[2:] == (1,)
    preserved(g, g2)


def _wide_flat_net():
    """flat (N x 57600) -> relu (wide) -> gemm: an add-skip flat->wide needs a 57600^2 zero Gemm (13 GB)."""
    b = GraphBuilder("wide", (64, 30, 30), seed=0)
    f = b.flatten(b.relu(b.input, name="r0"), name="flat")
    wide = b.relu(f, name="wide")
    return b.build(b.gemm(wide, 2, name="fc"))


def test_size_bound_refuses_a_huge_add_skip_before_allocating():
    g = _wide_flat_net()
    p = get_pass("add-skip")
    reason = p.check(g, SkipSite("flat", "wide"))
    assert "3,317,760,000 parameters" in reason and "bound of 1,048,576" in reason
    with pytest.raises(NotApplicable, match="over the bound"):
        p.apply(g.clone(), SkipSite("flat", "wide"))
    assert get_pass("add-skip", max_new_params=10**10).check(g, SkipSite("flat", "wide")) is None


def test_size_bound_narrows_a_concat_skip():
    g = _wide_flat_net()
    p = get_pass("concat-skip")
    # each new channel costs a row of P (57600) and a zero column of fc (2 rows)
    g2, res = skip("concat-skip", g, "flat", "wide")
    assert res.info["channels"] == 2**20 // 57602 == 18 and res.info["new_params"] == 18 * 57602
    assert g2.param_count() - g.param_count() == res.info["new_params"] <= p.bound(g)
    preserved(g, g2)
    assert "over the bound" in get_pass("concat-skip", channels=57600).check(g, SkipSite("flat", "wide"))
    assert "over the bound" in get_pass("concat-skip", max_new_params=1000).check(g, SkipSite("flat", "wide"))
    assert "flat->wide" not in [str(s) for s in get_pass("concat-skip", max_new_params=1000).sites(g)]


def test_bound_is_the_size_of_a_large_model():
    from nashir.passes.skip import MIN_NEW_PARAMS

    g = plain_net()
    p = get_pass("concat-skip")
    assert p.bound(g) == MIN_NEW_PARAMS

    class Big:   # the bound reads only the parameter count (a VGG-11-BN has 132,868,840)
        def param_count(self):
            return 132_868_840

    assert p.bound(Big()) == 132_868_840   # one morph at most doubles the model
    with pytest.raises(PassError, match="max_new_params"):
        get_pass("add-skip", max_new_params=0)


def test_concat_skip_into_a_grouped_conv_is_not_applicable():
    b = GraphBuilder("grp", (3, 6, 6), seed=0)
    r1 = b.relu(b.conv(b.input, 4, name="c1"), name="r1")
    r2 = b.relu(b.conv(r1, 4, name="c2"), name="r2")
    h = b.relu(b.conv(r2, 4, group=2, name="gc"), name="r3")
    g = b.build(b.gemm(b.flatten(h), 2))
    assert "grouped convolutions (2 groups)" in get_pass("concat-skip").check(g, SkipSite("r1", "r2"))


# ------------------------------------------------------------------ lazy draws (issue 13)


def _nets():
    from test_passes_nets import concat_net, conv1d_net

    return [plain_net(), residual_net(), concat_net(), conv1d_net()]


@pytest.mark.parametrize("kind", ["add-skip", "concat-skip"])
def test_draw_site_is_uniform_over_sites_without_listing_them(kind, monkeypatch):
    import nashir.passes.skip as S

    p = get_pass(kind)
    listed = []
    for g in _nets():
        sites = p.sites(g)
        monkeypatch.setattr(S._Skip, "_list", lambda self, graph, ctx: listed.append(1) or [])
        rng = np.random.default_rng(0)
        counts = {str(s): 0 for s in sites}
        draws = 200 * len(sites)
        for _ in range(draws):
            s = p.draw_site(g, rng)
            counts[str(s)] += 1   # a KeyError would be a draw that is not a site
        monkeypatch.undo()
        assert not listed   # rejection sampling found a site each time
        # uniform: each site about 200 times (binomial sd about 14)
        assert all(130 < c < 270 for c in counts.values()), (g.name, counts)


@pytest.mark.parametrize("kind", ["add-skip", "concat-skip"])
def test_draw_site_falls_back_to_the_list_and_says_none_when_there_is_no_site(kind, monkeypatch):
    import nashir.passes.skip as S

    g = residual_net()
    p = get_pass(kind)
    sites = {str(s) for s in p.sites(g)}
    monkeypatch.setattr(S, "DRAW_TRIES", 0)
    rng = np.random.default_rng(1)
    assert {str(p.draw_site(g, rng)) for _ in range(300)} == sites
    # no site at all: a network with a single layer output
    b = GraphBuilder("one", (1, 4, 4))
    g1 = b.build(b.gemm(b.flatten(b.input), 3))
    assert p.sites(g1) == [] and p.draw_site(g1, rng) is None


def test_sites_are_unchanged_by_the_lazy_machinery():
    # the listing keeps its order (by target, then source) and its size bound
    g = plain_net()
    add = get_pass("add-skip", max_new_params=40)
    s_all = get_pass("add-skip").sites(g)
    s_small = add.sites(g)
    assert s_small == [s for s in s_all if add.check(g, s) is None]
    dst_order = [s.dst for s in s_all]
    assert dst_order == sorted(dst_order, key=[v.name for v in g.nodes for v in v.outputs].index)


def test_a_subclass_with_its_own_sites_is_drawn_from_them():
    from nashir.passes.skip import AddSkip

    class OnlyFirst(AddSkip):
        name = "only-first-test"

        def sites(self, graph):
            return super().sites(graph)[:1]

    g = plain_net()
    p = OnlyFirst()
    rng = np.random.default_rng(0)
    assert {str(p.draw_site(g, rng)) for _ in range(20)} == {str(p.sites(g)[0])}


def test_skip_nodes_are_placed_in_order_so_no_resort_is_needed():
    g = plain_net()
    s = get_pass("add-skip").sites(g)[-1]
    g2, res = skip("add-skip", g, s.src, s.dst)
    names = [n.name for n in g2.nodes]
    new = res.info["nodes"]
    k = names.index(g2.find_value(s.dst).producer.name)
    assert names[k + 1:k + 1 + len(new)] == new   # right after the target's producer
