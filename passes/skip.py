"""Skip connections as exact morphisms: ``add-skip`` and ``concat-skip``.

Source: NASH (Elsken, Metzen & Hutter 2017, arXiv 1711.04528) section 4.1, network morphism
type III (skip connections by addition or concatenation, with zero-initialised weights so the
function is kept); DESIGN.md section 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nashir.errors import GraphError, PassError
from nashir.ir import Graph, Node, Value

from .analysis import (
    MIN_NEW_PARAMS,
    NEW_PARAMS_SHARE,
    ChannelFlow,
    channel_flow,
    layer_outputs,
    new_params_bound,
    resolve_value,
)
from .base import Pass, PassResult, Site, register_pass
from .net2wider import remap_channels
from .transforms import pool_factors


@dataclass(frozen=True)
class SkipSite(Site):
    """A skip from value ``src`` to value ``dst`` (``str``: ``"src->dst"``)."""

    src: str
    dst: str

    def __str__(self) -> str:
        return f"{self.src}->{self.dst}"


def parse_skip(graph: Graph, text: str) -> SkipSite:
    """Read ``SRC->DST`` or ``SRC:DST`` (value or node names; a name may itself contain ``:``).

    Raises:
        GraphError: no split of ``text`` names two values; suggests close names.
    """
    for sep in ("->", ":"):
        parts = text.split(sep)
        for k in range(1, len(parts)):
            a, b = sep.join(parts[:k]), sep.join(parts[k:])
            try:
                return SkipSite(graph.find_value(a).name, graph.find_value(b).name)
            except GraphError:
                continue
    for sep in ("->", ":"):
        if sep in text:
            a, b = text.split(sep, 1)
            graph.find_value(a)  # raises with suggestions
            graph.find_value(b)
    raise GraphError(f"skip {text!r}: expected SRC:DST (or SRC->DST) naming two values or nodes")


def skip_reason(graph: Graph, a: Value, b: Value) -> str | None:
    """Why a skip from ``a`` to ``b`` is impossible (shape and graph reasons), or None."""
    for v in (a, b):
        if v.is_const:
            return f"{v.name!r} is a constant (a weight), not a data tensor"
    if a is b:
        return f"source and target are the same value {a.name!r}"
    if not graph.is_ancestor(a, b):
        return (f"{a.name!r} is not an ancestor of {b.name!r} (the skip would not run forward, or would "
                "make a cycle); pick a source upstream of the target")
    if any(o is b for o in graph.outputs):
        return f"{b.name!r} is a graph output; a skip into it would rename the model's output"
    return shape_reason(a, b)


#: Ranks a skip joins: N x F vectors and N x C x spatial maps with 1 to 3 spatial axes.
SKIP_RANKS = (2, 3, 4, 5)


def shape_reason(a: Value, b: Value) -> str | None:
    """Why the shapes of ``a`` and ``b`` cannot be joined by a skip (ranks, symbolic sizes,
    spatial sizes no pooling matches), or None. Two maps of one rank (N x C x L, N x C x H x W,
    N x C x D x H x W), two N x F vectors, or a map into a vector (by global pooling) can be joined."""
    ra, rb = len(a.shape or ()), len(b.shape or ())
    if ra not in SKIP_RANKS or rb not in SKIP_RANKS or (ra != rb and not (ra > 2 and rb == 2)):
        return (f"{a.name!r} has shape {list(a.shape or ())} and {b.name!r} {list(b.shape or ())}; a skip "
                "joins two N x C x H x W maps (or N x C x L, N x C x D x H x W) of one rank, two N x F "
                "vectors, or a map into a vector")
    dims = list(a.shape[1:2]) + list(b.shape[1:]) + (list(a.shape[2:]) if ra == rb else [])
    if not all(isinstance(d, (int, np.integer)) for d in dims):
        return f"{a.name!r} or {b.name!r} has a symbolic size ({a.shape} vs {b.shape})"
    if ra == rb and ra > 2 and pool_factors(a.shape[2:], b.shape[2:]) is None:
        return (f"spatial sizes {list(a.shape[2:])} of {a.name!r} and {list(b.shape[2:])} of {b.name!r} "
                "differ by no factor that pooling (kernel = stride = factor) can match")
    return None


def _path(graph: Graph, a: Value, b: Value, out_channels: int, weight: np.ndarray,
          pool: str) -> tuple[Value, list[Node]]:
    """``P(a)``: optional pooling to ``b``'s spatial size, then a 1x1 Conv (or a Gemm for flat values)
    with ``weight`` (no bias); from a map into a vector, global pooling (GlobalAveragePool or
    GlobalMaxPool) and Flatten, then a Gemm. Returns its output and the new nodes, which are placed
    right after ``b``'s producer (``a`` is upstream of it), so that joining them to ``b`` keeps the
    node order topological without a re-sort."""
    nodes: list[Node] = []
    at = [graph.nodes.index(b.producer) + 1]

    def index() -> int:
        at[0] += 1
        return at[0] - 1

    x = a
    nsp = len(a.shape) - 2
    if nsp > 0 and len(b.shape) == 2:
        op = "GlobalMaxPool" if pool == "max" else "GlobalAveragePool"
        pn = graph.add_node(op, [x], name=graph.auto_node_name(op), index=index())
        fl = graph.add_node("Flatten", [pn.outputs[0]], {"axis": 1}, name=graph.auto_node_name("Flatten"),
                            index=index())
        nodes += [pn, fl]
        x = fl.outputs[0]
        nsp = 0
    if nsp > 0:
        fs, ceil = pool_factors(a.shape[2:], b.shape[2:])
        if any(f > 1 for f in fs):
            op = "MaxPool" if pool == "max" else "AveragePool"
            pn = graph.add_node(op, [x], {"kernel_shape": fs, "strides": fs, "pads": [0] * (2 * nsp),
                                          "ceil_mode": int(ceil)}, name=graph.auto_node_name(op),
                                index=index())
            nodes.append(pn)
            x = pn.outputs[0]
        name = graph.auto_node_name("Conv")
        w = graph.add_const(weight.reshape(out_channels, int(a.shape[1]), *[1] * nsp), f"{name}.weight")
        cn = graph.add_node("Conv", [x, w], {"kernel_shape": [1] * nsp, "strides": [1] * nsp,
                                             "pads": [0] * (2 * nsp), "dilations": [1] * nsp, "group": 1},
                            name=name, index=index())
    else:
        name = graph.auto_node_name("Gemm")
        w = graph.add_const(weight.reshape(out_channels, int(a.shape[1])), f"{name}.weight")
        cn = graph.add_node("Gemm", [x, w], {"transB": 1}, name=name, index=index())
    nodes.append(cn)
    return cn.outputs[0], nodes


#: Random (source, target) pairs :meth:`_Skip.draw_site` tries before it lists every site.
DRAW_TRIES = 256

_UNSET = object()


class _SiteContext:
    """What one listing or draw of skip sites shares: the layer outputs in graph order, the size
    bound, each target's verdict (filled in as targets are met) and, for a listing, the set of layer
    outputs upstream of each value as a bit mask (one big-int OR per node input). A draw tests the
    few pairs it draws with a walk up from the target instead (:meth:`Graph.is_ancestor`)."""

    def __init__(self, graph: Graph, layers: list[Value], bound: int, masks: bool):
        self.layers = layers
        self.bound = bound
        self.index = {id(v): i for i, v in enumerate(layers)}
        self.targets: dict[int, object] = {}
        self.anc: dict[int, int] | None = None
        if masks:
            bit = {id(v): 1 << i for i, v in enumerate(layers)}
            anc: dict[int, int] = {id(v): 0 for v in graph.inputs}
            for nd in graph.nodes:
                m = 0
                for x in nd.inputs:
                    if x is not None and not x.is_const:
                        m |= anc.get(id(x), 0) | bit.get(id(x), 0)
                for o in nd.outputs:
                    anc[id(o)] = m
            self.anc = anc

    def upstream(self, graph: Graph, a: Value, b: Value) -> bool:
        """Whether ``a`` is a strict ancestor of ``b`` (both layer outputs)."""
        if self.anc is not None:
            return bool(self.anc[id(b)] >> self.index[id(a)] & 1)
        return self.index[id(a)] < self.index[id(b)] and graph.is_ancestor(a, b)


class _Skip(Pass):
    exact = True

    def __init__(self, pool: str = "avg", max_new_params: int | None = None):
        if pool not in ("avg", "max"):
            raise PassError(f"{self.name}: pool must be 'avg' or 'max', got {pool!r}")
        if max_new_params is not None and (int(max_new_params) != max_new_params or max_new_params < 1):
            raise PassError(f"{self.name}: max_new_params must be a positive integer, got {max_new_params!r}")
        self.pool = pool
        self.max_new_params = None if max_new_params is None else int(max_new_params)

    def bound(self, graph: Graph) -> int:
        """The most parameters one skip may add to ``graph``: ``max_new_params``, by default
        ``max(MIN_NEW_PARAMS, NEW_PARAMS_SHARE * params(graph))`` = ``max(2**20, params)``."""
        return new_params_bound(graph, self.max_new_params)

    def _resolve(self, graph: Graph, site: SkipSite) -> tuple[Value, Value] | str:
        try:
            return resolve_value(graph, site.src), resolve_value(graph, site.dst)
        except GraphError as e:
            return str(e)

    def target_reason(self, graph: Graph, b: Value) -> str | None:
        """Why the target ``b`` cannot take this skip whatever the source (None: it can)."""
        return None

    def check(self, graph: Graph, site: SkipSite) -> str | None:
        r = self._resolve(graph, site)
        if isinstance(r, str):
            return r
        return skip_reason(graph, *r) or self.target_reason(graph, r[1])

    def _context(self, graph: Graph, masks: bool = True) -> _SiteContext | None:
        layers = layer_outputs(graph)
        return _SiteContext(graph, layers, self.bound(graph), masks) if len(layers) >= 2 else None

    def _target(self, graph: Graph, b: Value):
        """What :meth:`_pair_fits` needs to know about the target ``b`` (None: ``b`` takes no skip)."""
        return True if self.target_reason(graph, b) is None else None

    def _pair_fits(self, graph: Graph, a: Value, b: Value, target, bound: int) -> bool:
        """The pass's own test of a pair that passed the graph, shape and target tests (size bound)."""
        return True

    def _pair_ok(self, graph: Graph, a: Value, b: Value, ctx: _SiteContext) -> bool:
        """Whether ``a -> b`` is a site; the target's verdict is computed once per context."""
        if a is b or ctx.index[id(a)] > ctx.index[id(b)] or shape_reason(a, b) is not None:
            return False
        if not ctx.upstream(graph, a, b):
            return False
        t = ctx.targets.get(id(b), _UNSET)
        if t is _UNSET:
            t = ctx.targets[id(b)] = self._target(graph, b)
        return t is not None and self._pair_fits(graph, a, b, t, ctx.bound)

    def sites(self, graph: Graph) -> list[SkipSite]:
        """Every (source, target) pair of layer outputs (see :func:`~nashir.passes.analysis.layer_outputs`)
        where the source is a strict ancestor of the target and the check passes (size bound
        included), ordered by target, then source. O(layers^2): the search draws with
        :meth:`draw_site` instead."""
        ctx = self._context(graph)
        if ctx is None:
            return []
        return self._list(graph, ctx)

    def _list(self, graph: Graph, ctx: _SiteContext) -> list[SkipSite]:
        layers = ctx.layers
        return [SkipSite(a.name, b.name) for b in layers for a in layers if self._pair_ok(graph, a, b, ctx)]

    def draw_site(self, graph: Graph, rng: np.random.Generator) -> SkipSite | None:
        """One site drawn uniformly from :meth:`sites` without listing them (the search's draw).

        Rejection sampling, which is exact: a (source, target) pair of layer outputs is drawn
        uniformly and kept when it is a site; after :data:`DRAW_TRIES` misses the sites are listed
        and one is drawn from the list. Cost: the layer outputs and the size bound (linear in the
        graph), one walk up from the target per pair that passes the order and shape tests and, for
        concat-skip, one channel flow per target drawn; not every pair.
        A subclass that overrides :meth:`sites` is drawn from its own list.
        """
        if type(self).sites is not _Skip.sites:
            return super().draw_site(graph, rng)
        ctx = self._context(graph, masks=False)
        if ctx is None:
            return None
        layers = ctx.layers
        for _ in range(DRAW_TRIES):
            b = layers[int(rng.integers(len(layers)))]
            a = layers[int(rng.integers(len(layers)))]
            if self._pair_ok(graph, a, b, ctx):
                return SkipSite(a.name, b.name)
        sites = self._list(graph, self._context(graph))
        return sites[int(rng.integers(len(sites)))] if sites else None

    def parse_site(self, graph: Graph, text: str) -> SkipSite:
        return parse_skip(graph, text)


