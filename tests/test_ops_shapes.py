"""Shape inference of the op table against independent oracles.

Conv and pooling output shapes are compared with ``torch.nn.functional`` (conv2d, max_pool2d,
avg_pool2d) on random hypothesis cases over kernel, stride, padding (asymmetric included),
dilation, groups and ceil_mode. Asymmetric pads are expressed in torch as an explicit zero
``F.pad`` before an op with zero (or symmetric) padding: the output *shape* of that composition is
the ONNX shape. One case torch cannot express — ceil_mode with more padding at the end than at the
beginning, where ONNX (and onnxruntime) drop a last window that starts in the end padding while
torch would count the explicit pad as input — is checked against onnxruntime instead.

Every hypothesis test is derandomized with an explicit ``max_examples`` so CI sees the same cases.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nashir import Graph, OpError, ShapeError
from nashir import ops as O

torch = pytest.importorskip("torch")
F = torch.nn.functional

SETTINGS = dict(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _graph_with_input(shape):
    g = Graph("shapes")
    x = g.add_input("x", shape)
    return g, x


# --------------------------------------------------------------------------------------------------
# Conv against torch.nn.functional.conv2d


@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 3))
    return dict(
        n=draw(st.integers(1, 2)),
        cin=groups * draw(st.integers(1, 3)),
        cout=groups * draw(st.integers(1, 3)),
        groups=groups,
        h=draw(st.integers(1, 14)),
        w=draw(st.integers(1, 14)),
        k=(draw(st.integers(1, 5)), draw(st.integers(1, 5))),
        s=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        d=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        # ONNX order: [h_begin, w_begin, h_end, w_end]
        pads=[draw(st.integers(0, 3)) for _ in range(4)],
        bias=draw(st.booleans()),
    )


def _torch_conv_shape(c):
    x = torch.zeros(c["n"], c["cin"], c["h"], c["w"])
    w = torch.zeros(c["cout"], c["cin"] // c["groups"], *c["k"])
    hb, wb, he, we = c["pads"]
    if hb == he and wb == we:  # torch's own symmetric padding
        y = F.conv2d(x, w, stride=c["s"], padding=(hb, wb), dilation=c["d"], groups=c["groups"])
    else:  # F.pad's order is last axis first: (w_begin, w_end, h_begin, h_end)
        y = F.conv2d(F.pad(x, (wb, we, hb, he)), w, stride=c["s"], dilation=c["d"], groups=c["groups"])
    return tuple(y.shape)


def _ir_conv_shape(c):
    g, x = _graph_with_input((c["n"], c["cin"], c["h"], c["w"]))
    w = g.add_const(np.zeros((c["cout"], c["cin"] // c["groups"], *c["k"]), np.float32), "w")
    ins = [x, w]
    if c["bias"]:
        ins.append(g.add_const(np.zeros(c["cout"], np.float32), "b"))
    node = g.add_node("Conv", ins, {"strides": list(c["s"]), "dilations": list(c["d"]), "pads": c["pads"],
                                    "group": c["groups"]}, name="conv")
    g.add_output(node.output)
    g.verify()
    return node.output.shape


@settings(max_examples=220, **SETTINGS)
@given(conv_cases())
def test_conv_shape_matches_torch(c):
    try:
        expected = _torch_conv_shape(c)
    except RuntimeError:  # torch: kernel larger than the padded input
        with pytest.raises(ShapeError, match="'conv'"):
            _ir_conv_shape(c)
        return
    assert _ir_conv_shape(c) == expected


@settings(max_examples=40, **SETTINGS)
@given(
    n_sp=st.sampled_from([1, 3]),
    size=st.integers(2, 7),
    k=st.integers(1, 3),
    s=st.integers(1, 2),
    d=st.integers(1, 2),
    pb=st.integers(0, 2),
    pe=st.integers(0, 2),
)
def test_conv1d_conv3d_shape_matches_torch(n_sp, size, k, s, d, pb, pe):
    sizes = [size + i for i in range(n_sp)]
    x = torch.zeros(1, 2, *sizes)
    w = torch.zeros(3, 2, *([k] * n_sp))
    conv = F.conv1d if n_sp == 1 else F.conv3d
    try:
        expected = tuple(conv(F.pad(x, (pb, pe) * n_sp), w, stride=s, dilation=d).shape)
    except RuntimeError:
        expected = None
    g, xv = _graph_with_input((1, 2, *sizes))
    wv = g.add_const(np.zeros((3, 2, *([k] * n_sp)), np.float32), "w")
    attrs = {"strides": [s] * n_sp, "dilations": [d] * n_sp, "pads": [pb] * n_sp + [pe] * n_sp}
    if expected is None:
        with pytest.raises(ShapeError):
            g.add_node("Conv", [xv, wv], attrs, name="conv")
    else:
        assert g.add_node("Conv", [xv, wv], attrs, name="conv").output.shape == expected


# --------------------------------------------------------------------------------------------------
# MaxPool / AveragePool against torch.nn.functional.max_pool2d / avg_pool2d


def _torch_pad_limit(op, k, d):
    """Largest symmetric ``padding=`` torch's pooling accepts for one axis."""
    return ((k - 1) * d + 1) // 2 if op == "MaxPool" else k // 2


