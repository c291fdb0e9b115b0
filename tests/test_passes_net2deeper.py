"""net2deeper: structure, sites and reasons, numerical preservation, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_passes_nets import conv1d_net, plain_net, residual_net

from nashir import GraphBuilder
from nashir.errors import NotApplicable, PassError
from nashir.passes import Sequential, ValueSite, check_preservation, get_pass
from nashir.passes import net2deeper as D
from nashir.passes.transforms import identity_conv_weight


def deepen(g, value, seed=0, **opts):
    g2 = g.clone()
    res = get_pass("net2deeper", **opts).apply(g2, ValueSite(value), np.random.default_rng(seed))
    g2.verify()
    return g2, res


def asymmetric_input(shape, seed=0):
    """Inputs with no symmetry: a ramp along H and W plus noise, so a shifted identity shows."""
    n, c, h, w = shape
    ramp = np.arange(h)[:, None] * 1.0 + np.arange(w)[None, :] * 0.37
    x = ramp[None, None] * (1 + np.arange(c))[None, :, None, None]
    return (x + np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def test_structure_after_a_relu():
    g = plain_net()
    r1, c2 = g.value("r1"), g.node("c2")
    res = get_pass("net2deeper", kernel=3).apply(g, ValueSite("r1"))
    g.verify()
    assert res.modified and res.info["relu"] is True and res.info["kernel"] == 3
    json.dumps(res.info)
    conv, bn, relu = (g.node(n) for n in res.info["nodes"])
    assert [conv.op_type, bn.op_type, relu.op_type] == ["Conv", "BatchNormalization", "Relu"]
    assert conv.inputs[0] is r1 and r1.producer is g.node("r1")  # the value itself is kept
    assert bn.inputs[0] is conv.outputs[0] and relu.inputs[0] is bn.outputs[0]
    assert g.node("c2") is c2 and c2.inputs[0] is relu.outputs[0]  # the old consumer is rewired
    assert [u.name for u in r1.consumers()] == [conv.name]
    assert conv.attrs["strides"] == [1, 1] and conv.attrs["pads"] == [1, 1, 1, 1]
    assert len(conv.inputs) == 2  # no bias: BatchNorm follows
    assert bn.meta == {"calibrate": "identity"}
    scale, bias, mean, var = (bn.inputs[i].const for i in (1, 2, 3, 4))
    eps = bn.attrs["epsilon"]
    np.testing.assert_allclose(scale, np.sqrt(1 + eps))
    assert (bias == 0).all() and (mean == 0).all() and (var == 1).all()
    assert "calibrate=identity" in str(g)


def test_no_relu_unless_known_non_negative():
    g = plain_net()
    _, res = deepen(g, "c3", kernel=3)  # c3 output: a conv with bias, any sign... but not a layer output
    assert res.info["relu"] is False and len(res.info["nodes"]) == 2
    _, res = deepen(g, "r3", kernel=3)
    assert res.info["relu"] is True
    _, res = deepen(g, "r2", kernel=3, relu="never")
    assert res.info["relu"] is False
    _, res = deepen(g, "r2", kernel=1, batchnorm=False)
    assert [n for n in res.info["nodes"]][0].startswith("conv") and len(res.info["nodes"]) == 2


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("value", ["r1", "bn2", "r3"])
def test_preserves(kernel, value):
    g = plain_net(seed=2, hw=7)
    g2, _ = deepen(g, value, kernel=kernel)
    rep = check_preservation(g, g2, inputs=asymmetric_input((3, 3, 7, 7)))
    assert rep.ok, rep


def test_flat_value_gets_an_identity_gemm():
    g = plain_net(seed=1)
    g2, res = deepen(g, "flat")
    gemm = g2.node(res.info["nodes"][0])
    assert gemm.op_type == "Gemm" and res.info["kernel"] is None
    np.testing.assert_array_equal(gemm.inputs[1].const, np.eye(54, dtype=np.float32))
    assert res.info["relu"] is True  # Flatten of a Relu output is non-negative
    assert check_preservation(g, g2).ok


def test_random_kernel_from_nash_choices():
    g = plain_net()
    kernels = {deepen(g, "r1", seed=s)[1].info["kernel"] for s in range(12)}
    assert kernels == {3, 5}


def test_sites_and_reasons():
    g = plain_net()
    p = get_pass("net2deeper")
    assert [str(s) for s in p.sites(g)] == ["r1", "r2", "r3", "flat"]
    assert "graph output" in p.check(g, ValueSite("fc"))
    assert "graph input" in p.check(g, ValueSite("input"))
    assert "constant" in p.check(g, ValueSite("c1.weight"))
    assert "no value or node named 'zz'" in p.check(g, ValueSite("zz"))
    assert p.check(g, ValueSite("c1")) is None  # any data value may be named explicitly
    req = get_pass("net2deeper", relu="required")
    assert "not known non-negative" in req.check(g, ValueSite("bn1"))
    assert req.check(g, ValueSite("r1")) is None
    assert p.parse_site(g, "c2") == ValueSite("c2")  # a node name means its output


def test_rank_six_is_not_applicable():
    b = GraphBuilder("r6", (3, 2, 2, 2, 2), seed=0)
    h = b.graph.add_node("Relu", [b.input], name="r").output
    g = b.build(b.graph.add_node("Relu", [h], name="out").output)
    assert "rank 6" in get_pass("net2deeper").check(g, ValueSite("r"))


@pytest.mark.parametrize("kernel", [3, 5])
def test_conv1d_value_gets_an_identity_conv1d(kernel):
    """Rank 3 (N x C x L, Conv1d models): the same Conv-BN-ReLU block with a k-tap 1-D kernel."""
    g = conv1d_net(length=11)
    p = get_pass("net2deeper", kernel=kernel)
    assert [str(s) for s in p.sites(g)] == ["r1", "r2", "r3", "flat"]
    g2, res = deepen(g, "r1", kernel=kernel)
    conv = g2.node(res.info["nodes"][0])
    assert conv.attrs["kernel_shape"] == [kernel] and conv.attrs["pads"] == [kernel // 2] * 2
    assert conv.inputs[1].const.shape == (4, 4, kernel)
    assert [g2.node(n).op_type for n in res.info["nodes"]] == ["Conv", "BatchNormalization", "Relu"]
    ramp = np.arange(11.0)[None, None, :] * (1 + np.arange(3.0))[None, :, None]
    x = (ramp + np.random.default_rng(2).standard_normal((2, 3, 11))).astype(np.float32)  # no symmetry
    assert check_preservation(g, g2, inputs=x).ok


def test_options_are_validated():
    for opts in ({"kernel": 4}, {"kernel": 0}, {"kernels": (3, 2)}, {"relu": "maybe"}):
        with pytest.raises(PassError):
            get_pass("net2deeper", **opts)


def test_inside_a_residual_block():
    g = residual_net(seed=3)
    for v in ("r0", "ra", "bn_b", "r2"):
        g2, _ = deepen(g, v, kernel=3)
        assert check_preservation(g, g2).ok


# ---------------------------------------------------------------------------------------------- failures


def test_identity_kernel_off_centre_is_caught(monkeypatch):
    """Known failure kind: an identity tap not at (k-1)//2 shifts the map; with inputs that are not
    symmetric the check must fail, while the pass's own kernel passes."""
    g = plain_net(seed=0, hw=7)
    x = asymmetric_input((2, 3, 7, 7), seed=1)
    good, _ = deepen(g, "r1", kernel=5)
    assert check_preservation(g, good, inputs=x).ok

    def off_centre(c, k, dtype=np.float32):
        w = np.zeros((c, c, k, k), dtype)
        w[np.arange(c), np.arange(c), (k - 1) // 2, (k - 1) // 2 + 1] = 1  # one tap to the right
        return w

    monkeypatch.setattr(D, "identity_conv_weight", off_centre)
    bad, _ = deepen(g, "r1", kernel=5)
    rep = check_preservation(g, bad, inputs=x)
    assert not rep.ok and rep.max_abs > 1e-2


def test_a_wrong_identity_weight_is_reported_naming_the_pass(monkeypatch):
    g = plain_net()
    monkeypatch.setattr(D, "identity_conv_weight", lambda c, k: identity_conv_weight(c + 1, k))
    msg = r"step 2 \(net2deeper\) at r2 failed.*passes before it: widen-kernel@c1"
    with pytest.raises(PassError, match=msg):
        Sequential((get_pass("widen-kernel"), "c1"), (get_pass("net2deeper", kernel=3), "r2")).run(g)


def test_apply_refuses_graph_output():
    g = plain_net()
    with pytest.raises(NotApplicable, match="graph output"):
        get_pass("net2deeper").apply(g, ValueSite("fc"))


def test_an_identity_layer_over_the_size_bound_is_not_a_site():
    """An identity Gemm after a flattened 64 x 30 x 30 map would be 57600^2 (3.3e9) parameters: refused
    from shapes, before anything is allocated (VGG-11-BN's flattened 25088 gave 629 M before the bound)."""
    b = GraphBuilder("wide", (64, 30, 30), seed=0)
    f = b.flatten(b.relu(b.conv(b.input, 64, kernel=1, name="c"), name="r"), name="flat")
    g = b.build(b.gemm(f, 2, name="fc"))
    p = get_pass("net2deeper")
    assert "flat" not in [str(s) for s in p.sites(g)] and "r" in [str(s) for s in p.sites(g)]
    reason = p.check(g, ValueSite("flat"))
    assert f"{57600**2 + 57600 + 4 * 57600:,} parameters" in reason   # W, bias, BatchNorm's four arrays
    assert "over the bound of 1,048,576" in reason
    with pytest.raises(NotApplicable, match="over the bound"):
        p.apply(g.clone(), ValueSite("flat"))
    assert p.new_params(g.value("r")) == 64 * 64 * 9 + 4 * 64   # the smallest kernel it may draw, 3x3
    assert p.new_params(g.value("r"), 5) == 64 * 64 * 25 + 4 * 64
    assert get_pass("net2deeper", max_new_params=4 * 10**9).check(g, ValueSite("flat")) is None


def test_the_kernel_is_drawn_among_those_within_the_bound():
    b = GraphBuilder("k", (3, 6, 6), seed=0)
    r = b.relu(b.conv(b.input, 64, name="c"), name="r")
    g = b.build(b.gemm(b.flatten(b.global_avgpool(r)), 2, name="fc"))
    cost3, cost5 = 64 * 64 * 9 + 256, 64 * 64 * 25 + 256
    p = get_pass("net2deeper", max_new_params=cost3)
    assert p.kernels_within(g, g.value("r")) == [3]
    for seed in range(6):   # 5x5 would be over the bound: never drawn
        _, res = deepen(g, "r", seed=seed, max_new_params=cost3)
        assert res.info["kernel"] == 3
    assert get_pass("net2deeper", max_new_params=cost5).kernels_within(g, g.value("r")) == [3, 5]
    assert "over the bound" in get_pass("net2deeper", max_new_params=cost3 - 1).check(g, ValueSite("r"))
