"""remove-skip: structure (Add and Concat skips), sites and reasons, the reported error against an
independent measurement, the verifier after rewriting."""

from __future__ import annotations

import numpy as np
import pytest
from test_passes_approx_common import assert_reported_error
from test_passes_nets import concat_net, plain_net, residual_net

from nashir import GraphBuilder
from nashir.errors import PassError
from nashir.passes import NodeSite, Sequential, SkipSite, get_pass
from nashir.passes import approximate as AP


def test_drops_the_identity_shortcut_of_a_residual_block():
    g = residual_net()
    before = g.clone()
    res = get_pass("remove-skip").apply(g, NodeSite("sum"))
    g.verify()
    assert res.info["op"] == "Add" and res.info["dropped"] == "r0" and res.info["kept"] == "bn_b"
    assert res.info["removed"] == ["sum"]            # r0 still feeds conv a: nothing else goes
    assert g.node("r2").inputs[0] is g.value("bn_b")
    assert [u.name for u, _ in g.value("r0").uses] == ["a"]
    assert res.info["params_after"] == res.info["params_before"]
    assert_reported_error(before, g, res.info)
    assert res.info["error"]["max_abs"] > 1e-3


def test_undoing_add_skip_is_exact_and_removes_its_projection():
    g = plain_net()
    skipped = g.clone()
    info = get_pass("add-skip").apply(skipped, SkipSite("r1", "r3")).info
    add = info["nodes"][-1]
    assert [str(s) for s in get_pass("remove-skip").sites(skipped)] == [add]
    back = skipped.clone()
    res = get_pass("remove-skip").apply(back, NodeSite(add))
    back.verify()
    assert set(res.info["removed"]) == set(info["nodes"])   # the Add, the 1x1 conv and the pooling
    assert str(back) == str(g)
    assert res.info["error"]["max_abs"] == 0.0
    assert_reported_error(skipped, back, res.info)


def test_undoing_concat_skip_removes_the_consumers_columns():
    g = plain_net()
    skipped = g.clone()
    info = get_pass("concat-skip").apply(skipped, SkipSite("r1", "r2")).info
    cat = next(n for n in info["nodes"] if n.startswith("concat"))
    assert skipped.node("c3").inputs[1].shape[1] == 6 + info["channels"]
    back = skipped.clone()
    res = get_pass("remove-skip").apply(back, NodeSite(cat))
    back.verify()
    assert res.info["op"] == "Concat" and res.info["channels"] == info["channels"]
    assert back.node("c3").inputs[1].shape == g.node("c3").inputs[1].shape
    np.testing.assert_array_equal(back.node("c3").inputs[1].const, g.node("c3").inputs[1].const)
    assert back.param_count() == g.param_count() and str(back) == str(g)
    assert res.info["error"]["within_tolerance"] is True
    assert_reported_error(skipped, back, res.info)


def test_a_trained_concat_skip_is_removed_with_error_and_bn_entries_go_too():
    """The projection feeds a BatchNorm on the way to the absorber: its entries for the removed
    channels go; with non-zero consumer weights the removal is approximate."""
    b = GraphBuilder("catbn", (3, 6, 6), seed=1)
    r1 = b.relu(b.conv(b.input, 4, name="c1"), name="r1")
    main = b.conv(r1, 5, name="c2")
    proj = b.conv(r1, 3, kernel=1, name="proj")
    h = b.relu(b.bn(b.concat([main, proj], name="cat"), random_stats=True, name="bn"), name="r")
    g = b.build(b.gemm(b.flatten(b.global_avgpool(h)), 2, name="fc"))
    before = g.clone()
    p = get_pass("remove-skip")
    assert [str(s) for s in p.sites(g)] == ["cat"]
    res = p.apply(g, NodeSite("cat"))
    g.verify()
    assert res.info["projection"] == "proj" and res.info["kept"] == ["c2"]
    assert "proj" not in [n.name for n in g.nodes]
    bn = g.node("bn")
    np.testing.assert_array_equal(bn.inputs[1].const, before.node("bn").inputs[1].const[:5])
    assert bn.inputs[0] is g.value("c2")
    assert g.node("fc").inputs[1].shape == (2, 5)
    np.testing.assert_array_equal(g.node("fc").inputs[1].const, before.node("fc").inputs[1].const[:, :5])
    assert_reported_error(before, g, res.info)
    assert res.info["error"]["max_abs"] > 1e-4


