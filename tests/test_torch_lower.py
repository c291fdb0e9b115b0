"""Lowering of the IR to torch (nashir.backends.torch.lower).

Eval-mode outputs are compared with onnxruntime (``nashir.backends.onnx.run``) on every test model,
with a relative tolerance of 1e-5 of the output's scale; ops onnxruntime does not run (LRN with an
even size) are compared with a numpy transcription of the ONNX formula. Weight write-back is
checked bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.fx
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from nashir import GraphBuilder, ops
from nashir.backends.onnx import run as ort_run
from nashir.backends.torch import lowerable_ops, module_name, to_torch, update_weights
from nashir.errors import BackendError
from nashir.ir import Graph

RTOL = 1e-5


def torch_eval(g: Graph, x: np.ndarray) -> np.ndarray:
    m = to_torch(g).eval()
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def assert_close(y: np.ndarray, ref: np.ndarray, rtol: float = RTOL) -> None:
    assert y.shape == ref.shape
    scale = max(float(np.max(np.abs(ref))), 1e-3)
    err = float(np.max(np.abs(y - ref)))
    assert err <= rtol * scale, f"max |torch - reference| = {err:.3g} > {rtol} * {scale:.3g}"


def check_vs_ort(g: Graph, batch: int = 3, seed: int = 0) -> None:
    shape = tuple(batch if not isinstance(d, int) else d for d in g.inputs[0].shape)
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    ref = ort_run(g, x)[0]
    assert_close(torch_eval(g, x), ref)


# ----------------------------------------------------------------------------------------------
# test models
# ----------------------------------------------------------------------------------------------


def vgg() -> Graph:
    b = GraphBuilder("vgg", (3, 16, 16), seed=1)
    h = b.conv_bn_relu(b.input, 8, random_stats=True)
    h = b.conv_bn_relu(h, 8, random_stats=True)
    h = b.maxpool(h, 2)
    h = b.conv_bn_relu(h, 16, random_stats=True)
    h = b.maxpool(h, 2)
    h = b.flatten(h)
    h = b.gemm(h, 32)
    h = b.relu(h)
    h = b.op("Dropout", h)
    h = b.gemm(h, 10)
    return b.build(h)


def residual() -> Graph:
    b = GraphBuilder("res", (3, 12, 12), seed=2)
    x = b.conv_bn_relu(b.input, 8, random_stats=True)
    h = b.conv_bn_relu(x, 8, random_stats=True)
    h = b.conv(h, 8, 3, bias=False)
    h = b.bn(h, random_stats=True)
    h = b.add(h, x)
    h = b.relu(h)
    h = b.global_avgpool(h)
    h = b.flatten(h)
    return b.build(b.gemm(h, 10))


def concat_net() -> Graph:
    b = GraphBuilder("cat", (3, 10, 10), seed=3)
    a = b.relu(b.conv(b.input, 4, 3))
    c = b.relu(b.conv(b.input, 6, 1))
    h = b.concat([a, c, a])
    h = b.conv(h, 5, 3, stride=2)
    return b.build(h)


def inception() -> Graph:
    b = GraphBuilder("incep", (4, 11, 11), seed=4)
    x = b.relu(b.conv(b.input, 8, 3))
    br1 = b.relu(b.conv(x, 4, 1))
    br2 = b.relu(b.conv(b.relu(b.conv(x, 4, 1)), 6, 3))
    br3 = b.relu(b.conv(b.relu(b.conv(x, 2, 1)), 3, 5))
    br4 = b.relu(b.conv(b.maxpool(x, 3, 1, pads=1), 3, 1))
    h = b.concat([br1, br2, br3, br4])
    h = b.avgpool(h, 3, 2, pads=1)
    h = b.flatten(b.global_avgpool(h))
    return b.build(b.gemm(h, 7))


def grouped() -> Graph:
    b = GraphBuilder("grp", (6, 13, 13), seed=5)
    h = b.conv(b.input, 12, 3, group=3)  # grouped
    h = b.conv(h, 12, 3, group=12, bias=False)  # depthwise
    h = b.conv(h, 12, 3, dilation=2, group=2)  # dilated, grouped
    h = b.conv(h, 8, (3, 2), stride=(2, 1), pads=[0, 1, 2, 0])  # asymmetric pads, rectangular kernel
    h = b.bn(h, random_stats=True)
    return b.build(b.op("LeakyRelu", h, alpha=0.2))


def pools() -> Graph:
    b = GraphBuilder("pools", (3, 11, 13), seed=6)
    h = b.conv(b.input, 4, 3)
    p1 = b.maxpool(h, 3, 2, ceil_mode=True)  # 6 x 7
    p2 = b.op("AveragePool", h, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
              count_include_pad=1)
    p3 = b.op("AveragePool", h, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
              count_include_pad=0)
    p4 = b.op("MaxPool", h, kernel_shape=[2, 3], strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1)
    p5 = b.op("AveragePool", h, kernel_shape=[2, 3], strides=[2, 2], pads=[1, 0, 0, 2], ceil_mode=0,
              count_include_pad=1)
    outs = [b.flatten(p) for p in (p1, p2, p3, p4, p5)]
    return b.build(b.concat(outs, axis=1))


def lrn_net(size: int = 3) -> Graph:
    b = GraphBuilder("lrn", (7, 5, 5), seed=7)
    h = b.relu(b.conv(b.input, 9, 3))
    h = b.op("LRN", h, size=size, alpha=0.3, beta=0.75, bias=2.0)
    return b.build(b.maxpool(h, 3, 2, ceil_mode=True))


def head_net() -> Graph:
    """Reshape / Transpose / Softmax head, Clip, Sigmoid, Tanh, Identity, Mul/Add constants."""
    b = GraphBuilder("head", (3, 8, 8), seed=8)
    g = b.graph
    rng = np.random.default_rng(8)
    h = b.conv(b.input, 6, 3, stride=2)  # 6 x 4 x 4
    pc = g.add_const(rng.normal(size=(6, 1, 1)).astype(np.float32), "scale_pc")
    h = g.add_node("Mul", [pc, h]).output  # constant first
    h = g.add_node("Add", [h, g.add_const(rng.normal(size=(1, 6, 1, 1)).astype(np.float32), "shift")]).output
    h = g.add_node("Mul", [h, g.add_const(np.array(0.5, np.float32), "half")]).output  # scalar
    lo, hi = g.add_const(np.array(-1.0, np.float32), "lo"), g.add_const(np.array(1.5, np.float32), "hi")
    h = g.add_node("Clip", [h, lo, hi]).output
    h1 = b.op("Sigmoid", h)
    h2 = b.op("Tanh", h)
    h2 = b.op("Identity", h2)
    h = b.concat([h1, h2])  # 12 x 4 x 4
    shp = g.add_const(np.array([0, 12, -1], np.int64), "target")
    h = g.add_node("Reshape", [h, shp]).output  # N x 12 x 16
    h = b.op("Transpose", h, perm=[0, 2, 1])  # N x 16 x 12
    h = b.op("Softmax", h, axis=-1)
    h = b.op("Flatten", h, axis=1)  # N x 192
    h = b.gemm(h, 10)
    return b.build(b.op("Softmax", h, axis=1))


def flat_bn() -> Graph:
    """BatchNormalization on a flat (N, C) value, Flatten axis 2, Gemm with a (1, out) bias."""
    b = GraphBuilder("flatbn", (2, 4, 4), seed=9)
    g = b.graph
    h = b.op("Flatten", b.input, axis=2)  # (2N?) -> flatten of rank 4 at axis 2: (N*2, 16)
    h = b.gemm(h, 6)
    h = b.bn(h, random_stats=True)
    w = g.add_const(np.random.default_rng(9).normal(size=(3, 6)).astype(np.float32), "fc.weight")
    bias = g.add_const(np.random.default_rng(10).normal(size=(1, 3)).astype(np.float32), "fc.bias")
    h = g.add_node("Gemm", [h, w, bias], {"transB": 1}).output
    return b.build(h)


MODELS = {
    "vgg": vgg, "residual": residual, "concat": concat_net, "inception": inception, "grouped": grouped,
    "pools": pools, "lrn": lrn_net, "head": head_net, "flat_bn": flat_bn,
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("batch", [1, 3])
def test_eval_outputs_match_onnxruntime(name, batch):
    check_vs_ort(MODELS[name](), batch=batch)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_weights_round_trip_bit_identical(name):
    g = MODELS[name]()
    before = {v.name: v.const.copy() for v in g.constants()}
    m = to_torch(g)
    update_weights(g, m)
    for v in g.constants():
        assert v.const.dtype == before[v.name].dtype
        assert v.const.shape == before[v.name].shape
        assert np.array_equal(v.const, before[v.name]), v.name
    g.verify()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_submodule_per_node(name):
    g = MODELS[name]()
    m = to_torch(g)
    assert isinstance(m, torch.fx.GraphModule)
    assert list(m.nashir_modules) == [n.name for n in g.nodes]
    called = [n.target for n in m.graph.nodes if n.op == "call_module"]
    assert called == [m.nashir_modules[n.name] for n in g.nodes]
    children = dict(m.named_children())
    for node in g.nodes:
        assert m.nashir_modules[node.name] in children


# ----------------------------------------------------------------------------------------------
# independent references: hand-written torch and numpy
# ----------------------------------------------------------------------------------------------


def test_vgg_matches_hand_written_sequential():
    g = vgg()
    c = {v.name: torch.from_numpy(v.const.copy()) for v in g.constants()}
    convs = [n for n in g.nodes if n.op_type == "Conv"]
    bns = [n for n in g.nodes if n.op_type == "BatchNormalization"]
    gemms = [n for n in g.nodes if n.op_type == "Gemm"]
    seq = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Identity(), nn.Linear(32, 10),
    )
    mods = [m for m in seq if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    with torch.no_grad():
        for mod, node in zip([m for m in mods if isinstance(m, nn.Conv2d)], convs):
            mod.weight.copy_(c[node.inputs[1].name])
        for mod, node in zip([m for m in mods if isinstance(m, nn.BatchNorm2d)], bns):
            mod.weight.copy_(c[node.inputs[1].name])
            mod.bias.copy_(c[node.inputs[2].name])
            mod.running_mean.copy_(c[node.inputs[3].name])
            mod.running_var.copy_(c[node.inputs[4].name])
        for mod, node in zip([m for m in mods if isinstance(m, nn.Linear)], gemms):
            mod.weight.copy_(c[node.inputs[1].name])
            mod.bias.copy_(c[node.inputs[2].name])
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    lowered = to_torch(g)
    # eval mode
    with torch.no_grad():
        assert torch.allclose(lowered.eval()(x), seq.eval()(x), rtol=0, atol=1e-6)
    # training mode: batch statistics, same forward and same gradients
    lowered.train()
    seq.train()
    ya, yb = lowered(x), seq(x)
    assert torch.allclose(ya, yb, atol=1e-6)
    ya.square().sum().backward()
    yb.square().sum().backward()
    ga = lowered.get_submodule(lowered.nashir_modules[convs[0].name]).weight.grad
    assert torch.allclose(ga, seq[0].weight.grad, atol=1e-5)


def onnx_lrn(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """ONNX LRN, transcribed from the operator specification (numpy, float64)."""
    x = x.astype(np.float64)
    c = x.shape[1]
    out = np.empty_like(x)
    lo_off, hi_off = (size - 1) // 2, (size - 1) - (size - 1) // 2
    for ch in range(c):
        lo, hi = max(0, ch - lo_off), min(c - 1, ch + hi_off)
        sq = np.sum(x[:, lo:hi + 1] ** 2, axis=1)
        out[:, ch] = x[:, ch] / (bias + alpha / size * sq) ** beta
    return out


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6])
def test_lrn_matches_onnx_formula(size):
    b = GraphBuilder("lrn", (7, 3, 4))
    g = b.build(b.op("LRN", b.input, size=size, alpha=0.4, beta=0.6, bias=1.5))
    x = np.random.default_rng(size).normal(size=(2, 7, 3, 4)).astype(np.float32)
    assert_close(torch_eval(g, x), onnx_lrn(x, size, 0.4, 0.6, 1.5))
    if size % 2:  # onnxruntime implements odd sizes only
        assert_close(torch_eval(g, x), ort_run(g, x)[0])


def onnx_pool(x: np.ndarray, kind: str, k, s, pads, out_hw, count_include_pad: int) -> np.ndarray:
    """ONNX MaxPool / AveragePool by explicit windows (numpy); ``out_hw`` from the IR's shape inference."""
    n, c, h, w = x.shape
    oh, ow = out_hw
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * s[0] - pads[0], j * s[1] - pads[1]
            h1, w1 = h0 + k[0], w0 + k[1]
            hs, ws = max(h0, 0), max(w0, 0)
            he, we = min(h1, h), min(w1, w)
            win = x[:, :, hs:he, ws:we].astype(np.float64)
            if kind == "max":
                y[:, :, i, j] = win.max(axis=(2, 3))
            else:
                if count_include_pad:
                    cnt = (min(h1, h + pads[2]) - h0) * (min(w1, w + pads[3]) - w0)
                else:
                    cnt = (he - hs) * (we - ws)
                y[:, :, i, j] = win.sum(axis=(2, 3)) / cnt
    return y


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["max", "avg"]),
    hw=st.tuples(st.integers(3, 9), st.integers(3, 9)),
    k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pads=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    ceil=st.integers(0, 1),
    cip=st.integers(0, 1),
)
def test_pooling_matches_onnx_definition_and_onnxruntime(kind, hw, k, s, pads, ceil, cip):
    if any(p >= k[i % 2] for i, p in enumerate(pads)):
        return  # ONNX needs pads < kernel
    b = GraphBuilder("p", (2, *hw))
    attrs = dict(kernel_shape=list(k), strides=list(s), pads=list(pads), ceil_mode=ceil)
    op = "MaxPool" if kind == "max" else "AveragePool"
    if kind == "avg":
        attrs["count_include_pad"] = cip
    g = b.build(b.op(op, b.input, **attrs))
    x = np.random.default_rng(0).normal(size=(2, 2, *hw)).astype(np.float32)
    y = torch_eval(g, x)
    assert_close(y, onnx_pool(x, kind, k, s, pads, g.outputs[0].shape[2:], cip))
    assert_close(y, ort_run(g, x)[0])