@register_pass
class AddSkip(_Skip):
    """``b' = b + P(a)``: a residual connection from ``a`` to ``b`` that starts at zero.

    ``P`` is a 1x1 Conv (``C_a -> C_b``, OIHW ``(C_b, C_a, 1, 1)``, all zeros, no bias), preceded by
    pooling (AveragePool or MaxPool, kernel = stride = the integer factor between the spatial
    sizes) when ``a`` is larger than ``b``; for flat values a zero Gemm ``W[C_b, C_a]``. ``P(a)``
    is zero, so the function is kept; the gradient with respect to ``P``'s weights is not, so
    the skip trains. NASH's convex form ``lambda*b + (1-lambda)*a`` with lambda = 1 is the same
    function. From a map into a vector, ``P`` is global pooling (average, or max with
    ``pool="max"``), Flatten and the zero Gemm. Source: NASH section 4.1 (type III).

    The projection's ``C_b * C_a`` parameters must fit the size bound (:meth:`_Skip.bound`);
    larger sites are not applicable (checked from shapes, before any array is made).

    Args:
        pool: ``"avg"`` or ``"max"``.
        max_new_params: the most parameters one skip may add; None for the default bound.
    """

    name = "add-skip"
    description = "add a zero-initialised residual connection b' = b + conv1x1(pool(a))"

    def size_reason(self, a: Value, b: Value, bound: int) -> str | None:
        """Why ``P``'s ``C_b x C_a`` weights are over the size bound (None when they fit)."""
        n = int(a.shape[1]) * int(b.shape[1])
        if n > bound:
            return (f"the skip's {int(b.shape[1])} x {int(a.shape[1])} projection would add {n:,} "
                    f"parameters, over the bound of {bound:,}; pick a narrower source or pass a larger "
                    "max_new_params")
        return None

    def check(self, graph: Graph, site: SkipSite) -> str | None:
        why = super().check(graph, site)
        if why is not None:
            return why
        a, b = self._resolve(graph, site)
        return self.size_reason(a, b, self.bound(graph))

    def _pair_fits(self, graph: Graph, a: Value, b: Value, target, bound: int) -> bool:
        return self.size_reason(a, b, bound) is None

    def rewrite(self, graph: Graph, site: SkipSite, rng: np.random.Generator) -> PassResult:
        a, b = graph.find_value(site.src), graph.find_value(site.dst)
        cb, ca = int(b.shape[1]), int(a.shape[1])
        p_out, nodes = _path(graph, a, b, cb, np.zeros((cb, ca), np.float32), self.pool)
        add = graph.add_node("Add", [b, p_out], name=graph.auto_node_name("Add"),
                             index=graph.nodes.index(nodes[-1]) + 1)
        graph.replace_all_uses_with(b, add.outputs[0], exclude=[add])
        nodes.append(add)
        return PassResult(graph, True, {"src": a.name, "dst": b.name, "nodes": [n.name for n in nodes],
                                        "pooling": [n.name for n in nodes if "Pool" in n.op_type]})




