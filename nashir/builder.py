"""A small builder for writing networks in a few lines.

Example::

    b = GraphBuilder("net", input_shape=(3, 32, 32), seed=0)
    h = b.conv_bn_relu(b.input, 16)
    h = b.maxpool(h, 2)
    h = b.gemm(b.flatten(h), 10)
    g = b.build(h)

Weights are He-initialised (He et al. 2015, "Delving Deep into Rectifiers", eq. 10:
``std = sqrt(2 / fan_in)``) from one ``numpy.random.Generator`` seeded by ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nashir.errors import OpError
from nashir.ir import Graph, Value


def _pair(x: int | Sequence[int]) -> list[int]:
    return [int(x), int(x)] if isinstance(x, (int, np.integer)) else [int(v) for v in x]


class GraphBuilder:
    """Builds a :class:`~nashir.ir.Graph` op by op.

    Args:
        name: graph name.
        input_shape: ``(C, H, W)`` of one sample (the batch dimension is the symbol ``batch``).
        seed: seeds weight initialisation.
        batch: the batch dimension (symbol ``"N"`` by default, or an int).
        input_name: name of the data input.

    Every layer method raises what :meth:`~nashir.ir.Graph.add_node` raises (``OpError``,
    ``ShapeError``, ``GraphError``: a bad size, a taken name, shapes that do not fit) and then leaves
    the graph unchanged, the weights it made for the layer included.
    """

    def __init__(self, name: str = "net", input_shape: Sequence[int] = (3, 32, 32), seed: int = 0,
                 batch: int | str = "N", input_name: str = "input"):
        self.graph = Graph(name)
        self.rng = np.random.default_rng(seed)
        self.input = self.graph.add_input(input_name, (batch, *input_shape))

    def _add(self, op_type: str, inputs: list, attrs: dict, name: str) -> Value:
        """``graph.add_node``; when it raises, the weight constants just made for the node are removed
        again, so a failed builder call leaves the graph unchanged."""
        try:
            return self.graph.add_node(op_type, inputs, attrs, name=name).output
        except BaseException:
            for v in inputs[1:]:
                if v is not None and v.is_const and not v.uses and self.graph.values.get(v.name) is v:
                    del self.graph.values[v.name]
            raise

    # ----------------------------------------------------------------- layers
    def conv(self, x: Value, out_channels: int, kernel: int | Sequence[int] = 3,
             stride: int | Sequence[int] = 1,
             pads: int | Sequence[int] | None = None, dilation: int | Sequence[int] = 1, group: int = 1,
             bias: bool = True, name: str | None = None) -> Value:
        """Conv with OIHW weight ``(out_channels, C_in/group, kH, kW)``; ``pads`` default keeps the size
        for odd kernels at stride 1 (``(k-1)//2 * dilation`` per side); 4 values =
        ``[top, left, bottom, right]`` (ONNX order: begins, then ends)."""
        k = _pair(kernel)
        d = _pair(dilation)
        if pads is None:
            p = [(k[0] - 1) // 2 * d[0], (k[1] - 1) // 2 * d[1]] * 2
        elif isinstance(pads, (int, np.integer)):
            p = [int(pads)] * 4
        else:
            p = [int(v) for v in pads]
            if len(p) == 2:
                p = p * 2
        cin = x.shape[1]
        name = name or self.graph.auto_node_name("Conv")
        if out_channels < 1 or group < 1 or min(k) < 1:
            raise OpError(
                f"node {name!r} (Conv): out_channels={out_channels}, kernel={k} and group={group} must be "
                ">= 1"
            )
        fan_in = cin // group * k[0] * k[1]
        std = np.sqrt(2.0 / max(fan_in, 1))
        w = self.rng.normal(0, std, (out_channels, cin // group, *k)).astype(np.float32)
        ins = [x, self.graph.add_const(w, f"{name}.weight")]
        if bias:
            ins.append(self.graph.add_const(self.rng.normal(0, 0.01, out_channels).astype(np.float32),
                                            f"{name}.bias"))
        return self._add("Conv", ins, {"kernel_shape": k, "strides": _pair(stride), "pads": p,
                                       "dilations": d, "group": group}, name)

    def bn(self, x: Value, eps: float = 1e-5, random_stats: bool = False, name: str | None = None) -> Value:
        """BatchNormalization over channel axis 1; identity statistics unless ``random_stats``."""
        c = x.shape[1]
        name = name or self.graph.auto_node_name("BatchNormalization")
        if random_stats:
            arrs = [self.rng.uniform(0.5, 1.5, c), self.rng.normal(0, 0.2, c), self.rng.normal(0, 0.5, c),
                    self.rng.uniform(0.5, 2.0, c)]
        else:
            arrs = [np.ones(c), np.zeros(c), np.zeros(c), np.ones(c)]
        ins = [x] + [self.graph.add_const(a.astype(np.float32), f"{name}.{s}")
                     for a, s in zip(arrs, ("scale", "bias", "mean", "var"))]
        return self._add("BatchNormalization", ins, {"epsilon": eps}, name)

    def relu(self, x: Value, name: str | None = None) -> Value:
        return self.graph.add_node("Relu", [x], name=name).output

    def op(self, op_type: str, *inputs: Value, name: str | None = None, **attrs) -> Value:
        """Any op of the table, e.g. ``b.op("LeakyRelu", h, alpha=0.1)``."""
        return self.graph.add_node(op_type, list(inputs), attrs, name=name).output

    def conv_bn_relu(self, x: Value, out_channels: int, kernel: int = 3, stride: int = 1,
                     name: str | None = None, random_stats: bool = False) -> Value:
        """Conv (no bias, as BN follows) -> BatchNormalization -> Relu."""
        h = self.conv(x, out_channels, kernel, stride, bias=False, name=name)
        h = self.bn(h, random_stats=random_stats)
        return self.relu(h)

    def maxpool(self, x: Value, kernel: int = 2, stride: int | None = None, pads: int = 0,
                ceil_mode: bool = False, name: str | None = None) -> Value:
        k = _pair(kernel)
        s = _pair(stride if stride is not None else kernel)
        return self.graph.add_node("MaxPool", [x], {"kernel_shape": k, "strides": s, "pads": [pads] * 4,
                                                   "ceil_mode": int(ceil_mode)}, name=name).output

    def avgpool(self, x: Value, kernel: int = 2, stride: int | None = None, pads: int = 0,
                name: str | None = None) -> Value:
        k = _pair(kernel)
        s = _pair(stride if stride is not None else kernel)
        return self.graph.add_node("AveragePool", [x], {"kernel_shape": k, "strides": s, "pads": [pads] * 4},
                                   name=name).output

    def global_avgpool(self, x: Value, name: str | None = None) -> Value:
        return self.graph.add_node("GlobalAveragePool", [x], name=name).output

    def flatten(self, x: Value, name: str | None = None) -> Value:
        return self.graph.add_node("Flatten", [x], {"axis": 1}, name=name).output

    def gemm(self, x: Value, out_features: int, bias: bool = True, name: str | None = None) -> Value:
        """Fully connected: ``Y = X @ W.T + b`` with ``W`` of shape ``[out_features, in_features]``."""
        fin = x.shape[1]
        name = name or self.graph.auto_node_name("Gemm")
        if out_features < 1:
            raise OpError(f"node {name!r} (Gemm): out_features={out_features} must be >= 1")
        w = self.rng.normal(0, np.sqrt(1.0 / fin), (out_features, fin)).astype(np.float32)
        ins = [x, self.graph.add_const(w, f"{name}.weight")]
        if bias:
            ins.append(self.graph.add_const(np.zeros(out_features, np.float32), f"{name}.bias"))
        return self._add("Gemm", ins, {"transB": 1}, name)

    def add(self, a: Value, b: Value, name: str | None = None) -> Value:
        return self.graph.add_node("Add", [a, b], name=name).output

    def concat(self, xs: Sequence[Value], axis: int = 1, name: str | None = None) -> Value:
        return self.graph.add_node("Concat", list(xs), {"axis": axis}, name=name).output

    def build(self, *outputs: Value, verify: bool = True) -> Graph:
        """Mark ``outputs`` as graph outputs, verify, and return the graph."""
        for o in outputs:
            self.graph.add_output(o)
        if verify:
            self.graph.verify()
        return self.graph
