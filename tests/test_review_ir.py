"""Review regressions for the IR core: node checks that used to let through graphs that onnxruntime
then refused (mixed element types, out-of-range flags, LRN size < 1) or raised a bare TypeError.
Each failing mutator must leave the graph exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest

from nashir import GraphBuilder
from nashir.errors import GraphError, OpError, ShapeError, VerifyError


def _net():
    b = GraphBuilder("r", input_shape=(3, 8, 8), seed=0)
    h = b.conv_bn_relu(b.input, 4)
    h = b.gemm(b.flatten(b.global_avgpool(h)), 5)
    return b.build(h)


def _snapshot(g):
    uses = {k: [(n.name, i) for n, i in v.uses] for k, v in g.values.items()}
    return str(g), uses, [n.name for n in g.nodes]


def _unchanged(g, before):
    text, uses, nodes = _snapshot(g)
    assert text == before[0] and nodes == before[2]
    assert {k: u for k, u in uses.items() if k in before[1]} == before[1]
    g.verify()


@pytest.mark.parametrize(
    "make",
    [
        # a float64 Conv weight under float32 data: onnxruntime refuses the exported model
        lambda g: g.add_node("Conv", ["relu_0", g.add_const(np.ones((2, 4, 1, 1)), "w64")]),
        # float64 BatchNormalization statistics
        lambda g: g.add_node("BatchNormalization",
                             ["relu_0", *[g.add_const(np.ones(4), f"s{i}") for i in range(4)]]),
        # a float16 Gemm weight
        lambda g: g.add_node("Gemm", ["flatten_0", g.add_const(np.ones((2, 4), np.float16), "w16")],
                             {"transB": 1}),
        # a float64 constant added to float32 data
        lambda g: g.add_node("Add", ["relu_0", g.add_const(np.ones((4, 1, 1)), "c64")]),
    ],
)
def test_inputs_of_one_node_share_one_element_type(make):
    g = _net()
    before = _snapshot(g)
    match = r"node '\w+' \(\w+\): input \d \('\w+'\) has dtype float(64|16).*astype"
    with pytest.raises(OpError, match=match):
        make(g)
    _unchanged(g, before)


def test_reshape_shape_input_stays_int64():
    g = _net()
    shape = g.add_const(np.array([0, -1], np.int64), "shape")
    nd = g.add_node("Reshape", ["relu_0", shape])
    assert nd.output.shape == ("N", 4 * 8 * 8)


def test_verify_reports_a_weight_made_float64_by_set_const():
    g = _net()
    g.set_const("conv_0.weight", g.value("conv_0.weight").const.astype(np.float64))
    match = r"node 'conv_0' \(Conv\): input 1 \('conv_0.weight'\) has dtype float64"
    with pytest.raises(VerifyError, match=match):
        g.verify()


@pytest.mark.parametrize(
    "op,attrs,match",
    [
        ("LRN", {"size": 0}, r"node 'lrn_0' \(LRN\): size=0 must be >= 1"),
        ("LRN", {"size": -3}, r"size=-3 must be >= 1"),
        ("MaxPool", {"kernel_shape": [2, 2], "ceil_mode": 5},
         r"node 'maxpool_0': attribute ceil_mode=5 must be 0 or 1"),
        ("MaxPool", {"kernel_shape": [2, 2], "storage_order": 7}, r"storage_order=7 must be 0 or 1"),
        ("AveragePool", {"kernel_shape": [2, 2], "count_include_pad": 2},
         r"count_include_pad=2 must be 0 or 1"),
    ],
)
def test_out_of_range_attributes_are_refused(op, attrs, match):
    g = _net()
    before = _snapshot(g)
    with pytest.raises(OpError, match=match):
        g.add_node(op, ["relu_0"], attrs)
    _unchanged(g, before)


def test_lrn_set_attr_size_zero_leaves_the_node():
    g = _net()
    nd = g.add_node("LRN", ["relu_0"], {"size": 3})
    before = _snapshot(g)
    with pytest.raises(OpError, match="size=0 must be >= 1"):
        g.set_attr(nd, "size", 0)
    _unchanged(g, before)
    assert nd.attrs["size"] == 3


def test_attributes_that_are_not_a_dict_raise_op_error():
    g = _net()
    before = _snapshot(g)
    match = r"node 'relu_1' \(Relu\): attributes must be a dict name -> value, got list"
    with pytest.raises(OpError, match=match):
        g.add_node("Relu", ["relu_0"], [("alpha", 1)])
    _unchanged(g, before)


# ------------------------------------------------------------------------------------------- builder


def _builder():
    b = GraphBuilder("t", input_shape=(4, 8, 8), seed=0)
    return b, b.relu(b.input)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda b, h: b.conv(h, 4, group=3), ShapeError, r"node 'conv_0' \(Conv\).*expects 3 input channels"),
        (lambda b, h: b.conv(h, 4, kernel=20, pads=0), ShapeError, r"does not fit an input of 8"),
        (lambda b, h: b.conv(h, 4, stride=0), ShapeError, r"strides \[0, 0\]"),
        (lambda b, h: b.conv(h, 4, pads=[1, 1, 1]), ShapeError, r"pads needs 4 values"),
        (lambda b, h: b.conv(h, 0), OpError, r"node 'conv_0' \(Conv\): out_channels=0"),
        (lambda b, h: b.conv(h, 4, kernel=-1), OpError, r"kernel=\[-1, -1\]"),
        (lambda b, h: b.conv(h, 4, group=0), OpError, r"group=0 must be >= 1"),
        (lambda b, h: b.conv_bn_relu(h, 4, kernel=0), OpError, r"kernel=\[0, 0\]"),
        (lambda b, h: b.conv(h, 4, name="relu_0"), GraphError, r"node name 'relu_0' is already used"),
        (lambda b, h: b.gemm(h, 3), ShapeError, r"node 'gemm_0' \(Gemm\).*expected rank 2"),
        (lambda b, h: b.gemm(b.graph.value("flatten_0"), 0), OpError, r"\(Gemm\): out_features=0"),
    ],
)
def test_failed_builder_call_leaves_no_weights_behind(call, exc, match):
    b, h = _builder()
    b.flatten(h)
    before = _snapshot(b.graph)
    with pytest.raises(exc, match=match):
        call(b, h)
    assert set(b.graph.values) == set(before[1])
    _unchanged(b.graph, before)


def test_a_retry_after_a_failed_builder_call_gets_the_plain_names():
    b, h = _builder()
    with pytest.raises(ShapeError):
        b.conv(h, 4, group=3)
    out = b.conv(h, 4)
    assert out.name == "conv_0"
    assert {"conv_0.weight", "conv_0.bias"} <= set(b.graph.values)
    assert "conv_0.weight_1" not in b.graph.values


@pytest.mark.parametrize("shape", [(3, 0, 8), (3, -1, 8), (3, 8.0, 8), (3, True, 8), (3, None, 8)])
def test_input_dimensions_must_be_positive_or_symbolic(shape):
    from nashir import Graph

    g = Graph("g")
    with pytest.raises(GraphError, match=r"input 'x': shape .* each must be a positive int or a symbol"):
        g.add_input("x", ("N", *shape))
    assert g.inputs == [] and g.values == {}


def test_clip_sign_respects_the_upper_bound():
    """Clip(relu(x), max=-1) is negative everywhere: Net2Deeper must not treat it as non-negative
    (a Relu inserted there would change the function)."""
    import numpy as np

    from nashir import GraphBuilder
    from nashir.ops import get_op

    for lo, hi, expect in ((None, -1.0, False), (None, 6.0, True), (0.0, 6.0, True), (0.0, -1.0, False),
                           (-1.0, 6.0, True)):
        b = GraphBuilder("c", input_shape=(2, 4, 4))
        h = b.relu(b.conv(b.input, 2))
        lo_v = None if lo is None else b.graph.add_const(np.array(lo, np.float32), "lo")
        hi_v = None if hi is None else b.graph.add_const(np.array(hi, np.float32), "hi")
        nd = b.graph.add_node("Clip", [h, lo_v, hi_v])
        assert get_op("Clip").sign(nd, [True, True, True]) is expect, (lo, hi)
