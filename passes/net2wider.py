"""Net2Wider: widen a producer (Conv or Gemm) from ``n`` to ``q > n`` output channels, exactly.

Source: Chen, Goodfellow & Shlens, "Net2Net: Accelerating Learning via Knowledge Transfer"
(ICLR 2016, arXiv 1511.05641), section 2.2 (Net2WiderNet); NASH (Elsken, Metzen & Hutter 2017,
arXiv 1711.04528) section 4.1, network morphism type II; DESIGN.md section 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nashir.errors import GraphError, NashirError, NotApplicable, PassError
from nashir.ir import Graph, Node
from nashir.ops import slice_range

from .analysis import PRODUCER_OPS, ChannelFlow, channel_flow, grouped_conv_groups, new_params_bound
from .base import Pass, PassResult, Site, as_rng, register_pass
from .transforms import (
    SPLITS,
    grouped_widen_mapping,
    kronecker_mapping,
    label_map,
    replica_split,
    segment_map,
    split_columns,
    split_columns_grouped,
    take_channels,
)

# fill values for *fresh* channels (no source) of per-channel arrays, by op and input index
_FRESH_FILL = {
    ("BatchNormalization", 1): 1.0,  # scale
    ("BatchNormalization", 2): 0.0,  # bias
    ("BatchNormalization", 3): 0.0,  # running mean
    ("BatchNormalization", 4): 1.0,  # running var
    ("InstanceNormalization", 1): 1.0,  # scale
    ("InstanceNormalization", 2): 0.0,  # bias
    ("PRelu", 1): 0.25,  # slope (torch's default); fresh channels get zero weights downstream
    ("Mul", 0): 1.0, ("Mul", 1): 1.0,
    ("Add", 0): 0.0, ("Add", 1): 0.0,
}


#: The most output channels net2wider gives a layer (int32 range, which onnxruntime and torch index).
MAX_WIDTH = 2**31 - 1


@dataclass(frozen=True)
class NodeSite(Site):
    """A site at one node, by name (``str`` is the name)."""

    node: str

    def __str__(self) -> str:
        return self.node


def _private_const(graph: Graph, node: Node, i: int):
    """The constant at ``node.inputs[i]``, first copied to a new constant when another node (or
    another input of the same node) shares it, so changing it changes only this use."""
    v = node.inputs[i]
    if len(v.uses) > 1:
        nv = graph.add_const(v.const.copy(), f"{node.name}.in{i}")
        graph.set_input(node, i, nv)
        return nv
    return v


def _out_axis(nd: Node) -> int:
    """The weight axis of a node's output channels: 0 (Conv OIHW, Gemm ``W[out, in]``), 1 for
    ConvTranspose's ``(C_in, C_out/group, kH, kW)``; its input channels are the other of axes 0, 1."""
    return 1 if nd.op_type == "ConvTranspose" else 0


