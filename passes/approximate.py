"""Approximate network morphisms (``exact = False``): passes that make a network smaller.

NASH's morphisms only grow a network. LEMONADE (Elsken, Metzen & Hutter, "Efficient Multi-Objective
Neural Architecture Search via Lamarckian Evolution", ICLR 2019, arXiv 1804.09081, Sec. 3.1) adds
*approximate* network morphisms that shrink it and keep its function only approximately; a short
training afterwards recovers what they lose. nashir has four, all built on the same IR mutators and
channel-flow analysis (:mod:`nashir.passes.analysis`) as the exact passes:

``remove-layer``
    Remove a Conv or Gemm whose input and output shapes agree, together with the BatchNormalization
    and activation that follow it when only it reads them (a Conv-BN-ReLU block, such as the ones
    ``net2deeper`` inserts), or an identity-like node (Identity, Dropout). Its consumers read the
    block's input instead.
``remove-skip``
    Drop one operand of a residual sum ``y = b + s`` (the operand whose exclusive branch has fewer
    parameters: the identity shortcut of a ResNet block, the projection of an ``add-skip``), or the
    projection input of a channel concatenation ``Concat(b, P(a))`` (a ``concat-skip``): the
    projection loses all its channels through the channel flow, so every consumer's input columns
    and per-channel arrays for them go too.
``prune-filters``
    Remove a fraction of a producer's output channels, those of smallest L1 norm (Li, Kadav,
    Durdanovic, Samet & Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017, arXiv 1608.08710,
    Sec. 3.1: ``s_j = sum |F_j|`` over the filter's kernel weights); the channel flow carries the
    change to every per-channel array (BatchNorm, depthwise kernels), every absorber's input columns
    (Conv OIHW axis 1, Gemm ``W[out, in]`` axis 1, whole ``H*W`` blocks after a Flatten) and every
    producer coupled through a residual sum, as Net2Wider does when it grows them.
``separable-conv``
    Replace a Conv (group 1, OIHW ``W`` of shape ``(O, I, k...)``) by a depthwise Conv ``D`` of shape
    ``(I, 1, k...)`` with the same strides, pads and dilations, then a pointwise 1x1 Conv ``P`` of
    shape ``(O, I, 1...)`` with the original bias (Howard et al., "MobileNets", arXiv 1704.04861,
    Sec. 3.1). The pair computes ``W'[o, i] = P[o, i] * D[i]``; for each input channel ``i`` the
    best such factor in the Frobenius norm is the rank-1 truncated SVD of the ``O x K`` matrix
    ``W[:, i]`` (Eckart & Young 1936): ``D[i] = sqrt(s_1) v_1``, ``P[:, i] = sqrt(s_1) u_1``.

**The error is measured, not assumed.** Every approximate pass runs the graph before and after the
rewrite on the same batch of random inputs (:func:`~nashir.passes.preservation.check_preservation`:
standard-normal NCHW float32, batch :data:`MEASURE_BATCH`, seed :data:`MEASURE_SEED`, inference
mode, onnxruntime) and reports in ``info["error"]``: ``max_abs`` (``max |y_after - y_before|``),
``max_rel`` (``max_abs / max |y_before|``), the float32 ``tolerance`` of an exact morph and
``within_tolerance``. ``info`` also gives the parameters and MACs before and after.
"""

from __future__ import annotations

import math

import numpy as np

from nashir.errors import GraphError, NashirError, NotApplicable, PassError
from nashir.ir import Graph, Node, Value

from .analysis import ChannelFlow, channel_flow
from .base import Pass, PassResult, as_rng, register_pass
from .net2wider import NodeSite, remap_channels

#: Batch and seed of the random inputs the approximate passes measure their error on.
MEASURE_BATCH = 8
MEASURE_SEED = 0

