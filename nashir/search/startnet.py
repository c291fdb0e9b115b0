"""The start network of a NASH run and the checks a user-given start model must pass.

NASH (Elsken et al. 2018, arXiv 1711.04528, Sec. 5.1) starts every CIFAR run from a small network
``Conv-MaxPool-Conv-MaxPool-Conv-FC-Softmax`` whose convolutions are followed by BatchNorm and
ReLU, pretrained for 20 epochs. :func:`start_network` builds that shape for any (C, H, W) input
and number of classes; the softmax is left to the loss (the graph returns logits).

Pooling halves the spatial size; a pooling layer is left out where the map is already smaller
than 2x2 (so 8x8 digits give 8 -> 4 -> 2 before the last convolution).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nashir.builder import GraphBuilder
from nashir.errors import SearchError
from nashir.ir import Graph

__all__ = ["default_widths", "start_network", "check_model_fits", "reinitialize", "start_network_params",
           "MAX_START_BYTES"]

#: The start network's float32 weights may take at most this many bytes (every candidate travels as one
#: ONNX message, which protobuf limits to 2 GiB); checked before anything is allocated.
MAX_START_BYTES = 2**31 - 2**20


def default_widths(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Channels of the start network's three convolutions for images of ``(C, H, W)``.

    64/128/256 as in the paper for images of at least 32x32 pixels; 32/64/128 from 16x16;
    16/32/64 below (scikit-learn's 8x8 digits).
    """
    _, h, w = (int(d) for d in input_shape)
    side = min(h, w)
    if side >= 32:
        return (64, 128, 256)
    if side >= 16:
        return (32, 64, 128)
    return (16, 32, 64)


def start_network_params(input_shape: Sequence[int], num_classes: int, widths: Sequence[int]) -> int:
    """Parameter count of :func:`start_network` for these sizes, computed without building it."""
    c, h, w = (int(d) for d in input_shape)
    total, cin = 0, c
    for i, wd in enumerate(int(x) for x in widths):
        total += cin * wd * 9 + 4 * wd            # conv (no bias) + BatchNorm's four arrays
        cin = wd
        if i < 2 and min(h, w) >= 2:
            h, w = h // 2, w // 2
    return total + cin * h * w * int(num_classes) + int(num_classes)


def start_network(
    input_shape: Sequence[int],
    num_classes: int,
    widths: Sequence[int] | None = None,
    seed: int = 0,
    name: str = "nash_start",
) -> Graph:
    """The paper's start network, He-initialised.

    Layout (NCHW): ``Conv3x3(w1)-BN-ReLU, MaxPool2, Conv3x3(w2)-BN-ReLU, MaxPool2,
    Conv3x3(w3)-BN-ReLU, Flatten, Gemm(num_classes)``; convolutions keep the spatial size
    (padding 1), each MaxPool (2x2, stride 2) halves it and is skipped when the map is below 2x2.
    Input ``(N, C, H, W)`` float32 normalised images, output ``(N, num_classes)`` logits.

    Args:
        input_shape: ``(C, H, W)`` of one image.
        num_classes: Number of classes (>= 2).
        widths: Channels of the three convolutions (None = :func:`default_widths`).
        seed: Seeds the weight initialisation (:class:`nashir.GraphBuilder`).
        name: Graph name.

    Returns:
        A verified :class:`nashir.Graph`.

    Raises:
        SearchError: ``input_shape`` is not three positive integers, ``num_classes < 2``, a
            width is not a positive integer, or the weights would pass :data:`MAX_START_BYTES`.
    """
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in shape):
        raise SearchError(f"start network: input shape must be (C, H, W) positive integers, got {shape!r}")
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise SearchError(f"start network: num_classes must be an integer >= 2, got {num_classes!r}")
    ws = tuple(default_widths(shape) if widths is None else widths)
    if len(ws) != 3 or not all(isinstance(w, (int, np.integer)) and w >= 1 for w in ws):
        raise SearchError(f"start network: widths must be three positive integers, got {ws!r}")
    n = start_network_params(shape, num_classes, ws)
    if 4 * n > MAX_START_BYTES:
        raise SearchError(
            f"start network: widths {','.join(str(int(w)) for w in ws)} for {num_classes} classes and images "
            f"{tuple(int(d) for d in shape)} give {n:,} parameters ({4 * n / 2**30:.1f} GiB of float32), "
            f"above the {MAX_START_BYTES / 2**30:.1f} GiB a candidate may have (one ONNX message); give "
            "smaller --widths such as 16,32,64"
        )
    b = GraphBuilder(name, input_shape=tuple(int(d) for d in shape), seed=int(seed))
    h = b.input
    for i, w in enumerate(ws):
        h = b.conv(h, int(w), kernel=3, bias=False, name=f"conv{i + 1}")
        h = b.relu(b.bn(h, name=f"bn{i + 1}"), name=f"relu{i + 1}")
        if i < 2 and min(h.shape[2], h.shape[3]) >= 2:
            h = b.maxpool(h, 2, name=f"pool{i + 1}")
    h = b.flatten(h, name="flatten")
    out = b.gemm(h, int(num_classes), name="fc")
    return b.build(out)


