"""Review regressions for the IR core: node checks that used to let through graphs that onnxruntime
then refused (mixed element types, out-of-range flags, LRN size < 1) or raised a bare TypeError.
Each failing mutator must leave the graph exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest

from nashir import GraphBuilder
from nashir.errors import OpError, VerifyError


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