#: Activations that ``remove-layer`` removes with the Conv/Gemm (and BatchNorm) before them.
BLOCK_ACTIVATIONS = ("Relu", "LeakyRelu", "Elu", "Clip", "PRelu")
#: Nodes that compute (close to) the identity in inference and are a layer on their own.
IDENTITY_LIKE = ("Identity", "Dropout")


def measure_error(before: Graph, after: Graph, n: int = MEASURE_BATCH, seed: int = MEASURE_SEED) -> dict:
    """The preservation error a rewrite caused, measured on random inputs with onnxruntime.

    Args:
        before, after: the graphs (unchanged); one data input each, NCHW float32.
        n: batch of the standard-normal random inputs (made smaller when it would not fit
            :data:`~nashir.passes.preservation.MAX_CHECK_BYTES`).
        seed: their seed.

    Returns:
        ``{"max_abs", "max_rel", "tolerance", "within_tolerance", "runtime", "batch", "seed"}``
        (JSON-serialisable). ``max_abs`` is ``max |y_after - y_before|`` over every output element,
        ``max_rel`` that over ``max |y_before|``, ``tolerance`` is ``1e-4 * max(1, max |y_before|)``
        (:func:`~nashir.passes.preservation.check_preservation`). When the error cannot be measured (a
        symbolic non-batch input dimension, a model too large for the check) or is not finite, the
        numbers are None and ``note`` says why.
    """
    from .preservation import check_preservation

    out = {"runtime": "onnxruntime", "batch": int(n), "seed": int(seed)}
    try:
        rep = check_preservation(before, after, n=n, seed=seed, runtimes=["onnxruntime"])
    except NashirError as e:
        return {**out, "max_abs": None, "max_rel": None, "tolerance": None, "within_tolerance": None,
                "note": f"not measured: {e}"}
    if not (math.isfinite(rep.max_abs) and math.isfinite(rep.max_rel)):
        return {**out, "max_abs": None, "max_rel": None, "tolerance": float(rep.tolerance),
                "within_tolerance": False, "note": "the outputs differ in shape or are not finite"}
    return {**out, "max_abs": float(rep.max_abs), "max_rel": float(rep.max_rel),
            "tolerance": float(rep.tolerance), "within_tolerance": bool(rep.ok)}


class ApproximatePass(Pass):
    """Base of the approximate morphisms: :meth:`apply` checks the site, rewrites in place and
    reports the sizes and the measured error (:func:`measure_error`) in ``info``.

    Args:
        measure: measure the error (True, the default; it runs the graph twice in onnxruntime on a
            clone kept for the purpose). False leaves ``info["error"]`` out.

    ``info`` gets ``params_before``, ``params_after``, ``macs_before``, ``macs_after`` (per sample)
    and ``error`` on top of what the pass reports.
    """

    exact = False

    def __init__(self, measure: bool = True):
        self.measure = bool(measure)

    def sites(self, graph: Graph) -> list[NodeSite]:
        return [NodeSite(nd.name) for nd in list(graph.nodes) if self.check(graph, NodeSite(nd.name)) is None]

    def parse_site(self, graph: Graph, text: str) -> NodeSite:
        return NodeSite(graph.find_node(text).name)

    def _node(self, graph: Graph, site: NodeSite) -> Node | str:
        try:
            return graph.node(site.node)
        except GraphError as e:
            return str(e)

    def apply(self, graph: Graph, site: NodeSite, rng: np.random.Generator | int | None = None) -> PassResult:
        """As :meth:`Pass.apply`, then the sizes and the measured error are added to ``info``.

        Raises:
            NotApplicable: the site does not fit (the graph is unchanged).
        """
        reason = self.check(graph, site)
        if reason is not None:
            raise NotApplicable(f"{self.name} does not apply at {site}: {reason}")
        before = graph.clone() if self.measure else None
        p0, m0 = graph.param_count(), graph.mac_count()
        res = self.rewrite(graph, site, as_rng(rng))
        res.info.update(params_before=int(p0), params_after=int(graph.param_count()), macs_before=int(m0),
                        macs_after=int(graph.mac_count()))
        if before is not None:
            res.info["error"] = measure_error(before, graph)
        return res


