"""prune-filters: structure (producer rows, BatchNorm, absorbers, flatten blocks, coupled producers,
groups), sites and reasons, the reported error against an independent measurement, the verifier."""

from __future__ import annotations

import numpy as np
import pytest
from test_passes_approx_common import assert_reported_error
from test_passes_nets import plain_net, residual_net

from nashir import GraphBuilder
from nashir.errors import PassError
from nashir.ir import Graph
from nashir.passes import NodeSite, Sequential, check_preservation, get_pass
from nashir.passes.approximate import keep_largest


def test_prunes_the_smallest_l1_filters_and_every_consumer_follows():
    g = plain_net()
    before = g.clone()
    w = g.node("c2").inputs[1].const.copy()
    l1 = np.abs(w).sum(axis=(1, 2, 3))
    want_removed = sorted(np.argsort(l1)[:3].tolist())   # half of 6
    keep = [c for c in range(6) if c not in want_removed]
    res = get_pass("prune-filters", fraction=0.5).apply(g, NodeSite("c2"))
    g.verify()
    assert res.info["from"] == 6 and res.info["to"] == 3 and res.info["removed_channels"] == want_removed
    assert res.info["removed_l1"] == pytest.approx(l1[want_removed].tolist())
    np.testing.assert_array_equal(g.node("c2").inputs[1].const, w[keep])
    np.testing.assert_array_equal(g.node("c2").inputs[2].const, before.node("c2").inputs[2].const[keep])
    for i in (1, 2, 3, 4):
        np.testing.assert_array_equal(g.node("bn2").inputs[i].const, before.node("bn2").inputs[i].const[keep])
    np.testing.assert_array_equal(g.node("c3").inputs[1].const, before.node("c3").inputs[1].const[:, keep])
    assert g.value("r2").shape == ("N", 3, 6, 6)
    assert_reported_error(before, g, res.info)


def test_through_a_flatten_whole_column_blocks_go():
    g = plain_net()
    before = g.clone()
    res = get_pass("prune-filters", fraction=0.5).apply(g, NodeSite("c3"))
    g.verify()
    keep = [c for c in range(6) if c not in res.info["removed_channels"]]
    cols = np.concatenate([np.arange(c * 9, c * 9 + 9) for c in keep])   # c3's map is 3x3
    np.testing.assert_array_equal(g.node("fc").inputs[1].const, before.node("fc").inputs[1].const[:, cols])
    assert_reported_error(before, g, res.info)


def test_dead_filters_are_pruned_exactly():
    """Filters that are zero (weights and bias) give relu(0) = 0: removing them, and the consumers'
    columns for them, keeps the function -- so the right columns went."""
    b = GraphBuilder("dead", (3, 6, 6), seed=4)
    h = b.relu(b.conv(b.input, 8, name="c1"), name="r1")
    g = b.build(b.gemm(b.flatten(b.relu(b.conv(h, 5, name="c2"), name="r2")), 3, name="fc"))
    w = g.node("c1").inputs[1].const.copy()
    bias = g.node("c1").inputs[2].const.copy()
    dead = [1, 4, 6, 7]
    w[dead] = 0
    bias[dead] = 0
    g.set_const(g.node("c1").inputs[1], w)
    g.set_const(g.node("c1").inputs[2], bias)
    before = g.clone()
    res = get_pass("prune-filters", fraction=0.5).apply(g, NodeSite("c1"))
    g.verify()
    assert res.info["removed_channels"] == dead
    assert res.info["error"]["within_tolerance"] is True and res.info["error"]["max_abs"] < 1e-5
    assert check_preservation(before, g).ok
    assert_reported_error(before, g, res.info)


def test_coupled_producers_lose_the_same_channels():
    g = residual_net()
    before = g.clone()
    res = get_pass("prune-filters", fraction=0.25).apply(g, NodeSite("s"))
    g.verify()
    assert res.info["producers"] == ["s", "b"] and res.info["to"] == 6
    ws, wb = before.node("s").inputs[1].const, before.node("b").inputs[1].const
    score = np.abs(ws).sum(axis=(1, 2, 3)) + np.abs(wb).sum(axis=(1, 2, 3))
    removed = sorted(np.argsort(score, kind="stable")[:2].tolist())
    assert res.info["removed_channels"] == removed
    keep = [c for c in range(8) if c not in removed]
    np.testing.assert_array_equal(g.node("b").inputs[1].const, wb[keep])
    np.testing.assert_array_equal(g.node("a").inputs[1].const, before.node("a").inputs[1].const[:, keep])
    assert g.node("fc").inputs[1].shape == (4, 6)
    assert_reported_error(before, g, res.info)


def test_grouped_channels_lose_the_same_number_per_group():
    b = GraphBuilder("grp", (4, 6, 6), seed=0)
    h = b.relu(b.conv(b.input, 8, name="c1"), name="r1")
    h = b.relu(b.conv(h, 8, group=2, name="gc"), name="r2")
    g = b.build(b.gemm(b.flatten(b.global_avgpool(h)), 3, name="fc"))
    before = g.clone()
    res = get_pass("prune-filters", fraction=0.5).apply(g, NodeSite("c1"))
    g.verify()
    assert res.info["groups"] == 2 and res.info["to"] == 4
    kept = [c for c in range(8) if c not in res.info["removed_channels"]]
    assert sum(c < 4 for c in kept) == 2 and sum(c >= 4 for c in kept) == 2
    assert g.node("gc").inputs[1].shape == (8, 2, 3, 3) and g.node("gc").attrs["group"] == 2
    assert_reported_error(before, g, res.info)


def test_keep_largest():
    s = np.array([3.0, 1.0, 2.0, 2.0, 0.5, 9.0])
    assert keep_largest(s, 3).tolist() == [0, 2, 5]   # ties: the lower index
    assert keep_largest(s, 1, groups=2).tolist() == [0, 5]


def test_sites_and_reasons():
    p = get_pass("prune-filters")
    g = plain_net()
    assert [str(s) for s in p.sites(g)] == ["c1", "c2", "c3"]
    assert "graph output" in p.check(g, NodeSite("fc"))
    assert "only a Conv or Gemm has filters" in p.check(g, NodeSite("r1"))
    assert [str(s) for s in p.sites(residual_net())] == ["s", "a"]  # one site for the coupled s and b
    b = GraphBuilder("one", (3, 4, 4), seed=0)
    h = b.relu(b.conv(b.input, 1, name="c1"), name="r")
    g1 = b.build(b.gemm(b.flatten(h), 2))
    assert "would leave none" in p.check(g1, NodeSite("c1"))
    with pytest.raises(PassError, match="in \\(0, 1\\)"):
        get_pass("prune-filters", fraction=1.0)


def test_the_fraction_is_drawn_from_the_rng():
    g = plain_net()
    seen = {get_pass("prune-filters", measure=False).apply(g.clone(), NodeSite("c2"), s).info["fraction"]
            for s in range(12)}
    assert seen == {0.25, 0.5}


def test_a_broken_rewrite_is_caught_by_the_verifier(monkeypatch):
    g = plain_net()
    monkeypatch.setattr(Graph, "infer_shapes", lambda self: None)   # stale output shapes
    with pytest.raises(PassError, match=r"step 1 \(prune-filters\) at c2 left a graph that does not verify"):
        Sequential((get_pass("prune-filters", fraction=0.5, measure=False), "c2")).run(g)
