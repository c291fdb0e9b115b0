"""remove-layer: structure, sites and reasons, the reported error against an independent measurement,
the verifier after rewriting."""

from __future__ import annotations

import numpy as np
import pytest
from test_passes_approx_common import assert_reported_error
from test_passes_nets import plain_net, residual_net

from nashir import GraphBuilder
from nashir.errors import NotApplicable, PassError
from nashir.ir import Graph
from nashir.passes import NodeSite, Sequential, ValueSite, check_preservation, get_pass


def test_removes_a_conv_bn_relu_block_and_rewires_its_consumers():
    g = residual_net()
    before = g.clone()
    ra_uses = [u.name for u, _ in g.value("ra").uses]
    res = get_pass("remove-layer").apply(g, NodeSite("a"))
    g.verify()
    assert res.modified and res.info["removed"] == ["a", "bn_a", "ra"]
    assert res.info["input"] == "r0" and res.info["output"] == "ra"
    assert ra_uses == ["b"] and g.node("b").inputs[0] is g.value("r0")
    for name in ("a", "bn_a", "ra"):
        assert name not in [n.name for n in g.nodes] and name not in g.values
    assert "a.weight" not in g.values  # its weights went with it
    assert res.info["params_after"] < res.info["params_before"]
    assert_reported_error(before, g, res.info)
    assert res.info["error"]["max_abs"] > 1e-3  # a trained-looking block: removing it changes the function


def test_undoing_net2deeper_is_exact():
    g = plain_net()
    deeper = g.clone()
    info = get_pass("net2deeper", kernel=3).apply(deeper, ValueSite("r1")).info
    head = info["nodes"][0]
    assert head in [str(s) for s in get_pass("remove-layer").sites(deeper)]
    back = deeper.clone()
    res = get_pass("remove-layer").apply(back, NodeSite(head))
    back.verify()
    assert res.info["removed"] == info["nodes"]
    assert str(back) == str(g)
    assert res.info["error"]["within_tolerance"] is True
    assert_reported_error(deeper, back, res.info)
    assert check_preservation(g, back).ok


def test_identity_and_dropout_are_layers_on_their_own():
    b = GraphBuilder("idn", (3, 5, 5), seed=0)
    h = b.relu(b.conv(b.input, 4, name="c"), name="r")
    h = b.op("Identity", h, name="idn")
    g = b.build(b.gemm(b.flatten(h), 2, name="fc"))
    p = get_pass("remove-layer")
    assert [str(s) for s in p.sites(g)] == ["idn"]
    before = g.clone()
    res = p.apply(g, NodeSite("idn"))
    g.verify()
    assert res.info["removed"] == ["idn"] and res.info["error"]["max_abs"] == 0.0
    assert g.node("fc").inputs[0].name == "flatten_0" and g.node("flatten_0").inputs[0] is g.value("r")
    assert_reported_error(before, g, res.info)


def test_sites_and_reasons():
    p = get_pass("remove-layer")
    g = plain_net()
    assert p.sites(g) == []          # every conv of the plain net changes the channels or the size
    assert "input and output shapes agree" in p.check(g, NodeSite("c1"))
    assert "is a Relu" in p.check(g, NodeSite("r1"))
    assert "graph output" in p.check(g, NodeSite("fc"))
    assert "no node named" in p.check(g, NodeSite("nope"))
    assert [str(s) for s in p.sites(residual_net())] == ["a", "b"]
    with pytest.raises(NotApplicable, match="remove-layer does not apply at c1"):
        p.apply(g, NodeSite("c1"))
    assert p.sites(g) == []  # unchanged by the refused apply


def test_a_square_gemm_block_is_a_site():
    b = GraphBuilder("mlp", (3, 2, 2), seed=0)
    f = b.flatten(b.input, name="flat")
    h = b.relu(b.gemm(f, 12, name="g1"), name="r1")
    h = b.relu(b.gemm(h, 12, name="g2"), name="r2")
    g = b.build(b.gemm(h, 3, name="out"))
    p = get_pass("remove-layer")
    assert [str(s) for s in p.sites(g)] == ["g1", "g2"]   # g1: 12 flat inputs -> 12 features
    before = g.clone()
    res = p.apply(g, NodeSite("g2"))
    g.verify()
    assert res.info["removed"] == ["g2", "r2"] and g.node("out").inputs[0] is g.value("r1")
    assert_reported_error(before, g, res.info)


def test_a_broken_rewrite_is_caught_by_the_verifier(monkeypatch):
    g = residual_net()
    def rewire_inputs_only(self, old, new, exclude=(), outputs=True):   # forgets the use lists
        for u, i in list(old.uses):
            u.inputs[i] = new

    monkeypatch.setattr(Graph, "replace_all_uses_with", rewire_inputs_only)
    monkeypatch.setattr(Graph, "remove_node", lambda self, node, replacement=None: None)
    with pytest.raises(PassError, match=r"step 1 \(remove-layer\) at a left a graph that does not verify"):
        Sequential((get_pass("remove-layer", measure=False), "a")).run(g)


def test_random_inputs_do_not_hide_the_error():
    g = residual_net(seed=3)
    before = g.clone()
    res = get_pass("remove-layer").apply(g, NodeSite("b"))
    x = np.random.default_rng(5).standard_normal((4, 3, 6, 6)).astype(np.float32)
    rep = check_preservation(before, g, inputs=x)
    assert not rep.ok and res.info["error"]["within_tolerance"] is False