@st.composite
def pool_cases(draw):
    op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
    ceil = draw(st.booleans())
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if op == "MaxPool" else (1, 1)
    pads_b, pads_e = [], []
    for ax in range(2):
        pb = draw(st.integers(0, k[ax] - 1))  # ONNX/onnxruntime: pads < kernel
        if ceil:
            # torch-expressible: end pad as torch's symmetric padding, the surplus at the begin via F.pad
            pe = draw(st.integers(0, min(pb, _torch_pad_limit(op, k[ax], d[ax]))))
        else:
            pe = draw(st.integers(0, k[ax] - 1))
        pads_b.append(pb)
        pads_e.append(pe)
    return dict(
        op=op, ceil=ceil, k=k, d=d,
        s=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        h=draw(st.integers(1, 14)), w=draw(st.integers(1, 14)),
        pads=pads_b + pads_e,
    )


def _torch_pool_shape(c):
    x = torch.zeros(1, 2, c["h"], c["w"])
    hb, wb, he, we = c["pads"]
    if c["ceil"]:  # he <= hb, we <= wb by construction
        x = F.pad(x, (wb - we, 0, hb - he, 0))
        padding = (he, we)
    else:
        x = F.pad(x, (wb, we, hb, he))
        padding = (0, 0)
    if c["op"] == "MaxPool":
        y = F.max_pool2d(x, c["k"], c["s"], padding, c["d"], ceil_mode=c["ceil"])
    else:
        y = F.avg_pool2d(x, c["k"], c["s"], padding, ceil_mode=c["ceil"])
    return tuple(y.shape)


def _ir_pool_shape(c):
    g, x = _graph_with_input((1, 2, c["h"], c["w"]))
    node = g.add_node(c["op"], [x], {"kernel_shape": list(c["k"]), "strides": list(c["s"]), "pads": c["pads"],
                                     "dilations": list(c["d"]), "ceil_mode": int(c["ceil"])}, name="pool")
    g.add_output(node.output)
    g.verify()
    return node.output.shape


@settings(max_examples=220, **SETTINGS)
@given(pool_cases())
def test_pool_shape_matches_torch(c):
    try:
        expected = _torch_pool_shape(c)
    except RuntimeError:  # torch: output size too small
        with pytest.raises(ShapeError, match="'pool'"):
            _ir_pool_shape(c)
        return
    assert _ir_pool_shape(c) == expected


def _ort_pool_shape(op, size, k, s, d, pb, pe, ceil):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    attrs = dict(kernel_shape=[k], strides=[s], pads=[pb, pe], ceil_mode=int(ceil))
    if d != 1:
        attrs["dilations"] = [d]
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return tuple(sess.run(None, {"x": np.zeros((1, 1, size), np.float32)})[0].shape)


