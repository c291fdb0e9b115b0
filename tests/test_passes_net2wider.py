"""net2wider: structure, sites and reasons, numerical preservation, verifier failures, and the known
failure kinds of other morphism tools (each its own test)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_passes_nets import concat_net, plain_net, rand_bn, residual_net

from nashir import GraphBuilder
from nashir.errors import NotApplicable, PassError
from nashir.ir import Graph
from nashir.passes import NodeSite, Sequential, check_preservation, get_pass


def widen(g, node, seed=0, **opts):
    g2 = g.clone()
    res = get_pass("net2wider", **opts).apply(g2, NodeSite(node), np.random.default_rng(seed))
    g2.verify()
    return g2, res


def assert_preserved(before, after, **kw):
    rep = check_preservation(before, after, **kw)
    assert rep.ok, rep
    assert "onnxruntime" in rep.runtime
    return rep


def mapping(res):
    n = res.info["from"]
    return np.array(list(range(n)) + res.info["new_sources"])


# ---------------------------------------------------------------------------------------------- structure


def test_structure_of_a_widened_conv():
    g = plain_net()
    c2, bn2, c3 = g.node("c2"), g.node("bn2"), g.node("c3")
    w2, b2, w3 = c2.inputs[1].const.copy(), c2.inputs[2].const.copy(), c3.inputs[1].const.copy()
    bn_old = [bn2.inputs[i].const.copy() for i in (1, 2, 3, 4)]
    res = get_pass("net2wider", width=10).apply(g, NodeSite("c2"), np.random.default_rng(0))
    g.verify()
    assert res.modified is True and res.graph is g
    assert res.info["from"] == 6 and res.info["to"] == 10 and res.info["producers"] == ["c2"]
    json.dumps(res.info)
    gm = mapping(res)
    # the same objects, rewritten in place
    assert g.node("c2") is c2 and g.node("bn2") is bn2 and g.node("c3") is c3
    assert c3.inputs[0] is g.value("r2") and g.value("r2").producer is g.node("r2")
    assert c2.inputs[1].const.shape == (10, 4, 3, 3)
    np.testing.assert_array_equal(c2.inputs[1].const, w2[gm])
    np.testing.assert_array_equal(c2.inputs[2].const, b2[gm])
    for i, old in zip((1, 2, 3, 4), bn_old):
        np.testing.assert_array_equal(bn2.inputs[i].const, old[gm])
    new3 = c3.inputs[1].const
    assert new3.shape == (6, 10, 3, 3)
    counts = np.bincount(gm, minlength=6)
    for j in range(10):
        np.testing.assert_allclose(new3[:, j], w3[:, gm[j]] / counts[gm[j]], rtol=1e-6)
    assert g.value("r2").shape == ("N", 10, 6, 6) and g.value("c3").shape == ("N", 6, 3, 3)
    assert c3.attrs["strides"] == [2, 2] and c3.attrs["pads"] == [1, 1, 1, 1]


def test_factor_and_random_factor():
    g = plain_net()
    _, r = widen(g, "c1", factor=1.5)
    assert r.info["to"] == 6
    _, r = widen(g, "c1", seed=1)
    assert r.info["to"] in (8, 16)  # NASH: a factor from {2, 4}
    seen = {widen(g, "c1", seed=s)[1].info["to"] for s in range(12)}
    assert seen == {8, 16}


# ---------------------------------------------------------------------------------------------- sites


def test_sites_and_reasons():
    g = plain_net()
    p = get_pass("net2wider")
    assert [str(s) for s in p.sites(g)] == ["c1", "c2", "c3"]
    assert "'fc' is a graph output" in p.check(g, NodeSite("fc"))
    assert "Relu" in p.check(g, NodeSite("r1"))
    assert "no node named 'c9'" in p.check(g, NodeSite("c9"))
    wide = get_pass("net2wider", width=6)
    assert "not larger than the current 6 channels of 'c2'" in wide.check(g, NodeSite("c2"))
    assert [str(s) for s in wide.sites(g)] == ["c1"]  # only c1 (4 channels) is narrower than 6
    assert wide.check(g, NodeSite("c1")) is None


def test_sites_with_width_exclude_too_wide_producers():
    g = plain_net()
    p = get_pass("net2wider", width=5)
    assert [str(s) for s in p.sites(g)] == ["c1"]


def test_coupled_producers_give_one_site():
    g = residual_net()
    assert [str(s) for s in get_pass("net2wider").sites(g)] == ["s", "a"]


def test_parse_site_accepts_node_or_output_value_name():
    g = plain_net()
    b = GraphBuilder("n", (3, 4, 4))
    h = b.graph.add_node("Conv", [b.input, b.graph.add_const(np.ones((2, 3, 1, 1), np.float32), "w")],
                         name="convnode", outputs=["convout"]).output
    g2 = b.build(b.gemm(b.flatten(b.relu(h)), 2))
    p = get_pass("net2wider")
    assert p.parse_site(g2, "convout") == NodeSite("convnode")
    assert p.parse_site(g, "c2") == NodeSite("c2")


def test_apply_at_a_bad_site_raises_with_the_reason_and_leaves_the_graph():
    g = plain_net()
    before = str(g)
    with pytest.raises(NotApplicable, match="graph output"):
        get_pass("net2wider", width=8).apply(g, NodeSite("fc"))
    assert str(g) == before


def test_options_are_validated():
    for opts in ({"factor": 1.0}, {"width": 0}, {"split": "halves"}, {"factors": (2, 0.5)}):
        with pytest.raises(PassError):
            get_pass("net2wider", **opts)


# ---------------------------------------------------------------------------------------------- preservation


@pytest.mark.parametrize("split", ["equal", "random"])
@pytest.mark.parametrize("node", ["c1", "c2", "c3"])
def test_preserves_plain_net(split, node):
    g = plain_net(seed=3)
    g2, _ = widen(g, node, factor=2, split=split, seed=7)
    assert_preserved(g, g2)


@pytest.mark.parametrize("split", ["equal", "random"])
def test_preserves_gemm_producer(split):
    b = GraphBuilder("flat", (7,), seed=0)
    h = b.relu(b.gemm(b.input, 5, name="g1"), name="r")
    h = b.bn(h, random_stats=True, name="bnf")
    g = b.build(b.gemm(h, 3, name="g2"))
    g2, res = widen(g, "g1", width=9, split=split)
    assert g2.node("g1").inputs[1].const.shape == (9, 7) and g2.node("g2").inputs[1].const.shape == (3, 9)
    assert_preserved(g, g2)


def test_random_split_differs_from_equal_and_is_preserved_everywhere():
    for g, node in ((plain_net(seed=1), "c2"), (residual_net(seed=2), "b"), (concat_net(seed=3), "p")):
        ge, _ = widen(g, node, factor=3, split="equal", seed=4)
        gr, res = widen(g, node, factor=3, split="random", seed=4)
        assert_preserved(g, gr)
        absorber = {"c2": "c3", "b": "a", "p": "after"}[node]
        assert not np.allclose(ge.node(absorber).inputs[1].const, gr.node(absorber).inputs[1].const)


def test_depthwise_and_per_channel_constants_on_the_way():
    b = GraphBuilder("dw", (3, 5, 5), seed=0)
    h = b.conv(b.input, 4, name="src")
    scale = b.graph.add_const(np.array([0.5, -1.0, 2.0, 3.0], np.float32).reshape(4, 1, 1), "scale")
    h = b.graph.add_node("Mul", [h, scale], name="mul").output
    shift = b.graph.add_const(np.array([0.1, 0.2, 0.3, 0.4], np.float32).reshape(1, 4, 1, 1), "shift")
    h = b.graph.add_node("Add", [shift, h], name="add").output
    h = b.conv(h, 4, group=4, name="dw")
    h = b.relu(h)
    g = b.build(b.gemm(b.flatten(b.global_avgpool(b.conv(h, 3, name="abs"))), 2))
    g2, res = widen(g, "src", width=7)
    assert g2.node("dw").attrs["group"] == 7
    assert g2.node("dw").inputs[1].const.shape == (7, 1, 3, 3)
    assert g2.value("scale").const.shape == (7, 1, 1) and g2.value("shift").const.shape == (1, 7, 1, 1)
    assert_preserved(g, g2)


def test_shared_weight_is_copied_not_changed_for_the_other_user():
    b = GraphBuilder("sh", (3, 5, 5), seed=0)
    h1 = b.relu(b.conv(b.input, 4, name="c1", bias=False))
    shared = b.graph.node("c1").inputs[1]
    h2 = b.relu(b.graph.add_node("Conv", [b.input, shared], {"pads": [1, 1, 1, 1]}, name="c1b").output)
    s = b.concat([h1, h2])
    g = b.build(b.gemm(b.flatten(b.global_avgpool(b.conv(s, 2, name="abs"))), 2))
    g2, _ = widen(g, "c1", width=6)
    assert g2.node("c1").inputs[1].const.shape == (6, 3, 3, 3)
    assert g2.node("c1b").inputs[1].const.shape == (4, 3, 3, 3)
    assert g2.node("c1").inputs[1] is not g2.node("c1b").inputs[1]
    assert_preserved(g, g2)


# ---------------------------------------------------------------------------------------------- verifier


def test_a_broken_remap_is_caught_by_the_verifier(monkeypatch):
    g = plain_net()
    monkeypatch.setattr(Graph, "infer_shapes", lambda self: None)  # shapes left stale
    with pytest.raises(PassError) as ei:
        Sequential((get_pass("net2deeper", kernel=1), "r1"), (get_pass("net2wider", width=8), "c2")).run(g)
    msg = str(ei.value)
    assert "step 2 (net2wider)" in msg and "does not verify" in msg and "net2deeper@r1" in msg
    assert "infer_shapes" in msg


# -------------------------------------------------------------------------------------- known failure kinds


def test_batchnorm_statistics_of_new_channels_are_finite_and_copied():
    g = plain_net(seed=5)
    g2, res = widen(g, "c2", width=11, seed=2)  # 5 new channels
    gm = mapping(res)
    assert len(res.info["new_sources"]) == 5
    old = [g.node("bn2").inputs[i].const for i in (1, 2, 3, 4)]
    new = [g2.node("bn2").inputs[i].const for i in (1, 2, 3, 4)]
    for o, nw in zip(old, new):
        assert nw.shape == (11,) and np.isfinite(nw).all()
        for j in range(6, 11):
            assert nw[j] == o[gm[j]]
    assert (new[3] > 0).all()  # variances stay positive
    assert_preserved(g, g2)


def test_widening_an_input_of_a_concat_updates_every_consumer():
    g = concat_net(seed=1)
    g2, res = widen(g, "q", width=8)  # q: 5 -> 8; cat offset 3, cat2 offset 0
    gm = mapping(res)
    cnt = np.bincount(gm, minlength=5)
    w_after, w_after2 = g.node("after").inputs[1].const, g.node("after2").inputs[1].const
    n_after, n_after2 = g2.node("after").inputs[1].const, g2.node("after2").inputs[1].const
    assert n_after.shape[1] == 3 + 8 and n_after2.shape[1] == 8 + 4
    np.testing.assert_array_equal(n_after[:, :3], w_after[:, :3])  # p's channels before q's keep place
    for j in range(8):
        np.testing.assert_allclose(n_after[:, 3 + j], w_after[:, 3 + gm[j]] / cnt[gm[j]], rtol=1e-6)
        np.testing.assert_allclose(n_after2[:, j], w_after2[:, gm[j]] / cnt[gm[j]], rtol=1e-6)
    np.testing.assert_array_equal(n_after2[:, 8:], w_after2[:, 5:])  # 'after' channels shifted by 3
    assert_preserved(g, g2)
    # and widening the channels that come after q in cat2
    g3, _ = widen(g, "after", width=6, split="random")
    assert g3.node("after2").inputs[1].const.shape[1] == 5 + 6
    assert_preserved(g, g3)


def test_widening_a_conv_whose_batchnorm_was_folded_into_its_bias():
    b = GraphBuilder("folded", (3, 6, 6), seed=0)
    h = b.conv(b.input, 5, name="c1")  # BN folded: a conv with a real bias, no BN
    bias = b.graph.node("c1").inputs[2]
    b.graph.set_const(bias, np.random.default_rng(1).normal(0, 2.0, 5).astype(np.float32))
    h = b.relu(h)
    g = b.build(b.gemm(b.flatten(b.global_avgpool(b.conv(h, 4, name="c2"))), 3))
    g2, res = widen(g, "c1", width=9, seed=3)
    gm = mapping(res)
    np.testing.assert_array_equal(g2.node("c1").inputs[2].const, bias.const[gm])
    assert_preserved(g, g2)


def test_widening_a_strided_conv_keeps_stride_and_pads():
    b = GraphBuilder("strided", (3, 9, 9), seed=0)
    h = b.relu(b.conv(b.input, 4, kernel=3, stride=2, pads=[0, 1, 1, 0], name="s2"))
    h = b.relu(b.conv(h, 3, kernel=(1, 3), name="c"))
    g = b.build(b.gemm(b.flatten(h), 2))
    attrs = dict(g.node("s2").attrs)
    g2, _ = widen(g, "s2", width=7)
    assert g2.node("s2").attrs == attrs
    assert g2.value("s2").shape[2:] == g.value("s2").shape[2:]
    assert_preserved(g, g2)


def test_gemm_after_flatten_of_a_2x2_map_gets_whole_column_blocks():
    b = GraphBuilder("blocks", (3, 4, 4), seed=0)
    h = b.maxpool(b.relu(b.conv(b.input, 3, name="c")), 2)  # 3 x 2 x 2
    g = b.build(b.gemm(b.flatten(h), 4, name="fc"))
    g2, res = widen(g, "c", width=5, split="random", seed=1)
    gm = mapping(res)
    w_old, w_new = g.node("fc").inputs[1].const, g2.node("fc").inputs[1].const
    assert w_new.shape == (4, 20)
    for c in range(3):
        reps = np.nonzero(gm == c)[0]
        total = sum(w_new[:, j * 4:(j + 1) * 4] for j in reps)
        np.testing.assert_allclose(total, w_old[:, c * 4:(c + 1) * 4], rtol=1e-5)
        for j in reps:  # a whole block shares one factor
            ratio = w_new[:, j * 4:(j + 1) * 4] / w_old[:, c * 4:(c + 1) * 4]
            np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
    assert_preserved(g, g2)


def test_widening_a_residual_stream_widens_every_coupled_producer():
    g = residual_net(seed=4)
    g2, res = widen(g, "b", width=12, seed=5)
    assert res.info["producers"] == ["b", "s"]
    gm = mapping(res)
    for name in ("s", "b"):
        np.testing.assert_array_equal(g2.node(name).inputs[1].const, g.node(name).inputs[1].const[gm])
    for bn in ("bn_s", "bn_b"):
        np.testing.assert_array_equal(g2.node(bn).inputs[3].const, g.node(bn).inputs[3].const[gm])
    assert g2.node("a").inputs[1].const.shape == (8, 12, 3, 3)
    assert g2.node("fc").inputs[1].const.shape == (4, 12)
    assert g2.node("b").inputs[0].shape[1] == 8  # conv b's own input (from a) is not widened
    assert_preserved(g, g2)
    # starting from the stem gives the same group
    g3, res3 = widen(g, "s", width=12, seed=5)
    assert res3.info["producers"] == ["s", "b"]
    assert_preserved(g, g3)


def test_two_residual_blocks_couple_three_producers():
    b = GraphBuilder("res2", (3, 5, 5), seed=0)
    x = b.relu(rand_bn(b, b.conv(b.input, 4, name="stem", bias=False)))
    for k in range(2):
        h = b.relu(rand_bn(b, b.conv(x, 4, name=f"in{k}")))
        h = rand_bn(b, b.conv(h, 4, name=f"out{k}"))
        x = b.relu(b.add(h, x))
    g = b.build(b.gemm(b.flatten(b.global_avgpool(x)), 3, name="fc"))
    g2, res = widen(g, "out1", width=6, split="random")
    assert sorted(res.info["producers"]) == ["out0", "out1", "stem"]
    assert_preserved(g, g2)


# ------------------------------------------------------------------ lazy draw (issue 13)


def test_draw_site_is_a_site_and_reaches_every_site(monkeypatch):
    from test_passes_nets import concat_net, plain_net, residual_net

    from nashir.passes.net2wider import Net2Wider

    p = get_pass("net2wider")
    for g in (plain_net(), residual_net(), concat_net()):
        sites = {str(s) for s in p.sites(g)}
        rng = np.random.default_rng(0)
        drawn = [str(p.draw_site(g, rng)) for _ in range(60 * len(sites))]
        assert set(drawn) == sites   # coupled producers: one site per group, as sites() lists it
        counts = [drawn.count(s) for s in sites]
        assert min(counts) > 25 and max(counts) < 100, counts   # uniform, about 60 each
    monkeypatch.setattr(Net2Wider, "DRAW_TRIES", 0)   # the fallback lists the sites
    g, rng = residual_net(), np.random.default_rng(1)
    assert {str(p.draw_site(g, rng)) for _ in range(200)} == {str(s) for s in p.sites(g)}


# ---------------------------------------------------------------------------------------------- size bound


def big_head_net() -> Graph:
    """conv c (64, on a 16 x 16 map) -> relu -> flatten (16384) -> fc1 (256) -> relu -> fc2 (10): ~4.2 M
    parameters, mostly fc1; widening c by 4 adds 3 x 16384 x 256 columns to fc1 (~12.6 M)."""
    b = GraphBuilder("bighead", (3, 16, 16))
    h = b.flatten(b.relu(b.conv(b.input, 64, name="c")))
    return b.build(b.gemm(b.relu(b.gemm(h, 256, name="fc1")), 10, name="fc2"))


def test_explicit_factor_over_the_bound_is_refused_naming_factor_growth_and_bound():
    g = big_head_net()
    bound = g.param_count()
    from nashir.passes.analysis import channel_flow
    from nashir.passes.net2wider import new_params

    grow4 = new_params(channel_flow(g, "c"), 256)
    assert grow4 > bound
    why = get_pass("net2wider", factor=4).check(g, NodeSite("c"))
    assert f"factor 4 (64 -> 256 channels) would add {grow4:,} parameters" in why
    assert f"over the bound of {bound:,}" in why and "smaller factor" in why
    with pytest.raises(NotApplicable, match="factor 4"):
        get_pass("net2wider", factor=4).apply(g.clone(), NodeSite("c"), 0)
    assert get_pass("net2wider", factor=4, max_new_params=grow4).check(g, NodeSite("c")) is None
    assert "width 100" in get_pass("net2wider", width=100, max_new_params=10).check(g, NodeSite("c"))


def test_a_drawn_factor_over_the_bound_is_not_drawn():
    g = big_head_net()
    p = get_pass("net2wider", factors=(2, 4))
    assert p.check(g, NodeSite("c")) is None   # factor 2 fits
    for seed in range(8):
        _, res = widen(g, "c", seed=seed, factors=(2, 4))
        assert res.info["to"] == 128 and res.info["new_params"] <= g.param_count()
    # when no factor fits, it is not a site
    p = get_pass("net2wider", factors=(2, 4), max_new_params=1000)
    assert "c" not in [s.node for s in p.sites(g)]
    why = p.check(g, NodeSite("c"))
    assert "factor 2" in why and "factor 4" in why and "over the bound of 1,000" in why


def test_the_bound_is_checked_before_any_array_is_made(monkeypatch):
    import nashir.passes.net2wider as N

    g = big_head_net()
    text = str(g)
    monkeypatch.setattr(N, "remap_channels", lambda *a, **k: pytest.fail("arrays made over the bound"))
    with pytest.raises(NotApplicable):
        get_pass("net2wider", width=1 << 20).apply(g, NodeSite("c"), 0)
    assert str(g) == text


def test_new_params_is_the_applied_growth():
    for g, node in [(big_head_net(), "c"), (residual_net(), "s"), (concat_net(), "p"), (plain_net(), "c2")]:
        for factor in (2, 3):
            from nashir.passes.analysis import channel_flow
            from nashir.passes.net2wider import new_params

            flow = channel_flow(g, node)
            g2, res = widen(g, node, factor=factor, max_new_params=10**9)
            grown = g2.param_count() - g.param_count()
            assert res.info["new_params"] == new_params(flow, res.info["to"]) == grown


def test_bad_max_new_params_is_refused():
    with pytest.raises(PassError, match="max_new_params"):
        get_pass("net2wider", max_new_params=-1)