def _is_output(graph: Graph, v: Value) -> bool:
    return any(o is v for o in graph.outputs)


def _remove_dead(graph: Graph, values: list[Value]) -> list[str]:
    """Remove the producers of ``values`` that no longer have a use, and upstream what they alone fed.

    Returns:
        The names of the removed nodes, in removal order.
    """
    removed: list[str] = []
    gone: set[int] = set()
    stack = list(values)
    while stack:
        v = stack.pop()
        nd = v.producer
        if nd is None or id(nd) in gone:
            continue
        if any(o.uses or _is_output(graph, o) for o in nd.outputs):
            continue
        ins = [x for x in nd.inputs if x is not None and not x.is_const]
        graph.remove_node(nd)
        gone.add(id(nd))
        removed.append(nd.name)
        stack.extend(ins)
    return removed


# ---------------------------------------------------------------------------------------------- remove-layer


@register_pass
class RemoveLayer(ApproximatePass):
    """Remove a layer whose input and output shapes agree; its consumers read its input.

    The layer is a Conv or Gemm (any kernel, stride 1 in effect since the shapes agree), with the
    BatchNormalization after it and then an activation (:data:`BLOCK_ACTIVATIONS`) when each is the
    only reader of the value before it: a Conv-BN-ReLU block, such as ``net2deeper`` inserts. An
    Identity or Dropout node is a layer on its own (its removal is exact). The site is the head node.
    Approximate: the block's function ``f(x)`` becomes ``x`` (LEMONADE, arXiv 1804.09081, Sec. 3.1,
    layer removal); the error is measured (:func:`measure_error`).

    Not applicable: other ops; a head whose data input is missing or a constant; a block whose input
    shape (``N x C x H x W`` or ``N x F``) differs from its output shape; a block that writes a graph
    output (the model's output name would change).
    """

    name = "remove-layer"
    description = "remove a Conv/Gemm(-BN-ReLU) block whose input and output shapes agree (approximate)"

    def block(self, graph: Graph, nd: Node) -> list[Node]:
        """The nodes removed with head ``nd``: ``[nd]``, then a BatchNormalization that alone reads its
        output, then an activation that alone reads that."""
        chain = [nd]
        if nd.op_type in IDENTITY_LIKE:
            return chain
        for kinds in (("BatchNormalization",), BLOCK_ACTIVATIONS):
            cur = chain[-1].outputs[0]
            if len(cur.uses) != 1 or _is_output(graph, cur):
                break
            u, i = cur.uses[0]
            if i != 0 or u.op_type not in kinds:
                continue
            chain.append(u)
        return chain

    def check(self, graph: Graph, site: NodeSite) -> str | None:
        nd = self._node(graph, site)
        if isinstance(nd, str):
            return nd
        if nd.op_type not in ("Conv", "Gemm", *IDENTITY_LIKE):
            return (f"node {nd.name!r} is a {nd.op_type}; remove-layer removes a Conv or Gemm (with the "
                    "BatchNorm and activation after it) or an Identity/Dropout node")
        x = nd.inputs[0] if nd.inputs else None
        if x is None or x.is_const:
            return f"node {nd.name!r} has no data input to pass on"
        chain = self.block(graph, nd)
        last = chain[-1].outputs[0]
        if _is_output(graph, last):
            return (f"{last.name!r}, the output of the block {[n.name for n in chain]}, is a graph output; "
                    "removing it would change the model's output")
        if tuple(x.shape or ()) != tuple(last.shape or ()):
            return (f"the block {[n.name for n in chain]} maps {x.name!r} {list(x.shape or ())} to "
                    f"{last.name!r} {list(last.shape or ())}; a layer is removed only where its input and "
                    "output shapes agree")
        return None

    def rewrite(self, graph: Graph, site: NodeSite, rng: np.random.Generator) -> PassResult:
        nd = graph.node(site.node)
        x = nd.inputs[0]
        chain = self.block(graph, nd)
        last = chain[-1].outputs[0]
        names = [n.name for n in chain]
        graph.replace_all_uses_with(last, x)
        for n in reversed(chain):
            graph.remove_node(n)
        return PassResult(graph, True, {"node": nd.name, "removed": names, "input": x.name,
                                        "output": last.name})