def check_model_fits(graph: Graph, input_shape: Sequence[int], num_classes: int, what: str = "model") -> None:
    """Check that a start model takes images of ``input_shape`` and returns ``num_classes`` logits.

    Args:
        graph: The model (one input ``(N, C, H, W)``, one output ``(N, K)``).
        input_shape: ``(C, H, W)`` of the data set's images.
        num_classes: The data set's class count.
        what: How to name the model in messages (e.g. the file name).

    Raises:
        SearchError: Wrong number of inputs/outputs, an input shape other than ``(N, C, H, W)``
            of the data, or an output other than ``(N, num_classes)``; the message gives both
            shapes.
    """
    want = tuple(int(d) for d in input_shape)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise SearchError(
            f"{what}: a start model needs exactly one input and one output, it has "
            f"{len(graph.inputs)} input(s) and {len(graph.outputs)} output(s)"
        )
    got = graph.inputs[0].shape
    if got is None or len(got) != 4 or tuple(got[1:]) != want:
        raise SearchError(
            f"{what}: input {graph.inputs[0].name!r} has shape {_fmt(got)}, but the data set's images are "
            f"(N, {', '.join(map(str, want))}); give a model whose input is (N, C, H, W) = "
            f"(N, {', '.join(map(str, want))}) or use the matching --dataset"
        )
    out = graph.outputs[0].shape
    if out is None or len(out) != 2 or out[1] != num_classes:
        raise SearchError(
            f"{what}: output {graph.outputs[0].name!r} has shape {_fmt(out)}, but the data set has "
            f"{num_classes} classes; the model must return logits of shape (N, {num_classes})"
        )


def reinitialize(graph: Graph, rng: np.random.Generator) -> Graph:
    """A copy of ``graph`` with fresh weights: training from scratch for the "no morphism" and
    "retrained from scratch" baselines of NASH (arXiv 1711.04528, Sec. 5.1).

    Conv weights (OIHW) ~ N(0, sqrt(2 / fan_in)) with ``fan_in = I * kH * kW`` (He et al. 2015,
    eq. 10), Gemm weights ``W[out, in]`` ~ N(0, sqrt(1 / in)), biases 0; BatchNormalization scale 1,
    bias 0, running mean 0, running variance 1. Other constants are kept. ``meta["calibrate"]`` is
    dropped (a re-initialised layer has nothing to preserve).

    Args:
        graph: The network; not modified.
        rng: Source of the random weights.

    Returns:
        The re-initialised copy.
    """
    g = graph.clone()
    for n in g.nodes:
        n.meta.pop("calibrate", None)
        ins = n.inputs
        if n.op_type == "Conv" and len(ins) >= 2 and ins[1] is not None and ins[1].is_const:
            w = ins[1].const
            fan_in = int(np.prod(w.shape[1:])) or 1
            g.set_const(ins[1], rng.normal(0.0, np.sqrt(2.0 / fan_in), w.shape).astype(np.float32))
            if len(ins) >= 3 and ins[2] is not None and ins[2].is_const:
                g.set_const(ins[2], np.zeros_like(ins[2].const, dtype=np.float32))
        elif n.op_type == "Gemm" and len(ins) >= 2 and ins[1] is not None and ins[1].is_const:
            w = ins[1].const
            trans_b = int(n.attrs.get("transB", 0))
            fan_in = int(w.shape[1] if trans_b else w.shape[0]) or 1
            g.set_const(ins[1], rng.normal(0.0, np.sqrt(1.0 / fan_in), w.shape).astype(np.float32))
            if len(ins) >= 3 and ins[2] is not None and ins[2].is_const:
                g.set_const(ins[2], np.zeros_like(ins[2].const, dtype=np.float32))
        elif n.op_type == "BatchNormalization":
            for i, fill in ((1, 1.0), (2, 0.0), (3, 0.0), (4, 1.0)):
                if len(ins) > i and ins[i] is not None and ins[i].is_const:
                    g.set_const(ins[i], np.full_like(ins[i].const, fill, dtype=np.float32))
    return g


def _fmt(shape) -> str:
    if shape is None:
        return "(unknown)"
    return "(" + ", ".join(str(d) for d in shape) + ")"