@settings(max_examples=30, deadline=None)
@given(
    cin_g=st.integers(1, 3), cout_g=st.integers(1, 3), group=st.integers(1, 3),
    k=st.tuples(st.integers(1, 4), st.integers(1, 4)), s=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    d=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    pads=st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    bias=st.booleans(),
)
def test_conv_matches_onnxruntime(cin_g, cout_g, group, k, s, d, pads, bias):
    b = GraphBuilder("c", (cin_g * group, 9, 8))
    h = b.conv(b.input, cout_g * group, k, stride=s, pads=list(pads), dilation=d, group=group, bias=bias)
    g = b.build(h)
    x = np.random.default_rng(1).normal(size=(2, cin_g * group, 9, 8)).astype(np.float32)
    assert_close(torch_eval(g, x), ort_run(g, x)[0])


# ----------------------------------------------------------------------------------------------
# parameters, buffers, BatchNorm, Dropout
# ----------------------------------------------------------------------------------------------


def test_parameters_and_buffers():
    g = head_net()
    m = to_torch(g)
    names = m.nashir_modules
    params = {n for n, _ in m.named_parameters()}
    buffers = {n for n, _ in m.named_buffers()}
    conv = g.nodes[0].name
    assert f"{names[conv]}.weight" in params and f"{names[conv]}.bias" in params
    mul_pc = g.value("scale_pc").uses[0][0].name
    add_pc = g.value("shift").uses[0][0].name
    mul_half = g.value("half").uses[0][0].name
    assert f"{names[mul_pc]}.const" in params  # per-channel: trainable
    assert f"{names[add_pc]}.const" in params
    assert f"{names[mul_half]}.const" in buffers  # scalar: fixed
    assert f"{names[mul_half]}.const" not in params
    # Reshape target and Clip bounds are plain attributes, not tensors
    assert not any(n.startswith(names[g.value("target").uses[0][0].name] + ".") for n in params | buffers)
    assert not any(n.startswith(names[g.value("lo").uses[0][0].name] + ".") for n in params | buffers)
    # only trained tensors are mapped for write-back
    assert set(m.nashir_weights) == {v.name for n in g.nodes if n.op_type in ("Conv", "Gemm")
                                     for v in n.inputs[1:]} | {"scale_pc", "shift"}