@settings(max_examples=60, **SETTINGS)
@given(
    op=st.sampled_from(["MaxPool", "AveragePool"]),
    size=st.integers(2, 12),
    k=st.integers(2, 4),
    s=st.integers(1, 3),
    d=st.integers(1, 2),
    data=st.data(),
)
def test_pool_asymmetric_ceil_matches_onnxruntime(op, size, k, s, d, data):
    """ceil_mode with end pads larger than begin pads: the ONNX rule (no window starts in the end
    padding) that torch's F.pad composition cannot express; onnxruntime is the oracle."""
    pb = data.draw(st.integers(0, k - 2), label="pb")
    pe = data.draw(st.integers(pb + 1, k - 1), label="pe")
    g, x = _graph_with_input((1, 1, size))
    attrs = {"kernel_shape": [k], "strides": [s], "pads": [pb, pe], "dilations": [d], "ceil_mode": 1}
    try:
        expected = _ort_pool_shape(op, size, k, s, d, pb, pe, True)
    except Exception:  # onnxruntime refuses the window
        expected = None
    if expected is None or 0 in expected:
        with pytest.raises(ShapeError, match="'pool'"):
            g.add_node(op, [x], attrs, name="pool")
        return
    assert g.add_node(op, [x], attrs, name="pool").output.shape == expected


def test_window_out_ceil_mode_drops_window_starting_in_end_padding():
    # size 4, k 2, s 2, pads (0, 1): span 3 -> ceil(3/2)+1 = 3 windows; the third starts at 4, in the pad
    assert O.window_out(4, 2, 2, 1, 0, 1, ceil_mode=True) == 2
    assert O.window_out(4, 2, 2, 1, 1, 0, ceil_mode=True) == 3
    assert O.window_out(4, 2, 2, 1, 0, 1, ceil_mode=False) == 2
    assert O.window_out(1, 2, 2, 1, 0, 0, ceil_mode=True) == 1  # one overhanging window (ONNX, torch)
    with pytest.raises(ShapeError, match="does not fit"):
        O.window_out(1, 2, 2, 1, 0, 0, ceil_mode=False)
    with pytest.raises(ShapeError, match="does not fit"):
        O.window_out(1, 3, 2, 1, 0, 0, ceil_mode=True)
    assert O.window_out("N", 3, 1, 1, 0, 0) == "N"


# --------------------------------------------------------------------------------------------------
# the other ops: hand-computed shapes


def _one(op, in_shapes, attrs=None, consts=None):
    g = Graph("one")
    ins = []
    for i, s in enumerate(in_shapes):
        if consts and i in consts:
            ins.append(g.add_const(consts[i], f"c{i}"))
        else:
            ins.append(g.add_input(f"x{i}", s))
    node = g.add_node(op, ins, attrs or {}, name="n")
    g.add_output(node.output)
    g.verify()
    return node.output.shape