# ---------------------------------------------------------------------------------------------- remove-skip


def _branch(graph: Graph, node: Node, k: int) -> list[Node]:
    """The nodes that only feed input ``k`` of ``node`` (they die when that input is dropped)."""
    dead: set[int] = set()
    out: list[Node] = []
    pos = graph.nodes.index(node)
    for nd in reversed(graph.nodes[:pos]):
        uses = [(u, i) for o in nd.outputs for u, i in o.uses]
        if not uses or any(_is_output(graph, o) for o in nd.outputs):
            continue
        if all((u is node and i == k) or id(u) in dead for u, i in uses):
            dead.add(id(nd))
            out.append(nd)
    return out[::-1]


def _branch_params(nodes: list[Node]) -> int:
    from nashir.ops import count_params

    return sum(count_params(n) for n in nodes)


@register_pass
class RemoveSkip(ApproximatePass):
    """Remove a skip connection: one operand of a residual sum, or the projection of a concatenation.

    * ``Add`` of two data tensors ``y = u + v``: the operand dropped is the one whose *exclusive
      branch* (the nodes that only feed it) has fewer parameters, then fewer nodes, then the later
      one — the identity shortcut of a ResNet block (no exclusive nodes), the zero projection of an
      ``add-skip``; only an operand whose partner has the sum's shape (no broadcasting) is dropped.
      ``y``'s consumers read the other operand; the exclusive branch is removed.
    * ``Concat`` on the channel axis (axis 1) with an input made by a Conv or Gemm that only the
      concat reads (the projection ``P(a)`` of a ``concat-skip``; the last such input): the
      projection's channels are removed through the channel flow (:func:`remap_channels` with no
      channel kept), so every consumer loses its input columns for them and every per-channel array
      its entries; the concat then reads its other inputs only (and goes away when one is left).

    Approximate (LEMONADE, arXiv 1804.09081, Sec. 3.1, the inverse of NASH's skip morphisms); the
    error is measured. Not applicable: a sum or concat that writes a graph output, an Add with a
    constant (a per-channel op), a concat without such a projection or whose projection's channels
    are coupled through a residual sum or tied to grouped convolutions.
    """

    name = "remove-skip"
    description = ("remove a skip connection: an operand of a residual Add, or a concat's projection "
                   "(approximate)")

    def _add_plan(self, graph: Graph, nd: Node) -> tuple[int, list[Node]] | str:
        ins = nd.inputs
        if len(ins) != 2 or any(v is None or v.is_const for v in ins):
            return (f"node {nd.name!r} adds a constant (a per-channel bias), not two data tensors; it is no "
                    "skip connection")
        out = nd.outputs[0]
        best = None
        for k in (0, 1):
            if tuple(ins[1 - k].shape or ()) != tuple(out.shape or ()):
                continue
            br = _branch(graph, nd, k)
            key = (_branch_params(br), len(br), -k)
            if best is None or key < best[0]:
                best = (key, k, br)
        if best is None:
            return (f"both operands of {nd.name!r} broadcast to its shape {list(out.shape or ())}; dropping "
                    "either would change the shape")
        return best[1], best[2]

    def _concat_plan(self, graph: Graph, nd: Node) -> tuple[int, ChannelFlow] | str:
        if int(nd.attrs.get("axis", 0)) != 1:
            return f"concat {nd.name!r} joins axis {nd.attrs.get('axis')}, not the channel axis 1"
        if len(nd.inputs) < 2:
            return f"concat {nd.name!r} has a single input"
        why = None
        for k in range(len(nd.inputs) - 1, -1, -1):
            v = nd.inputs[k]
            p = v.producer
            if p is None or p.op_type not in ("Conv", "Gemm") or len(v.uses) != 1 or _is_output(graph, v):
                continue
            flow = channel_flow(graph, p)
            if not flow.ok:
                why = f"the channels of projection {p.name!r} cannot be removed: {flow.reason}"
                continue
            if len(flow.producers) != 1 or flow.groups != 1:
                why = (f"the channels of projection {p.name!r} are coupled to "
                       f"{[q.name for q in flow.producers[1:]]} or tied to grouped convolutions")
                continue
            return k, flow
        return why or (f"no input of concat {nd.name!r} is a projection (a Conv or Gemm read only by the "
                       "concat) whose channels could be removed")

    def plan(self, graph: Graph, nd: Node):
        if nd.op_type == "Add":
            return self._add_plan(graph, nd)
        if nd.op_type == "Concat":
            return self._concat_plan(graph, nd)
        return (f"node {nd.name!r} is a {nd.op_type}; remove-skip removes an operand of a residual Add or "
                "a projection input of a Concat")

    def check(self, graph: Graph, site: NodeSite) -> str | None:
        nd = self._node(graph, site)
        if isinstance(nd, str):
            return nd
        if nd.op_type in ("Add", "Concat") and _is_output(graph, nd.outputs[0]):
            return (f"{nd.outputs[0].name!r} is a graph output; removing the skip would rename the model's "
                    "output")
        r = self.plan(graph, nd)
        return r if isinstance(r, str) else None

    def rewrite(self, graph: Graph, site: NodeSite, rng: np.random.Generator) -> PassResult:
        nd = graph.node(site.node)
        plan = self.plan(graph, nd)
        if isinstance(plan, str):  # pragma: no cover - apply() ran check() first
            raise PassError(f"remove-skip at {site}: {plan}")
        k = plan[0]
        dropped = nd.inputs[k]
        info = {"node": nd.name, "op": nd.op_type, "dropped": dropped.name, "input": int(k)}
        if nd.op_type == "Add":
            kept = nd.inputs[1 - k]
            graph.replace_all_uses_with(nd.outputs[0], kept)
            graph.remove_node(nd)
            info["kept"] = kept.name
            info["removed"] = [nd.name, *_remove_dead(graph, [dropped, kept])]
            return PassResult(graph, True, info)
        flow = plan[1]
        proj = dropped.producer
        info["channels"] = int(flow.width)
        remap_channels(graph, flow, np.zeros(0, dtype=np.int64), producer_rows=True)
        rest = [v for i, v in enumerate(nd.inputs) if i != k]
        if len(rest) == 1:
            graph.replace_all_uses_with(nd.outputs[0], rest[0])
            new_name = None
        else:
            new = graph.add_node("Concat", rest, {"axis": 1}, name=graph.unique_node_name(f"{nd.name}_cat"))
            graph.replace_all_uses_with(nd.outputs[0], new.outputs[0])
            new_name = new.name
        graph.remove_node(nd)
        info["kept"] = [v.name for v in rest]
        info["removed"] = [nd.name, *_remove_dead(graph, [dropped])]
        info["projection"] = proj.name
        if new_name is not None:
            info["concat"] = new_name
        return PassResult(graph, True, info)


