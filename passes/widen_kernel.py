"""WidenKernel: grow a Conv's kernel from ``kH x kW`` to ``(kH+2) x (kW+2)`` exactly.

Source: Wei, Wang, Rui & Chen, "Network Morphism" (ICML 2016, arXiv 1603.01670), section 3.4
(kernel size morphing: zero-pad the kernel); DESIGN.md section 5.
"""

from __future__ import annotations

import numpy as np

from nashir.errors import GraphError, PassError
from nashir.ir import Graph

from .base import Pass, PassResult, register_pass
from .net2wider import NodeSite
from .transforms import pad_kernel


@register_pass
class WidenKernel(Pass):
    """Zero-pad a Conv's OIHW kernel by one tap on each side (``k -> k + 2``) and grow its pads by
    one dilation step on each side, so every output reads the same inputs with the same weights.
    Stride, dilation and group are kept; asymmetric pads stay asymmetric.

    Args:
        max_kernel: sites are Convs whose kernel stays at most this size after widening
            (default 7); ``check`` refuses larger ones too.

    Raises:
        PassError: ``max_kernel`` below 3.
    """

    name = "widen-kernel"
    exact = True
    description = "grow a Conv kernel k -> k+2 with zero taps and pads + 1 (Wei et al. 2016)"

    def __init__(self, max_kernel: int = 7):
        if int(max_kernel) != max_kernel or max_kernel < 3:
            raise PassError(f"widen-kernel: max_kernel must be an integer >= 3, got {max_kernel!r}")
        self.max_kernel = int(max_kernel)

    def check(self, graph: Graph, site: NodeSite) -> str | None:
        try:
            nd = graph.node(site.node)
        except GraphError as e:
            return str(e)
        if nd.op_type != "Conv":
            return f"node {nd.name!r} is a {nd.op_type}, not a Conv"
        w = nd.inputs[1].const
        if w.ndim != 4:
            return f"Conv {nd.name!r} has a {w.ndim - 2}-D kernel; only 2-D kernels are widened"
        if max(w.shape[2:]) + 2 > self.max_kernel:
            return (f"Conv {nd.name!r} has kernel {list(w.shape[2:])}; widening would exceed max_kernel="
                    f"{self.max_kernel}")
        return None

    def sites(self, graph: Graph) -> list[NodeSite]:
        return [NodeSite(nd.name) for nd in graph.nodes
                if nd.op_type == "Conv" and self.check(graph, NodeSite(nd.name)) is None]

    def parse_site(self, graph: Graph, text: str) -> NodeSite:
        return NodeSite(graph.find_node(text).name)

    def rewrite(self, graph: Graph, site: NodeSite, rng: np.random.Generator) -> PassResult:
        nd = graph.node(site.node)
        wv = nd.inputs[1]
        if len(wv.uses) > 1:  # a shared kernel: give this node its own copy
            nv = graph.add_const(wv.const.copy(), f"{nd.name}.weight")
            graph.set_input(nd, 1, nv)
            wv = nv
        old_k = list(nd.attrs["kernel_shape"])
        dil = list(nd.attrs["dilations"])
        pads = list(nd.attrs["pads"])
        new_pads = [p + dil[i % 2] for i, p in enumerate(pads)]
        old_w = wv.const
        old_attrs = dict(nd.attrs)
        graph.set_const(wv, pad_kernel(old_w, 1))
        nd.attrs = {**nd.attrs, "kernel_shape": [k + 2 for k in old_k], "pads": new_pads}
        try:
            graph.infer_shapes()
        except Exception as e:  # pragma: no cover - pads grow with the kernel, so shapes are kept
            graph.set_const(wv, old_w)
            nd.attrs = old_attrs
            raise PassError(f"widen-kernel at {nd.name!r}: shapes no longer infer: {e}") from e
        return PassResult(graph, True, {"node": nd.name, "from": old_k, "to": [k + 2 for k in old_k],
                                        "pads": new_pads})


__all__ = ["WidenKernel"]