@pytest.mark.parametrize(
    "op, in_shapes, attrs, consts, expected",
    [
        ("Relu", [("N", 3, 5, 5)], {}, None, ("N", 3, 5, 5)),
        ("LeakyRelu", [(2, 3)], {"alpha": 0.2}, None, (2, 3)),
        ("Sigmoid", [(2, 3, 4)], {}, None, (2, 3, 4)),
        ("Tanh", [(2, 3, 4)], {}, None, (2, 3, 4)),
        ("Identity", [(1, 7)], {}, None, (1, 7)),
        ("Dropout", [(1, 7)], {}, None, (1, 7)),
        ("Clip", [(1, 2, 3), (), ()], {}, {1: np.array(0.0, np.float32), 2: np.array(6.0, np.float32)},
         (1, 2, 3)),
        ("LRN", [("N", 8, 4, 4)], {"size": 5}, None, ("N", 8, 4, 4)),
        ("GlobalAveragePool", [("N", 8, 5, 7)], {}, None, ("N", 8, 1, 1)),
        ("Flatten", [("N", 8, 5, 7)], {"axis": 1}, None, ("N", 280)),
        ("Flatten", [(2, 8, 5, 7)], {"axis": 2}, None, (16, 35)),
        ("Flatten", [(2, 8, 5, 7)], {"axis": 0}, None, (1, 560)),
        ("Flatten", [(2, 8, 5, 7)], {"axis": -1}, None, (80, 7)),
        ("Reshape", [(2, 8, 5, 7), (2,)], {}, {1: np.array([0, -1], np.int64)}, (2, 280)),
        ("Reshape", [(2, 8, 5, 7), (3,)], {}, {1: np.array([4, 4, -1], np.int64)}, (4, 4, 35)),
        ("Reshape", [("N", 8, 5, 7), (2,)], {}, {1: np.array([0, -1], np.int64)}, ("N", 280)),
        ("Transpose", [(2, 3, 4, 5)], {"perm": [0, 2, 3, 1]}, None, (2, 4, 5, 3)),
        ("Transpose", [(2, 3, 4)], {}, None, (4, 3, 2)),
        ("Softmax", [("N", 10)], {}, None, ("N", 10)),
        ("Gemm", [("N", 6), (4, 6), (4,)], {"transB": 1},
         {1: np.zeros((4, 6), np.float32), 2: np.zeros(4, np.float32)}, ("N", 4)),
        ("Add", [("N", 3, 4, 4), ("N", 3, 4, 4)], {}, None, ("N", 3, 4, 4)),
        ("Add", [("N", 3, 4, 4), (3, 1, 1)], {}, {1: np.zeros((3, 1, 1), np.float32)}, ("N", 3, 4, 4)),
        ("Mul", [(2, 1, 4), (3, 1)], {}, None, (2, 3, 4)),
        ("Concat", [("N", 3, 4, 4), ("N", 5, 4, 4)], {"axis": 1}, None, ("N", 8, 4, 4)),
        ("Concat", [(2, 3), (2, 4), (2, 1)], {"axis": -1}, None, (2, 8)),
        ("BatchNormalization", [("N", 3, 4, 4), (3,), (3,), (3,), (3,)], {},
         {i: np.ones(3, np.float32) for i in range(1, 5)}, ("N", 3, 4, 4)),
        ("MaxPool", [("N", 3, 7, 7)], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 0, 1]}, None,
         ("N", 3, 3, 3)),
        ("AveragePool", [(1, 3, 7, 7)], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, None,
         (1, 3, 4, 4)),
    ],
)
def test_op_shapes_by_hand(op, in_shapes, attrs, consts, expected):
    assert _one(op, in_shapes, attrs, consts) == expected


@pytest.mark.parametrize(
    "op, in_shapes, attrs, consts, match",
    [
        ("Add", [(2, 3), (2, 4)], {}, None, "do not broadcast"),
        ("Concat", [(2, 3, 4), (2, 3, 5)], {"axis": 1}, None, "differ outside axis"),
        ("Concat", [(2, 3), (2, 3)], {"axis": 2}, None, "out of range"),
        ("Reshape", [(2, 6), (2,)], {}, {1: np.array([5, -1], np.int64)}, "do not divide"),
        ("Reshape", [(2, 6), (2,)], {}, {1: np.array([-1, -1], np.int64)}, "more than one -1"),
        ("Reshape", [(2, 6), (2,)], {}, {1: np.array([5, 5], np.int64)}, "elements"),
        ("Transpose", [(2, 3, 4)], {"perm": [0, 0, 1]}, None, "not a permutation"),
        ("Softmax", [(2, 3)], {"axis": 2}, None, "out of range"),
        ("Flatten", [(2, 3)], {"axis": 3}, None, "out of range"),
        ("GlobalAveragePool", [(2, 3)], {}, None, "N x C x spatial"),
        ("Gemm", [("N", 5), (4, 6)], {"transB": 1}, {1: np.zeros((4, 6), np.float32)}, "expects 6"),
        ("Gemm", [("N", 6), (4, 6), (5,)], {"transB": 1},
         {1: np.zeros((4, 6), np.float32), 2: np.zeros(5, np.float32)}, "bias"),
        ("BatchNormalization", [("N", 3, 4, 4), (2,), (3,), (3,), (3,)], {},
         {1: np.ones(2, np.float32), **{i: np.ones(3, np.float32) for i in range(2, 5)}}, "one per channel"),
        ("Clip", [(1, 2, 3), (2,)], {}, {1: np.zeros(2, np.float32)}, "scalars"),
        ("MaxPool", [(1, 3, 7, 7)], {"kernel_shape": [2, 2], "pads": [2, 0, 0, 0]}, None, "smaller than"),
        ("MaxPool", [(1, 3, 2, 2)], {"kernel_shape": [3, 3]}, None, "does not fit"),
        ("Conv", [(1, 4, 5, 5), (6, 2, 3, 3)], {"group": 2}, {1: np.zeros((6, 2, 3, 3), np.float32)}, None),
    ],
)
def test_op_shape_errors_name_the_node(op, in_shapes, attrs, consts, match):
    if match is None:  # a valid control case: the same helper does not always raise
        _one(op, in_shapes, attrs, consts)
        return
    with pytest.raises(ShapeError, match=match) as ei:
        _one(op, in_shapes, attrs, consts)
    assert "'n'" in str(ei.value)