def test_a_concat_of_three_keeps_the_other_two():
    b = GraphBuilder("cat3", (3, 5, 5), seed=2)
    r = b.relu(b.conv(b.input, 4, name="c1"), name="r")
    x = b.relu(b.conv(r, 2, name="x"), name="rx")
    y = b.relu(b.conv(r, 3, name="y"), name="ry")
    pr = b.conv(r, 2, kernel=1, name="pr")
    h = b.conv(b.concat([x, pr, y], name="cat"), 4, name="after")
    g = b.build(b.gemm(b.flatten(b.relu(h)), 2, name="fc"))
    before = g.clone()
    res = get_pass("remove-skip").apply(g, NodeSite("cat"))
    g.verify()
    assert res.info["input"] == 1 and res.info["kept"] == ["rx", "ry"] and res.info["concat"] == "cat_cat"
    w0, w1 = before.node("after").inputs[1].const, g.node("after").inputs[1].const
    np.testing.assert_array_equal(w1, np.concatenate([w0[:, :2], w0[:, 4:]], axis=1))
    assert_reported_error(before, g, res.info)


def test_sites_and_reasons():
    p = get_pass("remove-skip")
    assert p.sites(plain_net()) == []
    assert [str(s) for s in p.sites(residual_net())] == ["sum"]
    assert p.sites(concat_net()) == []
    g = concat_net()
    assert "no input of concat 'cat' is a projection" in p.check(g, NodeSite("cat"))
    assert "is a Conv" in p.check(g, NodeSite("stem"))
    assert "no node named" in p.check(g, NodeSite("zz"))
    b = GraphBuilder("bias", (3, 4, 4), seed=0)
    h = b.conv(b.input, 2, name="c")
    bias = b.graph.add_const(np.ones((2, 1, 1), np.float32), "shift")
    h = b.graph.add_node("Add", [h, bias], name="plus").output
    gb = b.build(b.gemm(b.flatten(h), 2))
    assert "adds a constant" in p.check(gb, NodeSite("plus"))
    b = GraphBuilder("out", (3, 4, 4), seed=0)
    h1, h2 = b.conv(b.input, 2, name="c1"), b.conv(b.input, 2, name="c2")
    go = b.build(b.add(h1, h2, name="sum"))
    assert "graph output" in p.check(go, NodeSite("sum"))


def test_the_smaller_branch_is_dropped():
    """Add(u, v) where both operands have their own conv: the one with fewer parameters goes."""
    b = GraphBuilder("two", (3, 6, 6), seed=0)
    r = b.relu(b.conv(b.input, 4, name="c0"), name="r")
    big = b.conv(b.relu(b.conv(r, 8, name="big1"), name="rb"), 4, name="big2")
    small = b.conv(r, 4, kernel=1, name="small")
    h = b.relu(b.add(big, small, name="sum"), name="rs")
    g = b.build(b.gemm(b.flatten(h), 2, name="fc"))
    res = get_pass("remove-skip").apply(g, NodeSite("sum"))
    assert res.info["dropped"] == "small" and res.info["removed"] == ["sum", "small"]
    assert AP._branch_params([]) == 0


def test_a_broken_rewrite_is_caught_by_the_verifier(monkeypatch):
    g = residual_net()
    monkeypatch.setattr(AP, "_remove_dead", lambda graph, values: [])
    from nashir.ir import Graph

    def rewire_inputs_only(self, old, new, exclude=(), outputs=True):
        for u, i in list(old.uses):
            u.inputs[i] = new

    monkeypatch.setattr(Graph, "replace_all_uses_with", rewire_inputs_only)
    monkeypatch.setattr(Graph, "remove_node", lambda self, node, replacement=None: None)
    with pytest.raises(PassError, match=r"step 1 \(remove-skip\) at sum left a graph that does not verify"):
        Sequential((get_pass("remove-skip", measure=False), "sum")).run(g)
