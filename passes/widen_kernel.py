"""WidenKernel: grow a Conv's kernel from ``kH x kW`` to ``(kH+2) x (kW+2)`` exactly (per axis, up to a
maximum).

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
    """Zero-pad a Conv's kernel by one tap on each side of every spatial axis that stays within
    ``max_kernel`` (``k -> k + 2`` there; an axis already at the maximum is kept, so a 1x7 kernel
    becomes 3x7) and grow its pads by one dilation step on each side of those axes, so every
    output reads the same inputs with the same weights. Stride, dilation and group are kept;
    asymmetric pads stay asymmetric. Kernels of 1, 2 or 3 spatial axes (Conv1d, Conv2d, Conv3d).
    Source: Wei et al. 2016 (arXiv 1603.01670), section 3.4.

    Args:
        max_kernel: an axis grows only when its size stays at most this after widening (default
            7); a Conv none of whose axes can grow is not a site, and ``check`` refuses it.

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

    def grow(self, kernel) -> list[int]:
        """Taps added on each side of each axis: 1 where ``k + 2 <= max_kernel``, else 0."""
        return [1 if int(k) + 2 <= self.max_kernel else 0 for k in kernel]

    def check(self, graph: Graph, site: NodeSite) -> str | None:
        try:
            nd = graph.node(site.node)
        except GraphError as e:
            return str(e)
        if nd.op_type != "Conv":
            return f"node {nd.name!r} is a {nd.op_type}, not a Conv"
        w = nd.inputs[1].const
        if not 1 <= w.ndim - 2 <= 3:
            return f"Conv {nd.name!r} has a {w.ndim - 2}-D kernel; kernels of 1 to 3 spatial axes are widened"
        if not any(self.grow(w.shape[2:])):
            return (f"Conv {nd.name!r} has kernel {list(w.shape[2:])}; widening any axis would exceed "
                    f"max_kernel={self.max_kernel}")
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
        nsp = len(old_k)
        by = self.grow(old_k)
        dil = list(nd.attrs["dilations"])
        pads = list(nd.attrs["pads"])
        new_pads = [p + by[i % nsp] * dil[i % nsp] for i, p in enumerate(pads)]
        new_k = [k + 2 * b for k, b in zip(old_k, by)]
        old_w = wv.const
        old_attrs = dict(nd.attrs)
        graph.set_const(wv, pad_kernel(old_w, by))
        nd.attrs = {**nd.attrs, "kernel_shape": new_k, "pads": new_pads}
        try:
            graph.infer_shapes()
        except Exception as e:  # pragma: no cover - pads grow with the kernel, so shapes are kept
            graph.set_const(wv, old_w)
            nd.attrs = old_attrs
            raise PassError(f"widen-kernel at {nd.name!r}: shapes no longer infer: {e}") from e
        return PassResult(graph, True, {"node": nd.name, "from": old_k, "to": new_k, "pads": new_pads})


__all__ = ["WidenKernel"]