def remap_channels(graph: Graph, flow: ChannelFlow, local_idx: np.ndarray,
                   local_weight: np.ndarray | None = None, producer_rows: bool = True) -> dict:
    """Change the source channels of ``flow`` from ``n`` to ``q = len(local_idx)``, in place.

    New source channel ``j`` copies old channel ``local_idx[j]`` (``-1``: a fresh channel) in the
    producers' rows and biases (when ``producer_rows``) and in every per-channel array; every
    absorber's input column for new channel ``j`` is old column ``local_idx[j]`` times
    ``local_weight[j]`` (zero for fresh channels). Through a Flatten the factor applies to whole
    ``H*W`` column blocks; through a Concat the offsets of later channels shift. Then output shapes
    are inferred again.

    Args:
        graph: the graph ``flow`` was computed on.
        flow: an applicable :class:`~nashir.passes.analysis.ChannelFlow`.
        local_idx: int array of length ``q``, entries in ``[0, n)`` or ``-1``.
        local_weight: factor per new channel (default 1).
        producer_rows: remap the producers' output rows (False when the flow starts at a value).

    Returns:
        ``{"changed": [constant names]}``.

    Raises:
        PassError: the flow is not applicable, or the new shapes do not infer (the graph's arrays
            and attributes are restored).
    """
    if not flow.ok:
        raise PassError(
            f"remap_channels: the channel flow from {flow.source!r} is not applicable: {flow.reason}")
    n = flow.width
    local_idx = np.asarray(local_idx, dtype=np.int64)
    q = len(local_idx)
    if (flow.permuted or flow.slices) and ((local_idx < 0).any() or (np.diff(local_idx) < 0).any()):
        raise PassError(f"remap_channels: the channel flow from {flow.source!r} passes a channel shuffle or "
                        "slice, which needs the in-place layout (a sorted local_idx without fresh channels, "
                        "e.g. kronecker_mapping(n, q))")
    if flow.shuffles and (q % n or np.any(np.bincount(local_idx, minlength=n) != q // n)):
        raise PassError(f"remap_channels: the channel flow from {flow.source!r} passes a channel shuffle, "
                        "which needs every channel copied equally often (kronecker_mapping(n, q), q a "
                        f"multiple of {n}); got q={q}")
    new: dict[tuple[int, int], tuple[Node, int, np.ndarray]] = {}

    def cur(node: Node, i: int) -> np.ndarray:
        k = (id(node), i)
        return new[k][2] if k in new else node.inputs[i].const

    def put(node: Node, i: int, arr: np.ndarray) -> None:
        new[(id(node), i)] = (node, i, arr)

    attrs: list[tuple[Node, str, int]] = []
    if producer_rows:
        for p in flow.producers:   # ConvTranspose (C_in, C_out, kH, kW): its output channels are axis 1
            put(p, 1, take_channels(cur(p, 1), local_idx, _out_axis(p)))
            if len(p.inputs) > 2 and p.inputs[2] is not None:
                put(p, 2, take_channels(cur(p, 2), local_idx, -1))
    # segments of every carried value, gathered in one pass over flow.carried (flow.segments scans it
    # per call); maps are shared by all values with the same axis length and segments (the common
    # case: every value of a residual stream carries the source channels as (0, 1) of an n-axis)
    segs_of: dict[int, list[tuple[int, int]]] = {}
    for c in flow.carried:
        segs_of.setdefault(id(c.value), []).append((c.offset, c.block))
    maps: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def value_map(v) -> tuple[np.ndarray, np.ndarray]:
        if v.name in flow.labels:
            key = ("labels", v.name)
            if key not in maps:
                maps[key] = label_map(flow.labels[v.name], local_idx, local_weight,
                                      flow.label_blocks.get(v.name, 1))
            return maps[key]
        key = (int(v.shape[1]), tuple(sorted(segs_of.get(id(v), ()))))
        if key not in maps:
            maps[key] = segment_map(key[0], key[1], n, local_idx, local_weight)
        return maps[key]

    done_pc: set[tuple[int, int]] = set()
    for a in flow.per_channel:
        if a.axis is None or (id(a.node), a.input) in done_pc:
            continue
        done_pc.add((id(a.node), a.input))
        per_op_data = a.node.op_type in ("BatchNormalization", "Conv", "InstanceNormalization", "PRelu")
        data = a.node.inputs[0] if per_op_data else a.node.inputs[1 - a.input]
        idx, _ = value_map(data)
        fill = _FRESH_FILL.get((a.node.op_type, a.input), 0.0)
        put(a.node, a.input, take_channels(cur(a.node, a.input), idx, a.axis, fill=fill))
        if a.node.op_type == "Conv" and a.input == 1:  # depthwise: one group per channel
            attrs.append((a.node, "group", len(idx)))
    done_abs: set[int] = set()
    for a in flow.absorbers:
        if id(a.node) in done_abs:
            continue
        done_abs.add(id(a.node))
        idx, w = value_map(a.node.inputs[a.input])
        groups = grouped_conv_groups(a.node)
        if groups > 1:
            try:
                put(a.node, 1, split_columns_grouped(cur(a.node, 1), idx, w, groups))
            except ValueError as e:
                raise PassError(f"changing the channels of {flow.source!r}: the new layout does not keep the "
                                f"{groups} groups of {a.node.name!r} ({e}); build it with "
                                "grouped_widen_mapping(n, q, flow.groups, rng)") from None
        else:
            put(a.node, 1, split_columns(cur(a.node, 1), idx, w, axis=1 - _out_axis(a.node)))
    # Slices of the channel axis: in the in-place layout an old bound b becomes the number of new
    # elements before old element b
    new_attrs: list[tuple[Node, dict]] = []
    for sl in flow.slices:
        x = sl.inputs[0]
        carried_x = x.name in flow.labels or id(x) in segs_of
        idx = value_map(x)[0] if carried_x else np.arange(x.shape[1])
        r = len(x.shape)
        axes = [a + r if a < 0 else a for a in sl.attrs["axes"]]
        i = axes.index(1)
        b, e, _ = slice_range(int(x.shape[1]), sl.attrs["starts"][i], sl.attrs["ends"][i], 1)
        starts, ends = list(sl.attrs["starts"]), list(sl.attrs["ends"])
        starts[i], ends[i] = int(np.searchsorted(idx, b)), int(np.searchsorted(idx, e))
        new_attrs.append((sl, {**sl.attrs, "starts": starts, "ends": ends}))
    # channel shuffles: an inner sub-axis of size f that stays in place (kronecker_mapping)
    for sh in flow.shuffles:
        f = q // n
        k = len(sh.dims)
        spatial = [int(d) for d in sh.first.inputs[0].shape[2:]]
        c = int(np.prod(sh.dims))
        if sh.sub_perm[-1] == k - 1:          # the innermost sub-axis stays innermost: it grows
            dims, sub = [*sh.dims[:-1], sh.dims[-1] * f], list(sh.sub_perm)
        else:                                 # a new innermost sub-axis of size f
            dims, sub = [*sh.dims, f], [*sh.sub_perm, k]
        batch = [int(cur(sh.first, 1)[0])]
        put(sh.first, 1, np.array(batch + dims + spatial, dtype=np.int64))
        put(sh.last, 1, np.array([int(cur(sh.last, 1)[0]), c * f, *spatial], dtype=np.int64))
        perm = [0] + [1 + p for p in sub] + list(range(1 + len(dims), 1 + len(dims) + len(spatial)))
        new_attrs.append((sh.transpose, {**sh.transpose.attrs, "perm": perm}))
    # --- commit: unshare, then set, then infer shapes (restored on failure)
    targets = [(node, i, arr) for node, i, arr in new.values()]
    values = [_private_const(graph, node, i) for node, i, _ in targets]
    old_arrays = [v.const for v in values]
    old_attrs = [(node, dict(node.attrs)) for node, _, _ in attrs]
    old_attrs += [(nd, dict(nd.attrs)) for nd, _ in new_attrs]
    for v, (_, _, arr) in zip(values, targets):
        graph.set_const(v, arr)
    for node, key, val in attrs:
        node.attrs = {**node.attrs, key: int(val)}
    for nd, a in new_attrs:
        nd.attrs = a
    try:
        graph.infer_shapes()
    except NashirError as e:
        for v, arr in zip(values, old_arrays):
            graph.set_const(v, arr)
        for node, a in old_attrs:
            node.attrs = a
        raise PassError(
            f"changing the channels of {flow.source!r} to {q} left shapes that do not infer: {e}") from e
    return {"changed": sorted(v.name for v in values)}


def new_params(flow: ChannelFlow, q: int) -> int:
    """Parameters that widening ``flow`` from ``n`` to ``q`` channels adds, from shapes alone.

    Each new source channel adds one row (fan-in ``C_in/group * kH * kW``, or ``in`` for a Gemm)
    and one bias entry to every producer; every element of a carried value that holds a source
    channel grows into ``q / n`` elements on average (exactly ``f`` for the in-place layout of a
    permuted flow, ``block`` per segment otherwise), and each new element adds a column of
    ``C_out/group * kH * kW`` weights to each absorber reading it and one entry to each per-channel
    array on it (BatchNorm's four, a depthwise kernel's ``kH * kW`` and bias). So

    ``growth = (q - n) * (sum_producers fan_in + bias) + (q - n) / n * sum_{absorbers, arrays}
    cost * elements``

    with ``elements`` = :meth:`ChannelFlow.elements`. Net2Net section 2.2 for the rows and columns.
    """
    n = flow.width
    rows = 0
    for p in flow.producers:
        w = p.inputs[1].const
        rows += w.size // w.shape[_out_axis(p)] + (1 if len(p.inputs) > 2 and p.inputs[2] is not None else 0)
    acc = 0
    seen: set[tuple[int, int]] = set()
    for a in flow.absorbers:
        if (id(a.node), a.input) in seen:
            continue
        seen.add((id(a.node), a.input))
        w = a.node.inputs[1].const
        acc += (w.shape[_out_axis(a.node)] // grouped_conv_groups(a.node)) * int(np.prod(w.shape[2:])) * \
            flow.elements(a.node.inputs[a.input])
    for pc in flow.per_channel:
        if pc.axis is None or (id(pc.node), pc.input) in seen:
            continue
        seen.add((id(pc.node), pc.input))
        arr = pc.node.inputs[pc.input].const
        per_op_data = pc.node.op_type in ("BatchNormalization", "Conv", "InstanceNormalization", "PRelu")
        data = pc.node.inputs[0] if per_op_data else pc.node.inputs[1 - pc.input]
        acc += arr.size // arr.shape[pc.axis] * flow.elements(data)
    return int((q - n) * rows + ((q - n) * acc) // n)


@register_pass
class Net2Wider(Pass):
    """Widen a Conv (group 1) or Gemm producer from ``n`` to ``q > n`` outputs, keeping the function.

    New output ``j`` copies output ``g(j)`` (:func:`~nashir.passes.transforms.widen_mapping`): the
    producer's weight rows and bias, and every per-channel array on the way (BatchNorm scale, bias,
    running mean and variance; per-channel Mul/Add constants; depthwise kernels) are copied by
    ``g``. Every absorber's input column for channel ``c`` is split among the replicas ``R(c)``
    with factors summing to one (``split="equal"``: ``1/|R(c)|`` as in Net2Net; ``"random"``: a
    random split that breaks the symmetry between replicas). After a Flatten the split applies to
    whole ``H*W`` column blocks; producers coupled through residual sums are widened with the same
    ``g``. Source: Net2Net section 2.2; NASH section 4.1 (type II).

    Through a channel shuffle (ShuffleNet, arXiv 1707.01083 / 1807.11164) or a Slice of the channel
    axis the widening uses the uniform in-place layout (:func:`~nashir.passes.transforms.kronecker_mapping`:
    ``q = f * n``, every channel copied ``f`` times next to itself), and every producer whose
    channels a shuffle mixes joins the group; the shuffle keeps its Reshape -> Transpose -> Reshape
    form with an inner sub-axis of size ``f``, and slice bounds scale by ``f``.

    **Size bound.** One widening adds at most ``max_new_params`` parameters (default
    :func:`~nashir.passes.analysis.new_params_bound`: ``max(2**20, params(graph))``), computed
    from shapes before any array is made (:func:`new_params`): a factor of ``factors`` over it is
    not drawn, a producer where every factor is over is not a site, and an explicit width or
    factor over it is not applicable.

    Args:
        width: the new width ``q`` (must exceed the current one), or
        factor: ``q = ceil(n * factor)`` (> 1); with neither, a factor drawn from ``factors``.
        factors: the factors drawn when neither is given; NASH section 5.1 samples the widening
            factor from {2, 4}.
        split: ``"equal"`` or ``"random"``.
        max_new_params: the most parameters one widening may add (None: ``max(2**20, params)``).

    Raises:
        PassError: inconsistent options.
    """

    name = "net2wider"
    exact = True
    description = "widen a Conv/Gemm by copying channels (Net2WiderNet); coupled producers too"

    def __init__(self, width: int | None = None, factor: float | None = None,
                 factors: tuple[float, ...] = (2, 4), split: str = "equal",
                 max_new_params: int | None = None):
        if width is not None and factor is not None:
            raise PassError("net2wider: give either width or factor, not both")
        if width is not None and not (isinstance(width, (int, np.integer, float)) and math.isfinite(width)
                                      and int(width) == width and width >= 1):
            raise PassError(f"net2wider: width must be a positive integer, got {width!r}")
        if width is not None and width > MAX_WIDTH:
            raise PassError(f"net2wider: width {width!r} is larger than the most channels a layer may have "
                            f"({MAX_WIDTH})")
        if factor is not None and not (factor > 1 and math.isfinite(factor)):
            raise PassError(f"net2wider: factor must be a finite number larger than 1, got {factor!r}")
        if not factors or any(not (f > 1 and math.isfinite(f)) for f in factors):
            raise PassError(
                f"net2wider: every factor in factors must be a finite number larger than 1, got {factors!r}")
        if split not in SPLITS:
            raise PassError(f"net2wider: split must be one of {', '.join(SPLITS)}, got {split!r}")
        if max_new_params is not None and not (isinstance(max_new_params, (int, np.integer))
                                               and max_new_params >= 0):
            raise PassError(f"net2wider: max_new_params must be an integer >= 0, got {max_new_params!r}")
        self.width = None if width is None else int(width)
        self.factor = factor
        self.factors = tuple(factors)
        self.split = split
        self.max_new_params = max_new_params

    def target_width(self, n: int, rng: np.random.Generator | None = None, groups: int = 1,
                     factor: float | None = None) -> int:
        """The new width for a producer of ``n`` channels (``factor``, else the configured one, else
        one drawn from ``factors``); with ``groups`` > 1 (channels tied to grouped Convs) rounded up
        to a multiple of ``groups``."""
        if self.width is not None:
            return self.width
        f = factor if factor is not None else self.factor
        if f is None:
            f = self.factors[int(rng.integers(len(self.factors)))] if rng is not None else self.factors[0]
        q = max(n + 1, int(math.ceil(min(n * f, MAX_WIDTH + 1.0) - 1e-9)))  # capped: check() refuses it
        return -(-q // groups) * groups

    def _candidates(self, graph: Graph, flow: ChannelFlow) -> tuple[list[int], str | None]:
        """The widths this pass may give ``flow`` (one per factor of ``factors`` that fits, or the
        configured width/factor) and, when there is none, why."""
        n, nd = flow.width, flow.producers[0]
        bound = new_params_bound(graph, self.max_new_params)
        fixed = self.width is not None or self.factor is not None
        offers = ([(None, self.target_width(n, groups=flow.groups))] if fixed else
                  [(f, self.target_width(n, groups=flow.groups, factor=f)) for f in self.factors])
        ok: list[int] = []
        why: list[str] = []
        for f, q in offers:
            what = f"width {q}" if self.width is not None else f"factor {f if f is not None else self.factor}"
            if flow.permuted and q % n:
                why.append(f"{what} ({n} -> {q} channels) is not a whole multiple of {n}: the flow passes a "
                           f"channel shuffle or slice ({self._permuted_where(flow)}), which is widened by "
                           "copying every channel equally often; give an integer factor")
                continue
            grow = new_params(flow, q)
            if grow > bound:
                why.append(f"{what} ({n} -> {q} channels) would add {grow:,} parameters, over the bound of "
                           f"{bound:,} for one morph (max(2**20, params of the model) unless "
                           "max_new_params is given); give a smaller factor or width")
                continue
            ok.append(q)
        if ok:
            return ok, None
        return ok, f"widening {nd.name!r}: " + "; ".join(why)

    @staticmethod
    def _permuted_where(flow: ChannelFlow) -> str:
        names = [sh.first.name for sh in flow.shuffles] + [sl.name for sl in flow.slices]
        more = f" and {len(names) - 2} more" if len(names) > 2 else ""
        return ", ".join(repr(x) for x in names[:2]) + more

    def _node(self, graph: Graph, site: NodeSite) -> Node | str:
        try:
            return graph.node(site.node)
        except GraphError as e:
            return str(e)

    def _flow(self, graph: Graph, site: NodeSite) -> tuple[ChannelFlow | None, str | None]:
        nd = self._node(graph, site)
        if isinstance(nd, str):
            return None, nd
        flow = channel_flow(graph, nd, permuted=True)
        if not flow.ok:
            return flow, flow.reason
        return flow, self._width_reason(nd, flow.width, flow.groups) or self._candidates(graph, flow)[1]

    def _width_reason(self, nd: Node, n: int, groups: int = 1) -> str | None:
        """Why the configured width or factor does not fit a producer of ``n`` channels (or None)."""
        if self.width is not None and self.width <= n:
            return (f"the new width {self.width} is not larger than the current {n} channels "
                    f"of {nd.name!r}; give a larger width")
        if self.width is not None and self.width % groups:
            return (f"the channels of {nd.name!r} are tied to grouped convolutions with {groups} groups, so "
                    f"the new width must be a multiple of {groups}; {self.width} is not")
        if self.factor is not None and self.target_width(n, groups=groups) > MAX_WIDTH:
            return (f"factor {self.factor} would give {nd.name!r} more channels than a layer may have "
                    f"({MAX_WIDTH}); give a smaller factor")
        return None

    def check(self, graph: Graph, site: NodeSite) -> str | None:
        return self._flow(graph, site)[1]

    def apply(self, graph: Graph, site: NodeSite, rng: np.random.Generator | int | None = None) -> PassResult:
        """As :meth:`Pass.apply`; the channel flow is computed once for the check and the rewrite."""
        flow, reason = self._flow(graph, site)
        if reason is not None:
            raise NotApplicable(f"{self.name} does not apply at {site}: {reason}")
        return self._widen(graph, flow, as_rng(rng))

    def sites(self, graph: Graph) -> list[NodeSite]:
        out: list[NodeSite] = []
        seen: set[int] = set()
        for nd in graph.nodes:
            if nd.op_type not in PRODUCER_OPS or id(nd) in seen:
                continue
            flow = channel_flow(graph, nd, permuted=True)
            seen.update(id(p) for p in flow.producers)
            if (flow.ok and self._width_reason(nd, flow.width, flow.groups) is None
                    and self._candidates(graph, flow)[1] is None):
                out.append(NodeSite(nd.name))
        return out

    #: Producers :meth:`draw_site` tries before it lists the sites instead.
    DRAW_TRIES = 64

    def draw_site(self, graph: Graph, rng: np.random.Generator) -> NodeSite | None:
        """One site drawn uniformly from :meth:`sites` without a channel flow from every producer.

        Rejection sampling, exact: a Conv or Gemm is drawn uniformly and kept when it is a site,
        i.e. its flow applies, the width fits, and it is the first of its coupled producer group in
        graph order (as :meth:`sites` lists a group once, by that producer). After
        :attr:`DRAW_TRIES` misses the sites are listed. Cost: one channel flow per try, not one per
        producer. A subclass that overrides :meth:`sites` is drawn from its own list.
        """
        if type(self).sites is not Net2Wider.sites:
            return super().draw_site(graph, rng)
        cands = [nd for nd in graph.nodes if nd.op_type in PRODUCER_OPS]
        pos: dict[int, int] | None = None
        for _ in range(self.DRAW_TRIES if cands else 0):
            nd = cands[int(rng.integers(len(cands)))]
            flow = channel_flow(graph, nd, permuted=True)
            if (not flow.ok or self._width_reason(nd, flow.width, flow.groups) is not None
                    or self._candidates(graph, flow)[1] is not None):
                continue
            if len(flow.producers) > 1:
                pos = pos or {id(x): i for i, x in enumerate(graph.nodes)}
                if any(pos[id(p)] < pos[id(nd)] for p in flow.producers):
                    continue
            return NodeSite(nd.name)
        return super().draw_site(graph, rng) if cands else None

    def parse_site(self, graph: Graph, text: str) -> NodeSite:
        return NodeSite(graph.find_node(text).name)

    def rewrite(self, graph: Graph, site: NodeSite, rng: np.random.Generator) -> PassResult:
        flow, reason = self._flow(graph, site)
        if reason is not None:
            raise NotApplicable(f"{self.name} does not apply at {site}: {reason}")
        return self._widen(graph, flow, rng)

    def _widen(self, graph: Graph, flow: ChannelFlow, rng: np.random.Generator) -> PassResult:
        nd = flow.producers[0]
        n = flow.width
        widths, why = self._candidates(graph, flow)
        if why is not None:
            raise NotApplicable(f"{self.name} does not apply at {nd.name}: {why}")
        # one factor drawn among those within the bound (the same draw as before when all fit)
        q = widths[0] if len(widths) == 1 and (self.width is not None or self.factor is not None) else \
            widths[int(rng.integers(len(widths)))]
        grow = new_params(flow, q)
        if flow.permuted or flow.slices:
            g = kronecker_mapping(n, q)
        else:
            g = grouped_widen_mapping(n, q, flow.groups, rng)
        s = replica_split(g, n, self.split, rng)
        remap_channels(graph, flow, g, s, producer_rows=True)
        info = {
            "node": nd.name, "producers": [p.name for p in flow.producers], "from": int(n), "to": int(q),
            "split": self.split, "new_sources": [int(x) for x in g[n:]], "new_params": grow,
        }
        if flow.permuted or flow.slices:   # every channel c becomes c*f ... c*f + f - 1
            info["layout"] = "in-place"
            info["shuffles"] = [sh.first.name for sh in flow.shuffles]
            info["slices"] = [sl.name for sl in flow.slices]
        elif flow.groups > 1:   # new channels sit at the end of each group
            per = q // flow.groups
            info["new_sources"] = [int(x) for j, x in enumerate(g) if j % per >= n // flow.groups]
            info["groups"] = int(flow.groups)
        return PassResult(graph, True, info)


__all__ = ["Net2Wider", "NodeSite", "remap_channels", "new_params"]