# ---------------------------------------------------------------------------------------------- prune-filters


def l1_scores(flow: ChannelFlow) -> np.ndarray:
    """Per source channel ``c``, the sum over the producer group of the L1 norm of each producer's row
    ``c`` (Conv OIHW ``W[c]``, Gemm ``W[c, :]``): Li et al. 2017 (arXiv 1608.08710), Sec. 3.1.

    Returns:
        float64 array of length ``flow.width``.
    """
    s = np.zeros(flow.width, dtype=np.float64)
    for p in flow.producers:
        w = np.asarray(p.inputs[1].const, dtype=np.float64)
        s += np.abs(w.reshape(w.shape[0], -1)).sum(axis=1)
    return s


def keep_largest(scores: np.ndarray, keep_per_group: int, groups: int = 1) -> np.ndarray:
    """Indices of the channels kept: in each of ``groups`` equal blocks the ``keep_per_group`` of
    largest score (ties: the lower index), in increasing order."""
    n = len(scores)
    m = n // groups
    out = []
    for g in range(groups):
        loc = scores[g * m:(g + 1) * m]
        order = np.argsort(-loc, kind="stable")[:keep_per_group]
        out.append(g * m + np.sort(order))
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


@register_pass
class PruneFilters(ApproximatePass):
    """Remove a fraction of a producer's output channels (filters), those of smallest L1 norm.

    The producer (a Conv of any group, or a Gemm) and every producer coupled to it through residual
    sums lose the same channels; the channel flow (:func:`~nashir.passes.analysis.channel_flow`)
    carries the change to every per-channel array on the way and to every absorber's input columns,
    the way :class:`~nashir.passes.Net2Wider` carries a widening (:func:`remap_channels` with the
    kept channels as the map). The score of channel ``c`` is ``sum_p sum |W_p[c]|`` over the producer
    group (Li et al., arXiv 1608.08710, Sec. 3.1). With channels tied to grouped convolutions
    (``flow.groups = G``) the same number is removed from each of the ``G`` groups.

    Args:
        fraction: the share of the channels removed, in (0, 1): ``r = max(1, round(m * fraction))``
            of each group's ``m`` channels; with None, a fraction drawn from ``fractions``.
        fractions: the fractions drawn (default 0.25 and 0.5).
        measure: see :class:`ApproximatePass`.

    Raises:
        PassError: a fraction outside (0, 1).

    Not applicable: the flow's own reasons (a graph output, a blocker), and a producer whose groups
    would be left without a channel.
    """

    name = "prune-filters"
    description = "remove the filters of smallest L1 norm from a Conv/Gemm, consumers follow (approximate)"

    def __init__(self, fraction: float | None = None, fractions: tuple[float, ...] = (0.25, 0.5),
                 measure: bool = True):
        super().__init__(measure)
        for f in ([fraction] if fraction is not None else []) + list(fractions):
            if not (isinstance(f, (int, float)) and 0 < f < 1):
                raise PassError(f"prune-filters: a fraction must be a number in (0, 1), got {f!r}")
        if not fractions:
            raise PassError("prune-filters: fractions must name at least one fraction")
        self.fraction = None if fraction is None else float(fraction)
        self.fractions = tuple(float(f) for f in fractions)

    def kept_per_group(self, n: int, groups: int, fraction: float) -> int:
        """Channels each group keeps: ``m - max(1, round(m * fraction))`` of its ``m = n / groups``."""
        m = n // groups
        return m - max(1, int(round(m * fraction)))

    def _flow(self, graph: Graph, site: NodeSite) -> tuple[ChannelFlow | None, str | None]:
        nd = self._node(graph, site)
        if isinstance(nd, str):
            return None, nd
        if nd.op_type not in ("Conv", "Gemm"):
            return None, f"node {nd.name!r} is a {nd.op_type}; only a Conv or Gemm has filters to prune"
        flow = channel_flow(graph, nd)
        if not flow.ok:
            return flow, flow.reason
        least = min([self.fraction] if self.fraction is not None else self.fractions)
        if self.kept_per_group(flow.width, flow.groups, least) < 1:
            per = f" per group ({flow.groups} groups)" if flow.groups > 1 else ""
            return flow, (f"{nd.name!r} has {flow.width // flow.groups} channels{per}; pruning a fraction "
                          f"{least:g} would leave none")
        return flow, None

    def check(self, graph: Graph, site: NodeSite) -> str | None:
        return self._flow(graph, site)[1]

    def sites(self, graph: Graph) -> list[NodeSite]:
        """One site per coupled producer group (as ``net2wider``)."""
        out: list[NodeSite] = []
        seen: set[int] = set()
        for nd in graph.nodes:
            if nd.op_type not in ("Conv", "Gemm") or id(nd) in seen:
                continue
            flow, why = self._flow(graph, NodeSite(nd.name))
            if flow is not None:
                seen.update(id(p) for p in flow.producers)
            if why is None:
                out.append(NodeSite(nd.name))
        return out

    def rewrite(self, graph: Graph, site: NodeSite, rng: np.random.Generator) -> PassResult:
        flow, why = self._flow(graph, site)
        if why is not None:  # pragma: no cover - apply() ran check() first
            raise PassError(f"prune-filters at {site}: {why}")
        f = self.fraction
        if f is None:
            f = self.fractions[int(rng.integers(len(self.fractions)))]
        n, groups = flow.width, flow.groups
        scores = l1_scores(flow)
        keep = keep_largest(scores, self.kept_per_group(n, groups, f), groups)
        removed = sorted(set(range(n)) - {int(c) for c in keep})
        remap_channels(graph, flow, keep, producer_rows=True)
        info = {"node": flow.producers[0].name, "producers": [p.name for p in flow.producers],
                "from": int(n), "to": int(len(keep)), "fraction": float(f), "removed_channels": removed,
                "removed_l1": [float(scores[c]) for c in removed]}
        if groups > 1:
            info["groups"] = int(groups)
        return PassResult(graph, True, info)