def test_conv_group_mismatch_names_expected_channels():
    with pytest.raises(ShapeError, match=r"expects 6 input channels, the input has 4") as ei:
        _one("Conv", [(1, 4, 5, 5), (6, 3, 3, 3)], {"group": 2}, {1: np.zeros((6, 3, 3, 3), np.float32)})
    assert "'n'" in str(ei.value)
    with pytest.raises(ShapeError, match="not divisible by group"):
        _one("Conv", [(1, 4, 5, 5), (5, 2, 3, 3)], {"group": 2}, {1: np.zeros((5, 2, 3, 3), np.float32)})


# --------------------------------------------------------------------------------------------------
# attribute defaults are ONNX's, and explicit after add_node


ONNX_DEFAULTS = {
    # op: {attribute: ONNX default} -- from the ONNX operator specification (opset 17+)
    "BatchNormalization": {"epsilon": 1e-5, "momentum": 0.9},
    "LeakyRelu": {"alpha": 0.01},
    "LRN": {"alpha": 1e-4, "beta": 0.75, "bias": 1.0},
    "Flatten": {"axis": 1},
    "Softmax": {"axis": -1},
    "Gemm": {"alpha": 1.0, "beta": 1.0, "transA": 0},
    "MaxPool": {"ceil_mode": 0, "storage_order": 0, "auto_pad": "NOTSET"},
    "AveragePool": {"ceil_mode": 0, "count_include_pad": 0, "auto_pad": "NOTSET"},
    "Conv": {"group": 1, "auto_pad": "NOTSET"},
    "Reshape": {"allowzero": 0},
}


@pytest.mark.parametrize("op", sorted(ONNX_DEFAULTS))
def test_attribute_defaults_are_onnx_defaults(op):
    spec = O.get_op(op)
    for k, v in ONNX_DEFAULTS[op].items():
        assert spec.attrs[k].default == v, (op, k)


def test_spatial_defaults_made_explicit():
    g, x = _graph_with_input(("N", 3, 8, 8))
    w = g.add_const(np.zeros((4, 3, 3, 3), np.float32), "w")
    conv = g.add_node("Conv", [x, w], name="c")
    assert conv.attrs == {"auto_pad": "NOTSET", "group": 1, "kernel_shape": [3, 3], "strides": [1, 1],
                          "dilations": [1, 1], "pads": [0, 0, 0, 0]}
    assert conv.output.shape == ("N", 4, 6, 6)
    pool = g.add_node("MaxPool", [conv.output], {"kernel_shape": [2, 2]}, name="p")
    assert pool.attrs["strides"] == [1, 1] and pool.attrs["pads"] == [0, 0, 0, 0]
    assert pool.attrs["dilations"] == [1, 1]
    t = g.add_node("Transpose", [pool.output], name="t")
    assert t.attrs["perm"] == [3, 2, 1, 0]


def test_supported_ops_cover_the_issue_list():
    need = {"Conv", "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "MaxPool",
            "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Transpose", "Gemm", "Add", "Mul",
            "Concat", "Dropout", "Identity", "Softmax", "LRN"}
    assert need <= set(O.supported_ops())
    assert O.supported_ops() == sorted(O.supported_ops())


def test_unknown_op_lists_supported_ops():
    with pytest.raises(OpError, match="not in nashir's op table; supported: .*Conv"):
        O.get_op("Foo")


def test_broadcast_and_reshape_helpers():
    assert O.broadcast((2, 1, 4), (3, 1)) == (2, 3, 4)
    assert O.broadcast(("N", 3, 1, 1), (3, 1, 1)) == ("N", 3, 1, 1)
    assert O.reshape_target((2, 3, 4), [0, 0, -1]) == (2, 3, 4)
    assert O.conv_out_size(32, 3, 2, 1) == 16