def test_batchnorm_eps_and_momentum_follow_onnx():
    b = GraphBuilder("bn", (3, 4, 4))
    h = b.bn(b.input, eps=1e-3, random_stats=True)
    g = b.build(h)
    bn_node = g.nodes[0]
    g.set_attr(bn_node, "momentum", 0.8)
    m = to_torch(g)
    bn = m.get_submodule(m.nashir_modules[bn_node.name])
    assert isinstance(bn, nn.BatchNorm2d)
    assert bn.eps == pytest.approx(1e-3)
    assert bn.momentum == pytest.approx(0.2)
    # training-mode update, ONNX formula: running = running * momentum + batch * (1 - momentum)
    x = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    old_mean = bn_node.inputs[3].const.astype(np.float64)
    m.train()
    with torch.no_grad():
        m(x)
    batch_mean = x.double().mean(dim=(0, 2, 3)).numpy()
    want = old_mean * 0.8 + batch_mean * 0.2
    np.testing.assert_allclose(bn.running_mean.numpy(), want, rtol=1e-5, atol=1e-6)
    update_weights(g, m)
    np.testing.assert_allclose(bn_node.inputs[3].const, want, rtol=1e-5, atol=1e-6)


def test_dropout_identity_or_meta_ratio():
    b = GraphBuilder("d", (4,), batch=8)
    h = b.op("Dropout", b.input)
    g = b.build(h)
    m = to_torch(g)
    assert isinstance(m.get_submodule(m.nashir_modules[g.nodes[0].name]), nn.Identity)
    g.nodes[0].meta["ratio"] = 0.5
    m = to_torch(g)
    drop = m.get_submodule(m.nashir_modules[g.nodes[0].name])
    assert isinstance(drop, nn.Dropout) and drop.p == 0.5
    x = torch.ones(8, 4)
    torch.manual_seed(0)
    y = m.train()(x)
    assert set(torch.unique(y).tolist()) <= {0.0, 2.0} and (y == 0).any()  # inverted dropout
    assert torch.equal(m.eval()(x), x)
    g.nodes[0].meta["ratio"] = 1.5
    with pytest.raises(BackendError, match="ratio"):
        to_torch(g)