# ------------------------------------------------------------------------------------------ separable-conv


def separable_factors(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Depthwise and pointwise weights whose product best approximates a Conv weight.

    Args:
        w: OIHW ``(O, I, k...)`` weight of a group-1 Conv.

    Returns:
        ``(D, P, residual)``: depthwise ``(I, 1, k...)``, pointwise ``(O, I, 1...)`` (dtype of ``w``),
        with ``P[o, i] * D[i]`` the rank-1 truncated SVD of the ``O x K`` matrix ``w[:, i]`` for each
        ``i`` (the best rank-1 approximation in the Frobenius norm, Eckart & Young 1936), and
        ``residual = ||w - w'||_F / ||w||_F`` (0 for a zero weight).
    """
    o, i = w.shape[:2]
    ks = w.shape[2:]
    k = int(np.prod(ks, dtype=np.int64)) if ks else 1
    m = np.asarray(w, dtype=np.float64).reshape(o, i, k).transpose(1, 0, 2)  # (I, O, K)
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    root = np.sqrt(s[:, 0])
    d = root[:, None] * vt[:, 0, :]                         # (I, K)
    p = (root[:, None] * u[:, :, 0]).T                       # (O, I)
    approx = p.T[:, :, None] * d[:, None, :]                 # (I, O, K)
    total = float(np.sqrt((m ** 2).sum()))
    res = float(np.sqrt(((m - approx) ** 2).sum())) / total if total > 0 else 0.0
    return (d.reshape(i, 1, *ks).astype(w.dtype), p.reshape(o, i, *([1] * len(ks))).astype(w.dtype), res)


@register_pass
class SeparableConv(ApproximatePass):
    """Replace a Conv by a depthwise Conv and a pointwise 1x1 Conv (:func:`separable_factors`).

    ``Conv(x, W[O, I, k...], b)`` becomes ``Conv(Conv(x, D[I, 1, k...], group=I), P[O, I, 1...], b)``:
    the depthwise conv keeps the strides, pads and dilations, the pointwise conv has stride 1 and no
    pads, so the output shape is kept. Parameters go from ``O*I*K`` to ``I*K + O*I`` (``K`` the
    kernel's taps), MACs per output position likewise. Exact when every ``W[:, i]`` has rank 1,
    approximate otherwise (LEMONADE, arXiv 1804.09081, Sec. 3.1); the error is measured.

    Not applicable: other ops, a grouped Conv, a 1x1 kernel, a weight that is not a constant, and a
    Conv where the pair would not have fewer parameters (``I*K + O*I >= O*I*K``).
    """

    name = "separable-conv"
    description = "replace a Conv by depthwise + pointwise convs (rank-1 SVD per input channel; approximate)"

    def check(self, graph: Graph, site: NodeSite) -> str | None:
        nd = self._node(graph, site)
        if isinstance(nd, str):
            return nd
        if nd.op_type != "Conv":
            return f"node {nd.name!r} is a {nd.op_type}, not a Conv"
        if int(nd.attrs.get("group", 1)) != 1:
            return (f"Conv {nd.name!r} is grouped (group={nd.attrs.get('group')}); only a group-1 Conv is "
                    "split")
        w = nd.inputs[1]
        if w is None or not w.is_const:
            return f"Conv {nd.name!r} has a weight that is not a constant"
        o, i = int(w.shape[0]), int(w.shape[1])
        k = int(np.prod(w.shape[2:], dtype=np.int64))
        if k <= 1:
            return f"Conv {nd.name!r} has a 1x1 kernel; it is pointwise already"
        if i * k + o * i >= o * i * k:
            return (f"Conv {nd.name!r} ({o} x {i} x {'x'.join(map(str, w.shape[2:]))}) would not get "
                    f"smaller: {i * k + o * i:,} parameters as a separable pair against {o * i * k:,}")
        return None

    def rewrite(self, graph: Graph, site: NodeSite, rng: np.random.Generator) -> PassResult:
        nd = graph.node(site.node)
        x, wv = nd.inputs[0], nd.inputs[1]
        bias = nd.inputs[2] if len(nd.inputs) > 2 else None
        d, p, res = separable_factors(wv.const)
        nsp = wv.const.ndim - 2
        i = int(wv.shape[1])
        dw_name = graph.unique_node_name(f"{nd.name}_dw")
        dwc = graph.add_const(d, graph.unique_value_name(f"{dw_name}.weight"))
        dw = graph.add_node("Conv", [x, dwc], {"kernel_shape": list(nd.attrs["kernel_shape"]),
                                               "strides": list(nd.attrs["strides"]),
                                               "pads": list(nd.attrs["pads"]),
                                               "dilations": list(nd.attrs["dilations"]), "group": i},
                            name=dw_name)
        pw_name = graph.unique_node_name(f"{nd.name}_pw")
        pwc = graph.add_const(p, graph.unique_value_name(f"{pw_name}.weight"))
        pw = graph.add_node("Conv", [dw.outputs[0], pwc, bias],
                            {"kernel_shape": [1] * nsp, "strides": [1] * nsp, "pads": [0] * (2 * nsp),
                             "dilations": [1] * nsp, "group": 1}, name=pw_name)
        graph.replace_all_uses_with(nd.outputs[0], pw.outputs[0])
        graph.remove_node(nd)
        return PassResult(graph, True, {"node": nd.name, "nodes": [dw.name, pw.name],
                                        "kernel": [int(s) for s in wv.shape[2:]], "rank1_residual": res})


#: The approximate passes, in the order ``nashir passes`` lists them.
APPROX_PASSES = ("remove-layer", "remove-skip", "prune-filters", "separable-conv")

__all__ = ["ApproximatePass", "RemoveLayer", "RemoveSkip", "PruneFilters", "SeparableConv", "APPROX_PASSES",
           "measure_error", "separable_factors", "l1_scores", "keep_largest", "MEASURE_BATCH", "MEASURE_SEED",
           "BLOCK_ACTIVATIONS", "IDENTITY_LIKE"]
