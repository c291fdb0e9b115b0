"""The two analyses every morphism shares: channel flow and sign (DESIGN.md section 5).

**Channel flow.** Start at a producer (a Conv of any group, or a Gemm) and follow its output's
channel axis (axis 1, NCHW) downstream through each op's *channel behaviour* from the op table
(:mod:`nashir.ops`):

=============  ============================================================================
transparent    Relu family, Elu, HardSigmoid, HardSwish, pooling, global pooling, Dropout,
               Identity, Pad/Slice of the spatial axes: follow.
per-channel    BatchNormalization, InstanceNormalization, PRelu, Mul/Add by a per-channel
               constant, depthwise Conv: follow; the op's per-channel arrays must be remapped too.
absorber       Conv (group 1), Gemm: stop; the node's *input* weights (Conv OIHW axis 1, Gemm
               ``W[out, in]`` axis 1) must be remapped.
transposed     ConvTranspose (group 1): an absorber whose input weights are axis 0 of its
               ``(C_in, C_out, kH, kW)`` weight; as a producer its rows are axis 1.
grouped        Conv with 1 < group (not depthwise): an absorber whose groups the new channel
               layout must keep (:attr:`ChannelFlow.groups`; ResNeXt, arXiv 1611.05431, 3.3).
flatten        Flatten(axis=1): follow with a block size ``H*W``; in NCHW order channel ``c``
               owns the columns ``c*H*W ... c*H*W + H*W - 1``.
concat         Concat on axis 1: follow with a channel offset (the widths of earlier inputs).
coupler        Add or Mul of two data tensors whose channels align (a residual sum, SiLU, a
               squeeze-and-excitation gate ``x * s``, Hu et al. arXiv 1709.01507 eq. 4): every
               operand must change identically, so the producers behind the other operand join
               the *producer group*.
shuffle        Reshape -> Transpose -> Reshape that permutes channels (ShuffleNet) and Slice
               of the channel axis: followed only with ``permuted=True`` (net2wider), carrying
               the channels at arbitrary positions (:attr:`ChannelFlow.labels`); a shuffle
               couples every producer whose channels it mixes. Otherwise blockers.
blocker        Reshape, Transpose, Softmax, LogSoftmax, LRN, Pad of the channel axis,
               graph outputs, anything else: not applicable, with the reason.
=============  ============================================================================

A carried channel range is a *segment* of a value's axis 1: ``(offset, block)`` means the ``n``
source channels occupy elements ``offset ... offset + n*block - 1`` of that axis, channel ``c``
owning the ``block`` consecutive elements from ``offset + c*block``.

**Sign.** A value is known non-negative when produced by Relu (or Sigmoid, or Clip with a
non-negative minimum), or by a transparent/concat op of known non-negative values (each op's
``sign`` entry). Net2Deeper inserts a ReLU only there, where ReLU is the identity (Net2Net's
idempotence condition; Chen, Goodfellow & Shlens 2016, arXiv 1511.05641, section 2.3).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nashir import ops as _ops
from nashir.ir import Graph, Node, Value

PRODUCER_OPS = ("Conv", "Gemm", "ConvTranspose")

_ACTIVATIONS = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Dropout", "Identity", "Elu", "HardSigmoid",
                "HardSwish", "PRelu"}


@dataclass(frozen=True)
class Carried:
    """A value that carries source channels: ``n`` channels from ``offset`` with ``block`` elements each."""

    value: Value
    offset: int
    block: int


@dataclass(frozen=True)
class Absorber:
    """A node whose input ``input`` carries source channels at ``offset`` with ``block`` columns each.

    Its input weights along axis 1 (Conv OIHW ``I``, Gemm ``W[out, in]`` ``in``) must be remapped.
    """

    node: Node
    input: int
    offset: int
    block: int


@dataclass(frozen=True)
class PerChannelArray:
    """A per-channel constant of a per-channel node that must follow the channel change.

    Attributes:
        node: the per-channel node (BatchNormalization, per-channel Mul/Add, depthwise Conv).
        input: the index of the constant among ``node.inputs``.
        axis: the axis of the constant that runs over channels; None when that axis has size 1
            and broadcasts (nothing to change).
        offset, block: the segment of the node's data input that carries source channels.
    """

    node: Node
    input: int
    axis: int | None
    offset: int
    block: int


@dataclass(frozen=True)
class ChannelShuffle:
    """A channel permutation written as Reshape -> Transpose -> Reshape (ShuffleNet's channel
    shuffle, Zhang et al. 2018, arXiv 1707.01083, section 3.1; Ma et al. 2018, arXiv 1807.11164,
    section 4, Fig. 3): an ``N x C x S...`` value is reshaped to ``N x d_1 x ... x d_k x S...``
    (``d_1 ... d_k = C``; ``N x g x C/g x H x W`` for ``g`` groups), the ``k`` channel sub-axes are
    permuted (``perm`` fixes the batch and the spatial axes) and the result reshaped back to
    ``N x C x S...``. Output channel ``o`` is input channel ``pi[o]``, with
    ``pi = arange(C).reshape(d).transpose(sub_perm).reshape(-1)``.

    Attributes:
        first, transpose, last: the three nodes.
        dims: ``(d_1, ..., d_k)``.
        sub_perm: the permutation of the ``k`` channel sub-axes (``perm[1:k+1] - 1``).
        pi: int64 array of length ``C``.
    """

    first: Node
    transpose: Node
    last: Node
    dims: tuple[int, ...]
    sub_perm: tuple[int, ...]
    pi: np.ndarray = field(compare=False, hash=False)


#: The most elements (C * H * W of one sample) a channel-shuffle pattern is checked on.
MAX_SHUFFLE_ELEMENTS = 2**24


def channel_shuffle(nd: Node) -> ChannelShuffle | None:
    """The channel permutation that starts at Reshape ``nd``, or None when ``nd`` does not start one.

    Recognised: ``nd`` reshapes ``N x C x S...`` (static ``C`` and ``S``) to ``N x d_1 x ... x d_k x
    S...``; its output's only use is a Transpose whose ``perm`` keeps axis 0 and the spatial axes in
    place; that output's only use is a Reshape back to ``N x C x S...``; neither intermediate value
    is a graph output (checked by the caller). The permutation is computed, not assumed
    (:class:`ChannelShuffle`).
    """
    if nd.op_type != "Reshape":
        return None
    x, y = nd.inputs[0], nd.outputs[0]
    if x.shape is None or y.shape is None or len(x.shape) < 2 or len(y.shape) <= len(x.shape) - 1:
        return None
    sp = tuple(x.shape[2:])
    k = len(y.shape) - 1 - len(sp)
    if k < 1 or not all(isinstance(d, (int, np.integer)) for d in (*x.shape[1:], *y.shape[1:])):
        return None
    if y.shape[0] != x.shape[0] or tuple(y.shape[1 + k:]) != sp:
        return None
    dims = tuple(int(d) for d in y.shape[1:1 + k])
    c = int(x.shape[1])
    if int(np.prod(dims)) != c or c * int(np.prod(sp or (1,))) > MAX_SHUFFLE_ELEMENTS:
        return None
    if len(y.uses) != 1 or y.uses[0][0].op_type != "Transpose":
        return None
    t = y.uses[0][0]
    perm = list(t.attrs.get("perm") or [])
    r = len(y.shape)
    if len(perm) != r or perm[0] != 0 or any(perm[j] != j for j in range(1 + k, r)):
        return None
    z = t.outputs[0]
    if len(z.uses) != 1 or z.uses[0][0].op_type != "Reshape":
        return None
    last = z.uses[0][0]
    if last.inputs[0] is not z or tuple(last.outputs[0].shape or ()) != tuple(x.shape):
        return None
    sub = tuple(int(p) - 1 for p in perm[1:1 + k])
    pi = np.arange(c, dtype=np.int64).reshape(dims).transpose(sub).reshape(-1)
    return ChannelShuffle(nd, t, last, dims, sub, pi)


def _channel_slice(nd: Node, v: Value) -> tuple[int, int] | None:
    """``(start, end)`` of a Slice of ``v``'s channel axis with step 1 (other sliced axes spatial), or
    None when ``nd`` is not such a Slice."""
    if nd.op_type != "Slice" or v.shape is None or len(v.shape) < 2:
        return None
    r = len(v.shape)
    axes = [a + r if a < 0 else a for a in nd.attrs.get("axes") or range(len(nd.attrs["starts"]))]
    if 1 not in axes or 0 in axes:
        return None
    i = axes.index(1)
    if nd.attrs["steps"][i] != 1 or not isinstance(v.shape[1], (int, np.integer)):
        return None
    b, e, _ = _ops.slice_range(int(v.shape[1]), nd.attrs["starts"][i], nd.attrs["ends"][i], 1)
    return b, e


@dataclass
class ChannelFlow:
    """The result of :func:`channel_flow`.

    Attributes:
        source: the producer's node name, or the start value's name.
        width: ``n``, the number of source channels.
        producers: the producer group (the source producer first, then coupled producers in
            graph order); empty when the flow starts at a value.
        carried: every value carrying source channels, with its segment(s).
        per_channel: the per-channel arrays to remap.
        absorbers: the absorbing nodes and the segments of their inputs.
        reason: None when the flow is applicable, else why not.
        groups: ``G``, the least common multiple of the ``group`` counts of the grouped Convs in
            the producer group and among the absorbers (1 when there are none). A new channel
            layout must then keep ``G`` blocks: new channels ``k*q/G ... (k+1)*q/G - 1`` copy
            only old channels ``k*n/G ... (k+1)*n/G - 1`` (:func:`grouped_conv_groups`).
        labels: for a *permuted* value (past a channel shuffle or a Slice of the channel axis; only
            with ``channel_flow(..., permuted=True)``): value name -> int64 array over its axis 1,
            element ``p`` holding source channel ``labels[p]`` (``-1``: another channel). Such a
            value is listed in ``carried`` (and its absorbers and per-channel arrays) with offset
            ``-1``.
        label_blocks: for a permuted value after a Flatten, value name -> the columns each element
            of ``labels`` owns (``H*W``; absent: 1).
        slices: the Slices of the channel axis that the flow passes (their bounds change).
        shuffles: the channel shuffles it passes (:class:`ChannelShuffle`; their shapes change).
    """

    source: str
    width: int
    producers: list[Node] = field(default_factory=list)
    carried: list[Carried] = field(default_factory=list)
    per_channel: list[PerChannelArray] = field(default_factory=list)
    absorbers: list[Absorber] = field(default_factory=list)
    reason: str | None = None
    groups: int = 1
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    label_blocks: dict[str, int] = field(default_factory=dict)
    slices: list[Node] = field(default_factory=list)
    shuffles: list[ChannelShuffle] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def permuted(self) -> bool:
        """True when some value carries the source channels at arbitrary positions (after a channel
        shuffle or a Slice of the channel axis; see :attr:`labels`). Such a flow is widened with the
        uniform in-place layout only (:func:`nashir.passes.transforms.kronecker_mapping`)."""
        return bool(self.labels)

    def elements(self, value: Value) -> int:
        """How many elements of ``value``'s axis 1 hold a source channel (each source channel once
        per segment, ``block`` elements each; or the labelled positions of a permuted value)."""
        if value.name in self.labels:
            return int(np.count_nonzero(self.labels[value.name] >= 0)) * self.label_blocks.get(value.name, 1)
        return sum(self.width * b for _, b in self.segments(value))

    def segments(self, value: Value) -> list[tuple[int, int]]:
        """Sorted ``(offset, block)`` segments that ``value`` carries (empty if none)."""
        return sorted((c.offset, c.block) for c in self.carried if c.value is value)

    def summary(self) -> dict:
        """A JSON-serialisable description (names instead of objects)."""
        return {
            "source": self.source,
            "width": self.width,
            "producers": [p.name for p in self.producers],
            "carried": [[c.value.name, c.offset, c.block] for c in self.carried],
            "per_channel": [[a.node.name, a.input, a.axis, a.offset, a.block] for a in self.per_channel],
            "absorbers": [[a.node.name, a.input, a.offset, a.block] for a in self.absorbers],
            "reason": self.reason,
            "groups": self.groups,
            "labels": {k: [int(x) for x in v] for k, v in self.labels.items()},
            "slices": [nd.name for nd in self.slices],
            "shuffles": [[sh.first.name, sh.transpose.name, sh.last.name] for sh in self.shuffles],
        }


class _Restart(Exception):
    def __init__(self, producers: list[Node]):
        self.producers = producers


class _Stop(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def _int_dim(v: Value, axis: int) -> int | None:
    if v.shape is None or len(v.shape) <= axis:
        return None
    d = v.shape[axis]
    return int(d) if isinstance(d, (int, np.integer)) else None


def _blocker_reason(nd: Node, v: Value) -> str:
    op = nd.op_type
    why = {
        "Reshape": "reshapes the tensor, so channels lose their place",
        "Transpose": "permutes axes, so the channel axis moves",
        "Softmax": "normalises across elements, so an added channel changes every output",
        "LRN": "normalises across neighbouring channels",
    }.get(op)
    if why is None and op == "Conv":
        why = (f"is a grouped convolution (group={nd.attrs.get('group')}) whose channel groups cannot grow "
               "by copying")
    if why is None and op == "Flatten":
        why = f"flattens from axis {nd.attrs.get('axis')} (only axis=1 keeps channel blocks in NCHW order)"
    if why is None and op == "Concat":
        why = f"concatenates on axis {nd.attrs.get('axis')}, not on the channel axis 1"
    if why is None and op in ("Add", "Mul"):
        why = ("combines it with a tensor of another shape or with another data tensor, which does not "
               "follow the channel change")
    if why is None:
        why = "has no channel rule in the op table (blocker)"
    return f"{v.name!r} flows into node {nd.name!r} ({op}), which {why}"


def _data_input_of_per_channel(nd: Node) -> int:
    if nd.op_type in ("Add", "Mul"):
        di = _ops.per_channel_const(nd)
        return 0 if di is None else di
    return 0


def _broadcast_reason(nd: Node, data: Value) -> str | None:
    """Why a per-channel node does not carry ``data``'s channels one to one (None when it does): an
    Add/Mul whose constant has C > 1 channels broadcasts a 1-channel input to C channels, so its
    output channels are not copies of its input channels."""
    cin, cout = _int_dim(data, 1), _int_dim(nd.outputs[0], 1)
    if cin is None or cin != cout:
        return (f"{data.name!r} ({cin} channel(s)) flows into node {nd.name!r} ({nd.op_type}), whose "
                f"constant broadcasts it to {cout} channels, so a change of its channels does not follow")
    return None


def _per_channel_arrays(nd: Node, data: Value, offset: int, block: int) -> list[PerChannelArray]:
    op = nd.op_type
    if op == "BatchNormalization":
        return [PerChannelArray(nd, i, 0, offset, block) for i in (1, 2, 3, 4)]
    if op == "Conv":  # depthwise: weight (C, 1, kH, kW) and bias (C,)
        out = [PerChannelArray(nd, 1, 0, offset, block)]
        if len(nd.inputs) > 2 and nd.inputs[2] is not None:
            out.append(PerChannelArray(nd, 2, 0, offset, block))
        return out
    if op == "InstanceNormalization":
        return [PerChannelArray(nd, i, 0, offset, block) for i in (1, 2)]
    if op == "PRelu":
        c = nd.inputs[1].const
        axis = 1 - (len(data.shape) - c.ndim)
        if axis < 0 or c.shape[axis] == 1:
            return [PerChannelArray(nd, 1, None, offset, block)]
        return [PerChannelArray(nd, 1, axis, offset, block)]
    if op in ("Add", "Mul"):
        di = _data_input_of_per_channel(nd)
        ci = 1 - di
        c = nd.inputs[ci].const
        r = len(data.shape)
        axis = 1 - (r - c.ndim)
        if axis < 0 or c.shape[axis] == 1:
            return [PerChannelArray(nd, ci, None, offset, block)]
        return [PerChannelArray(nd, ci, axis, offset, block)]
    return []


def _producer_width(nd: Node) -> int | None:
    return _int_dim(nd.outputs[0], 1)


def _is_producer(nd: Node) -> bool:
    """Gemm and every Conv: a grouped (or depthwise) Conv is widened by the same factor in every
    group (see :attr:`ChannelFlow.groups`)."""
    return nd.op_type in PRODUCER_OPS


def grouped_conv_groups(nd: Node) -> int:
    """The ``group`` of a Conv whose channels are tied to groups (grouped, or depthwise as a
    producer); 1 for Gemm and ungrouped Convs."""
    return int(nd.attrs.get("group", 1)) if nd.op_type == "Conv" else 1


def _trace_back(value: Value, offset: int, block: int, n: int) -> list[Node]:
    """Producers whose outputs must change so that ``value``'s segment ``(offset, block)`` of ``n``
    channels changes. Raises _Stop with a reason when it cannot."""
    found: list[Node] = []
    stack = [(value, offset, block)]
    seen: set[tuple[int, int]] = set()
    while stack:
        v, o, b = stack.pop()
        if (id(v), o) in seen:
            continue
        seen.add((id(v), o))
        if b != 1:
            raise _Stop(f"the residual sum couples it with {v.name!r}, which carries flattened columns "
                        f"(block {b}); only channel tensors can be coupled")
        nd = v.producer
        if nd is None:
            raise _Stop(f"a residual sum couples it with {v.name!r}, a graph input, which cannot be widened")
        beh = _ops.get_op(nd.op_type).channel(nd)
        if _is_producer(nd) and beh in (_ops.ABSORBER, _ops.GROUPED, _ops.TRANSPOSED):
            w = _producer_width(nd)
            if o == 0 and w == n:
                if all(f is not nd for f in found):
                    found.append(nd)
                continue
            raise _Stop(
                f"a residual sum couples it with channels {o}..{o + n - 1} of {nd.name!r} ({nd.op_type}, "
                f"{w} channels); only a producer's whole output can be widened"
            )
        if beh == _ops.TRANSPARENT:
            stack.append((nd.inputs[0], o, b))
        elif beh == _ops.PER_CHANNEL:
            x = nd.inputs[_data_input_of_per_channel(nd)]
            why = _broadcast_reason(nd, x)
            if why is not None:
                raise _Stop(f"a residual sum couples it with {v.name!r}: {why}")
            stack.append((x, o, b))
        elif beh == _ops.COUPLER:
            stack.extend((x, o, b) for x in nd.inputs)
        elif beh == _ops.CONCAT:
            start = 0
            for x in nd.inputs:
                w = _int_dim(x, 1)
                if w is None:
                    raise _Stop(f"concat {nd.name!r} has an input {x.name!r} of unknown width")
                if start <= o and o + n <= start + w:
                    stack.append((x, o - start, b))
                    break
                if start < o + n and o < start + w:
                    raise _Stop(
                        f"a residual sum couples it with channels {o}..{o + n - 1} of concat {nd.name!r}, "
                        f"which straddle its inputs"
                    )
                start += w
            else:  # pragma: no cover - the shapes guarantee a match
                raise _Stop(f"channels {o}..{o + n - 1} are outside concat {nd.name!r}")
        else:
            raise _Stop(
                f"a residual sum couples it with {v.name!r}, produced by {nd.name!r} ({nd.op_type}), "
                "which cannot be widened"
            )
    return found


def _shuffle_ending_at(nd: Node) -> ChannelShuffle | None:
    """The channel shuffle whose last Reshape is ``nd`` (None when there is none)."""
    t = nd.inputs[0].producer if nd.op_type == "Reshape" else None
    first = t.inputs[0].producer if t is not None and t.op_type == "Transpose" else None
    sh = channel_shuffle(first) if first is not None else None
    return sh if sh is not None and sh.last is nd else None


def _trace_back_positions(value: Value, positions: np.ndarray, n: int) -> list[Node]:
    """Producers behind elements ``positions`` of ``value``'s channel axis, through transparent and
    per-channel ops, sums, Concat, channel Slices and channel shuffles: the producers a channel
    shuffle couples to the group (every element of its input must be a widened channel). A
    producer met with only some of its channels joins with all of them. Raises _Stop when an
    element comes from something that cannot be widened, or from a producer of another width."""
    found: list[Node] = []
    stack = [(value, np.asarray(positions, dtype=np.int64))]
    seen: set[tuple[int, bytes]] = set()
    while stack:
        v, ps = stack.pop()
        if (id(v), ps.tobytes()) in seen or not len(ps):
            continue
        seen.add((id(v), ps.tobytes()))
        nd = v.producer
        if nd is None:
            raise _Stop(f"a channel shuffle mixes the widened channels with {v.name!r}, a graph input, which "
                        "cannot be widened")
        beh = _ops.get_op(nd.op_type).channel(nd)
        if _is_producer(nd) and beh in (_ops.ABSORBER, _ops.GROUPED, _ops.TRANSPOSED):
            w = _producer_width(nd)
            if w != n:
                raise _Stop(f"a channel shuffle mixes the widened {n} channels with those of {nd.name!r} "
                            f"({nd.op_type}, {w} channels); the producers it couples must have one width")
            if all(f is not nd for f in found):
                found.append(nd)
            continue
        cs = _channel_slice(nd, nd.inputs[0])
        if cs is not None:
            stack.append((nd.inputs[0], ps + cs[0]))
            continue
        sh = _shuffle_ending_at(nd)
        if sh is not None:
            stack.append((sh.first.inputs[0], sh.pi[ps]))
            continue
        if beh == _ops.TRANSPARENT:
            stack.append((nd.inputs[0], ps))
        elif beh == _ops.PER_CHANNEL:
            x = nd.inputs[_data_input_of_per_channel(nd)]
            why = _broadcast_reason(nd, x)
            if why is not None:
                raise _Stop(f"a channel shuffle couples it with {v.name!r}: {why}")
            stack.append((x, ps))
        elif beh == _ops.COUPLER:
            stack.extend((x, ps) for x in nd.inputs)
        elif beh == _ops.CONCAT:
            start = 0
            for x in nd.inputs:
                w = _int_dim(x, 1)
                if w is None:
                    raise _Stop(f"concat {nd.name!r} has an input {x.name!r} of unknown width")
                mine = ps[(ps >= start) & (ps < start + w)]
                stack.append((x, mine - start))
                start += w
        else:
            raise _Stop(f"a channel shuffle mixes the widened channels with {v.name!r}, produced by "
                        f"{nd.name!r} ({nd.op_type}), which cannot be widened")
    return found


def _sweep(graph: Graph, pos: dict[int, int], seeds: list[Value], n: int, couple: bool,
           producers: list[Node], permuted: bool = False, labs: dict[int, np.ndarray] | None = None,
           shuffles: list[ChannelShuffle] | None = None, slices: list[Node] | None = None,
           lblk: dict[int, int] | None = None,
           ) -> tuple[dict[int, set], list[PerChannelArray], list[Absorber]]:
    segs: dict[int, set[tuple[int, int]]] = {id(v): {(0, 1)} for v in seeds}
    labs = {} if labs is None else labs   # permuted values: label per element of axis 1 (-1: not carried)
    shuffles = [] if shuffles is None else shuffles
    slices = [] if slices is None else slices
    lblk = {} if lblk is None else lblk   # permuted values after a Flatten: columns per channel element
    outs = {id(v) for v in graph.outputs}
    heap: list[int] = []
    queued: set[int] = set()
    nodes = graph.nodes
    pending: list[Node] = []  # coupled producers found in this sweep

    def push(v: Value) -> None:
        for u, _ in v.uses:
            if id(u) not in queued:
                queued.add(id(u))
                heapq.heappush(heap, pos[id(u)])

    def lab_of(v: Value) -> np.ndarray:
        if id(v) in labs:
            if lblk.get(id(v), 1) != 1:
                raise _Stop(f"{v.name!r} carries flattened columns of shuffled channels; a channel slice, "
                            "shuffle or concat of it is not supported")
            return labs[id(v)]
        out = np.full(_int_dim(v, 1), -1, dtype=np.int64)
        for o, b in segs.get(id(v), ()):
            if b != 1:
                raise _Stop(f"{v.name!r} carries flattened columns (block {b}); a channel slice or "
                            "shuffle of it is not supported")
            out[o:o + n] = np.arange(n)
        return out

    def put_labels(v: Value, lab: np.ndarray, block: int = 1) -> None:
        labs[id(v)] = lab
        if block != 1:
            lblk[id(v)] = block
        push(v)

    for v in seeds:
        push(v)
    per_channel: list[PerChannelArray] = []
    absorbers: list[Absorber] = []
    while heap:
        nd = nodes[heapq.heappop(heap)]
        carried = [(i, v) for i, v in enumerate(nd.inputs)
                   if v is not None and (id(v) in segs or id(v) in labs)]
        lab_in = [v for _, v in carried if id(v) in labs]
        beh = _ops.get_op(nd.op_type).channel(nd)
        if beh == _ops.TRANSPOSED:   # ConvTranspose absorbs its input channels (weight axis 0)
            beh = _ops.ABSORBER
        out: set[tuple[int, int]] | None = None
        cs = _channel_slice(nd, nd.inputs[0]) if permuted else None
        sh = channel_shuffle(nd) if permuted and nd.op_type == "Reshape" else None
        if sh is not None and (id(sh.first.outputs[0]) in outs or id(sh.transpose.outputs[0]) in outs):
            sh = None
        if cs is not None:   # Slice of the channel axis: the labels of elements start..end-1
            lab = lab_of(nd.inputs[0])[cs[0]:cs[1]]
            slices.append(nd)
            if (lab >= 0).any():
                put_labels(nd.outputs[0], lab)
            continue
        if sh is not None:   # a channel shuffle: output channel o is input channel pi[o]
            lab = lab_of(nd.inputs[0])
            if (lab < 0).any():
                # every channel it mixes must be widened alike: the producers behind the others join
                if not couple:
                    raise _Stop(f"{nd.inputs[0].name!r} flows into the channel shuffle {nd.name!r} together "
                                "with channels of other producers, which would have to change too")
                found = _trace_back_positions(nd.inputs[0], np.nonzero(lab < 0)[0], n)
                new = [pr for pr in found if all(pr is not q for q in [*producers, *pending])]
                if not new:
                    raise _Stop(f"the channel shuffle {nd.name!r} cannot be made to mix only widened "
                                "channels")
                pending.extend(new)
                continue
            shuffles.append(sh)
            put_labels(sh.last.outputs[0], lab[sh.pi])
            continue
        if lab_in and beh in (_ops.TRANSPARENT, _ops.PER_CHANNEL):
            di = 0 if beh == _ops.TRANSPARENT else _data_input_of_per_channel(nd)
            if any(i != di for i, _ in carried):
                raise _Stop(_blocker_reason(nd, carried[0][1]))
            if beh == _ops.PER_CHANNEL:
                why = _broadcast_reason(nd, nd.inputs[di])
                if why is not None:
                    raise _Stop(why)
                per_channel.extend(_per_channel_arrays(nd, nd.inputs[di], -1, lblk.get(id(nd.inputs[di]), 1)))
            put_labels(nd.outputs[0], labs[id(nd.inputs[di])], lblk.get(id(nd.inputs[di]), 1))
            continue
        if lab_in and beh == _ops.ABSORBER:
            for i, v in carried:
                if i != 0:
                    raise _Stop(_blocker_reason(nd, v))
                absorbers.append(Absorber(nd, 0, -1, lblk.get(id(v), 1)))
            continue
        if lab_in and beh == _ops.FLATTEN:   # channel p owns columns p*H*W ... (p+1)*H*W - 1
            x = nd.inputs[0]
            spatial = x.shape[2:]
            if not all(isinstance(d, (int, np.integer)) for d in spatial):
                raise _Stop(f"{x.name!r} flows into Flatten {nd.name!r} with unknown spatial size {x.shape}")
            hw = int(np.prod(spatial)) if len(spatial) else 1
            put_labels(nd.outputs[0], labs[id(x)], lblk.get(id(x), 1) * hw)
            continue
        if lab_in and beh == _ops.CONCAT:
            put_labels(nd.outputs[0], np.concatenate([lab_of(x) if id(x) in segs or id(x) in labs
                                                      else np.full(_int_dim(x, 1), -1, dtype=np.int64)
                                                      for x in nd.inputs]))
            continue
        if lab_in:
            raise _Stop(f"{lab_in[0].name!r} carries the widened channels at shuffled positions and flows "
                        f"into {nd.name!r} ({nd.op_type}), which only follows contiguous channels")
        if beh == _ops.TRANSPARENT:
            if any(i != 0 for i, _ in carried):
                raise _Stop(_blocker_reason(nd, carried[0][1]))
            out = set(segs[id(nd.inputs[0])])
        elif beh == _ops.PER_CHANNEL:
            di = _data_input_of_per_channel(nd)
            if any(i != di for i, _ in carried):
                raise _Stop(_blocker_reason(nd, carried[0][1]))
            data = nd.inputs[di]
            why = _broadcast_reason(nd, data)
            if why is not None:
                raise _Stop(why)
            out = set(segs[id(data)])
            for o, b in sorted(out):
                per_channel.extend(_per_channel_arrays(nd, data, o, b))
        elif beh == _ops.ABSORBER:
            for i, v in carried:
                if i != 0:
                    raise _Stop(_blocker_reason(nd, v))
                for o, b in sorted(segs[id(v)]):
                    absorbers.append(Absorber(nd, i, o, b))
        elif beh == _ops.GROUPED:
            for i, v in carried:
                if i != 0:
                    raise _Stop(_blocker_reason(nd, v))
                if segs[id(v)] != {(0, 1)} or _int_dim(v, 1) != n:
                    raise _Stop(
                        f"{v.name!r} flows into grouped convolution {nd.name!r} (group={nd.attrs['group']}) "
                        f"carrying channels {sorted(segs[id(v)])} of its {_int_dim(v, 1)}; a grouped conv is "
                        "widened by whole groups only when its input is exactly the widened channels")
                absorbers.append(Absorber(nd, 0, 0, 1))
        elif beh == _ops.FLATTEN:
            x = nd.inputs[0]
            spatial = x.shape[2:] if x.shape is not None else None
            if spatial is None or not all(isinstance(d, (int, np.integer)) for d in spatial):
                raise _Stop(f"{x.name!r} flows into Flatten {nd.name!r} with unknown spatial size {x.shape}")
            hw = int(np.prod(spatial)) if len(spatial) else 1
            out = {(o * hw, b * hw) for o, b in segs[id(x)]}
        elif beh == _ops.CONCAT:
            out = set()
            start = 0
            for x in nd.inputs:
                w = _int_dim(x, 1)
                if w is None:
                    raise _Stop(f"concat {nd.name!r} has an input {x.name!r} of unknown width")
                for o, b in segs.get(id(x), ()):
                    out.add((start + o, b))
                start += w
        elif beh == _ops.COUPLER:
            need: set[tuple[int, int]] = set()
            for x in nd.inputs:
                need |= segs.get(id(x), set())
            if not couple and any(segs.get(id(x), set()) != need for x in nd.inputs):
                raise _Stop(
                    f"{carried[0][1].name!r} flows into {nd.name!r} ({nd.op_type} of two tensors, a residual "
                    "sum or a gate); the other operand would have to change too"
                )
            for x in nd.inputs:
                for o, b in sorted(need - segs.get(id(x), set())):
                    found = _trace_back(x, o, b, n)
                    for pr in found:
                        if all(pr is not q for q in producers) and all(pr is not q for q in pending):
                            pending.append(pr)
                    if all(any(pr is q for q in producers) for pr in found):
                        # its producers are in the group already, yet the segment did not arrive
                        raise _Stop(f"the operands of {nd.name!r} (Add) cannot be made to carry the same "
                                    "channels")
            # With new producers, carry on as if they were in the group already (the carried region
            # only grows with the group, so a blocker met now is met in the final sweep too); the
            # sweep is then repeated with them, and only a sweep that adds none is the result.
            out = need
        else:
            raise _Stop(_blocker_reason(nd, carried[0][1]))
        if out is not None:
            # segments must not overlap
            spans = sorted((o, o + n * b) for o, b in out)
            for (_, a1), (b0, _) in zip(spans, spans[1:]):
                if b0 < a1:
                    raise _Stop(f"{nd.outputs[0].name!r} would carry overlapping copies of the same channels")
            o_v = nd.outputs[0]
            if id(o_v) not in segs:
                segs[id(o_v)] = out
                push(o_v)
            else:
                segs[id(o_v)] |= out
    if pending:
        raise _Restart(pending)
    return segs, per_channel, absorbers


def channel_flow(graph: Graph, source: Node | Value | str, couple: bool = True,
                 permuted: bool = False) -> ChannelFlow:
    """Follow the channel axis from a producer (or a value) to every node it reaches.

    Args:
        graph: the graph (unchanged).
        source: a producer node (Conv with group 1, or Gemm), its name, or the name of its output;
            or a :class:`Value` to start at that value (as a concat skip does at its target).
        couple: follow residual sums (Add) by joining the producers of the other operand to the
            producer group; when False a residual sum makes the flow not applicable.
        permuted: follow channel shuffles (:func:`channel_shuffle`) and Slices of the channel axis,
            which carry the channels at arbitrary positions (:attr:`ChannelFlow.labels`); a shuffle
            then couples every producer whose channels it mixes. Only a pass that widens with the
            uniform in-place layout may ask for this (net2wider); by default both block.

    Returns:
        A :class:`ChannelFlow`; ``flow.reason`` is None when applicable, else says why not
        (naming the node or value that blocks).

    Source: DESIGN.md section 5 (channel flow); Net2Net (Chen et al. 2016, arXiv 1511.05641,
    section 2.2) for the producer/consumer pair this generalises.
    """
    if isinstance(source, str):
        source = graph.find_node(source)
    if isinstance(source, Value):
        n = _int_dim(source, 1)
        flow = ChannelFlow(source.name, n or 0)
        if source.is_const:
            flow.reason = f"{source.name!r} is a constant (a weight), not a data tensor"
            return flow
        if n is None:
            flow.reason = f"{source.name!r} has no known channel count (shape {source.shape})"
            return flow
        seeds: list[Value] = [source]
        producers: list[Node] = []
    else:
        nd = source
        n = _producer_width(nd)
        flow = ChannelFlow(nd.name, n or 0)
        if nd.op_type not in PRODUCER_OPS:
            flow.reason = (f"node {nd.name!r} is a {nd.op_type}; only Conv, ConvTranspose and Gemm produce "
                           "channels to widen")
            return flow
        if n is None:
            flow.reason = f"node {nd.name!r} has no known output width (shape {nd.outputs[0].shape})"
            return flow
        producers = [nd]
        seeds = []
    pos = {id(nd): i for i, nd in enumerate(graph.nodes)}
    outputs = {id(v): v for v in graph.outputs}
    for _ in range(len(graph.nodes) + 1):
        cur_seeds = seeds + [p.outputs[0] for p in producers]
        labs: dict[int, np.ndarray] = {}
        lblk: dict[int, int] = {}
        shuffles: list[ChannelShuffle] = []
        slices: list[Node] = []
        try:
            segs, per_channel, absorbers = _sweep(graph, pos, cur_seeds, n, couple, producers, permuted, labs,
                                                  shuffles, slices, lblk)
        except _Restart as r:
            producers = producers + r.producers
            continue
        except _Stop as s:
            flow.producers = producers
            flow.reason = s.reason
            return flow
        break
    else:  # pragma: no cover - producers only grow, so this cannot loop forever
        flow.reason = "the producer group did not settle"
        return flow
    hit = [outputs[k] for k in [*segs, *labs] if k in outputs]
    flow.producers = sorted(producers, key=lambda p: (p is not producers[0], pos[id(p)]))
    if hit:
        flow.reason = (f"{hit[0].name!r} is a graph output and carries these channels; changing its width "
                       "would change the model's output shape")
        return flow
    by_id = {}
    for nd in graph.nodes:
        for o in nd.outputs:
            by_id[id(o)] = o
    for v in seeds:
        by_id[id(v)] = v
    flow.carried = [Carried(by_id[k], o, b) for k in sorted(segs, key=lambda k: _order(by_id[k], pos))
                    for o, b in sorted(segs[k])]
    if labs:
        flow.carried += [Carried(by_id[k], -1, 1) for k in sorted(labs, key=lambda k: _order(by_id[k], pos))]
        flow.carried.sort(key=lambda c: _order(c.value, pos))
        flow.labels = {by_id[k].name: lab for k, lab in labs.items()}
        flow.label_blocks = {by_id[k].name: b for k, b in lblk.items()}
    flow.slices = slices
    flow.shuffles = shuffles
    flow.per_channel = per_channel
    flow.absorbers = absorbers
    groups = 1
    for nd in [*producers, *(a.node for a in absorbers)]:
        groups = math.lcm(groups, grouped_conv_groups(nd))
    flow.groups = groups
    return flow


def resolve_value(graph: Graph, name: str) -> Value:
    """A value by name, a node's name meaning its first output (``Graph.find_value``), or a constant
    by its name (so that a pass can say "that is a weight" instead of "unknown").

    Raises:
        GraphError: no such value or node; suggests the closest names.
    """
    v = graph.values.get(name)
    if v is not None and v.is_const:
        return v
    return graph.find_value(name)


def _order(v: Value, pos: dict[int, int]) -> int:
    return -1 if v.producer is None else pos[id(v.producer)]


# ---------------------------------------------------------------------------------------------- sign


class _Flags(Sequence):
    """The ``nonneg`` list an op's sign rule gets: data inputs from the analysis so far, constants
    checked only when the rule reads them (Relu's rule reads nothing, Conv's neither)."""

    def __init__(self, node: Node, known: dict[int, bool], const_cache: dict[int, bool]):
        self.node, self.known, self.cache = node, known, const_cache

    def __len__(self) -> int:
        return len(self.node.inputs)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        v = self.node.inputs[i]
        if v is None:
            return False
        if v.is_const:
            if id(v) not in self.cache:
                self.cache[id(v)] = bool(np.all(v.const >= 0))
            return self.cache[id(v)]
        return self.known.get(id(v), False)


def nonneg_values(graph: Graph) -> dict[str, bool]:
    """Which data values are known non-negative, by name.

    A graph input is not; a constant is when all its entries are >= 0; a node output is when the
    op's ``sign`` rule says so given its inputs (Relu: always; transparent and concat ops: when
    their inputs are). Source: DESIGN.md section 5 (sign analysis).
    """
    known: dict[int, bool] = {}
    consts: dict[int, bool] = {}
    out: dict[str, bool] = {}
    for v in graph.inputs:
        known[id(v)] = False
        out[v.name] = False
    for nd in graph.nodes:
        try:
            s = bool(_ops.get_op(nd.op_type).sign(nd, _Flags(nd, known, consts)))
        except Exception:  # noqa: BLE001 - an unknown sign is "not known non-negative"
            s = False
        for o in nd.outputs:
            known[id(o)] = s
            out[o.name] = s
    return out


def is_nonneg(graph: Graph, value: Value | str) -> bool:
    """True when ``value`` is known non-negative (see :func:`nonneg_values`)."""
    v = graph.find_value(value) if isinstance(value, str) else value
    return nonneg_values(graph).get(v.name, False)


# ---------------------------------------------------------------------------------------------- size bound

#: The least number of parameters one morph that adds a layer may always add (:func:`new_params_bound`).
MIN_NEW_PARAMS = 2**20
#: The share of the graph's parameters such a morph may add when that is more than MIN_NEW_PARAMS:
#: one morph at most doubles the model.
NEW_PARAMS_SHARE = 1.0


def new_params_bound(graph: Graph, max_new_params: int | None = None) -> int:
    """The most parameters one layer-adding morph (net2deeper, add-skip, concat-skip) may add:
    ``max_new_params`` when given, else ``max(2**20, params(graph))``: one morph at most doubles
    the model (or adds a million parameters to a small one). It keeps sites such as
    an identity Gemm on a flattened 512 x 7 x 7 map (25088^2 = 629 M parameters on VGG-11-BN) or
    a square concat-skip projection from it out of the ordinary sites; the passes check it from
    shapes, before any array is made."""
    if max_new_params is not None:
        return int(max_new_params)
    return max(MIN_NEW_PARAMS, int(graph.param_count() * NEW_PARAMS_SHARE))


# ---------------------------------------------------------------------------------------------- layers


def is_layer_output(v: Value) -> bool:
    """True for a data value at a layer boundary: produced by a node, and not consumed *only* by
    element-wise per-channel or activation ops of the same layer (BatchNormalization, the Relu
    family, Dropout, Identity, per-channel Mul/Add). In Conv -> BN -> Relu only the Relu output is
    a layer output. Deepening and skips are drawn between layer outputs (NASH section 5.1 inserts
    whole Conv-BN-ReLU blocks and connects layers)."""
    if v.is_const or v.producer is None:
        return False
    cons = v.consumers()
    if not cons:
        return False

    def inner(u: Node) -> bool:
        if u.op_type in ("BatchNormalization", "InstanceNormalization") or u.op_type in _ACTIVATIONS:
            return True
        return u.op_type in ("Add", "Mul") and _ops.per_channel_const(u) is not None

    return not all(inner(u) for u in cons)


def layer_outputs(graph: Graph) -> list[Value]:
    """The layer outputs of ``graph`` (see :func:`is_layer_output`), in graph order, excluding
    graph outputs."""
    outs = {id(v) for v in graph.outputs}
    return [o for nd in graph.nodes for o in nd.outputs if id(o) not in outs and is_layer_output(o)]


__all__ = [
    "Carried", "Absorber", "PerChannelArray", "ChannelFlow", "channel_flow", "nonneg_values", "is_nonneg",
    "is_layer_output", "layer_outputs", "resolve_value", "PRODUCER_OPS", "grouped_conv_groups",
    "new_params_bound", "MIN_NEW_PARAMS", "NEW_PARAMS_SHARE", "ChannelShuffle", "channel_shuffle",
    "MAX_SHUFFLE_ELEMENTS",
]