# ----------------------------------------------------------------------------------------------
# write-back
# ----------------------------------------------------------------------------------------------


def test_update_weights_writes_trained_values_and_matches_onnxruntime():
    g = residual()
    m = to_torch(g)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1.1).add_(0.01)
    m.train()
    with torch.no_grad():
        m(torch.randn(8, 3, 12, 12))  # moves BN running statistics
    update_weights(g, m)
    g.verify()
    for vname, qual in m.nashir_weights.items():
        t = m.get_parameter(qual) if qual in dict(m.named_parameters()) else m.get_buffer(qual)
        assert np.array_equal(g.value(vname).const, t.detach().numpy().reshape(g.value(vname).shape))
        assert g.value(vname).const.dtype == np.float32
    x = np.random.default_rng(3).normal(size=(2, 3, 12, 12)).astype(np.float32)
    with torch.no_grad():
        y = m.eval()(torch.from_numpy(x)).numpy()
    assert_close(y, ort_run(g, x)[0])


def test_update_weights_keeps_gemm_bias_shape():
    g = flat_bn()
    m = to_torch(g)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    update_weights(g, m)
    assert g.value("fc.bias").shape == (1, 3)
    g.verify()


def test_update_weights_rejects_foreign_module_and_is_all_or_nothing():
    g = vgg()
    with pytest.raises(BackendError, match="to_torch"):
        update_weights(g, nn.Linear(2, 2))
    other = residual()
    m = to_torch(other)
    before = {v.name: v.const.copy() for v in g.constants()}
    # conv_0.weight has the same shape in both graphs and comes first: it must not be written either
    assert g.value("conv_0.weight").shape == other.value("conv_0.weight").shape
    with pytest.raises(BackendError, match="changed after lowering"):
        update_weights(g, m)
    assert all(np.array_equal(v.const, before[v.name]) for v in g.constants())


