"""ConvTranspose (issue 16): op-table shape inference against torch and onnxruntime, import (explicit
pads, VALID; SAME_* and output_shape refused), export, torch lowering, a torch.onnx round trip, and
its channel behaviour in net2wider (an absorber over its input channels, weight axis 0 of
``(C_in, C_out, kH, kW)``, and a producer over its output channels, axis 1). Four kinds: structure,
sites and reasons, numerical preservation (onnxruntime), verifier failures."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import nashir
from nashir import GraphBuilder
from nashir import ops as O
from nashir.backends.onnx import from_onnx, run, to_onnx
from nashir.errors import NashirError, OpError, ShapeError, VerifyError
from nashir.passes import NodeSite, channel_flow, check_preservation, get_pass
from nashir.passes.net2wider import new_params

torch = pytest.importorskip("torch")


def ct_model(cin=4, cout=3, k=3, strides=(2, 2), pads=(1, 1, 1, 1), opad=(1, 1), dil=(1, 1), group=1,
             hw=5, auto_pad=None, output_shape=None, seed=0):
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (cin, cout // group, k, k)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(0, 0.3, cout).astype(np.float32), "b")
    attrs = {"strides": list(strides), "dilations": list(dil), "group": group}
    if auto_pad is None:
        attrs |= {"pads": list(pads), "output_padding": list(opad)}
    else:
        attrs["auto_pad"] = auto_pad
    if output_shape is not None:
        attrs["output_shape"] = list(output_shape)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="ct", **attrs)
    g = helper.make_graph([node], "ct",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


CASES = [
    dict(), dict(strides=(1, 1), pads=(0, 0, 0, 0), opad=(0, 0)), dict(pads=(0, 1, 2, 0), opad=(1, 0)),
    dict(strides=(3, 2), pads=(2, 0, 1, 1), opad=(2, 1), k=4), dict(dil=(2, 1), strides=(2, 2), opad=(1, 0)),
    dict(group=2, cin=4, cout=6), dict(hw=1, strides=(2, 2), pads=(0, 0, 0, 0), opad=(0, 1)),
]


# ------------------------------------------------------------------------------------- op and backends


@pytest.mark.parametrize("case", CASES)
def test_import_export_and_torch_match_onnxruntime(case):
    m = ct_model(**case)
    x = np.random.default_rng(1).normal(size=(2, m.graph.input[0].type.tensor_type.shape.dim[1].dim_value,
                                              case.get("hw", 5), case.get("hw", 5))).astype(np.float32)
    want = run(m, x)[0]
    g = from_onnx(m)
    assert g.node("ct").outputs[0].shape == ("N", *want.shape[1:])   # shape inference
    got = run(to_onnx(g), x)[0]                                     # export
    np.testing.assert_allclose(got, want, atol=1e-5)
    from nashir.backends.torch import to_torch

    with torch.no_grad():
        np.testing.assert_allclose(to_torch(g)(torch.from_numpy(x)).numpy(), want, atol=1e-5)


def test_shape_inference_matches_torch():
    rng = np.random.default_rng(0)
    for _ in range(60):
        k, s, d = int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
        p, op_ = int(rng.integers(0, k)), int(rng.integers(0, s))
        hw = int(rng.integers(1, 7))
        if s * (hw - 1) + op_ + (k - 1) * d + 1 - 2 * p < 1:
            continue
        y = torch.nn.functional.conv_transpose2d(torch.zeros(1, 2, hw, hw), torch.zeros(2, 3, k, k), stride=s,
                                                 padding=p, output_padding=op_, dilation=d)
        (shape,) = O.get_op("ConvTranspose").infer(
            {"group": 1, "strides": [s, s], "dilations": [d, d], "pads": [p] * 4, "output_padding": [op_] * 2,
             "kernel_shape": [k, k]}, [("N", 2, hw, hw), (2, 3, k, k), None], [None, None, None])
        assert shape == ("N", *y.shape[1:])


def test_macs_and_params():
    b = GraphBuilder("m", (4, 5, 5))
    w = b.graph.add_const(np.zeros((4, 3, 3, 3), np.float32), "w")
    y = b.graph.add_node("ConvTranspose", [b.input, w], {"strides": [2, 2]}, name="ct").output
    assert y.shape == ("N", 3, 11, 11)
    nd = b.graph.node("ct")
    assert nd.attrs["output_padding"] == [0, 0] and nd.attrs["pads"] == [0, 0, 0, 0]
    assert O.count_macs(nd) == 4 * 5 * 5 * 3 * 3 * 3 and O.count_params(nd) == 4 * 3 * 9


def test_torch_onnx_export_round_trip():
    class Head(torch.nn.Module):   # a segmentation-style upsampling head
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 6, 3, padding=1)
            self.up = torch.nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1)
            self.up2 = torch.nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1)

        def forward(self, x):
            return self.up2(torch.relu(self.up(torch.relu(self.c(x)))))

    m = Head().eval()
    x = torch.randn(2, 3, 7, 7)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, x, f, opset_version=17, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "N"}})
    src = f.getvalue()
    g = nashir.backends.onnx.load(src)
    assert [n.op_type for n in g.nodes].count("ConvTranspose") == 2
    a, b = run(src, x.numpy())[0], run(g, x.numpy())[0]
    assert np.abs(a - b).max() <= 1e-6 and np.abs(b - m(x).detach().numpy()).max() <= 1e-5
    assert str(nashir.backends.onnx.load(nashir.backends.onnx.model_bytes(g))) == str(g)


@pytest.mark.parametrize("kw,match", [
    (dict(auto_pad="SAME_UPPER"), "auto_pad=SAME_UPPER is not supported"),
    (dict(output_shape=(10, 10)), "output_shape=\\[10, 10\\] is not supported"),
])
def test_unsupported_forms_are_refused_naming_the_node(kw, match):
    with pytest.raises(NashirError, match=f"'ct'.*{match}"):
        from_onnx(ct_model(**kw))


def test_valid_auto_pad_is_explicit_zero_pads():
    m = ct_model(auto_pad="VALID")
    g = from_onnx(m)
    assert g.node("ct").attrs["pads"] == [0, 0, 0, 0] and g.node("ct").attrs["auto_pad"] == "NOTSET"
    x = np.random.default_rng(2).normal(size=(1, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run(g, x)[0], run(m, x)[0], atol=1e-5)


@pytest.mark.parametrize("attrs,shape,err,match", [
    ({}, (3, 3, 3, 3), ShapeError, "expects 3 input channels, the input has 4"),
    ({"output_padding": [2, 0], "strides": [2, 2]}, (4, 3, 3, 3), ShapeError, "output_padding"),
    ({"pads": [5, 5, 5, 5]}, (4, 3, 3, 3), ShapeError, "leave no output"),
    ({"output_shape": [9, 9]}, (4, 3, 3, 3), OpError, "output_shape"),
    ({"auto_pad": "SAME_UPPER"}, (4, 3, 3, 3), OpError, "auto_pad"),
])
def test_bad_nodes_are_refused(attrs, shape, err, match):
    b = GraphBuilder("bad", (4, 5, 5))
    w = b.graph.add_const(np.zeros(shape, np.float32), "w")
    with pytest.raises(err, match=match):
        b.graph.add_node("ConvTranspose", [b.input, w], attrs, name="ct")


def test_verify_reports_a_stale_weight_layout():
    b = GraphBuilder("v", (4, 5, 5))
    w = b.graph.add_const(np.zeros((4, 3, 3, 3), np.float32), "w")
    b.graph.add_node("ConvTranspose", [b.input, w], name="ct")
    g = b.build(b.graph.node("ct").outputs[0])
    g.values["w"].const = np.zeros((3, 4, 3, 3), np.float32)   # OIHW by mistake: (C_out, C_in, ...)
    g.values["w"].shape = (3, 4, 3, 3)
    with pytest.raises(VerifyError, match="ct"):
        g.verify()


# ---------------------------------------------------------------------------------------------- net2wider


def decoder(seed=0):
    """conv c (6) -> relu -> ConvTranspose t (6 -> 5, stride 2) -> BN -> relu -> conv h (2)."""
    b = GraphBuilder("dec", (3, 5, 5), seed=seed)
    rng = np.random.default_rng(seed)
    h = b.relu(b.conv(b.input, 6, name="c"), name="rc")
    w = b.graph.add_const(rng.normal(0, 0.3, (6, 5, 3, 3)).astype(np.float32), "t.w")
    bias = b.graph.add_const(rng.normal(0, 0.3, 5).astype(np.float32), "t.b")
    t = b.graph.add_node("ConvTranspose", [h, w, bias], {"strides": [2, 2], "pads": [1, 0, 1, 1],
                                                        "output_padding": [1, 1]}, name="t").output
    h = b.relu(b.bn(t, random_stats=True, name="bn"), name="rt")
    return b.build(b.conv(h, 2, kernel=1, name="h"))


def test_conv_transpose_is_absorber_and_producer():
    g = decoder()
    f = channel_flow(g, "c")
    assert f.ok and [(a.node.name, a.input) for a in f.absorbers] == [("t", 0)]
    f = channel_flow(g, "t")
    assert f.ok and [p.name for p in f.producers] == ["t"] and [a.node.name for a in f.absorbers] == ["h"]
    assert [s.node for s in get_pass("net2wider").sites(g)] == ["c", "t"]


@pytest.mark.parametrize("node,split", [("c", "equal"), ("c", "random"), ("t", "equal"), ("t", "random")])
def test_widening_around_conv_transpose_is_exact(node, split):
    g = decoder(seed=3)
    g2 = g.clone()
    res = get_pass("net2wider", factor=2, split=split).apply(g2, NodeSite(node), np.random.default_rng(1))
    g2.verify()
    w, w2 = g.values["t.w"].const, g2.node("t").inputs[1].const
    if node == "c":    # input channels: axis 0 of (C_in, C_out, kH, kW) grows, its slices split
        assert w2.shape == (12, 5, 3, 3)
        g_ = [*range(6), *res.info["new_sources"]]
        summed = np.zeros_like(w)
        np.add.at(summed, g_, w2)
        np.testing.assert_allclose(summed, w, rtol=1e-5, atol=1e-6)
    else:              # output channels: axis 1 grows, copied
        assert w2.shape == (6, 10, 3, 3)
        np.testing.assert_array_equal(w2[:, :5], w)
        np.testing.assert_array_equal(w2[:, 5:], w[:, res.info["new_sources"]])
    q = 12 if node == "c" else 10
    grown = g2.param_count() - g.param_count()
    assert res.info["new_params"] == grown == new_params(channel_flow(g, node), q)
    rep = check_preservation(g, g2)
    assert rep.ok, rep


def test_grouped_conv_transpose_blocks_with_a_reason():
    m = ct_model(group=2, cin=4, cout=6)
    g = from_onnx(m)
    b = GraphBuilder("gct", (3, 5, 5))
    h = b.conv(b.input, 4, name="c")
    ct = g.node("ct")
    w = b.graph.add_const(ct.inputs[1].const.copy(), "w")
    out = b.graph.add_node("ConvTranspose", [h, w], {k: v for k, v in ct.attrs.items()}, name="ct").output
    g2 = b.build(b.conv(out, 2, kernel=1, name="h"))
    assert "ConvTranspose" in get_pass("net2wider").check(g2, NodeSite("c"))
    assert O.get_op("ConvTranspose").channel(g2.node("ct")) == O.BLOCKER


def test_min_opset_of_conv_transpose():
    assert O.get_op("ConvTranspose").min_opset == 11
    assert onnx.checker.check_model(to_onnx(decoder(), opset=13), full_check=True) is None