def _new_params_per_channel(flow: ChannelFlow, ca: int) -> int:
    """Parameters one new channel of a concat skip adds: its row of ``P`` (``C_a`` weights), a zero
    input column in every absorber (``rows * kernel * block``) and one entry per carried element
    in every per-channel array (BatchNorm's four arrays, ...)."""
    cost = ca
    for ab in flow.absorbers:
        w = ab.node.inputs[1].shape
        cost += int(w[0]) * int(np.prod(w[2:], dtype=np.int64)) * ab.block
    cost += sum(pc.block for pc in flow.per_channel if pc.axis is not None)
    return int(cost)


@register_pass
class ConcatSkip(_Skip):
    """``b' = Concat(b, P(a))`` on the channel axis; every consumer of ``b`` gets zero input
    weights for the new channels, found through the channel flow from ``b`` (per-channel arrays on
    the way get neutral values: BatchNorm scale 1, bias 0, mean 0, var 1).

    ``P`` is pooling as in :class:`AddSkip`, then a 1x1 Conv ``C_a -> m`` (from a map into a
    vector: global pooling, Flatten, Gemm) with He-initialised weights (He et al. 2015, eq. 10:
    std ``sqrt(2 / C_a)``), not zeros: the consumers' new weights are zero, so the function is
    kept, and since ``P(a)`` is not zero those weights get a gradient (zeros on both sides would
    never train). Not applicable when ``b`` flows into a residual sum, whose other operand would
    have to grow too, or into a grouped convolution (the new channels would join its last group
    only). Source: NASH section 4.1 (type III, concatenation).

    **Size bound.** The new layer has ``m = min(C_a, C_b)`` channels by default (a skip at most
    doubles ``b``'s width), fewer when the parameters the morph adds, ``m * c`` with ``c`` from
    :func:`_new_params_per_channel`, would exceed ``max_new_params`` (default
    ``max(2**20, params(graph))``: one morph at most doubles the model): then
    ``m = floor(max_new_params / c)``, and the site is not applicable when that is 0. An explicit
    ``channels`` is never reduced: over the bound, the site is not applicable. The bound is checked
    from shapes before any array is made; weights are drawn directly in float32.

    Args:
        pool: ``"avg"`` or ``"max"``.
        channels: new channels ``m``; default ``min(C_a, C_b)`` within the bound.
        init: ``"he"`` (default) or ``"zeros"`` for ``P``'s weights. Zeros are exact too, but
            then ``P`` and the consumers' new weights both start at zero and never get a gradient.
        max_new_params: the most parameters one morph may add; None for the default above.
    """

    name = "concat-skip"
    description = "concatenate conv1x1(pool(a)) to b; b's consumers get zero weights for it"

    def __init__(self, pool: str = "avg", channels: int | None = None, init: str = "he",
                 max_new_params: int | None = None):
        super().__init__(pool, max_new_params)
        if channels is not None and (int(channels) != channels or channels < 1):
            raise PassError(f"concat-skip: channels must be a positive integer, got {channels!r}")
        if init not in ("he", "zeros"):
            raise PassError(f"concat-skip: init must be 'he' or 'zeros', got {init!r}")
        self.channels = None if channels is None else int(channels)
        self.init = init

    def _flow(self, graph: Graph, b: Value) -> ChannelFlow:
        return channel_flow(graph, b, couple=False)

    def _flow_reason(self, b: Value, flow: ChannelFlow) -> str | None:
        if not flow.ok:
            return f"{b.name!r} cannot take new channels: {flow.reason}"
        if flow.groups > 1:
            return (f"{b.name!r} flows into grouped convolutions ({flow.groups} groups); new channels "
                    "would join the last group only, which changes the group sizes")
        return None

    def target_reason(self, graph: Graph, b: Value) -> str | None:
        return self._flow_reason(b, self._flow(graph, b))

    def new_channels(self, graph: Graph, a: Value, b: Value, flow: ChannelFlow,
                     bound: int | None = None) -> tuple[int, int, str | None]:
        """``(m, added parameters, reason)``: the new layer's width under the size bound, what the
        morph adds, and why it is not applicable (None when it is)."""
        ca, cb = int(a.shape[1]), int(b.shape[1])
        per = _new_params_per_channel(flow, ca)
        bound = self.bound(graph) if bound is None else bound
        if self.channels is not None:
            m = self.channels
            if m * per > bound:
                return m, m * per, (f"{m} new channels would add {m * per:,} parameters ({per:,} each), over "
                                    f"the bound of {bound:,}; give fewer channels or a larger max_new_params")
            return m, m * per, None
        m = min(ca, cb, bound // per)
        if m < 1:
            return 0, 0, (f"one new channel from {a.name!r} into {b.name!r} would add {per:,} parameters, "
                          f"over the bound of {bound:,}; pass a larger max_new_params")
        return m, m * per, None

    def check(self, graph: Graph, site: SkipSite) -> str | None:
        r = self._resolve(graph, site)
        if isinstance(r, str):
            return r
        a, b = r
        why = skip_reason(graph, a, b)
        if why is not None:
            return why
        flow = self._flow(graph, b)
        return self._flow_reason(b, flow) or self.new_channels(graph, a, b, flow)[2]

    def _target(self, graph: Graph, b: Value) -> ChannelFlow | None:
        flow = self._flow(graph, b)   # one flow per target, shared by its pairs
        return flow if self._flow_reason(b, flow) is None else None

    def _pair_fits(self, graph: Graph, a: Value, b: Value, flow: ChannelFlow, bound: int) -> bool:
        return self.new_channels(graph, a, b, flow, bound)[2] is None

    def rewrite(self, graph: Graph, site: SkipSite, rng: np.random.Generator) -> PassResult:
        a, b = graph.find_value(site.src), graph.find_value(site.dst)
        ca, cb = int(a.shape[1]), int(b.shape[1])
        m, added, why = self.new_channels(graph, a, b, self._flow(graph, b))
        if why is not None:  # pragma: no cover - apply() ran check() first
            raise PassError(f"concat-skip {site}: {why}")
        # Built with zero new channels first, so that every rewire keeps shapes (graph mutators
        # only rewire between equal shapes); then the channel flow from the concat grows it.
        p_out, nodes = _path(graph, a, b, 0, np.zeros((0, ca), np.float32), self.pool)
        cat = graph.insert_after(b, "Concat", [p_out], {"axis": 1}, name=graph.auto_node_name("Concat"))
        nodes.append(cat)
        flow = channel_flow(graph, cat.outputs[0], couple=False)
        if not flow.ok:  # pragma: no cover - check() ran the same flow from b
            raise PassError(f"concat-skip {site}: {flow.reason}")
        if self.init == "he":   # drawn in float32: no float64 copy of a large layer
            w = rng.standard_normal((m, ca), dtype=np.float32)
            w *= np.float32(np.sqrt(2.0 / ca))
        else:
            w = np.zeros((m, ca), np.float32)
        proj = nodes[-2]  # the 1x1 Conv (or Gemm) of P
        graph.set_const(proj.inputs[1], w.reshape((m, *proj.inputs[1].shape[1:])))
        local_idx = np.concatenate([np.arange(cb), -np.ones(m, dtype=np.int64)])
        local_w = np.concatenate([np.ones(cb), np.zeros(m)])
        remap_channels(graph, flow, local_idx, local_w, producer_rows=False)
        return PassResult(graph, True, {"src": a.name, "dst": b.name, "channels": int(m),
                                        "new_params": int(added), "nodes": [n.name for n in nodes],
                                        "pooling": [n.name for n in nodes if "Pool" in n.op_type]})


__all__ = ["AddSkip", "ConcatSkip", "SkipSite", "parse_skip", "skip_reason", "shape_reason", "SKIP_RANKS",
           "DRAW_TRIES",
           "MIN_NEW_PARAMS", "NEW_PARAMS_SHARE"]
