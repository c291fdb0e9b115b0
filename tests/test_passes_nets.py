"""Small networks shared by the pass tests (imported as ``test_passes_nets``), and checks of them."""

from __future__ import annotations

import numpy as np

from nashir import GraphBuilder
from nashir.ir import Graph


def rand_bn(b: GraphBuilder, h, name=None):
    """BatchNorm with non-trivial random statistics (scale, bias, mean, var)."""
    return b.bn(h, random_stats=True, name=name)


def plain_net(seed: int = 0, hw: int = 6) -> Graph:
    """conv c1 (4) -> BN -> relu -> conv c2 (6, bias) -> BN -> relu -> conv c3 (stride 2) -> relu ->
    flatten -> gemm fc (5)."""
    b = GraphBuilder("plain", (3, hw, hw), seed=seed)
    h = b.conv(b.input, 4, name="c1", bias=False)
    h = b.relu(rand_bn(b, h, "bn1"), name="r1")
    h = b.conv(h, 6, name="c2")
    h = b.relu(rand_bn(b, h, "bn2"), name="r2")
    h = b.conv(h, 6, kernel=3, stride=2, name="c3")
    h = b.relu(h, name="r3")
    f = b.flatten(h, name="flat")
    return b.build(b.gemm(f, 5, name="fc"))


def residual_net(seed: int = 0) -> Graph:
    """stem conv s (8) -> BN -> relu(r0) -> [conv a (8) -> BN -> relu -> conv b (8) -> BN] + r0 -> relu(r2)
    -> GAP -> flatten -> fc. The residual Add couples the stem conv and conv b."""
    b = GraphBuilder("res", (3, 6, 6), seed=seed)
    h = b.conv(b.input, 8, name="s", bias=False)
    r0 = b.relu(rand_bn(b, h, "bn_s"), name="r0")
    h = b.conv(r0, 8, name="a", bias=False)
    h = b.relu(rand_bn(b, h, "bn_a"), name="ra")
    h = b.conv(h, 8, name="b", bias=False)
    h = rand_bn(b, h, "bn_b")
    h = b.add(h, r0, name="sum")
    h = b.relu(h, name="r2")
    h = b.global_avgpool(h, name="gap")
    return b.build(b.gemm(b.flatten(h, name="flat"), 4, name="fc"))


def concat_net(seed: int = 0) -> Graph:
    """Two branches p (3 ch) and q (5 ch) from one stem, concatenated, then conv absorbs them."""
    b = GraphBuilder("cat", (2, 5, 5), seed=seed)
    stem = b.relu(b.conv(b.input, 4, name="stem"), name="rs")
    p = b.relu(b.conv(stem, 3, name="p"), name="rp")
    q = b.relu(b.conv(stem, 5, name="q"), name="rq")
    c = b.concat([p, q], name="cat")
    h = b.relu(b.conv(c, 4, name="after"), name="ra")
    c2 = b.concat([q, h], name="cat2")
    h2 = b.conv(c2, 3, name="after2", kernel=1)
    return b.build(b.gemm(b.flatten(b.global_avgpool(h2)), 2, name="fc"))


def test_nets_verify_and_run():
    from nashir.backends.onnx import run

    for g in (plain_net(), residual_net(), concat_net()):
        g.verify()
        x = np.random.default_rng(0).standard_normal((2, *g.inputs[0].shape[1:])).astype(np.float32)
        (y,) = run(g, x)
        assert y.shape[0] == 2 and np.isfinite(y).all()


def conv1d(b: GraphBuilder, x, cout: int, k: int = 3, stride: int = 1, name: str | None = None,
           seed: int = 0):
    """A Conv1d (weight (C_out, C_in, k), bias, pads (k-1)//2) in a GraphBuilder graph."""
    rng = np.random.default_rng(seed)
    name = name or b.graph.auto_node_name("Conv")
    w = b.graph.add_const((rng.standard_normal((cout, int(x.shape[1]), k)) * 0.5).astype(np.float32),
                          f"{name}.weight")
    bias = b.graph.add_const((rng.standard_normal(cout) * 0.1).astype(np.float32), f"{name}.bias")
    p = (k - 1) // 2
    return b.graph.add_node("Conv", [x, w, bias], {"kernel_shape": [k], "strides": [stride], "pads": [p, p],
                                                   "dilations": [1], "group": 1}, name=name).output


def conv1d_net(seed: int = 0, length: int = 12) -> Graph:
    """Conv1d c1 (4) -> BN -> relu (r1) -> Conv1d c2 (6, stride 2) -> relu (r2) -> Conv1d c3 (6) -> relu (r3)
    -> flatten -> gemm fc (3): an N x C x L model."""
    b = GraphBuilder("c1d", (3, length), seed=seed)
    r1 = b.relu(rand_bn(b, conv1d(b, b.input, 4, name="c1", seed=seed), "bn1"), name="r1")
    r2 = b.relu(conv1d(b, r1, 6, stride=2, name="c2", seed=seed + 1), name="r2")
    r3 = b.relu(conv1d(b, r2, 6, k=5, name="c3", seed=seed + 2), name="r3")
    return b.build(b.gemm(b.flatten(r3, name="flat"), 3, name="fc"))
