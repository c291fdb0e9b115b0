"""Lowering of the graph IR to PyTorch (DESIGN.md section 6).

:func:`to_torch` turns a :class:`~nashir.ir.Graph` into a :class:`torch.fx.GraphModule` whose
generated ``forward`` calls one submodule per IR node, in the graph's topological order. Each
submodule is named after its node (:func:`module_name`); the module keeps the mappings it used:

* ``module.nashir_modules``: node name -> submodule name;
* ``module.nashir_weights``: constant value name -> qualified name of the parameter or buffer in
  ``module.state_dict()`` that carries it (weights, biases, BatchNorm running statistics,
  per-channel Add/Mul constants). :func:`update_weights` writes exactly these back.

Layouts are those of the IR: activations NCHW, Conv weights OIHW ``(C_out, C_in/group, kH, kW)``
(the same as ``torch.nn.Conv2d.weight``), Gemm weights ``W[out, in]`` (the same as
``torch.nn.Linear.weight``).

Lowering of each op (ONNX semantics, checked against onnxruntime in ``tests/test_torch_lower.py``):

===================== =======================================================================
Conv                  ``nn.Conv{1,2,3}d`` (groups, dilations); asymmetric pads are applied with
                      ``F.pad`` before a conv without padding (:class:`PadConv2d` and kin).
ConvTranspose         :class:`ConvTranspose`: ``F.conv_transpose{1,2,3}d`` without padding, then
                      ``F.pad`` that appends ``output_padding`` and crops the (possibly
                      asymmetric) pads, then the bias; weight ``(C_in, C_out/group, kH, kW)``, as
                      ``nn.ConvTranspose2d.weight``.
BatchNormalization    ``nn.BatchNorm{1,2,3}d`` with ``eps = epsilon`` and
                      ``momentum = 1 - onnx_momentum``: ONNX updates
                      ``running = running * m + batch * (1 - m)``, torch
                      ``running = running * (1 - m') + batch * m'``.
MaxPool, AveragePool  ``nn.MaxPoolNd`` / ``nn.AvgPoolNd`` when torch's own padding gives the
                      IR's output shape (symmetric pads no larger than half the kernel); otherwise
                      :class:`Pool`: explicit padding (``-inf`` / 0) and a precomputed per-position
                      divisor that follows ONNX's ``count_include_pad`` and ``ceil_mode`` rules.
LRN                   :class:`LRN`, ONNX's window ``[c - floor((size-1)/2), c + ceil((size-1)/2)]``
                      (torch's ``nn.LocalResponseNorm`` centres even windows differently).
Gemm                  ``nn.Linear`` (a ``(1, out)`` bias is stored as ``(out,)``).
Add, Mul              :class:`Binary`. A constant operand with one entry per channel (shape
                      ``(C,)``, ``(C,1,1)``, ``(1,C,1,1)``... aligned to axis 1) is a trainable
                      ``nn.Parameter`` -- it acts as a per-channel affine layer and the channel
                      analysis treats it like BatchNorm's arrays; any other constant (a scalar,
                      a full tensor) is a fixed buffer.
Dropout               ``nn.Dropout(p)`` with ``p = node.meta["ratio"]`` when the importer kept the
                      source model's ratio there and it is > 0, else ``nn.Identity`` (the IR's
                      Dropout has no ratio input: it is an inference no-op, DESIGN.md section 4).
Clip                  :class:`Clip` (``torch.clamp`` with the constant bounds as Python floats).
Reshape, Flatten,     :class:`Reshape` (the constant target; ``0`` copies the input dimension
Transpose, Softmax,   unless ``allowzero``), :class:`Flatten`, :class:`Transpose`,
Concat,               :class:`Softmax`, :class:`Concat` (constant inputs become buffers),
GlobalAveragePool     :class:`GlobalAveragePool` (mean over the spatial axes).
Relu, LeakyRelu,      ``nn.ReLU``, ``nn.LeakyReLU(alpha)``, ``nn.Sigmoid``, ``nn.Tanh``,
Sigmoid, Tanh,        ``nn.Identity``.
Identity
Elu, HardSigmoid,     ``nn.ELU(alpha)``, :class:`HardSigmoid` (any alpha, beta), ``nn.Hardswish``,
HardSwish, PRelu      :class:`PRelu` (trainable slope of the constant's shape).
GlobalMaxPool,        :class:`GlobalMaxPool` (amax over the spatial axes), :class:`LogSoftmax`,
LogSoftmax,           :class:`InstanceNorm` (``F.instance_norm``, trainable scale and bias),
InstanceNormalization :class:`Pad` (``F.pad``; ``edge`` is torch's ``replicate``),
Pad, Slice            :class:`Slice` (clamped ranges; negative steps by ``index_select``).
===================== =======================================================================

Adding an op to the backend is adding one function with :func:`register_lowering`.
"""

from __future__ import annotations

import copy
import keyword
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from nashir import ops as _ops
from nashir.errors import BackendError
from nashir.ir import Graph, Node, Value

__all__ = [
    "to_torch",
    "update_weights",
    "register_lowering",
    "lowerable_ops",
    "module_name",
    "Lowered",
    "LoweredModule",
    "PadConv1d",
    "PadConv2d",
    "PadConv3d",
    "ConvTranspose",
    "Pool",
    "LRN",
    "Binary",
    "Clip",
    "Reshape",
    "Flatten",
    "Transpose",
    "Softmax",
    "Concat",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "HardSigmoid",
    "PRelu",
    "InstanceNorm",
    "Pad",
    "Slice",
    "LogSoftmax",
]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass
class Lowered:
    """What a lowering function returns for one node.

    Attributes:
        module: The submodule that computes the node.
        args: Indices of the node's inputs passed to ``module.forward`` as arguments, in order
            (default: every non-constant input).
        weights: ``(input index, attribute path inside module, trained)``: the constant inputs
            that live in the module as a parameter or buffer. ``trained`` entries are written
            back by :func:`update_weights`; the others (fixed buffers) are not.
    """

    module: nn.Module
    args: list[int] | None = None
    weights: list[tuple[int, str, bool]] = field(default_factory=list)


