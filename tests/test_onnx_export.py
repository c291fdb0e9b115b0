"""Export: every op of the table through to_onnx -> onnx.checker (full) -> onnxruntime, against an
independent torch reference; opset/IR version; symbolic batch; atomic save; external data."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from test_onnx_support import assert_close, sha256, torch_reference

from nashir import GraphBuilder
from nashir.backends.onnx import EXPORT_IR_VERSION, EXPORT_OPSET, ExportError, model_bytes, run, save, to_onnx
from nashir.ops import supported_ops


def _graph_all_ops():
    """One graph that uses every op of the table at least once."""
    b = GraphBuilder("allops", input_shape=(4, 9, 9), seed=1)
    g = b.graph
    x = b.input
    h = b.conv(x, 8, 3, pads=[0, 1, 2, 1])                      # asymmetric pads, bias
    h = b.bn(h, random_stats=True)
    h = b.relu(h)
    h = b.op("LeakyRelu", h, alpha=0.2)
    d = b.conv(h, 8, 3, group=8, bias=False)                    # depthwise
    d = b.op("Sigmoid", d)
    e = b.conv(h, 8, 1, group=2)                                # grouped
    e = b.op("Tanh", e)
    h = b.add(d, e)
    h = b.op("Mul", h, g.add_const(np.linspace(0.5, 1.5, 8).astype(np.float32).reshape(8, 1, 1), "scale_c"))
    h = b.op("Add", h, g.add_const(np.linspace(-1, 1, 8).astype(np.float32).reshape(1, 8, 1, 1), "shift_c"))
    h = g.add_node("Clip", [h, g.add_const(np.array(-0.5, np.float32), "lo"),
                            g.add_const(np.array(2.0, np.float32), "hi")]).output
    h = b.op("LRN", h, size=3, alpha=1e-3, beta=0.75, bias=1.0)
    h = b.op("Identity", h)
    h = b.op("Dropout", h)
    m = b.maxpool(h, 3, 2, pads=1, ceil_mode=True)
    a = b.avgpool(h, 3, 2, pads=1)
    g.set_attr(a.producer, "count_include_pad", 1)
    h = b.concat([m, a], axis=1)
    gp = b.global_avgpool(h)
    f = b.flatten(h)
    f = b.gemm(f, 12)
    f = b.op("Softmax", f, axis=1)
    r = g.add_node("Reshape", [gp, g.add_const(np.array([0, -1], np.int64), "shape_c")]).output
    t = b.op("Transpose", h, perm=[0, 2, 3, 1])
    # ops of issue 16: activations, PRelu, InstanceNormalization, Pad, Slice, GlobalMaxPool, LogSoftmax
    k = b.op("Elu", h, alpha=0.7)
    k = b.op("HardSigmoid", k, alpha=0.3, beta=0.4)
    k = b.op("HardSwish", k)
    k = g.add_node("PRelu", [k, g.add_const(np.linspace(-0.5, 0.5, 16).astype(np.float32).reshape(16, 1, 1),
                                            "slope_c")]).output
    sc = g.add_const(np.linspace(0.5, 2, 16).astype(np.float32), "in_s")
    bi = g.add_const(np.linspace(-1, 1, 16).astype(np.float32), "in_b")
    k = g.add_node("InstanceNormalization", [k, sc, bi], {"epsilon": 1e-3}).output
    wt = g.add_const(np.random.default_rng(5).normal(0, 0.2, (16, 16, 3, 3)).astype(np.float32), "ct_w")
    k = g.add_node("ConvTranspose", [k, wt, g.add_const(np.linspace(-1, 1, 16).astype(np.float32), "ct_b")],
                   {"strides": [2, 1], "pads": [1, 0, 0, 2], "output_padding": [1, 0], "dilations": [1, 2]},
                   name="ct").output
    k = b.op("Pad", k, pads=[0, 0, 1, 0, 0, 0, 0, 2], mode="reflect")
    k = b.op("Pad", k, pads=[0, 0, 0, 1, 0, 0, 1, 0], mode="constant", value=0.5)
    k = b.op("Pad", k, pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="edge")
    k = b.op("Slice", k, starts=[2, 1, 7], ends=[14, 6, -(2**63)], axes=[1, 2, 3], steps=[3, 1, -2])
    k = b.flatten(b.op("GlobalMaxPool", k))
    k = b.op("LogSoftmax", k, axis=1)
    return b.build(f, r, t, k)


def test_every_op_is_covered():
    g = _graph_all_ops()
    assert {n.op_type for n in g.nodes} == set(supported_ops())


@pytest.mark.parametrize("batch", [1, 5])
def test_export_all_ops_matches_torch(batch):
    g = _graph_all_ops()
    m = to_onnx(g)
    onnx.checker.check_model(m, full_check=True)
    x = np.random.default_rng(0).normal(size=(batch, 4, 9, 9)).astype(np.float32)
    got = run(g, x)
    want = torch_reference(g, x)
    assert len(got) == len(want) == 4
    for a, b in zip(got, want):
        assert_close(a, b)


def test_export_form():
    g = _graph_all_ops()
    m = to_onnx(g)
    assert m.ir_version == EXPORT_IR_VERSION == 8
    assert [(o.domain, o.version) for o in m.opset_import] == [("", EXPORT_OPSET)]
    init = {t.name for t in m.graph.initializer}
    assert init and not init & {i.name for i in m.graph.input}
    assert [i.name for i in m.graph.input] == ["input"]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [4, 9, 9]
    assert [n.name for n in m.graph.node] == [n.name for n in g.nodes]
    assert [n.output[0] for n in m.graph.node] == [n.outputs[0].name for n in g.nodes]
    for n in m.graph.node:   # IR attributes are explicit, e.g. Conv pads and auto_pad
        if n.op_type == "Conv":
            assert {a.name for a in n.attribute} >= {"pads", "strides", "dilations", "group", "kernel_shape"}
    assert onnx.load_from_string(model_bytes(g)) == m


def test_fixed_batch_graph_exports_symbolic_batch():
    b = GraphBuilder("fixed", input_shape=(3, 8, 8), batch=1)
    g = b.build(b.gemm(b.flatten(b.conv(b.input, 4)), 5))
    m = to_onnx(g)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert m.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    x = np.random.default_rng(1).normal(size=(7, 3, 8, 8)).astype(np.float32)
    assert run(m, x)[0].shape == (7, 5)


def test_averagepool_dilations_need_opset19():
    b = GraphBuilder("avgdil", input_shape=(2, 9, 9))
    g = b.graph
    h = g.add_node("AveragePool", [b.input], {"kernel_shape": [2, 2], "dilations": [2, 2]}, name="ap").output
    g = b.build(h)
    with pytest.raises(ExportError, match=r"'ap'.*dilations.*opset 17.*opset=19"):
        to_onnx(g)
    m = to_onnx(g, opset=19)
    assert m.ir_version == 9
    onnx.checker.check_model(m, full_check=True)
    x = np.random.default_rng(2).normal(size=(2, 2, 9, 9)).astype(np.float32)
    want = np.zeros((2, 2, 7, 7))
    for i in range(7):
        for j in range(7):
            want[:, :, i, j] = x[:, :, i:i + 3:2, j:j + 3:2].mean(axis=(2, 3))
    assert_close(run(m, x)[0], want)


def test_averagepool_unit_dilations_dropped_at_opset17():
    b = GraphBuilder("avg", input_shape=(2, 6, 6))
    g = b.build(b.avgpool(b.input, 2))
    node = to_onnx(g).graph.node[0]
    assert "dilations" not in {a.name for a in node.attribute}


@pytest.mark.parametrize("opset", [12, 10_000, "17"])
def test_bad_opset(opset):
    b = GraphBuilder("o", input_shape=(2, 4, 4))
    g = b.build(b.relu(b.input))
    with pytest.raises(ExportError, match="opset"):
        to_onnx(g, opset=opset)


def _hardswish_graph():
    b = GraphBuilder("hsw", input_shape=(2, 4, 4))
    return b.build(b.op("HardSwish", b.relu(b.input), name="hs"))


def test_op_newer_than_the_opset_is_refused_naming_it():
    """HardSwish exists from opset 14 (op table ``min_opset``): opset 13 is refused before anything is
    built, naming the op, its node and the opset to write; 14 works."""
    from nashir.ops import get_op, min_opset

    assert get_op("HardSwish").min_opset == 14 and get_op("Relu").min_opset == 1
    g = _hardswish_graph()
    assert min_opset(g) == (14, ["HardSwish"]) and min_opset(["Relu", "Conv"]) == (1, [])
    with pytest.raises(ExportError, match=r"opset 13 cannot express.*HardSwish \(opset 14\+\): hs.*opset 14"):
        to_onnx(g, opset=13)
    m = to_onnx(g, opset=14)
    onnx.checker.check_model(m, full_check=True)


def test_save_is_atomic_and_leaves_no_temp(tmp_path):
    b = GraphBuilder("s", input_shape=(3, 8, 8))
    g = b.build(b.relu(b.conv(b.input, 4)))
    p = tmp_path / "m.onnx"
    save(g, p)
    assert os.listdir(tmp_path) == ["m.onnx"]
    onnx.checker.check_model(str(p), full_check=True)
    before = sha256(p)
    # an export error leaves the existing file untouched and writes nothing else
    with pytest.raises(ExportError):
        save(g, p, opset=3)
    assert sha256(p) == before and os.listdir(tmp_path) == ["m.onnx"]
    with pytest.raises(ExportError, match="does not exist"):
        save(g, tmp_path / "nope" / "m.onnx")


def test_save_external_data(tmp_path):
    b = GraphBuilder("ext", input_shape=(16, 8, 8))
    g = b.build(b.gemm(b.flatten(b.conv(b.input, 32)), 10))
    p = tmp_path / "big.onnx"
    save(g, p, external_data=True)
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    m = onnx.load(str(p), load_external_data=False)
    ext = [t.name for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert "conv_0.weight" in ext and "gemm_0.weight" in ext
    onnx.checker.check_model(str(p), full_check=True)
    x = np.random.default_rng(3).normal(size=(2, 16, 8, 8)).astype(np.float32)
    assert_close(run(p, x)[0], torch_reference(g, x)[0])


def test_run_inputs_dict_and_errors():
    b = GraphBuilder("r", input_shape=(3, 4, 4), input_name="img")
    g = b.build(b.relu(b.input))
    x = np.random.default_rng(4).normal(size=(2, 3, 4, 4))
    (y,) = run(g, {"img": x})          # float64 is cast to the model's float32
    assert y.dtype == np.float32 and np.array_equal(y, np.maximum(x.astype(np.float32), 0))
    from nashir.errors import BackendError

    with pytest.raises(BackendError, match="img"):
        run(g, {"x": x})
