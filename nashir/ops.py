"""The op table: one :class:`OpSpec` per supported op, with ONNX names and ONNX attribute meaning.

Each entry gives the op's inputs (and which are parameters), attribute defaults as ONNX defines
them (semantics of ONNX opset 17; older forms are normalised on import), shape inference,
parameter and multiply-accumulate (MAC) counts, and the *channel behaviour* and *sign behaviour*
that the morphism analyses use (DESIGN.md section 5). Adding an op is adding one entry.

Shapes are tuples in NCHW order; the batch dimension may be a symbol (a ``str`` such as ``"N"``).
Weights follow ONNX layouts: Conv ``W`` is OIHW ``(C_out, C_in/group, kH, kW)``, Gemm ``W`` is
``(out, in)`` (always normalised so that ``transB=1``; as ONNX's default is ``transB=0``, a Gemm
node must say ``transB=1`` explicitly).

Index lists that later opsets pass as int64 inputs are attributes in the IR, so that every input of a
node is float32 data or a float32 parameter: Pad keeps ``pads``/``mode``/``value`` (Pad-2 meaning) and
Slice ``starts``/``ends``/``axes``/``steps`` (Slice-13 meaning). The ONNX exporter writes them as the
inputs the target opset expects; the importer reads every opset's form. Split is imported as one
Slice per output (the IR's ops have a fixed number of outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nashir.errors import OpError, ShapeError

Dim = int | str
Shape = tuple[Dim, ...]

REQUIRED = object()

# Channel behaviours (DESIGN.md section 5, "Channel flow").
TRANSPARENT = "transparent"
PER_CHANNEL = "per-channel"
ABSORBER = "absorber"
FLATTEN = "flatten"
CONCAT = "concat"
COUPLER = "coupler"
BLOCKER = "blocker"
#: A grouped Conv (``1 < group``, not depthwise with multiplier 1): its input and output channels are
#: tied to ``group`` blocks; it is widened by the same factor in every group (``nashir.passes``).
GROUPED = "grouped"
#: ConvTranspose (group 1): an absorber over its input channels (weight axis 0 of ``(C_in, C_out, kH,
#: kW)``) and a producer over its output channels (weight axis 1), the axes swapped against Conv.
TRANSPOSED = "transposed"


@dataclass(frozen=True)
class AttrSpec:
    """One attribute: its kind (``int``, ``float``, ``ints``, ``floats``, ``string``) and default."""

    kind: str
    default: Any = REQUIRED


@dataclass
class OpSpec:
    """One op of the table.

    Attributes:
        op_type: ONNX op name.
        min_inputs, max_inputs: arity of the input list (optional trailing inputs may be absent).
        param_inputs: indices of inputs that are parameters (must be constant Values).
        n_outputs: number of outputs the IR keeps.
        attrs: attribute name -> :class:`AttrSpec` with ONNX default.
        infer: ``infer(node_attrs, input_shapes, input_consts) -> list of output shapes``; raises ShapeError.
        macs: ``macs(attrs, input_shapes, output_shapes) -> int`` multiply-accumulates per sample.
        channel: ``channel(node) -> behaviour`` (one of the behaviour constants) for the channel analysis.
        sign: ``sign(node, input_nonneg: list[bool]) -> bool``: output known non-negative.
        check: optional extra attribute/shape validation raising OpError.
        min_opset: the oldest ONNX opset (default domain) that has the op with the IR's meaning;
            export below it is refused (:func:`min_opset`).
    """

    op_type: str
    min_inputs: int
    max_inputs: int
    infer: Callable[..., list[Shape]]
    param_inputs: frozenset[int] = frozenset()
    n_outputs: int = 1
    attrs: dict[str, AttrSpec] = field(default_factory=dict)
    macs: Callable[..., int] = lambda attrs, ins, outs: 0
    channel: Callable[[Any], str] = lambda node: BLOCKER
    sign: Callable[[Any, list[bool]], bool] = lambda node, nonneg: False
    check: Callable[..., None] | None = None
    min_opset: int = 1


OPS: dict[str, OpSpec] = {}


def register_op(spec: OpSpec) -> OpSpec:
    """Add ``spec`` to the op table (replacing an entry of the same name) and return it."""
    OPS[spec.op_type] = spec
    return spec


def get_op(op_type: str) -> OpSpec:
    """Return the entry for ``op_type``.

    Raises:
        OpError: the op is not in the table; the message lists the supported ops.
    """
    try:
        return OPS[op_type]
    except KeyError:
        raise OpError(
            f"op {op_type!r} is not in nashir's op table; supported: {', '.join(sorted(OPS))}"
        ) from None


def min_opset(op_types) -> tuple[int, list[str]]:
    """The oldest opset that can express every op of ``op_types`` (an iterable of op names, or a
    Graph, whose nodes' op types are taken), and the ops that need it (empty when it is 1).

    Raises:
        OpError: an op is not in the table.
    """
    if hasattr(op_types, "nodes"):
        op_types = [nd.op_type for nd in op_types.nodes]
    need: dict[str, int] = {t: get_op(t).min_opset for t in set(op_types)}
    lo = max(need.values(), default=1)
    return lo, sorted(t for t, v in need.items() if v == lo and lo > 1)


def supported_ops() -> list[str]:
    """Sorted names of every op in the table."""
    return sorted(OPS)


# --------------------------------------------------------------------------------------------
# helpers


def _prod(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _is_int(d: Dim) -> bool:
    return isinstance(d, int)


def _need_rank(shape: Shape, rank: int, what: str) -> None:
    if shape is None or len(shape) != rank:
        raise ShapeError(f"{what}: expected rank {rank}, got shape {_fmt(shape)}")


def _fmt(shape) -> str:
    if shape is None:
        return "unknown"
    return "[" + ",".join(str(d) for d in shape) + "]"


def _spatial_attrs(attrs: dict, nsp: int, kernel: Sequence[int]) -> tuple[list, list, list]:
    strides = list(attrs.get("strides") or [1] * nsp)
    dil = list(attrs.get("dilations") or [1] * nsp)
    pads = list(attrs.get("pads") or [0] * (2 * nsp))
    if len(strides) != nsp or len(dil) != nsp or len(pads) != 2 * nsp or len(kernel) != nsp:
        raise ShapeError(
            f"kernel_shape {list(kernel)}, strides {strides}, dilations {dil}, pads {pads} do not fit "
            f"{nsp} spatial dimension(s) (pads needs {2 * nsp} values: begins then ends)"
        )
    if any(s < 1 for s in strides) or any(d < 1 for d in dil) or any(k < 1 for k in kernel):
        raise ShapeError(f"strides {strides}, dilations {dil} and kernel {list(kernel)} must be >= 1")
    if any(p < 0 for p in pads):
        raise ShapeError(f"pads {pads} must be >= 0")
    return strides, dil, pads


def window_out(
    size: Dim, k: int, stride: int, dil: int, pad_b: int, pad_e: int, ceil_mode: bool = False
) -> Dim:
    """Output length of a sliding window (ONNX Conv/MaxPool/AveragePool; torch's rule for ceil_mode).

    ``out = floor_or_ceil((size + pad_b + pad_e - dil*(k-1) - 1) / stride) + 1`` (ONNX MaxPool/Conv
    operator specification; torch's ``pooling_output_shape``); with ceil_mode the last window must
    start inside the input or the begin padding, else it is dropped. With ceil_mode a single window
    may overhang the end (e.g. size 1, kernel 2, stride 2 gives 1), as in ONNX, onnxruntime and torch.

    Raises:
        ShapeError: the window does not fit (output length < 1).
    """
    if not _is_int(size):
        return size
    eff = dil * (k - 1) + 1
    span = size + pad_b + pad_e - eff
    if ceil_mode:
        out = -(-span // stride) + 1
        if out > 1 and (out - 1) * stride >= size + pad_b:
            out -= 1
    else:
        out = span // stride + 1
    if out < 1:
        raise ShapeError(
            f"window of effective size {eff} (kernel {k}, dilation {dil}) does not fit an input of "
            f"{size} with pads ({pad_b},{pad_e}); use a smaller kernel/dilation or more padding"
        )
    return out


# --------------------------------------------------------------------------------------------
# Conv


def _conv_infer(attrs, shapes, consts):
    x, w = shapes[0], shapes[1]
    if x is None or len(x) < 3:
        raise ShapeError(f"Conv input must be N x C x spatial..., got {_fmt(x)}")
    nsp = len(x) - 2
    _need_rank(w, nsp + 2, "Conv weight (OIHW)")
    group = attrs["group"]
    kernel = attrs.get("kernel_shape") or list(w[2:])
    if list(kernel) != list(w[2:]):
        raise ShapeError(
            f"kernel_shape {list(kernel)} does not match the weight's spatial dims {list(w[2:])}"
        )
    if group < 1:
        raise ShapeError(f"group must be >= 1, got {group}")
    c_in = x[1]
    if _is_int(c_in) and w[1] * group != c_in:
        raise ShapeError(
            f"weight OIHW {_fmt(w)} with group={group} expects {w[1] * group} input channels, "
            f"the input has {c_in}"
        )
    if w[0] % group != 0:
        raise ShapeError(f"output channels {w[0]} are not divisible by group={group}")
    if len(shapes) > 2 and shapes[2] is not None and tuple(shapes[2]) != (w[0],):
        raise ShapeError(f"bias shape {_fmt(shapes[2])} must be [{w[0]}] (one per output channel)")
    strides, dil, pads = _spatial_attrs(attrs, nsp, kernel)
    out = [x[0], w[0]]
    for i in range(nsp):
        out.append(window_out(x[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[i + nsp]))
    return [tuple(out)]


def _conv_macs(attrs, ins, outs):
    w = ins[1]
    o = outs[0]
    if not all(_is_int(d) for d in o[1:]):
        return 0
    return _prod(o[1:]) * _prod(w[1:])


def _conv_channel(node):
    g = node.attrs["group"]
    if g == 1:
        return ABSORBER
    w = node.inputs[1].shape
    cin = node.inputs[0].shape[1] if node.inputs[0].shape else None
    if w is not None and w[1] == 1 and cin == g and w[0] == g:
        return PER_CHANNEL  # depthwise, channel multiplier 1
    return GROUPED


_CONV_ATTRS = {
    "auto_pad": AttrSpec("string", "NOTSET"),
    "dilations": AttrSpec("ints", None),
    "group": AttrSpec("int", 1),
    "kernel_shape": AttrSpec("ints", None),
    "pads": AttrSpec("ints", None),
    "strides": AttrSpec("ints", None),
}


def _check_notset(attrs, node_name):
    if attrs.get("auto_pad", "NOTSET") != "NOTSET":
        raise OpError(
            f"node {node_name!r}: auto_pad={attrs['auto_pad']!r} must be resolved to explicit pads in the IR "
            "(the ONNX importer does this); set auto_pad='NOTSET' and give pads"
        )


register_op(
    OpSpec(
        "Conv", 2, 3, _conv_infer, param_inputs=frozenset({1, 2}), attrs=_CONV_ATTRS,
        macs=_conv_macs, channel=_conv_channel,
        check=lambda attrs, name: _check_notset(attrs, name),
    )
)


# --------------------------------------------------------------------------------------------
# ConvTranspose


def _convt_infer(attrs, shapes, consts):
    """ONNX ConvTranspose: ``out = stride * (in - 1) + output_padding + (k - 1) * dilation + 1 -
    pad_begin - pad_end`` per spatial axis (ONNX ConvTranspose-11 specification); weight
    ``(C_in, C_out/group, kH, kW)``, output channels ``C_out = W.shape[1] * group``."""
    x, w = shapes[0], shapes[1]
    if x is None or len(x) < 3:
        raise ShapeError(f"ConvTranspose input must be N x C x spatial..., got {_fmt(x)}")
    nsp = len(x) - 2
    _need_rank(w, nsp + 2, "ConvTranspose weight (C_in, C_out/group, kH, kW)")
    group = attrs["group"]
    if group < 1:
        raise ShapeError(f"group must be >= 1, got {group}")
    kernel = attrs.get("kernel_shape") or list(w[2:])
    if list(kernel) != list(w[2:]):
        raise ShapeError(f"kernel_shape {list(kernel)} does not match the weight's spatial dims "
                         f"{list(w[2:])}")
    if _is_int(x[1]) and w[0] != x[1]:
        raise ShapeError(f"weight (C_in, C_out/group, kH, kW) {_fmt(w)} expects {w[0]} input channels, the "
                         f"input has {x[1]}")
    if w[0] % group:
        raise ShapeError(f"input channels {w[0]} are not divisible by group={group}")
    cout = w[1] * group
    if len(shapes) > 2 and shapes[2] is not None and tuple(shapes[2]) != (cout,):
        raise ShapeError(f"bias shape {_fmt(shapes[2])} must be [{cout}] (one per output channel)")
    strides, dil, pads = _spatial_attrs(attrs, nsp, kernel)
    opad = list(attrs.get("output_padding") or [0] * nsp)
    if len(opad) != nsp or any(p < 0 or p >= s for p, s in zip(opad, strides)):
        # torch also allows output_padding < dilation; onnxruntime only < stride
        raise ShapeError(f"output_padding {opad} must have {nsp} values, each >= 0 and smaller than the "
                         f"stride {strides} of its axis (onnxruntime's rule)")
    out = [x[0], cout]
    for i in range(nsp):
        d = x[2 + i]
        if not _is_int(d):
            out.append(d)
            continue
        o = strides[i] * (d - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1 - pads[i] - pads[i + nsp]
        if o < 1:
            raise ShapeError(f"ConvTranspose pads {pads} leave no output on spatial axis {i} (size {o})")
        out.append(o)
    return [tuple(out)]


def _convt_check(attrs, node_name):
    _check_notset(attrs, node_name)
    if attrs.get("output_shape"):
        raise OpError(f"node {node_name!r} (ConvTranspose): output_shape={attrs['output_shape']} must be "
                      "resolved to explicit pads in the IR; give pads (and output_padding) instead")


register_op(
    OpSpec(
        "ConvTranspose", 2, 3, _convt_infer, param_inputs=frozenset({1, 2}),
        attrs={**_CONV_ATTRS, "output_padding": AttrSpec("ints", None),
               "output_shape": AttrSpec("ints", None)},
        # every input element meets C_out/group * kH * kW weights
        macs=lambda a, i, o: (_prod(i[0][1:]) * _prod(i[1][1:])
                              if all(_is_int(d) for d in i[0][1:]) else 0),
        channel=lambda node: TRANSPOSED if node.attrs["group"] == 1 else BLOCKER,
        check=_convt_check, min_opset=11,
    )
)


# --------------------------------------------------------------------------------------------
# BatchNormalization


def _bn_infer(attrs, shapes, consts):
    x = shapes[0]
    if x is None or len(x) < 2:
        raise ShapeError(f"BatchNormalization input must be N x C x ..., got {_fmt(x)}")
    c = x[1]
    for i, nm in zip(range(1, 5), ("scale", "B", "mean", "var")):
        if tuple(shapes[i]) != (c,):
            raise ShapeError(
                f"BatchNormalization {nm} has shape {_fmt(shapes[i])}, expected [{c}] (one per channel)"
            )
    return [tuple(x)]


register_op(
    OpSpec(
        "BatchNormalization", 5, 5, _bn_infer, param_inputs=frozenset({1, 2, 3, 4}),
        attrs={"epsilon": AttrSpec("float", 1e-5), "momentum": AttrSpec("float", 0.9)},
        macs=lambda a, i, o: _prod([d for d in o[0][1:] if _is_int(d)]) if o[0] else 0,
        channel=lambda node: PER_CHANNEL,
    )
)


# --------------------------------------------------------------------------------------------
# element-wise activations


def _same(attrs, shapes, consts):
    return [tuple(shapes[0])] if shapes[0] is not None else [None]


def _all_nonneg(node, nonneg):
    return bool(nonneg) and bool(nonneg[0])


for _op, _attrs, _sign in [
    ("Relu", {}, lambda n, s: True),
    ("LeakyRelu", {"alpha": AttrSpec("float", 0.01)}, lambda n, s: False),
    ("Sigmoid", {}, lambda n, s: True),
    ("Tanh", {}, _all_nonneg),
    ("Identity", {}, _all_nonneg),
    ("Dropout", {"seed": AttrSpec("int", None)}, _all_nonneg),
    # Elu: x for x > 0, alpha*(exp(x) - 1) else (Clevert et al. 2016, arXiv 1511.07289, eq. 15)
    ("Elu", {"alpha": AttrSpec("float", 1.0)}, _all_nonneg),
    # HardSigmoid: max(0, min(1, alpha*x + beta)) (ONNX HardSigmoid-6); always in [0, 1]
    ("HardSigmoid", {"alpha": AttrSpec("float", 0.2), "beta": AttrSpec("float", 0.5)}, lambda n, s: True),
    # HardSwish: x * max(0, min(1, x/6 + 1/2)) (Howard et al. 2019, MobileNetV3, arXiv 1905.02244,
    # section 5.2); negative for -3 < x < 0, so non-negative only when x is
    ("HardSwish", {}, _all_nonneg),
]:
    register_op(
        OpSpec(_op, 1, 1, _same, attrs=dict(_attrs), channel=lambda node: TRANSPARENT, sign=_sign,
               min_opset=14 if _op == "HardSwish" else 1)   # HardSwish-14 is the first
    )


def _clip_sign(node, nonneg):
    """``Clip(x, lo, hi) = min(max(x, lo), hi)`` is >= 0 when ``max(x, lo) >= 0`` (x known non-negative
    or lo >= 0) and the upper bound, if any, is >= 0."""
    lo = node.inputs[1] if len(node.inputs) > 1 else None
    hi = node.inputs[2] if len(node.inputs) > 2 else None
    if hi is not None and (hi.const is None or float(hi.const) < 0):
        return False
    if lo is not None and lo.const is not None and float(lo.const) >= 0:
        return True
    return _all_nonneg(node, nonneg)


def _clip_infer(attrs, shapes, consts):
    for i in (1, 2):
        if i < len(shapes) and shapes[i] is not None and len(shapes[i]) != 0:
            raise ShapeError(f"Clip min/max must be scalars, got {_fmt(shapes[i])}")
    return _same(attrs, shapes, consts)


register_op(
    OpSpec("Clip", 1, 3, _clip_infer, param_inputs=frozenset({1, 2}), channel=lambda n: TRANSPARENT,
           sign=_clip_sign)
)


def _lrn_check(attrs, node_name):
    if attrs["size"] < 1:
        raise OpError(
            f"node {node_name!r} (LRN): size={attrs['size']} must be >= 1 (the number of channels summed "
            "over)"
        )


register_op(
    OpSpec(
        "LRN", 1, 1, _same,
        attrs={"alpha": AttrSpec("float", 1e-4), "beta": AttrSpec("float", 0.75),
               "bias": AttrSpec("float", 1.0), "size": AttrSpec("int")},
        macs=lambda a, i, o: _prod([d for d in o[0][1:] if _is_int(d)]) * a["size"],
        channel=lambda n: BLOCKER, sign=_all_nonneg, check=_lrn_check,
    )
)


# --------------------------------------------------------------------------------------------
# pooling


def _pool_infer(attrs, shapes, consts):
    x = shapes[0]
    if x is None or len(x) < 3:
        raise ShapeError(f"pooling input must be N x C x spatial..., got {_fmt(x)}")
    nsp = len(x) - 2
    kernel = attrs["kernel_shape"]
    strides, dil, pads = _spatial_attrs(attrs, nsp, kernel)
    for i in range(nsp):
        if pads[i] >= kernel[i] or pads[i + nsp] >= kernel[i]:
            raise ShapeError(f"pads {pads} must be smaller than kernel_shape {list(kernel)} for pooling")
    out = [x[0], x[1]]
    for i in range(nsp):
        out.append(window_out(x[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[i + nsp],
                              bool(attrs.get("ceil_mode", 0))))
    return [tuple(out)]


def _pool_macs(attrs, ins, outs):
    o = outs[0]
    if not all(_is_int(d) for d in o[1:]):
        return 0
    return _prod(o[1:]) * _prod(attrs["kernel_shape"])


def _check_pool(attrs, node_name):
    _check_notset(attrs, node_name)
    for k in ("ceil_mode", "count_include_pad", "storage_order"):
        if k in attrs and attrs[k] not in (0, 1):
            raise OpError(f"node {node_name!r}: attribute {k}={attrs[k]} must be 0 or 1")


_POOL_COMMON = {
    "auto_pad": AttrSpec("string", "NOTSET"),
    "ceil_mode": AttrSpec("int", 0),
    "dilations": AttrSpec("ints", None),
    "kernel_shape": AttrSpec("ints"),
    "pads": AttrSpec("ints", None),
    "strides": AttrSpec("ints", None),
}

register_op(
    OpSpec("MaxPool", 1, 1, _pool_infer, attrs={**_POOL_COMMON, "storage_order": AttrSpec("int", 0)},
           macs=_pool_macs, channel=lambda n: TRANSPARENT, sign=_all_nonneg,
           check=lambda attrs, name: _check_pool(attrs, name))
)
register_op(
    OpSpec("AveragePool", 1, 1, _pool_infer,
           attrs={**_POOL_COMMON, "count_include_pad": AttrSpec("int", 0)},
           macs=_pool_macs, channel=lambda n: TRANSPARENT, sign=_all_nonneg,
           check=lambda attrs, name: _check_pool(attrs, name))
)


def _gap_infer(attrs, shapes, consts):
    x = shapes[0]
    if x is None or len(x) < 3:
        raise ShapeError(f"GlobalAveragePool input must be N x C x spatial..., got {_fmt(x)}")
    return [tuple(x[:2]) + (1,) * (len(x) - 2)]


register_op(
    OpSpec("GlobalAveragePool", 1, 1, _gap_infer,
           macs=lambda a, i, o: _prod([d for d in i[0][1:] if _is_int(d)]),
           channel=lambda n: TRANSPARENT, sign=_all_nonneg)
)
# GlobalMaxPool: max over every spatial axis, N x C x S... -> N x C x 1...
register_op(
    OpSpec("GlobalMaxPool", 1, 1, _gap_infer,
           macs=lambda a, i, o: _prod([d for d in i[0][1:] if _is_int(d)]),
           channel=lambda n: TRANSPARENT, sign=_all_nonneg)
)


# --------------------------------------------------------------------------------------------
# Flatten, Reshape, Transpose, Softmax


def _flatten_infer(attrs, shapes, consts):
    x = shapes[0]
    axis = attrs["axis"]
    r = len(x)
    if axis < 0:
        axis += r
    if not 0 <= axis <= r:
        raise ShapeError(f"Flatten axis {attrs['axis']} is out of range for rank {r}")
    head, tail = x[:axis], x[axis:]
    a = _prod(head) if all(_is_int(d) for d in head) else (head[0] if len(head) == 1 else "?")
    b = _prod(tail) if all(_is_int(d) for d in tail) else "?"
    return [(a, b)]


def _flatten_channel(node):
    x = node.inputs[0].shape
    if node.attrs["axis"] == 1 and x is not None and len(x) >= 2:
        return FLATTEN
    return BLOCKER


register_op(
    OpSpec("Flatten", 1, 1, _flatten_infer, attrs={"axis": AttrSpec("int", 1)},
           channel=_flatten_channel, sign=_all_nonneg)
)


def reshape_target(in_shape: Shape, target: Sequence[int], allowzero: int = 0) -> Shape:
    """Resolve an ONNX Reshape target (``0`` copies the input dim unless allowzero, ``-1`` is inferred).

    Raises:
        ShapeError: more than one -1, or a total size that does not divide.
    """
    target = [int(t) for t in target]
    out: list[Dim] = []
    for i, t in enumerate(target):
        if t == 0 and not allowzero:
            if i >= len(in_shape):
                raise ShapeError(
                    f"Reshape target {target}: 0 at position {i} but the input has rank {len(in_shape)}"
                )
            out.append(in_shape[i])
        else:
            out.append(t)
    if out.count(-1) > 1:
        raise ShapeError(f"Reshape target {target} has more than one -1")
    known_in = [d for d in in_shape if _is_int(d)]
    sym_in = [d for d in in_shape if not _is_int(d)]
    if -1 in out:
        rest = [d for d in out if d != -1]
        sym_out = [d for d in rest if not _is_int(d)]
        if sorted(map(str, sym_out)) == sorted(map(str, sym_in)):
            total = _prod(known_in)
            part = _prod([d for d in rest if _is_int(d)])
            if part == 0 or total % part:
                raise ShapeError(f"cannot reshape {_fmt(in_shape)} to {target}: sizes do not divide")
            out[out.index(-1)] = total // part
        elif len(sym_in) == 1 and not sym_out:
            same = _prod(known_in) == _prod([d for d in rest if _is_int(d)])
            out[out.index(-1)] = sym_in[0] if same else "?"
        else:
            out[out.index(-1)] = "?"
    elif not sym_in and _prod(out) != _prod(known_in):
        raise ShapeError(f"cannot reshape {_fmt(in_shape)} ({_prod(known_in)} elements) to {target}")
    return tuple(out)


def _reshape_infer(attrs, shapes, consts):
    shp = consts[1]
    if shp is None:
        raise ShapeError("Reshape's shape input must be a constant in the IR")
    if shapes[1] is None or len(shapes[1]) != 1:
        raise ShapeError(f"Reshape's shape input must be 1-D, got {_fmt(shapes[1])}")
    return [reshape_target(shapes[0], shp.tolist(), attrs.get("allowzero", 0))]


register_op(
    OpSpec("Reshape", 2, 2, _reshape_infer, param_inputs=frozenset({1}),
           attrs={"allowzero": AttrSpec("int", 0)}, sign=_all_nonneg)
)


def _transpose_infer(attrs, shapes, consts):
    x = shapes[0]
    perm = attrs.get("perm") or list(range(len(x)))[::-1]
    if sorted(perm) != list(range(len(x))):
        raise ShapeError(f"Transpose perm {list(perm)} is not a permutation of the {len(x)} axes")
    return [tuple(x[p] for p in perm)]


register_op(
    OpSpec("Transpose", 1, 1, _transpose_infer, attrs={"perm": AttrSpec("ints", None)}, sign=_all_nonneg)
)


def _softmax_infer(attrs, shapes, consts):
    x = shapes[0]
    ax = attrs["axis"]
    if not -len(x) <= ax < len(x):
        raise ShapeError(f"Softmax axis {ax} is out of range for rank {len(x)}")
    return [tuple(x)]


register_op(
    OpSpec("Softmax", 1, 1, _softmax_infer, attrs={"axis": AttrSpec("int", -1)},
           macs=lambda a, i, o: 3 * _prod([d for d in o[0][1:] if _is_int(d)]),
           sign=lambda n, s: True)
)
# LogSoftmax: x - log(sum(exp(x))) along one axis (opset-13 semantics); always <= 0
register_op(
    OpSpec("LogSoftmax", 1, 1, _softmax_infer, attrs={"axis": AttrSpec("int", -1)},
           macs=lambda a, i, o: 3 * _prod([d for d in o[0][1:] if _is_int(d)]))
)


# --------------------------------------------------------------------------------------------
# Gemm


def _gemm_infer(attrs, shapes, consts):
    a, w = shapes[0], shapes[1]
    _need_rank(a, 2, "Gemm input A")
    _need_rank(w, 2, "Gemm weight W [out, in]")
    if attrs["transA"] != 0 or attrs["transB"] != 1:
        raise ShapeError(
            f"the IR keeps Gemm as Y = alpha * A @ W.T + beta * C with W [out, in] (transA=0, transB=1); "
            f"got transA={attrs['transA']}, transB={attrs['transB']} (ONNX's default transB is 0): transpose "
            "W to [out, in] and pass transB=1"
        )
    if _is_int(a[1]) and a[1] != w[1]:
        raise ShapeError(f"Gemm input has {a[1]} features, weight W {_fmt(w)} [out, in] expects {w[1]}")
    if len(shapes) > 2 and shapes[2] is not None and tuple(shapes[2]) not in ((w[0],), (1, w[0])):
        raise ShapeError(f"Gemm bias shape {_fmt(shapes[2])} must be [{w[0]}]")
    return [(a[0], w[0])]


def _gemm_check(attrs, name):
    if attrs["transA"] != 0 or attrs["transB"] != 1:
        raise OpError(
            f"node {name!r}: the IR keeps Gemm as Y = A @ W.T + C with W [out, in] (transA=0, transB=1); "
            f"got transA={attrs['transA']}, transB={attrs['transB']} (ONNX's default transB is 0): transpose "
            "W to [out, in] and pass transB=1"
        )
    if attrs["alpha"] != 1.0 or attrs["beta"] != 1.0:
        raise OpError(
            f"node {name!r}: the IR keeps Gemm with alpha=1 and beta=1 (scale the weights instead); "
            f"got alpha={attrs['alpha']}, beta={attrs['beta']}"
        )


register_op(
    OpSpec(
        "Gemm", 2, 3, _gemm_infer, param_inputs=frozenset({1, 2}),
        attrs={"alpha": AttrSpec("float", 1.0), "beta": AttrSpec("float", 1.0),
               "transA": AttrSpec("int", 0), "transB": AttrSpec("int", 0)},
        macs=lambda a, i, o: int(i[1][0]) * int(i[1][1]),
        channel=lambda node: ABSORBER, check=_gemm_check,
    )
)


# --------------------------------------------------------------------------------------------
# Add, Mul (broadcasting), Concat


def broadcast(a: Shape, b: Shape) -> Shape:
    """Numpy/ONNX multidirectional broadcasting of two shapes.

    Raises:
        ShapeError: the shapes do not broadcast.
    """
    r = max(len(a), len(b))
    a2 = (1,) * (r - len(a)) + tuple(a)
    b2 = (1,) * (r - len(b)) + tuple(b)
    out = []
    for x, y in zip(a2, b2):
        if x == y:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif y == 1:
            out.append(x)
        else:
            raise ShapeError(f"shapes {_fmt(a)} and {_fmt(b)} do not broadcast")
    return tuple(out)


def _binary_infer(attrs, shapes, consts):
    return [broadcast(shapes[0], shapes[1])]


def per_channel_const(node) -> int | None:
    """For Add/Mul of a data value by a constant of shape (C,1,..,1) / (1,C,1,..,1) / scalar, return the
    index of the data input; else None."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    for di, ci in ((0, 1), (1, 0)):
        d, c = (a, b)[di], (a, b)[ci]
        if d.const is None and c.const is not None and d.shape is not None and len(d.shape) >= 2:
            cs = tuple(c.const.shape)
            r = len(d.shape)
            full = (1,) * (r - len(cs)) + cs
            if len(cs) <= r and all(x == 1 for i, x in enumerate(full) if i != 1):
                return di
    return None


def channel_aligned(a: Shape | None, b: Shape | None) -> bool:
    """True when two data shapes of one rank (>= 2) have the same batch and the same known channel
    count and broadcast only on the other axes: ``N x C x H x W`` with ``N x C x 1 x 1`` (a
    squeeze-and-excitation scale), or two equal shapes. Then ``y[:, c] = f(a[:, c], b[:, c])``
    for an element-wise ``f``: channel ``c`` of the result depends only on channel ``c`` of each
    operand."""
    if a is None or b is None or len(a) != len(b) or len(a) < 2:
        return False
    if a[0] != b[0] or a[1] != b[1] or not _is_int(a[1]):
        return False
    return all(x == y or x == 1 or y == 1 for x, y in zip(a[2:], b[2:]))


def _binary_channel(node):
    """Add/Mul: per-channel with a per-channel constant; a *coupler* for two data tensors whose
    channels align (:func:`channel_aligned`: a residual sum, SiLU's ``x * sigmoid(x)``, a
    squeeze-and-excitation ``x * s`` with ``s`` of shape ``N x C x 1 x 1``): both operands must
    change their channels the same way; a blocker otherwise."""
    if per_channel_const(node) is not None:
        return PER_CHANNEL
    if all(v.const is None for v in node.inputs) and channel_aligned(node.inputs[0].shape,
                                                                    node.inputs[1].shape):
        return COUPLER
    return BLOCKER


def _add_sign(node, nonneg):
    def ok(i):
        v = node.inputs[i]
        if v.const is not None:
            return bool((v.const >= 0).all())
        return nonneg[i]

    return ok(0) and ok(1)


def _mul_sign(node, nonneg):
    return _add_sign(node, nonneg)


register_op(
    OpSpec("Add", 2, 2, _binary_infer, macs=lambda a, i, o: 0, channel=_binary_channel, sign=_add_sign)
)
register_op(
    OpSpec("Mul", 2, 2, _binary_infer,
           macs=lambda a, i, o: _prod([d for d in o[0][1:] if _is_int(d)]),
           channel=_binary_channel, sign=_mul_sign)
)


def _concat_infer(attrs, shapes, consts):
    r = len(shapes[0])
    ax = attrs["axis"]
    if ax < 0:
        ax += r
    if not 0 <= ax < r:
        raise ShapeError(f"Concat axis {attrs['axis']} is out of range for rank {r}")
    out = list(shapes[0])
    total: Dim = 0
    for s in shapes:
        if len(s) != r:
            raise ShapeError(f"Concat inputs have different ranks: {[_fmt(t) for t in shapes]}")
        for i in range(r):
            if i != ax and s[i] != out[i]:
                raise ShapeError(
                    f"Concat inputs differ outside axis {ax}: {[_fmt(t) for t in shapes]}"
                )
        total = total + s[ax] if _is_int(total) and _is_int(s[ax]) else "?"
    out[ax] = total
    return [tuple(out)]


def _concat_channel(node):
    ax = node.attrs["axis"]
    r = len(node.inputs[0].shape) if node.inputs[0].shape else 0
    return CONCAT if ax == 1 or (ax < 0 and ax + r == 1) else BLOCKER


register_op(
    OpSpec("Concat", 1, 1 << 20, _concat_infer, attrs={"axis": AttrSpec("int")},
           channel=_concat_channel,
           sign=lambda n, s: all(s[i] or (v.const is not None and (v.const >= 0).all())
                                 for i, v in enumerate(n.inputs)))
)


# --------------------------------------------------------------------------------------------
# PRelu, InstanceNormalization


def _prelu_infer(attrs, shapes, consts):
    x, slope = shapes[0], shapes[1]
    try:
        ok = len(slope) <= len(x) and broadcast(x, slope) == tuple(x)
    except ShapeError:
        ok = False
    if not ok:
        raise ShapeError(f"PRelu slope {_fmt(slope)} must broadcast to the input {_fmt(x)} (unidirectional: "
                         "e.g. [C,1,1] or [1] for an N x C x H x W input)")
    return [tuple(x)]


def _prelu_channel(node):
    """Per-channel when the slope is one value, or one value per channel (shape (C,1,..,1)); else a
    blocker (a slope per element does not follow a change of the channel count)."""
    x, slope = node.inputs[0].shape, node.inputs[1].shape
    full = (1,) * (len(x) - len(slope)) + tuple(slope)
    return PER_CHANNEL if all(d == 1 for i, d in enumerate(full) if i != 1) else BLOCKER


register_op(
    OpSpec("PRelu", 2, 2, _prelu_infer, param_inputs=frozenset({1}),
           macs=lambda a, i, o: _prod([d for d in o[0][1:] if _is_int(d)]),
           channel=_prelu_channel, sign=_all_nonneg)
)


def _instnorm_infer(attrs, shapes, consts):
    x = shapes[0]
    if x is None or len(x) < 3:
        raise ShapeError(f"InstanceNormalization input must be N x C x spatial..., got {_fmt(x)}")
    for i, nm in ((1, "scale"), (2, "B")):
        if tuple(shapes[i]) != (x[1],):
            raise ShapeError(f"InstanceNormalization {nm} has shape {_fmt(shapes[i])}, expected [{x[1]}] "
                             "(one per channel)")
    return [tuple(x)]


# InstanceNormalization: y = scale[c] * (x - mean_c) / sqrt(var_c + epsilon) + B[c], mean and
# variance over the spatial axes of each sample and channel (Ulyanov et al. 2016, arXiv 1607.08022,
# eq. 4); every channel is normalised alone, so it is per-channel for the channel analysis.
register_op(
    OpSpec("InstanceNormalization", 3, 3, _instnorm_infer, param_inputs=frozenset({1, 2}),
           attrs={"epsilon": AttrSpec("float", 1e-5)},
           macs=lambda a, i, o: 2 * _prod([d for d in o[0][1:] if _is_int(d)]),
           channel=lambda n: PER_CHANNEL)
)


# --------------------------------------------------------------------------------------------
# Pad, Slice (the IR keeps their index lists as attributes: see the module docstring)

PAD_MODES = ("constant", "reflect", "edge")


def _pad_infer(attrs, shapes, consts):
    x = shapes[0]
    r = len(x)
    pads = list(attrs["pads"])
    if len(pads) != 2 * r:
        raise ShapeError(f"Pad pads {pads} must have 2 * rank = {2 * r} entries (begins, then ends)")
    if any(p < 0 for p in pads):
        raise ShapeError(f"Pad pads {pads} must be >= 0 (the IR does not crop with negative pads)")
    out = []
    for i, d in enumerate(x):
        b, e = pads[i], pads[i + r]
        if not _is_int(d):
            if b or e:
                raise ShapeError(f"Pad pads {pads} pad axis {i}, whose size {d!r} is symbolic (the batch)")
            out.append(d)
            continue
        if attrs["mode"] == "reflect" and (b >= d or e >= d):
            raise ShapeError(f"Pad mode 'reflect' needs pads smaller than the axis: axis {i} has {d}, "
                             f"pads ({b},{e})")
        if attrs["mode"] == "edge" and d == 0 and (b or e):
            raise ShapeError(f"Pad mode 'edge' cannot pad the empty axis {i}")
        out.append(d + b + e)
    return [tuple(out)]


def _pad_check(attrs, node_name):
    if attrs["mode"] not in PAD_MODES:
        raise OpError(f"node {node_name!r} (Pad): mode={attrs['mode']!r}; the IR supports "
                      f"{', '.join(PAD_MODES)}")


def _pad_channel(node):
    """Transparent when only axes 2.. are padded (each channel is padded on its own); a blocker when
    the batch or channel axis is padded (constant channels would be added)."""
    r = len(node.inputs[0].shape)
    p = node.attrs["pads"]
    return TRANSPARENT if r >= 3 and not any(p[i] or p[i + r] for i in (0, 1)) else BLOCKER


def _pad_sign(node, nonneg):
    fill_ok = node.attrs["mode"] != "constant" or node.attrs["value"] >= 0
    return _all_nonneg(node, nonneg) and fill_ok


# Pad (ONNX Pad-2 attribute meaning; Pad-11+ carry pads and the value as inputs, which export writes)
register_op(
    OpSpec("Pad", 1, 1, _pad_infer,
           attrs={"pads": AttrSpec("ints"), "mode": AttrSpec("string", "constant"),
                  "value": AttrSpec("float", 0.0)},
           channel=_pad_channel, sign=_pad_sign, check=_pad_check)
)

#: ``end`` of a Slice that runs to the end of its axis (ONNX's INT64_MAX convention).
SLICE_TO_END = 2**63 - 1


def slice_range(dim: int, start: int, end: int, step: int) -> tuple[int, int, int]:
    """``(start, end, length)`` of an ONNX Slice along an axis of ``dim`` elements, after the
    Slice-13 rules: negative indices count from the end; start and end are clamped to
    ``[0, dim]`` (step > 0) or ``[0, dim-1]`` / ``[-1, dim-1]`` (step < 0);
    ``length = max(0, ceil((end - start) / step))``."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    length = max(0, -(-(end - start) // step))
    return start, end, length


def _slice_infer(attrs, shapes, consts):
    x = shapes[0]
    r = len(x)
    starts, ends = list(attrs["starts"]), list(attrs["ends"])
    axes = list(attrs.get("axes") or range(len(starts)))
    steps = list(attrs.get("steps") or [1] * len(starts))
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ShapeError(f"Slice starts {starts}, ends {ends}, axes {axes} and steps {steps} must have one "
                         "entry per sliced axis")
    axes = [a + r if a < 0 else a for a in axes]
    if any(not 0 <= a < r for a in axes) or len(set(axes)) != len(axes):
        raise ShapeError(f"Slice axes {list(attrs.get('axes') or [])} must be distinct axes of rank {r}")
    if any(s == 0 for s in steps):
        raise ShapeError(f"Slice steps {steps} must not be 0")
    out = list(x)
    for a, b, e, st in zip(axes, starts, ends, steps):
        d = x[a]
        if not _is_int(d):
            if b == 0 and e >= SLICE_TO_END // 2 and st == 1:
                continue   # the whole (symbolic) axis
            raise ShapeError(f"Slice cuts axis {a}, whose size {d!r} is symbolic (the batch)")
        length = slice_range(d, b, e, st)[2]
        if length == 0:
            raise ShapeError(f"Slice [{b}:{e}:{st}] of axis {a} (size {d}) selects no elements")
        out[a] = length
    return [tuple(out)]


def _slice_channel(node):
    """Transparent when only axes 2.. are cut (each channel keeps its own elements); a blocker when
    the channel (or batch) axis is cut."""
    r = len(node.inputs[0].shape)
    axes = [a + r if a < 0 else a for a in (node.attrs.get("axes") or range(len(node.attrs["starts"])))]
    return TRANSPARENT if r >= 3 and all(a >= 2 for a in axes) else BLOCKER


# Slice (ONNX Slice-13 meaning, with starts/ends/axes/steps as attributes: Slice-1 kept them there)
register_op(
    OpSpec("Slice", 1, 1, _slice_infer,
           attrs={"starts": AttrSpec("ints"), "ends": AttrSpec("ints"), "axes": AttrSpec("ints", None),
                  "steps": AttrSpec("ints", None)},
           channel=_slice_channel, sign=_all_nonneg)
)


# --------------------------------------------------------------------------------------------
# attribute normalisation


def _coerce(kind: str, value: Any, name: str, node_name: str) -> Any:
    try:
        if kind == "int":
            if isinstance(value, bool) or int(value) != value:
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "ints":
            vals = list(value)
            if any(isinstance(v, bool) or int(v) != v for v in vals):
                raise ValueError
            return [int(v) for v in vals]
        if kind == "floats":
            return [float(v) for v in value]
        if kind == "string":
            if isinstance(value, bytes):
                value = value.decode()
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        pass
    raise OpError(f"node {node_name!r}: attribute {name}={value!r} must be of kind {kind}")


def normalize_attrs(
    op_type: str, attrs: dict | None, node_name: str, input_shapes: list | None = None
) -> dict:
    """Return a complete attribute dict: unknown names rejected, kinds coerced, ONNX defaults filled.

    Spatial defaults that depend on the input rank (``strides``, ``dilations``, ``pads``,
    ``kernel_shape`` for Conv) are made explicit when ``input_shapes`` is given.

    Raises:
        OpError: unknown attribute, missing required attribute, or wrong kind; names the node.
    """
    spec = get_op(op_type)
    if attrs is not None and not isinstance(attrs, dict):
        raise OpError(
            f"node {node_name!r} ({op_type}): attributes must be a dict name -> value, got "
            f"{type(attrs).__name__}"
        )
    attrs = dict(attrs or {})
    out: dict = {}
    for k, v in attrs.items():
        if k not in spec.attrs:
            known = ", ".join(sorted(spec.attrs)) or "none"
            raise OpError(
                f"node {node_name!r} ({op_type}): unknown attribute {k!r}; {op_type} takes: {known}"
            )
        a = spec.attrs[k]
        out[k] = None if v is None else _coerce(a.kind, v, k, node_name)
    for k, a in spec.attrs.items():
        if k not in out or out[k] is None:
            if a.default is REQUIRED:
                raise OpError(f"node {node_name!r} ({op_type}): required attribute {k!r} is missing")
            out[k] = a.default
    if (op_type in ("Conv", "ConvTranspose", "MaxPool", "AveragePool") and input_shapes
            and input_shapes[0] is not None):
        nsp = len(input_shapes[0]) - 2
        if (op_type in ("Conv", "ConvTranspose") and out.get("kernel_shape") is None and len(input_shapes) > 1
                and input_shapes[1]):
            out["kernel_shape"] = [int(d) for d in input_shapes[1][2:]]
        if nsp >= 1:
            if out.get("strides") is None:
                out["strides"] = [1] * nsp
            if out.get("dilations") is None:
                out["dilations"] = [1] * nsp
            if out.get("pads") is None:
                out["pads"] = [0] * (2 * nsp)
            if op_type == "ConvTranspose" and out.get("output_padding") is None:
                out["output_padding"] = [0] * nsp
    if op_type == "Transpose" and out.get("perm") is None and input_shapes and input_shapes[0] is not None:
        out["perm"] = list(range(len(input_shapes[0])))[::-1]
    if op_type == "Slice" and out.get("starts") is not None:
        if out.get("axes") is None:
            out["axes"] = list(range(len(out["starts"])))
        if out.get("steps") is None:
            out["steps"] = [1] * len(out["starts"])
    out = {k: v for k, v in out.items() if v is not None}
    if spec.check is not None:
        spec.check(out, node_name)
    return out


def param_values(node) -> list:
    """The constant Values of a node that count as learnable parameters (weights, biases, BN arrays).

    Reshape's target shape and Clip's bounds are constants but not parameters.
    """
    if node.op_type in ("Reshape", "Clip"):
        return []
    spec = get_op(node.op_type)
    out = []
    for i in sorted(spec.param_inputs):
        if i < len(node.inputs) and node.inputs[i] is not None and node.inputs[i].const is not None:
            out.append(node.inputs[i])
    return out


def count_params(node) -> int:
    """Number of scalars in a node's parameter inputs (weights, biases, BN arrays)."""
    return sum(int(v.const.size) for v in param_values(node))


def count_macs(node) -> int:
    """Multiply-accumulates of one node for one sample (batch dimension excluded)."""
    spec = get_op(node.op_type)
    ins = [v.shape if v is not None else None for v in node.inputs]
    outs = [v.shape for v in node.outputs]
    if any(s is None for s in outs):
        return 0
    return int(spec.macs(node.attrs, ins, outs))


def conv_out_size(size: int, k: int, stride: int = 1, pad: int = 0, dil: int = 1) -> int:
    """Output length of a convolution along one axis (symmetric padding); see :func:`window_out`."""
    return int(window_out(size, k, stride, dil, pad, pad))


__all__ = [
    "OPS", "OpSpec", "AttrSpec", "REQUIRED", "register_op", "get_op", "supported_ops", "normalize_attrs",
    "min_opset",
    "count_params", "param_values", "count_macs", "broadcast", "reshape_target", "window_out",
    "per_channel_const", "channel_aligned", "slice_range", "SLICE_TO_END", "PAD_MODES",
    "conv_out_size", "GROUPED", "TRANSPOSED", "TRANSPARENT", "PER_CHANNEL", "ABSORBER", "FLATTEN", "CONCAT",
    "COUPLER",
    "BLOCKER",
]