LoweringFn = Callable[[Node], Lowered]
_LOWERINGS: dict[str, LoweringFn] = {}


def register_lowering(op_type: str) -> Callable[[LoweringFn], LoweringFn]:
    """Decorator: register ``fn(node) -> Lowered`` as the lowering of ``op_type`` (replacing any)."""

    def deco(fn: LoweringFn) -> LoweringFn:
        _LOWERINGS[op_type] = fn
        return fn

    return deco


def lowerable_ops() -> list[str]:
    """Sorted op types the torch backend can lower."""
    return sorted(_LOWERINGS)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _tensor(arr: np.ndarray, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """A copy of ``arr`` as a CPU tensor (float32 for floating arrays unless ``dtype`` is None)."""
    a = np.array(arr, copy=True)
    t = torch.from_numpy(a)
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t


def _spatial_rank(node: Node) -> int:
    shp = node.inputs[0].shape
    if shp is None or len(shp) < 3:
        raise BackendError(
            f"node {node.name!r} ({node.op_type}): expected an input N x C x spatial..., got shape "
            f"{None if shp is None else list(shp)}"
        )
    nsp = len(shp) - 2
    if nsp > 3:
        raise BackendError(
            f"node {node.name!r} ({node.op_type}): {nsp} spatial dimensions; the torch backend lowers "
            "1, 2 or 3"
        )
    return nsp


def _fpad(pads: list[int], nsp: int) -> tuple[int, ...]:
    """ONNX pads ``[b_1..b_n, e_1..e_n]`` (first spatial axis first) -> ``F.pad`` order (last axis first)."""
    out: list[int] = []
    for d in reversed(range(nsp)):
        out += [int(pads[d]), int(pads[d + nsp])]
    return tuple(out)


def _static(shape, node: Node, what: str) -> list[int]:
    dims = list(shape[2:])
    if not all(isinstance(d, (int, np.integer)) for d in dims):
        raise BackendError(
            f"node {node.name!r} ({node.op_type}): {what} needs static spatial sizes, got "
            f"{list(shape)}; give the model input fixed H and W"
        )
    return [int(d) for d in dims]


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class _PrePad:
    """Mixin: zero-pad the input (``pre_pad`` in ``F.pad`` order) before the wrapped conv."""

    pre_pad: tuple[int, ...]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().forward(F.pad(x, self.pre_pad))  # type: ignore[misc]

    def extra_repr(self) -> str:  # noqa: D102
        return super().extra_repr() + f", pre_pad={self.pre_pad}"  # type: ignore[misc]


class PadConv1d(_PrePad, nn.Conv1d):
    """``nn.Conv1d`` after an explicit, possibly asymmetric zero padding ``pre_pad``."""


class PadConv2d(_PrePad, nn.Conv2d):
    """``nn.Conv2d`` after an explicit, possibly asymmetric zero padding ``pre_pad`` (F.pad order:
    ``(left, right, top, bottom)``)."""


class PadConv3d(_PrePad, nn.Conv3d):
    """``nn.Conv3d`` after an explicit, possibly asymmetric zero padding ``pre_pad``."""


_CONV = {1: (nn.Conv1d, PadConv1d), 2: (nn.Conv2d, PadConv2d), 3: (nn.Conv3d, PadConv3d)}


class ConvTranspose(nn.Module):
    """ONNX ConvTranspose with explicit, possibly asymmetric pads and ``output_padding``.

    ``y = crop(pad_end(conv_transpose(x, W), output_padding), pads) + b``: the full transposed
    convolution (size ``stride * (in - 1) + (k - 1) * dilation + 1`` per axis) is extended by
    ``output_padding`` zeros at the end of each axis and cropped by ``pads`` (begins, ends), which is
    ONNX's output size ``stride * (in - 1) + output_padding + (k - 1) * dilation + 1 - pads``; the
    bias is added everywhere, as in ONNX and ``nn.ConvTranspose2d``. Weight ``(C_in, C_out/group,
    kH, kW)``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, strides, dilations, pads,
                 output_padding, group: int):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias) if bias is not None else None
        nsp = weight.dim() - 2
        self.stride, self.dilation, self.groups = tuple(strides), tuple(dilations), int(group)
        self.fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nsp]
        crop: list[int] = []
        for d in reversed(range(nsp)):   # F.pad order: last axis first; negative values crop
            crop += [-int(pads[d]), int(output_padding[d]) - int(pads[d + nsp])]
        self.crop = tuple(crop)
        self.nsp = nsp

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = self.fn(x, self.weight, None, self.stride, 0, 0, self.groups, self.dilation)
        if any(self.crop):
            y = F.pad(y, self.crop)
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, *([1] * self.nsp))
        return y

    def extra_repr(self) -> str:  # noqa: D102
        return f"stride={self.stride}, dilation={self.dilation}, groups={self.groups}, crop={self.crop}"
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class Pool(nn.Module):
    """ONNX MaxPool / AveragePool with any pads and ``ceil_mode``, by explicit padding.

    The input (N, C, *S) is padded by ``pad`` (``F.pad`` order; value ``-inf`` for max, 0 for
    average) so that a pooling without padding and without ceil mode gives exactly the IR's output
    size; the end padding is extended over windows that ceil mode adds past the end (for max they
    see ``-inf`` and so ignore it) or trimmed where no window reaches. For average pooling the
    window sums are divided by ``count`` (1, 1, *S_out), the number of positions each window
    covers under ONNX's rule: input and pads with ``count_include_pad=1``, input only with 0.

    Args:
        kind: ``"max"`` or ``"avg"``.
        kernel, strides, dilations: per spatial axis.
        pad: ``F.pad`` tuple.
        scale: for ``"avg"``, ``prod(kernel) / count`` as a (1, 1, *S_out) float32 tensor (a
            buffer); None for ``"max"``.
    """

    def __init__(self, kind: str, kernel: list[int], strides: list[int], dilations: list[int],
                 pad: tuple[int, ...], scale: torch.Tensor | None):
        super().__init__()
        self.kind = kind
        self.kernel = tuple(kernel)
        self.strides = tuple(strides)
        self.dilations = tuple(dilations)
        self.pad = tuple(pad)
        nsp = len(kernel)
        self._max = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nsp]
        self._avg = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nsp]
        if scale is not None:
            self.register_buffer("scale", scale)
        else:
            self.scale = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.kind == "max":
            x = F.pad(x, self.pad, value=-math.inf)
            return self._max(x, self.kernel, self.strides, 0, self.dilations)
        x = F.pad(x, self.pad)
        return self._avg(x, self.kernel, self.strides, 0) * self.scale

    def extra_repr(self) -> str:  # noqa: D102
        return (f"{self.kind}, kernel={self.kernel}, strides={self.strides}, dilations={self.dilations}, "
                f"pad={self.pad}")


class LRN(nn.Module):
    """ONNX LRN (Krizhevsky et al. 2012, Sec. 3.3) over channel axis 1 of (N, C, ...).

    ``y = x / (bias + alpha / size * sum_{c' in W(c)} x[c']^2) ** beta`` with the window
    ``W(c) = [c - floor((size-1)/2), c + ceil((size-1)/2)]`` clipped to the channels.
    """

    def __init__(self, size: int, alpha: float, beta: float, bias: float):
        super().__init__()
        self.size, self.alpha, self.beta, self.bias = int(size), float(alpha), float(beta), float(bias)
        self.before = (self.size - 1) // 2
        self.after = self.size - 1 - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        n, c = x.shape[0], x.shape[1]
        sq = (x * x).reshape(n, 1, c, -1)
        sq = F.pad(sq, (0, 0, self.before, self.after))
        mean = F.avg_pool2d(sq, (self.size, 1), stride=1).reshape(x.shape)
        return x / (self.bias + self.alpha * mean).pow(self.beta)

    def extra_repr(self) -> str:  # noqa: D102
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, bias={self.bias}"


class Binary(nn.Module):
    """Element-wise Add or Mul with numpy/ONNX broadcasting.

    With ``const`` given, one operand is the tensor ``self.const`` (a parameter when
    ``trainable``, else a buffer) at position ``const_index``; ``forward`` then takes one tensor.
    """

    def __init__(self, op: str, const: torch.Tensor | None = None, const_index: int = 1,
                 trainable: bool = False):
        super().__init__()
        self.op = op
        self._fn = torch.add if op == "Add" else torch.mul
        self.const_index = const_index
        if const is None:
            self.const = None
        elif trainable:
            self.const = nn.Parameter(const)
        else:
            self.register_buffer("const", const)

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        if self.const is None:
            return self._fn(a, b)
        if self.const_index == 1:
            return self._fn(a, self.const)
        return self._fn(self.const, a)

    def extra_repr(self) -> str:  # noqa: D102
        if self.const is None:
            return self.op
        kind = "parameter" if isinstance(self.const, nn.Parameter) else "buffer"
        return f"{self.op}, const {kind} {tuple(self.const.shape)} at input {self.const_index}"


class Clip(nn.Module):
    """ONNX Clip: ``min(max(x, lo), hi)``; an absent bound is no bound (if ``lo > hi`` the result
    is ``hi`` everywhere, as in ONNX and ``torch.clamp``)."""

    def __init__(self, lo: float | None, hi: float | None):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.lo is None and self.hi is None:
            return x
        return torch.clamp(x, self.lo, self.hi)

    def extra_repr(self) -> str:  # noqa: D102
        return f"min={self.lo}, max={self.hi}"


class Reshape(nn.Module):
    """ONNX Reshape to a constant target: ``0`` copies the input's dimension at that position
    (unless ``allowzero``), ``-1`` is inferred."""

    def __init__(self, target: list[int], allowzero: int = 0):
        super().__init__()
        self.target = [int(t) for t in target]
        self.copy = [i for i, t in enumerate(self.target) if t == 0 and not allowzero]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if not self.copy:
            return x.reshape(self.target)
        shape = list(self.target)
        for i in self.copy:
            shape[i] = x.shape[i]
        return x.reshape(shape)

    def extra_repr(self) -> str:  # noqa: D102
        return f"target={self.target}"


class Flatten(nn.Module):
    """ONNX Flatten: (d_0..d_{axis-1}, d_axis..) -> (prod(d_0..d_{axis-1}), prod(d_axis..))."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = int(axis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.axis == 1:
            return torch.flatten(x, 1)
        lead = 1
        for d in x.shape[: self.axis]:
            lead *= d
        return x.reshape(lead, -1)

    def extra_repr(self) -> str:  # noqa: D102
        return f"axis={self.axis}"


class Transpose(nn.Module):
    """ONNX Transpose: ``x.permute(perm)``."""

    def __init__(self, perm: list[int]):
        super().__init__()
        self.perm = [int(p) for p in perm]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x.permute(self.perm)

    def extra_repr(self) -> str:  # noqa: D102
        return f"perm={self.perm}"


class Softmax(nn.Module):
    """ONNX Softmax (opset 13 semantics): softmax along ``axis``."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = int(axis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.softmax(x, self.axis)

    def extra_repr(self) -> str:  # noqa: D102
        return f"axis={self.axis}"


class LogSoftmax(nn.Module):
    """ONNX LogSoftmax (opset 13 semantics): log-softmax along ``axis``."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = int(axis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.log_softmax(x, self.axis)

    def extra_repr(self) -> str:  # noqa: D102
        return f"axis={self.axis}"


class Concat(nn.Module):
    """ONNX Concat along ``axis``; constant inputs are buffers ``c<index>``, data inputs are
    ``forward``'s arguments in input order."""

    def __init__(self, axis: int, n_inputs: int, consts: dict[int, torch.Tensor] | None = None):
        super().__init__()
        self.axis = int(axis)
        self.n_inputs = n_inputs
        self.const_slots = sorted(consts or {})
        for i, t in (consts or {}).items():
            self.register_buffer(f"c{i}", t)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if not self.const_slots:
            return torch.cat(xs, self.axis)
        it = iter(xs)
        parts = [getattr(self, f"c{i}") if i in self.const_slots else next(it) for i in range(self.n_inputs)]
        return torch.cat(parts, self.axis)

    def extra_repr(self) -> str:  # noqa: D102
        return f"axis={self.axis}"


class GlobalAveragePool(nn.Module):
    """ONNX GlobalAveragePool: mean over every spatial axis, kept as size 1: (N, C, *S) -> (N, C, 1..)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)


class GlobalMaxPool(nn.Module):
    """ONNX GlobalMaxPool: max over every spatial axis, kept as size 1: (N, C, *S) -> (N, C, 1..)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x.amax(dim=tuple(range(2, x.ndim)), keepdim=True)


class HardSigmoid(nn.Module):
    """ONNX HardSigmoid: ``max(0, min(1, alpha * x + beta))`` (torch's ``nn.Hardsigmoid`` is the
    case alpha = 1/6, beta = 1/2)."""

    def __init__(self, alpha: float, beta: float):
        super().__init__()
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.clamp(x * self.alpha + self.beta, 0.0, 1.0)

    def extra_repr(self) -> str:  # noqa: D102
        return f"alpha={self.alpha}, beta={self.beta}"


class PRelu(nn.Module):
    """ONNX PRelu: ``x`` where ``x >= 0``, else ``slope * x``; ``slope`` (a trainable parameter) has
    the IR constant's shape (``(C, 1, 1)``, ``(1,)``, ...) and broadcasts to the input."""

    def __init__(self, slope: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.where(x >= 0, x, x * self.weight)


class InstanceNorm(nn.Module):
    """ONNX InstanceNormalization over (N, C, *S): every sample and channel normalised by its own
    spatial mean and (biased) variance, then ``scale[c] * x_hat + B[c]`` (Ulyanov et al. 2016,
    arXiv 1607.08022, eq. 4); ``weight``/``bias`` are trainable. The same in train and eval mode."""

    def __init__(self, scale: torch.Tensor, bias: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(scale)
        self.bias = nn.Parameter(bias)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{self.weight.shape[0]}, eps={self.eps}"


class Pad(nn.Module):
    """ONNX Pad (non-negative pads ``[b_1..b_r, e_1..e_r]``): ``F.pad`` with ``mode`` constant
    (``value``), reflect, or edge (torch's ``replicate``). Only axes from the first padded one
    on are passed to ``F.pad``."""

    def __init__(self, pads: list[int], mode: str, value: float):
        super().__init__()
        r = len(pads) // 2
        first = next((i for i in range(r) if pads[i] or pads[i + r]), r)
        self.fpad = tuple(int(p) for i in reversed(range(first, r)) for p in (pads[i], pads[i + r]))
        self.mode = {"edge": "replicate"}.get(mode, mode)
        self.value = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if not self.fpad:
            return x
        if self.mode == "constant":
            return F.pad(x, self.fpad, value=self.value)
        return F.pad(x, self.fpad, mode=self.mode)

    def extra_repr(self) -> str:  # noqa: D102
        return f"pad={self.fpad}, mode={self.mode}, value={self.value}"


class Slice(nn.Module):
    """ONNX Slice with constant, already clamped ``(axis, start, end, step)`` ranges
    (:func:`nashir.ops.slice_range`): Python slicing for positive steps, ``index_select`` of the
    precomputed indices (a buffer per axis) for negative ones."""

    def __init__(self, ranges: list[tuple[int, int, int, int]]):
        super().__init__()
        self.pos = [(a, b, e, st) for a, b, e, st in ranges if st > 0]
        self.neg = []
        for k, (a, b, e, st) in enumerate([r for r in ranges if r[3] < 0]):
            self.register_buffer(f"idx{k}", torch.arange(b, e, st, dtype=torch.int64))
            self.neg.append(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.pos:
            sl = [slice(None)] * x.ndim
            for a, b, e, st in self.pos:
                sl[a] = slice(b, e, st)
            x = x[tuple(sl)]
        for k, a in enumerate(self.neg):
            x = x.index_select(a, getattr(self, f"idx{k}"))
        return x

    def extra_repr(self) -> str:  # noqa: D102
        return f"ranges={self.pos}, reversed_axes={self.neg}"


# --------------------------------------------------------------------------------------------
# Lowerings, one per op
# --------------------------------------------------------------------------------------------


@register_lowering("Conv")
def _lower_conv(node: Node) -> Lowered:
    nsp = _spatial_rank(node)
    a = node.attrs
    w = node.inputs[1].const
    b = node.inputs[2] if len(node.inputs) > 2 else None
    pads = list(a["pads"])
    plain, padded = _CONV[nsp]
    sym = pads[:nsp] == pads[nsp:]
    cls = plain if sym else padded
    mod = cls(
        in_channels=int(w.shape[1]) * a["group"], out_channels=int(w.shape[0]),
        kernel_size=tuple(int(k) for k in w.shape[2:]), stride=tuple(a["strides"]),
        padding=tuple(pads[:nsp]) if sym else 0, dilation=tuple(a["dilations"]), groups=a["group"],
        bias=b is not None,
    )
    if not sym:
        mod.pre_pad = _fpad(pads, nsp)
    with torch.no_grad():
        mod.weight = nn.Parameter(_tensor(w))
        if b is not None:
            mod.bias = nn.Parameter(_tensor(b.const).reshape(-1))
    weights = [(1, "weight", True)] + ([(2, "bias", True)] if b is not None else [])
    return Lowered(mod, [0], weights)


@register_lowering("ConvTranspose")
def _lower_conv_transpose(node: Node) -> Lowered:
    a = node.attrs
    b = node.inputs[2] if len(node.inputs) > 2 else None
    bias = _tensor(b.const).reshape(-1) if b is not None else None
    mod = ConvTranspose(_tensor(node.inputs[1].const), bias,
                        a["strides"], a["dilations"], a["pads"], a["output_padding"], a["group"])
    weights = [(1, "weight", True)] + ([(2, "bias", True)] if b is not None else [])
    return Lowered(mod, [0], weights)


@register_lowering("BatchNormalization")
def _lower_bn(node: Node) -> Lowered:
    shp = node.inputs[0].shape
    rank = len(shp) if shp is not None else 0
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(rank)
    if cls is None:
        raise BackendError(
            f"node {node.name!r} (BatchNormalization): input of rank {rank}; the torch backend lowers "
            "ranks 2 to 5 (N x C x ...)"
        )
    c = int(node.inputs[1].const.shape[0])
    mom = 1.0 - float(node.attrs["momentum"])
    mod = cls(c, eps=float(node.attrs["epsilon"]), momentum=mom)
    with torch.no_grad():
        mod.weight = nn.Parameter(_tensor(node.inputs[1].const))
        mod.bias = nn.Parameter(_tensor(node.inputs[2].const))
        mod.running_mean = _tensor(node.inputs[3].const)
        mod.running_var = _tensor(node.inputs[4].const)
    return Lowered(mod, [0], [(1, "weight", True), (2, "bias", True), (3, "running_mean", True),
                              (4, "running_var", True)])


@register_lowering("Gemm")
def _lower_gemm(node: Node) -> Lowered:
    w = node.inputs[1].const
    b = node.inputs[2] if len(node.inputs) > 2 else None
    mod = nn.Linear(int(w.shape[1]), int(w.shape[0]), bias=b is not None)
    with torch.no_grad():
        mod.weight = nn.Parameter(_tensor(w))
        if b is not None:
            mod.bias = nn.Parameter(_tensor(b.const).reshape(-1))
    return Lowered(mod, [0], [(1, "weight", True)] + ([(2, "bias", True)] if b is not None else []))


def _simple(factory: Callable[[Node], nn.Module]) -> LoweringFn:
    return lambda node: Lowered(factory(node))


register_lowering("Relu")(_simple(lambda n: nn.ReLU()))
register_lowering("LeakyRelu")(_simple(lambda n: nn.LeakyReLU(float(n.attrs["alpha"]))))
register_lowering("Sigmoid")(_simple(lambda n: nn.Sigmoid()))
register_lowering("Tanh")(_simple(lambda n: nn.Tanh()))
register_lowering("Identity")(_simple(lambda n: nn.Identity()))
register_lowering("GlobalAveragePool")(_simple(lambda n: GlobalAveragePool()))
register_lowering("Softmax")(_simple(lambda n: Softmax(n.attrs["axis"])))
register_lowering("LRN")(_simple(
    lambda n: LRN(n.attrs["size"], n.attrs["alpha"], n.attrs["beta"], n.attrs["bias"])))
register_lowering("Elu")(_simple(lambda n: nn.ELU(float(n.attrs["alpha"]))))
register_lowering("HardSigmoid")(_simple(lambda n: HardSigmoid(n.attrs["alpha"], n.attrs["beta"])))
register_lowering("HardSwish")(_simple(lambda n: nn.Hardswish()))
register_lowering("GlobalMaxPool")(_simple(lambda n: GlobalMaxPool()))
register_lowering("LogSoftmax")(_simple(lambda n: LogSoftmax(n.attrs["axis"])))
register_lowering("Pad")(_simple(lambda n: Pad(n.attrs["pads"], n.attrs["mode"], n.attrs["value"])))


@register_lowering("PRelu")
def _lower_prelu(node: Node) -> Lowered:
    return Lowered(PRelu(_tensor(node.inputs[1].const)), [0], [(1, "weight", True)])


@register_lowering("InstanceNormalization")
def _lower_instnorm(node: Node) -> Lowered:
    mod = InstanceNorm(_tensor(node.inputs[1].const), _tensor(node.inputs[2].const),
                       node.attrs["epsilon"])
    return Lowered(mod, [0], [(1, "weight", True), (2, "bias", True)])


@register_lowering("Slice")
def _lower_slice(node: Node) -> Lowered:
    shp = node.inputs[0].shape
    a = node.attrs
    ranges = []
    for ax, b, e, st in zip(a["axes"], a["starts"], a["ends"], a["steps"]):
        ax = ax + len(shp) if ax < 0 else ax
        if not isinstance(shp[ax], (int, np.integer)):
            continue   # the whole symbolic axis (shape inference allows nothing else)
        b2, e2, _ = _ops.slice_range(int(shp[ax]), b, e, st)
        ranges.append((ax, b2, e2, st))   # for st < 0, e2 may be -1: arange(b2, -1, st) ends at index 0
    return Lowered(Slice(ranges))


@register_lowering("Dropout")
def _lower_dropout(node: Node) -> Lowered:
    ratio = node.meta.get("ratio")
    if ratio is not None:
        ratio = float(ratio)
        if not 0.0 <= ratio < 1.0:
            raise BackendError(
                f"node {node.name!r} (Dropout): meta['ratio']={ratio} is outside [0, 1); fix or drop it"
            )
        if ratio > 0:
            return Lowered(nn.Dropout(ratio))
    return Lowered(nn.Identity())


@register_lowering("Clip")
def _lower_clip(node: Node) -> Lowered:
    bounds: list[float | None] = []
    for i in (1, 2):
        v = node.inputs[i] if i < len(node.inputs) else None
        bounds.append(None if v is None else float(np.asarray(v.const).reshape(-1)[0]))
    return Lowered(Clip(*bounds), [0])


@register_lowering("Flatten")
def _lower_flatten(node: Node) -> Lowered:
    axis = node.attrs["axis"]
    if axis < 0:
        axis += len(node.inputs[0].shape)
    return Lowered(Flatten(axis))


@register_lowering("Reshape")
def _lower_reshape(node: Node) -> Lowered:
    return Lowered(Reshape(np.asarray(node.inputs[1].const).tolist(), node.attrs.get("allowzero", 0)), [0])


@register_lowering("Transpose")
def _lower_transpose(node: Node) -> Lowered:
    return Lowered(Transpose(node.attrs["perm"]))


@register_lowering("Concat")
def _lower_concat(node: Node) -> Lowered:
    consts = {i: _tensor(v.const) for i, v in enumerate(node.inputs) if v.is_const}
    args = [i for i, v in enumerate(node.inputs) if not v.is_const]
    return Lowered(Concat(node.attrs["axis"], len(node.inputs), consts), args,
                   [(i, f"c{i}", False) for i in sorted(consts)])


def _lower_binary(node: Node) -> Lowered:
    a, b = node.inputs
    if not a.is_const and not b.is_const:
        return Lowered(Binary(node.op_type), [0, 1])
    if a.is_const and b.is_const:
        raise BackendError(
            f"node {node.name!r} ({node.op_type}): both inputs are constants; fold it into one constant first"
        )
    ci = 0 if a.is_const else 1
    data, const = (b, a) if ci == 0 else (a, b)
    arr = const.const
    c = data.shape[1] if data.shape is not None and len(data.shape) >= 2 else None
    trainable = (
        _ops.per_channel_const(node) is not None and arr.ndim >= 1 and isinstance(c, (int, np.integer))
        and arr.size == c and np.issubdtype(arr.dtype, np.floating)
    )
    mod = Binary(node.op_type, _tensor(arr), ci, trainable=trainable)
    return Lowered(mod, [1 - ci], [(ci, "const", trainable)])


register_lowering("Add")(_lower_binary)
register_lowering("Mul")(_lower_binary)


def _pool_native(node: Node, nsp: int, kind: str) -> nn.Module | None:
    a = node.attrs
    k, s, d, pads = a["kernel_shape"], a["strides"], a["dilations"], a["pads"]
    if pads[:nsp] != pads[nsp:] or any(2 * p > kk for p, kk in zip(pads[:nsp], k)):
        return None
    ceil = bool(a.get("ceil_mode", 0))
    if kind == "max":
        cls = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[nsp]
        mod = cls(tuple(k), tuple(s), tuple(pads[:nsp]), tuple(d), ceil_mode=ceil)
    else:
        if any(x != 1 for x in d):
            return None
        cls = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[nsp]
        mod = cls(tuple(k), tuple(s), tuple(pads[:nsp]), ceil_mode=ceil,
                  count_include_pad=bool(a.get("count_include_pad", 0)))
    # torch's output size must be the IR's (it is, for the cases above; checked, not assumed)
    shp = node.inputs[0].shape
    sp = [int(x) if isinstance(x, (int, np.integer)) else 7 for x in shp[2:]]
    try:
        out = mod(torch.empty((1, 1, *sp), device="meta"))
    except RuntimeError:
        return None
    want = node.outputs[0].shape[2:]
    if any(isinstance(w, (int, np.integer)) and w != o for w, o in zip(want, out.shape[2:])):
        return None
    if not all(isinstance(x, (int, np.integer)) for x in shp[2:]):
        return mod  # symbolic sizes: rely on torch's rule, which is the IR's rule (nashir.ops.window_out)
    return mod


def _pool_generic(node: Node, nsp: int, kind: str) -> nn.Module:
    a = node.attrs
    k, s, d, pads = a["kernel_shape"], a["strides"], a["dilations"], a["pads"]
    if kind == "avg" and any(x != 1 for x in d):
        raise BackendError(
            f"node {node.name!r} (AveragePool): dilations {list(d)} are not supported by the torch backend "
            "(torch's average pooling has no dilation); use dilations of 1"
        )
    ins = _static(node.inputs[0].shape, node, "pooling with these pads")
    outs = _static(node.outputs[0].shape, node, "pooling with these pads")
    pad: list[int] = []
    counts = []
    for i in range(nsp):
        eff = d[i] * (k[i] - 1) + 1
        end = (outs[i] - 1) * s[i] + eff - ins[i] - pads[i]
        pad.append((int(pads[i]), int(end)))
        if kind == "avg":
            lo = -pads[i] if a.get("count_include_pad", 0) else 0
            hi = ins[i] + pads[i + nsp] if a.get("count_include_pad", 0) else ins[i]
            start = np.arange(outs[i]) * s[i] - pads[i]
            cnt = np.minimum(start + k[i], hi) - np.maximum(start, lo)
            counts.append(np.maximum(cnt, 1).astype(np.float64))
    fpad: list[int] = []
    for i in reversed(range(nsp)):
        fpad += list(pad[i])
    scale = None
    if kind == "avg":
        cnt = counts[0]
        for c in counts[1:]:
            cnt = np.multiply.outer(cnt, c)
        scale = torch.from_numpy((float(np.prod(k)) / cnt).astype(np.float32)).reshape(1, 1, *outs)
    return Pool(kind, list(k), list(s), list(d), tuple(fpad), scale)


def _lower_pool(node: Node) -> Lowered:
    nsp = _spatial_rank(node)
    kind = "max" if node.op_type == "MaxPool" else "avg"
    mod = _pool_native(node, nsp, kind)
    if mod is None:
        mod = _pool_generic(node, nsp, kind)
    return Lowered(mod)


register_lowering("MaxPool")(_lower_pool)
register_lowering("AveragePool")(_lower_pool)


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

_RESERVED: set[str] | None = None


def _reserved() -> set[str]:
    global _RESERVED
    if _RESERVED is None:
        _RESERVED = set(dir(torch.fx.GraphModule)) | set(vars(nn.Module())) | {
            "graph", "code", "meta", "self", "torch", "nashir_modules", "nashir_weights", "nashir_inputs",
        }
    return _RESERVED


def module_name(node_name: str) -> str:
    """The submodule name a node name maps to (before de-duplication).

    Deterministic: every character outside ``[A-Za-z0-9_]`` becomes ``_``; a leading digit or an
    empty name gets a ``n_`` prefix; a Python keyword or a name that ``torch.fx.GraphModule``
    already uses (``graph``, ``forward``, ``to``...) gets a trailing ``_``. Names that then collide
    get ``_1``, ``_2``... in node order (see ``module.nashir_modules`` for the final mapping).
    """
    s = re.sub(r"\W", "_", node_name, flags=re.ASCII)
    if not s or s[0].isdigit():
        s = "n_" + s
    while keyword.iskeyword(s) or s in _reserved():
        s += "_"
    return s


def _unique(base: str, taken: set[str]) -> str:
    if base not in taken:
        return base
    k = 1
    while f"{base}_{k}" in taken:
        k += 1
    return f"{base}_{k}"


# --------------------------------------------------------------------------------------------
# to_torch / update_weights
# --------------------------------------------------------------------------------------------


class LoweredModule(torch.fx.GraphModule):
    """The ``torch.fx.GraphModule`` :func:`to_torch` returns; keeps its name maps through ``deepcopy``."""

    _NASHIR_ATTRS = ("nashir_modules", "nashir_weights", "nashir_inputs")

    def __deepcopy__(self, memo):  # noqa: D105
        res = super().__deepcopy__(memo)
        for a in self._NASHIR_ATTRS:
            if a in self.__dict__:
                setattr(res, a, copy.deepcopy(self.__dict__[a], memo))
        return res


def _get_tensor(module: nn.Module, qual: str) -> torch.Tensor:
    mod_path, _, attr = qual.rpartition(".")
    sub = module.get_submodule(mod_path) if mod_path else module
    t = getattr(sub, attr, None)
    if not isinstance(t, torch.Tensor):
        raise BackendError(
            f"the module has no tensor {qual!r}; was it made by nashir.backends.torch.to_torch?"
        )
    return t


def _set_shared(sub: nn.Module, attr: str, tensor: torch.Tensor) -> None:
    if isinstance(tensor, nn.Parameter):
        setattr(sub, attr, tensor)
    else:
        sub._buffers[attr] = tensor


def to_torch(graph: Graph, device: str | torch.device | None = None) -> LoweredModule:
    """Lower a graph to a ``torch.fx.GraphModule`` with one submodule per IR node.

    The module's ``forward`` takes the graph's data inputs in order (float32 NCHW tensors) and
    returns the single output tensor (or a tuple when the graph has several outputs). Weights are
    copied (the graph is not modified and does not share memory with the module): Conv, Gemm,
    BatchNormalization scale/bias and per-channel Add/Mul constants become ``nn.Parameter`` s,
    BatchNorm running statistics and other constants buffers (module docstring: the table of ops).
    A constant used by several nodes becomes one shared parameter. The module is in train mode
    (torch's default); call ``.eval()`` for inference semantics (BatchNorm running statistics, no
    dropout), which is what ONNX computes.

    Attributes set on the returned module: ``nashir_modules`` (node name -> submodule name),
    ``nashir_weights`` (constant value name -> qualified tensor name, for :func:`update_weights`),
    ``nashir_inputs`` (graph input names in ``forward`` order).

    Args:
        graph: A verified graph (``graph.verify()`` passes).
        device: Where to put the module: None (stay on the CPU), ``"auto"`` (CUDA when available),
            ``"cpu"``, ``"cuda[:N]"`` or a ``torch.device``.

    Returns:
        The module.

    Raises:
        BackendError: A node's op has no lowering (the message names the node and the op and lists
            the ops the backend lowers), or a node's inputs/attributes cannot be expressed in torch.
    """
    unsupported = [(n.name, n.op_type) for n in graph.nodes if n.op_type not in _LOWERINGS]
    if unsupported:
        listing = "; ".join(f"node {nm!r} (op {op})" for nm, op in unsupported)
        raise BackendError(
            f"the torch backend cannot lower {listing}; it lowers: {', '.join(lowerable_ops())}. "
            "Replace these nodes, or register a lowering with nashir.backends.torch.register_lowering"
        )
    for v in graph.outputs:
        if v.is_const:
            raise BackendError(
                f"graph output {v.name!r} is a constant; the torch backend needs computed outputs"
            )
    fxg = torch.fx.Graph()
    root = nn.Module()
    env: dict[str, torch.fx.Node] = {}
    taken: set[str] = set()
    for v in graph.inputs:
        ph = fxg.placeholder(_unique(module_name(v.name), taken))
        taken.add(ph.target)
        env[v.name] = ph
    names: dict[str, str] = {}
    weights: dict[str, str] = {}
    shared: dict[str, torch.Tensor] = {}
    for node in graph.nodes:
        if len(node.outputs) != 1:
            raise BackendError(
                f"node {node.name!r} (op {node.op_type}) has {len(node.outputs)} outputs; the torch backend "
                "lowers single-output nodes"
            )
        try:
            low = _LOWERINGS[node.op_type](node)
        except BackendError:
            raise
        except Exception as e:  # a lowering that does not fit the node's attributes
            raise BackendError(
                f"node {node.name!r} (op {node.op_type}) cannot be lowered to torch: {type(e).__name__}: {e}"
            ) from e
        sub_name = _unique(module_name(node.name), taken)
        taken.add(sub_name)
        names[node.name] = sub_name
        mod = low.module
        for idx, attr, trained in low.weights:
            v = node.inputs[idx]
            t = getattr(mod, attr)
            if v.name in shared:
                prev = shared[v.name]
                if tuple(prev.shape) != tuple(t.shape) or isinstance(prev, nn.Parameter) != isinstance(
                        t, nn.Parameter):
                    raise BackendError(
                        f"constant {v.name!r} is shared by node {node.name!r} (op {node.op_type}) and an "
                        "earlier node in a way torch cannot tie (different roles or shapes); give each "
                        "node its own copy of the constant"
                    )
                _set_shared(mod, attr, prev)
            else:
                shared[v.name] = t
                if trained:
                    weights[v.name] = f"{sub_name}.{attr}"
        root.add_module(sub_name, mod)
        args_idx = low.args if low.args is not None else [
            i for i, v in enumerate(node.inputs) if v is not None and not v.is_const]
        args = []
        for i in args_idx:
            v = node.inputs[i]
            if v is None or v.name not in env:
                raise BackendError(
                    f"node {node.name!r} (op {node.op_type}): input {i} "
                    f"{None if v is None else repr(v.name)} is not computed before it; verify the graph"
                )
            args.append(env[v.name])
        env[node.outputs[0].name] = fxg.call_module(sub_name, tuple(args))
    outs = [env[v.name] for v in graph.outputs]
    fxg.output(outs[0] if len(outs) == 1 else tuple(outs))
    gm = LoweredModule(root, fxg, class_name=_class_name(graph.name))
    gm.nashir_modules = names
    gm.nashir_weights = weights
    gm.nashir_inputs = [v.name for v in graph.inputs]
    if device is not None:
        from nashir.backends.torch.sgdr import resolve_device

        gm.to(resolve_device(device))
    return gm


def _class_name(name: str) -> str:
    s = re.sub(r"\W", "_", name or "graph", flags=re.ASCII)
    if not s or s[0].isdigit():
        s = "G_" + s
    return "Lowered_" + s


def update_weights(graph: Graph, module: nn.Module) -> None:
    """Write a lowered module's trained tensors back into the graph's constants, in place.

    Every entry of ``module.nashir_weights`` (Conv/Gemm weights and biases, BatchNorm scale, bias,
    running mean and running variance, per-channel Add/Mul constants) is copied to the graph's
    constant of that name as a float32 numpy array of the constant's shape (a Gemm bias stored as
    ``(1, out)`` keeps that shape). Lowering then writing back without training leaves every
    constant bit-identical. Either every constant is written or none (all are checked first).

    Args:
        graph: The graph the module was lowered from (or a clone of it).
        module: A module returned by :func:`to_torch` for that graph.

    Raises:
        BackendError: The module was not made by :func:`to_torch`, or the graph no longer has a
            constant of a mapped name and size (names the constant).
    """
    mapping = getattr(module, "nashir_weights", None)
    if not isinstance(mapping, dict):
        raise BackendError(
            "update_weights: the module has no nashir_weights mapping; pass the module that "
            "nashir.backends.torch.to_torch returned for this graph"
        )
    staged: list[tuple[Value, np.ndarray]] = []
    for vname, qual in mapping.items():
        v = graph.values.get(vname)
        if v is None or not v.is_const:
            raise BackendError(
                f"update_weights: the graph has no constant {vname!r} (the module maps it to {qual!r}); "
                "write back into the graph the module was lowered from"
            )
        t = _get_tensor(module, qual)
        arr = t.detach().to("cpu", torch.float32).numpy()
        if arr.size != v.const.size:
            raise BackendError(
                f"update_weights: constant {vname!r} has shape {list(v.const.shape)} in the graph but "
                f"{list(arr.shape)} in the module ({qual}); the graph changed after lowering"
            )
        staged.append((v, np.array(arr.reshape(v.const.shape), dtype=np.float32, copy=True)))
    for v, arr in staged:
        graph.set_const(v, arr)
