"""Import: models built with onnx.helper, run by onnxruntime before and after load -> save.

Each test checks the normalised IR (which ops appear) and that onnxruntime gives the same outputs
for the source model and for nashir's re-export, at another batch size too where it matters.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_onnx_support import assert_close

import nashir
from nashir.backends.onnx import from_onnx, run, save

RNG = np.random.default_rng(0)
NEWEST = onnx.defs.onnx_opset_version()


def W(*shape, scale=0.3):
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def make_model(
    nodes,
    inits,
    x_shape=("N", 3, 8, 8),
    out="y",
    opset=17,
    ir=None,
    inits_as_inputs=False,
    x_type=TensorProto.FLOAT,
    extra_inputs=(),
):
    inputs = [helper.make_tensor_value_info("x", x_type, list(x_shape)), *extra_inputs]
    if inits_as_inputs:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    outs = [
        helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
        for o in ([out] if isinstance(out, str) else out)
    ]
    g = helper.make_graph(nodes, "src", inputs, outs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir if ir is not None else helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    return m


def externalize(model, folder, location, offset=16):
    """Move every initializer of ``model`` into ``folder/location`` (in place), ``offset`` bytes in."""
    path = folder / location
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\0" * offset)
        for t in model.graph.initializer:
            raw = numpy_helper.to_array(t).tobytes()
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", location), ("offset", str(f.tell())), ("length", str(len(raw)))):
                e = t.external_data.add()
                e.key, e.value = k, v
            f.write(raw)


def roundtrip(model, tmp_path, x_shape=(2, 3, 8, 8), batches=(), input_shape=None, rtol=1e-5):
    """load -> save -> load; onnxruntime outputs of source and re-export agree; text form stable."""
    src = tmp_path / "src.onnx"
    onnx.save(model, str(src))
    g = nashir.load(src, input_shape=input_shape)
    out = tmp_path / "out.onnx"
    save(g, out)
    onnx.checker.check_model(str(out), full_check=True)
    x = RNG.normal(size=x_shape).astype(np.float32)
    want = run(src, x)
    got = run(out, x)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert_close(a, b, rtol=rtol)
    g2 = nashir.load(out)
    assert str(g2) == str(g)
    for n in batches:
        xb = RNG.normal(size=(n, *x_shape[1:])).astype(np.float32)
        assert run(out, xb)[0].shape[0] == n
    return g


def ops_of(g):
    return [n.op_type for n in g.nodes]


# ---------------------------------------------------------------- opsets


def _cnn_for_opset(opset, ir=None, inits_as_inputs=False):
    C = 4
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    bn_attrs = {"epsilon": 1e-3}
    if opset < 9:
        bn_attrs["spatial"] = 1
    nodes.append(
        helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"], name="bn", **bn_attrs)
    )
    if opset < 11:
        nodes.append(helper.make_node("Clip", ["n"], ["r"], name="clip", min=0.0, max=6.0))
    else:
        nodes.append(helper.make_node("Clip", ["n", "lo", "hi"], ["r"], name="clip"))
    if opset < 12:
        nodes.append(helper.make_node("Dropout", ["r"], ["d", "mask"], name="drop", ratio=0.3))
    else:
        nodes.append(helper.make_node("Dropout", ["r", "ratio", "train"], ["d", "mask"], name="drop"))
    nodes += [
        helper.make_node("LRN", ["d"], ["l"], name="lrn", size=3, alpha=1e-3),
        helper.make_node("Mul", ["l", "cs"], ["ls"], name="scale"),
        helper.make_node("Sum", ["l", "ls", "d"], ["s3"], name="sum"),
        helper.make_node("MaxPool", ["s3"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], name="fc", transB=1),
        helper.make_node("Softmax", ["g"], ["y"], name="sm", axis=1),
    ]
    inits = [
        init("w", W(C, 3, 3, 3)),
        init("b", W(C)),
        init("s", W(C) + 1),
        init("bb", W(C)),
        init("m", W(C)),
        init("v", np.abs(W(C)) + 0.5),
        init("cs", W(1, C, 1, 1)),
        init("fw", W(10, C * 16)),
        init("fb", W(10)),
    ]
    if opset >= 11:
        inits += [init("lo", np.array(0.0, np.float32)), init("hi", np.array(6.0, np.float32))]
    if opset >= 12:
        inits += [init("ratio", np.array(0.3, np.float32)), init("train", np.array(False))]
    return make_model(nodes, inits, opset=opset, ir=ir, inits_as_inputs=inits_as_inputs)


@pytest.mark.parametrize("opset", range(7, NEWEST + 1))
def test_every_opset(opset, tmp_path):
    g = roundtrip(_cnn_for_opset(opset), tmp_path, batches=(1, 7))
    assert ops_of(g) == [
        "Conv",
        "BatchNormalization",
        "Clip",
        "Dropout",
        "LRN",
        "Mul",
        "Add",
        "Add",
        "MaxPool",
        "Flatten",
        "Gemm",
        "Softmax",
    ]
    assert g.meta["source_opset"] == opset
    assert [n.name for n in g.nodes][:5] == ["conv", "bn", "clip", "drop", "lrn"]
    drop = g.node("drop")
    assert len(drop.inputs) == 1 and len(drop.outputs) == 1


@pytest.mark.parametrize("ir", [3, 4, 7])
def test_ir_versions_and_initializers_listed_as_inputs(ir, tmp_path):
    m = _cnn_for_opset(7 if ir < 7 else 13, ir=ir, inits_as_inputs=True)
    g = roundtrip(m, tmp_path)
    assert [v.name for v in g.inputs] == ["x"]
    assert g.value("w").is_const


# ---------------------------------------------------------------- constants


def test_constants_folded(tmp_path):
    w = W(4, 3, 3, 3)
    nodes = [
        # weight from a Constant, reshaped from a flat Constant through Identity and Cast
        helper.make_node(
            "Constant", [], ["wflat"], value=numpy_helper.from_array(w.reshape(-1).astype(np.float64))
        ),
        helper.make_node("Cast", ["wflat"], ["wflat32"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["wshape"], value_ints=[4, 3, 3, 3]),
        helper.make_node("Reshape", ["wflat32", "wshape"], ["w0"]),
        helper.make_node("Identity", ["w0"], ["w"]),
        # bias from ConstantOfShape
        helper.make_node("Constant", [], ["bshape"], value=numpy_helper.from_array(np.array([4], np.int64))),
        helper.make_node(
            "ConstantOfShape", ["bshape"], ["b"], value=numpy_helper.from_array(np.array([0.25], np.float32))
        ),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        # per-channel scale through Unsqueeze of a 1-D constant (opset 13: axes as an input)
        helper.make_node(
            "Constant", [], ["s1"], value=numpy_helper.from_array(np.linspace(0.5, 2, 4, dtype=np.float32))
        ),
        helper.make_node("Constant", [], ["ax"], value=numpy_helper.from_array(np.array([1, 2], np.int64))),
        helper.make_node("Unsqueeze", ["s1", "ax"], ["s"]),
        helper.make_node("Mul", ["c", "s"], ["y"], name="scale"),
    ]
    g = roundtrip(make_model(nodes, [], opset=13), tmp_path)
    assert ops_of(g) == ["Conv", "Mul"]
    conv = g.node("conv")
    assert np.array_equal(conv.inputs[1].const, w)
    assert np.array_equal(conv.inputs[2].const, np.full(4, 0.25, np.float32))
    assert g.node("scale").inputs[1].shape == (4, 1, 1)


# ---------------------------------------------------------------- Flatten forms


def _conv_then(nodes_after, inits_after, x_shape=("N", 3, 8, 8), opset=13):
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        *nodes_after,
        helper.make_node("Gemm", ["f", "fw"], ["y"], name="fc", transB=1),
    ]
    return make_model(
        nodes, [init("w", W(2, 3, 3, 3)), init("fw", W(5, 128)), *inits_after], x_shape=x_shape, opset=opset
    )


FLATTEN_FORMS = {
    "flatten": ([helper.make_node("Flatten", ["c"], ["f"], name="flat", axis=1)], []),
    "flatten-negative-axis": ([helper.make_node("Flatten", ["c"], ["f"], name="flat", axis=-3)], []),
    "reshape-0": (
        [helper.make_node("Reshape", ["c", "t"], ["f"], name="flat")],
        [init("t", np.array([0, -1]))],
    ),
    "reshape-minus1-K": (
        [helper.make_node("Reshape", ["c", "t"], ["f"], name="flat")],
        [init("t", np.array([-1, 128]))],
    ),
    "shape-gather-unsqueeze-concat": (
        [
            helper.make_node("Shape", ["c"], ["sh"]),
            helper.make_node("Constant", [], ["i0"], value=numpy_helper.from_array(np.array(0, np.int64))),
            helper.make_node("Gather", ["sh", "i0"], ["n"], axis=0),
            helper.make_node("Unsqueeze", ["n", "a0"], ["n1"]),
            helper.make_node("Concat", ["n1", "m1"], ["t"], axis=0),
            helper.make_node("Reshape", ["c", "t"], ["f"], name="flat"),
        ],
        [init("a0", np.array([0], np.int64)), init("m1", np.array([-1], np.int64))],
    ),
}


@pytest.mark.parametrize("form", sorted(FLATTEN_FORMS))
def test_flatten_forms(form, tmp_path):
    nodes, inits = FLATTEN_FORMS[form]
    g = roundtrip(_conv_then(nodes, inits), tmp_path, batches=(1, 5))
    assert ops_of(g) == ["Conv", "Flatten", "Gemm"]
    assert g.node("flat").attrs == {"axis": 1}


@pytest.mark.parametrize("batch", [1, 3])
def test_reshape_at_fixed_batch_becomes_flatten(batch, tmp_path):
    nodes = [helper.make_node("Reshape", ["c", "t"], ["f"], name="flat")]
    m = _conv_then(nodes, [init("t", np.array([batch, -1]))], x_shape=(batch, 3, 8, 8))
    g = roundtrip(m, tmp_path, x_shape=(batch, 3, 8, 8), batches=(7,))
    assert ops_of(g) == ["Conv", "Flatten", "Gemm"]
    assert g.inputs[0].shape == ("N", 3, 8, 8) and g.meta["source_batch"] == batch


def test_other_reshape_is_kept(tmp_path):
    nodes = [
        helper.make_node("Reshape", ["c", "t"], ["r"], name="r"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
    ]
    g = roundtrip(_conv_then(nodes, [init("t", np.array([0, 8, 16]))]), tmp_path)
    assert ops_of(g) == ["Conv", "Reshape", "Flatten", "Gemm"]


# ---------------------------------------------------------------- Gemm / MatMul


@pytest.mark.parametrize(
    "transB,alpha,beta,bias_shape",
    [
        (0, 1.0, 1.0, (5,)),
        (1, 1.0, 1.0, (1, 5)),
        (0, 0.5, 2.0, (5,)),
        (1, 2.0, 0.5, ()),
        (1, 1.0, 1.0, None),
    ],
)
def test_gemm_forms(transB, alpha, beta, bias_shape, tmp_path):
    w = W(5, 12)
    ins = ["x", "B"] + (["C"] if bias_shape is not None else [])
    inits = [init("B", w if transB else w.T)]
    if bias_shape is not None:
        inits.append(init("C", W(*bias_shape) if bias_shape else np.float32(0.7)))
    m = make_model(
        [helper.make_node("Gemm", ins, ["y"], name="fc", transB=transB, alpha=alpha, beta=beta)],
        inits,
        x_shape=("N", 12),
    )
    g = roundtrip(m, tmp_path, x_shape=(3, 12))
    fc = g.node("fc")
    assert fc.attrs == {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1}
    assert fc.inputs[1].shape == (5, 12)
    assert (len(fc.inputs) == 3) == (bias_shape is not None)
    if bias_shape is not None:
        assert fc.inputs[2].shape == (5,)


@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_becomes_gemm(bias_first, tmp_path):
    add_in = ["bias", "mm"] if bias_first else ["mm", "bias"]
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "B"], ["mm"], name="fc"),
        helper.make_node("Add", add_in, ["y"], name="fc_add"),
    ]
    m = make_model(nodes, [init("B", W(48, 6)), init("bias", W(6))], x_shape=("N", 3, 4, 4))
    g = roundtrip(m, tmp_path, x_shape=(2, 3, 4, 4))
    assert ops_of(g) == ["Flatten", "Gemm"]
    fc = g.node("fc")
    assert fc.inputs[1].shape == (6, 48) and fc.inputs[2].shape == (6,)
    assert fc.outputs[0].name == "y" and [v.name for v in g.outputs] == ["y"]


def test_matmul_without_bias(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "B"], ["y"], name="fc")]
    g = roundtrip(make_model(nodes, [init("B", W(7, 3))], x_shape=("N", 7)), tmp_path, x_shape=(4, 7))
    assert ops_of(g) == ["Gemm"] and len(g.node("fc").inputs) == 2


# ---------------------------------------------------------------- Conv and pooling


@pytest.mark.parametrize("kind", ["bias", "nobias", "grouped", "depthwise"])
def test_conv_forms(kind, tmp_path):
    group = {"grouped": 2, "depthwise": 4}.get(kind, 1)
    ins = ["x", "w"] + (["b"] if kind != "nobias" else [])
    nodes = [
        helper.make_node(
            "Conv", ins, ["y"], name="conv", group=group, strides=[2, 1], pads=[0, 1, 2, 1], dilations=[1, 2]
        )
    ]
    m = make_model(nodes, [init("w", W(8, 4 // group, 3, 3)), init("b", W(8))], x_shape=("N", 4, 9, 9))
    g = roundtrip(m, tmp_path, x_shape=(2, 4, 9, 9))
    conv = g.node("conv")
    assert conv.attrs["group"] == group and conv.attrs["pads"] == [0, 1, 2, 1]


@pytest.mark.parametrize("op", ["Conv", "MaxPool", "AveragePool"])
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_auto_pad_resolved(op, auto_pad, tmp_path):
    attrs = {"auto_pad": auto_pad, "strides": [2, 2]}
    if op == "Conv":
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="n", **attrs)]
        inits = [init("w", W(2, 3, 4, 4))]
    else:
        nodes = [helper.make_node(op, ["x"], ["y"], name="n", kernel_shape=[4, 4], **attrs)]
        inits = []
    m = make_model(nodes, inits, x_shape=("N", 3, 9, 9), opset=11)
    g = roundtrip(m, tmp_path, x_shape=(2, 3, 9, 9))
    n = g.node("n")
    assert n.attrs["auto_pad"] == "NOTSET"
    # total padding for in 9, stride 2, k 4: out 5, (5-1)*2 + 4 - 9 = 3; SAME_UPPER puts the extra at the end
    want = {"SAME_UPPER": [1, 1, 2, 2], "SAME_LOWER": [2, 2, 1, 1], "VALID": [0, 0, 0, 0]}[auto_pad]
    assert n.attrs["pads"] == want
    assert n.outputs[0].shape[2:] == ((5, 5) if auto_pad != "VALID" else (3, 3))


@pytest.mark.parametrize(
    "op,extra",
    [
        ("MaxPool", {"ceil_mode": 1}),
        ("MaxPool", {"pads": [0, 1, 1, 0]}),
        ("AveragePool", {"ceil_mode": 1}),
        ("AveragePool", {"count_include_pad": 1, "pads": [1, 0, 1, 2]}),
        ("AveragePool", {"count_include_pad": 0, "pads": [1, 1, 0, 1], "ceil_mode": 1}),
    ],
)
def test_pooling_forms(op, extra, tmp_path):
    nodes = [helper.make_node(op, ["x"], ["y"], name="p", kernel_shape=[3, 3], strides=[2, 2], **extra)]
    g = roundtrip(make_model(nodes, [], x_shape=("N", 3, 8, 8)), tmp_path)
    for k, v in extra.items():
        assert g.node("p").attrs[k] == v


# ---------------------------------------------------------------- BN, Dropout, misc


@pytest.mark.parametrize("opset", [7, 9, 14, 15, NEWEST])
def test_batchnorm_unused_training_outputs(opset, tmp_path):
    outs = ["y", "rm", "rv"] if opset >= 14 else ["y", "rm", "rv", "sm", "sv"]
    attrs = {"spatial": 1} if opset < 9 else {}
    if opset >= 14:
        attrs["training_mode"] = 0
        outs = ["y"]  # ONNX allows the statistics outputs only in training mode from opset 14
    nodes = [
        helper.make_node(
            "BatchNormalization", ["x", "s", "b", "m", "v"], outs, name="bn", epsilon=1e-4, **attrs
        )
    ]
    inits = [init("s", W(3) + 1), init("b", W(3)), init("m", W(3)), init("v", np.abs(W(3)) + 0.5)]
    m = make_model(nodes, inits, opset=opset)
    # extra outputs mean training mode to onnxruntime; nashir reads the node in inference mode, so the
    # reference is the same model with the statistics outputs removed
    ref = onnx.ModelProto()
    ref.CopyFrom(m)
    del ref.graph.node[0].output[1:]
    src = tmp_path / "src.onnx"
    onnx.save(m, str(src))
    g = nashir.load(src)
    save(g, tmp_path / "out.onnx")
    x = RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)
    assert_close(run(tmp_path / "out.onnx", x)[0], run(ref, x)[0])
    assert str(nashir.load(tmp_path / "out.onnx")) == str(g)
    assert ops_of(g) == ["BatchNormalization"]
    assert g.node("bn").attrs["epsilon"] == 1e-4


@pytest.mark.parametrize("opset", [7, 10, 12, 13, NEWEST])
def test_dropout_every_opset(opset, tmp_path):
    if opset < 12:
        nodes = [helper.make_node("Dropout", ["x"], ["d", "mask"], name="drop", ratio=0.9)]
        inits = []
    else:
        nodes = [helper.make_node("Dropout", ["x", "r", "t"], ["d", "mask"], name="drop", seed=3)]
        inits = [init("r", np.array(0.9, np.float32)), init("t", np.array(False))]
    nodes.append(helper.make_node("Relu", ["d"], ["y"], name="relu"))
    g = roundtrip(make_model(nodes, inits, opset=opset), tmp_path)
    drop = g.node("drop")
    assert drop.op_type == "Dropout" and len(drop.inputs) == 1
    assert drop.attrs == ({"seed": 3} if opset >= 12 else {})


def test_sum_of_one_and_two(tmp_path):
    nodes = [
        helper.make_node("Sum", ["x"], ["a"], name="s1"),
        helper.make_node("Sum", ["a", "x"], ["y"], name="s2"),
    ]
    g = roundtrip(make_model(nodes, []), tmp_path)
    assert ops_of(g) == ["Identity", "Add"]


@pytest.mark.parametrize("opset,axis,rank", [(11, 1, 4), (11, 2, 4), (12, -1, 4), (11, None, 2), (13, 1, 4)])
def test_softmax_axis_semantics(opset, axis, rank, tmp_path):
    shape = ("N", 3, 4, 5)[:rank]
    attrs = {} if axis is None else {"axis": axis}
    m = make_model(
        [helper.make_node("Softmax", ["x"], ["y"], name="sm", **attrs)], [], x_shape=shape, opset=opset
    )
    g = roundtrip(m, tmp_path, x_shape=(2, 3, 4, 5)[:rank], batches=(3,))
    spans_more = opset < 13 and axis is not None and axis % rank != rank - 1
    first = "Flatten" if axis == 1 else "Reshape"
    assert ops_of(g) == ([first, "Softmax", "Reshape"] if spans_more else ["Softmax"])


@pytest.mark.parametrize("op", ["Add", "Mul", "Sub", "Div"])
@pytest.mark.parametrize("cshape", [(3, 1, 1), (1, 3, 1, 1), ()])
def test_per_channel_constants(op, cshape, tmp_path):
    c = (np.abs(W(*cshape)) + 0.5) if cshape else np.float32(1.5)
    nodes = [helper.make_node(op, ["x", "c"], ["y"], name="pc")]
    g = roundtrip(make_model(nodes, [init("c", c)]), tmp_path)
    assert ops_of(g) == [{"Sub": "Add", "Div": "Mul"}.get(op, op)]


def test_reduce_mean_and_squeeze_are_global_pooling(tmp_path):
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], name="gap", axes=[2, 3], keepdims=1),
        helper.make_node("Squeeze", ["m", "ax"], ["y"], name="sq"),
    ]
    g = roundtrip(make_model(nodes, [init("ax", np.array([2, 3]))], opset=13), tmp_path)
    assert ops_of(g) == ["GlobalAveragePool", "Flatten"]


def test_concat_transpose_leaky_sigmoid_tanh(tmp_path):
    nodes = [
        helper.make_node("LeakyRelu", ["x"], ["a"], name="lr", alpha=0.2),
        helper.make_node("Sigmoid", ["x"], ["b"], name="sg"),
        helper.make_node("Tanh", ["x"], ["c"], name="th"),
        helper.make_node("Concat", ["a", "b", "c"], ["cat"], name="cat", axis=1),
        helper.make_node("Transpose", ["cat"], ["y"], name="tr", perm=[0, 2, 3, 1]),
    ]
    g = roundtrip(make_model(nodes, []), tmp_path)
    assert g.outputs[0].shape == ("N", 8, 8, 9)


# ---------------------------------------------------------------- names, batch, external data


def test_unnamed_nodes_get_deterministic_names(tmp_path):
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="named"),
    ]
    g = roundtrip(make_model(nodes, [init("w", W(4, 3, 3, 3)), init("w2", W(2, 4, 1, 1))]), tmp_path)
    assert [n.name for n in g.nodes] == ["conv_0", "relu_0", "named"]
    assert [n.outputs[0].name for n in g.nodes] == ["c", "r", "y"]


@pytest.mark.parametrize("batch", ["N", "batch_size", 1, 4, None])
def test_symbolic_or_fixed_batch(batch, tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    m = make_model(nodes, [init("w", W(2, 3, 3, 3))], x_shape=(batch, 3, 8, 8))
    b = batch if isinstance(batch, int) else 2
    g = roundtrip(m, tmp_path, x_shape=(b, 3, 8, 8), batches=(7,))
    assert g.inputs[0].shape == ("N", 3, 8, 8)


def test_input_shape_option(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    m = make_model(nodes, [init("w", W(2, 3, 3, 3))], x_shape=("N", 3, "H", "W"))
    g = roundtrip(m, tmp_path, x_shape=(2, 3, 10, 12), input_shape=(3, 10, 12))
    assert g.inputs[0].shape == ("N", 3, 10, 12) and g.outputs[0].shape == ("N", 2, 8, 10)


def test_external_data_relative_to_model(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    m = make_model(nodes, [init("w", W(16, 3, 3, 3))])
    sub = tmp_path / "model"
    w0 = numpy_helper.to_array(m.graph.initializer[0])
    externalize(m, sub, "weights/w.bin")
    onnx.save(m, str(sub / "m.onnx"))
    g = nashir.load(sub / "m.onnx")
    assert np.array_equal(g.value("w").const, w0)
    # from_onnx with base_dir, on a ModelProto that keeps the external references
    mp = onnx.load(str(sub / "m.onnx"), load_external_data=False)
    g2 = from_onnx(mp, base_dir=sub)
    assert str(g2) == str(g)
    x = RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)
    assert_close(run(g, x)[0], run(sub / "m.onnx", x)[0])


def test_opset_below_7_is_upgraded():
    inits = [init("w", W(4, 3, 3, 3))] + [init(k, np.linspace(0.5, 1.5, 4, dtype=np.float32)) for k in "sbmv"]

    def model(opset):
        bn_attrs = {"is_test": 1, "epsilon": 1e-3} if opset < 7 else {"epsilon": 1e-3}
        nodes = [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn", **bn_attrs),
            helper.make_node("Relu", ["n"], ["y"], name="r"),
        ]
        return make_model(nodes, inits, opset=opset, ir=3, inits_as_inputs=True)

    g = nashir.load(model(6))  # onnxruntime no longer runs BatchNormalization-6: compare with opset 7
    assert ops_of(g) == ["Conv", "BatchNormalization", "Relu"] and g.meta["source_opset"] == 7
    assert g.node("bn").attrs["epsilon"] == 1e-3
    x = RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)
    assert_close(run(g, x)[0], run(model(7), x)[0])


@pytest.mark.parametrize("opset", [9, 13, 18])
def test_zero_pad_folded_into_convs(opset, tmp_path):
    pads = [0, 0, 1, 2, 0, 0, 2, 0]
    if opset < 11:
        pad = helper.make_node("Pad", ["x"], ["p"], name="pad", pads=pads)
        inits = []
    elif opset < 18:
        pad = helper.make_node("Pad", ["x", "pads"], ["p"], name="pad")
        inits = [init("pads", np.array(pads, np.int64))]
    else:  # only the spatial axes, through the axes input
        pad = helper.make_node("Pad", ["x", "pads", "", "axes"], ["p"], name="pad")
        inits = [init("pads", np.array([1, 2, 2, 0], np.int64)), init("axes", np.array([2, 3], np.int64))]
    nodes = [
        pad,
        helper.make_node("Conv", ["p", "w"], ["a"], name="c1", pads=[1, 0, 0, 1]),
        helper.make_node("Conv", ["p", "w"], ["b"], name="c2", strides=[2, 2]),
        helper.make_node("Relu", ["a"], ["y"], name="r"),
        helper.make_node("Relu", ["b"], ["z"], name="r2"),
    ]
    m = make_model(nodes, [init("w", W(2, 3, 3, 3)), *inits], out=["y", "z"], opset=opset)
    g = roundtrip(m, tmp_path)
    assert ops_of(g) == ["Conv", "Conv", "Relu", "Relu"]
    assert g.node("c1").attrs["pads"] == [2, 2, 2, 1] and g.node("c2").attrs["pads"] == [1, 2, 2, 0]


def test_pad_that_crops_is_unsupported(tmp_path):
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="reflect"),
             helper.make_node("Conv", ["p", "w"], ["y"], name="c")]
    m = make_model(nodes, [init("w", W(2, 3, 3, 3)), init("pads", np.array([0, 0, -1, 1, 0, 0, 1, 1]))])
    from nashir.errors import UnsupportedOpError

    with pytest.raises(UnsupportedOpError, match=r"Pad: pad \(mode='reflect'.*non-negative pads"):
        nashir.load(m)


@pytest.mark.parametrize("opset", [9, 11, 13, 18])
@pytest.mark.parametrize("mode,value", [("constant", 0.0), ("constant", -1.5), ("reflect", 0.0),
                                        ("edge", 0.0)])
def test_pad_that_is_not_folded_becomes_the_ir_pad(opset, mode, value, tmp_path):
    """A Pad before a MaxPool (the opset-9 zero pad of torch's ZeroPad2d), or any mode: one IR Pad."""
    pads = [0, 0, 1, 0, 0, 0, 0, 2]
    if opset < 11:
        pad = helper.make_node("Pad", ["x"], ["p"], name="pad", mode=mode, pads=pads, value=value)
        inits = []
    else:
        pad = helper.make_node("Pad", ["x", "pads", "cv"], ["p"], name="pad", mode=mode)
        inits = [init("pads", np.array(pads, np.int64)), init("cv", np.array(value, np.float32))]
    nodes = [pad, helper.make_node("MaxPool", ["p"], ["y"], name="mp", kernel_shape=[2, 2], strides=[2, 2])]
    g = roundtrip(make_model(nodes, inits, opset=opset), tmp_path)
    assert ops_of(g) == ["Pad", "MaxPool"]
    assert g.node("pad").attrs == {"pads": pads, "mode": mode, "value": value}
    assert g.value("y").shape == ("N", 3, 4, 5)


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 14, 17])
def test_new_activations_prelu_instance_norm(opset, tmp_path):
    """Elu, HardSigmoid, HardSwish (opset 14+), PRelu with a per-channel slope, InstanceNormalization,
    GlobalMaxPool and LogSoftmax: imported one to one, same outputs in onnxruntime after load -> save."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Elu", ["c"], ["e"], name="elu", alpha=0.6),
        helper.make_node("HardSigmoid", ["e"], ["hs"], name="hsig", alpha=0.25, beta=0.45),
        helper.make_node("PRelu", ["hs", "slope"], ["pr"], name="prelu"),
        helper.make_node("InstanceNormalization", ["pr", "sc", "bi"], ["inn"], name="inorm", epsilon=1e-3),
    ]
    last = "inn"
    if opset >= 14:
        nodes.append(helper.make_node("HardSwish", ["inn"], ["hw"], name="hswish"))
        last = "hw"
    nodes += [helper.make_node("GlobalMaxPool", [last], ["gm"], name="gmp"),
              helper.make_node("Flatten", ["gm"], ["f"], name="fl"),
              helper.make_node("LogSoftmax", ["f"], ["y"], name="ls", axis=1)]
    inits = [init("w", W(4, 3, 3, 3)), init("slope", W(4, 1, 1)), init("sc", W(4) + 1), init("bi", W(4))]
    g = roundtrip(make_model(nodes, inits, opset=opset), tmp_path)
    want = ["Conv", "Elu", "HardSigmoid", "PRelu", "InstanceNormalization"] + (
        ["HardSwish"] if opset >= 14 else []) + ["GlobalMaxPool", "Flatten", "LogSoftmax"]
    assert ops_of(g) == want
    assert g.node("hsig").attrs == {"alpha": 0.25, "beta": 0.45} and g.node("elu").attrs == {"alpha": 0.6}


@pytest.mark.parametrize("opset", [9, 10, 13, 18])
def test_slice_forms(opset, tmp_path):
    """Slice: attributes before 10, inputs after (negative indices, ends past the axis, steps);
    the IR keeps clamped, explicit starts/ends/axes/steps."""
    if opset < 10:
        node = helper.make_node("Slice", ["x"], ["y"], name="sl", starts=[1, -3], ends=[100, -1], axes=[2, 3])
        inits, steps = [], [1, 1]
    else:
        node = helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"], name="sl")
        steps = [2, -1]
        inits = [init("st", np.array([1, -3])), init("en", np.array([100, -9])), init("ax", np.array([2, 3])),
                 init("sp", np.array(steps))]
    g = roundtrip(make_model([node], inits, opset=opset), tmp_path)
    a = g.node("sl").attrs
    if opset < 10:
        assert a == {"starts": [1, 5], "ends": [8, 7], "axes": [2, 3], "steps": [1, 1]}
        assert g.value("y").shape == ("N", 3, 7, 2)
    else:
        assert a == {"starts": [1, 5], "ends": [8, -(2**63)], "axes": [2, 3], "steps": [2, -1]}
        assert g.value("y").shape == ("N", 3, 4, 6)


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("sizes", [None, [2, 4]])
def test_split_becomes_one_slice_per_output(opset, sizes, tmp_path):
    d = 6
    ins, inits, attrs = ["c"], [init("w", W(d, 3, 1, 1))], {"axis": 1}
    if sizes is not None and opset < 13:
        attrs["split"] = sizes
    elif sizes is not None:
        ins.append("sp")
        inits.append(init("sp", np.array(sizes, np.int64)))
    elif opset >= 18:
        attrs["num_outputs"] = 2
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Split", ins, ["a", "b"], name="split", **attrs),
             helper.make_node("Relu", ["a"], ["y"], name="ra"),
             helper.make_node("Relu", ["b"], ["z"], name="rb")]
    g = roundtrip(make_model(nodes, inits, out=["y", "z"], opset=opset), tmp_path)
    assert ops_of(g) == ["Conv", "Slice", "Slice", "Relu", "Relu"]
    first = (sizes or [3, 3])[0]
    assert g.node("split").attrs == {"starts": [0], "ends": [first], "axes": [1], "steps": [1]}
    assert g.node("split_1").attrs == {"starts": [first], "ends": [d], "axes": [1], "steps": [1]}
    assert g.value("y").shape[1] == first and g.value("z").shape[1] == d - first


def test_gemm_trans_a(tmp_path):
    # the batch reaches the Gemm in dimension 1 (after a Transpose); transA=1 brings it back first
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], name="t", perm=[1, 0]),
        helper.make_node("Gemm", ["xt", "B", "C"], ["y"], name="fc", transA=1, transB=1, alpha=0.5),
    ]
    m = make_model(nodes, [init("B", W(5, 12)), init("C", W(5))], x_shape=("N", 12))
    g = roundtrip(m, tmp_path, x_shape=(3, 12), batches=(6,))
    assert ops_of(g) == ["Transpose", "Transpose", "Gemm"]
    assert g.node("fc").attrs == {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 1}