def test_shared_constant_is_one_parameter():
    b = GraphBuilder("shared", (4, 6, 6))
    g = b.graph
    w = g.add_const(np.random.default_rng(0).normal(size=(4, 4, 3, 3)).astype(np.float32), "w")
    h = g.add_node("Conv", [b.input, w], {"pads": [1, 1, 1, 1]}, name="c1").output
    h = g.add_node("Relu", [h]).output
    h = g.add_node("Conv", [h, w], {"pads": [1, 1, 1, 1]}, name="c2").output
    g = b.build(h)
    m = to_torch(g)
    assert m.c1.weight is m.c2.weight
    assert len(list(m.parameters())) == 1
    check_vs_ort(g)
    with torch.no_grad():
        m.c1.weight.add_(1.0)
    update_weights(g, m)
    assert np.array_equal(g.value("w").const, m.c2.weight.detach().numpy())


# ----------------------------------------------------------------------------------------------
# names, errors, misc
# ----------------------------------------------------------------------------------------------


def test_module_names_are_sanitised_deterministically():
    b = GraphBuilder("names", (2, 4, 4))
    h = b.input
    for nm in ["/layer1/conv.0/Relu", "layer1_conv_0_Relu", "1st", "forward", "graph", "class", "ok"]:
        h = b.relu(h, name=nm)
    g = b.build(h)
    m = to_torch(g)
    assert m.nashir_modules == {
        "/layer1/conv.0/Relu": "_layer1_conv_0_Relu",
        "layer1_conv_0_Relu": "layer1_conv_0_Relu",
        "1st": "n_1st",
        "forward": "forward_",
        "graph": "graph_",
        "class": "class_",
        "ok": "ok",
    }
    assert m.nashir_modules == to_torch(g).nashir_modules
    assert module_name("a.b") == "a_b"
    b2 = GraphBuilder("dup", (2, 4, 4))
    h = b2.relu(b2.input, name="a.b")
    h = b2.relu(h, name="a/b")
    m2 = to_torch(b2.build(h))
    assert m2.nashir_modules == {"a.b": "a_b", "a/b": "a_b_1"}
    x = torch.randn(1, 2, 4, 4)
    assert torch.equal(m(x), torch.relu(x))


def test_unlowerable_op_names_node_and_op(monkeypatch):
    spec = ops.OpSpec("Frobnicate", 1, 1, lambda attrs, shapes, consts: [tuple(shapes[0])])
    monkeypatch.setitem(ops.OPS, "Frobnicate", spec)
    b = GraphBuilder("odd", (2, 4, 4))
    h = b.relu(b.input)
    h = b.graph.add_node("Frobnicate", [h], name="frob_1").output
    g = b.build(h)
    with pytest.raises(BackendError) as ei:
        to_torch(g)
    msg = str(ei.value)
    assert "frob_1" in msg and "Frobnicate" in msg and "Conv" in msg  # lists what it lowers


def test_every_op_of_the_table_is_lowerable():
    assert set(ops.supported_ops()) <= set(lowerable_ops())


def test_average_pool_with_dilation_is_refused_with_the_node():
    b = GraphBuilder("dil", (2, 9, 9))
    g = b.build(b.op("AveragePool", b.input, kernel_shape=[3, 3], strides=[1, 1], dilations=[2, 2],
                     name="ap"))
    with pytest.raises(BackendError, match="'ap'.*dilations"):
        to_torch(g)


def test_multiple_outputs_and_device():
    b = GraphBuilder("two", (3, 6, 6))
    h = b.relu(b.conv(b.input, 4, 3))
    g = b.build(h, b.global_avgpool(h))
    m = to_torch(g, device="cpu")
    assert all(p.device.type == "cpu" for p in m.parameters())
    y1, y2 = m.eval()(torch.randn(2, 3, 6, 6))
    assert y1.shape == (2, 4, 6, 6) and y2.shape == (2, 4, 1, 1)
    assert torch.allclose(y2, y1.mean(dim=(2, 3), keepdim=True))


def test_lowering_does_not_touch_the_graph():
    g = inception()
    text = str(g)
    consts = {v.name: v.const.copy() for v in g.constants()}
    m = to_torch(g)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    assert str(g) == text
    assert all(np.array_equal(v.const, consts[v.name]) for v in g.constants())


def test_deepcopy_keeps_the_name_maps():
    import copy

    g = residual()
    m = copy.deepcopy(to_torch(g))
    assert isinstance(m, torch.fx.GraphModule)
    assert list(m.nashir_modules) == [n.name for n in g.nodes]
    with torch.no_grad():
        m.get_submodule(m.nashir_modules["gemm_0"]).bias.add_(1.0)
    update_weights(g, m)
    assert np.array_equal(g.value("gemm_0.bias").const,
                          m.get_submodule(m.nashir_modules["gemm_0"]).bias.detach().numpy())


def test_ops_of_issue_16_match_onnxruntime():
    """Elu, HardSigmoid, HardSwish, PRelu, InstanceNormalization, Pad (three modes), Slice (negative
    step), GlobalMaxPool, LogSoftmax: the graph that covers every op, torch against onnxruntime."""
    from test_onnx_export import _graph_all_ops

    g = _graph_all_ops()
    x = np.random.default_rng(3).normal(size=(3, 4, 9, 9)).astype(np.float32)
    want = ort_run(g, x)
    m = to_torch(g).eval()
    with torch.no_grad():
        got = m(torch.from_numpy(x))
    assert len(got) == len(want) == 4
    for a, b in zip(got, want):
        assert_close(a.numpy(), b)
    # PRelu's slope and InstanceNormalization's scale/bias are trained and written back bit for bit
    assert {"slope_c", "in_s", "in_b"} <= set(m.nashir_weights)
    g2 = g.clone()
    update_weights(g2, m)
    for k in ("slope_c", "in_s", "in_b"):
        assert np.array_equal(g2.value(k).const, g.value(k).const)
