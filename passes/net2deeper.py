"""Net2Deeper: insert an identity layer (Conv k x k or Gemm, BatchNorm, ReLU) after a value.

Source: Chen, Goodfellow & Shlens, "Net2Net" (arXiv 1511.05641), section 2.3 (Net2DeeperNet);
NASH (Elsken, Metzen & Hutter 2017, arXiv 1711.04528) section 4.1, network morphism type I, with
the Conv-BatchNorm-ReLU block and data-dependent BatchNorm initialisation; DESIGN.md section 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nashir.errors import GraphError, PassError
from nashir.ir import Graph, Value

from .analysis import is_nonneg, layer_outputs, new_params_bound, nonneg_values, resolve_value
from .base import Pass, PassResult, Site, register_pass
from .transforms import identity_batchnorm, identity_conv_weight


@dataclass(frozen=True)
class ValueSite(Site):
    """A site at one data value, by name (``str`` is the name)."""

    value: str

    def __str__(self) -> str:
        return self.value


def deepen_reason(graph: Graph, v: Value) -> str | None:
    """Why a layer cannot be inserted after ``v`` (None when it can)."""
    if v.is_const:
        return f"{v.name!r} is a constant (a weight), not a data tensor"
    if v.producer is None:
        return f"{v.name!r} is a graph input; deepen after a layer's output"
    if any(o is v for o in graph.outputs):
        return f"{v.name!r} is a graph output; inserting after it would rename the model's output"
    if not v.uses:
        return f"{v.name!r} has no consumers; a layer after it would change nothing"
    if v.dtype != "float32":
        return f"{v.name!r} has dtype {v.dtype}, not float32"
    shape = v.shape or ()
    if len(shape) not in (2, 3, 4, 5):
        return (f"{v.name!r} has rank {len(shape)}; a Conv needs N x C x L, N x C x H x W or "
                "N x C x D x H x W and a Gemm N x F")
    if not isinstance(shape[1], (int, np.integer)):
        return f"{v.name!r} has no known channel count (shape {list(shape)})"
    return None


@register_pass
class Net2Deeper(Pass):
    """Insert an identity layer after a value: ``Conv(k x k) -> BatchNorm -> Relu`` (NASH's block).

    For an NCHW value (or N x C x L, N x C x D x H x W: a Conv1d/Conv3d of the same form): a Conv
    with ``C`` in and out channels, kernel ``k`` odd, stride 1, pads
    ``(k-1)//2``, no bias, weight 1 at the centre tap of channel ``i -> i``
    (:func:`~nashir.passes.transforms.identity_conv_weight`). For a flat value ``N x F``: a Gemm
    with the identity ``W[F, F]`` and zero bias. Then a BatchNormalization that is the identity in
    inference (mean 0, var 1, scale ``sqrt(1+eps)``, bias 0) and is marked
    ``meta["calibrate"] = "identity"``, so the trainer sets its statistics from its first batch
    and it stays the identity in training mode too (NASH's data-dependent init). A Relu follows only
    when the value is known non-negative (:func:`~nashir.passes.analysis.is_nonneg`), where it is
    the identity (Net2Net section 2.3).

    Args:
        kernel: the kernel size (odd); None draws from ``kernels`` (NASH section 5.1: {3, 5}).
        kernels: the sizes drawn when ``kernel`` is None.
        batchnorm: insert the BatchNormalization.
        relu: ``"auto"`` (when known non-negative), ``"never"``, or ``"required"`` (not applicable
            unless known non-negative).
        eps: BatchNorm epsilon.
        max_new_params: the most parameters the inserted layer may add (:meth:`new_params`, from
            shapes, before anything is made); default ``max(2**20, params(graph))``
            (:func:`~nashir.passes.analysis.new_params_bound`). The kernel is drawn among those
            within it; a value where even the smallest is over is not a site.

    Raises:
        PassError: an even or non-positive kernel, or an unknown ``relu`` mode.
    """

    name = "net2deeper"
    exact = True
    description = "insert an identity Conv-BN-ReLU (or Gemm) layer after a value (Net2DeeperNet)"

    def __init__(self, kernel: int | None = None, kernels: tuple[int, ...] = (3, 5), batchnorm: bool = True,
                 relu: str = "auto", eps: float = 1e-5, max_new_params: int | None = None):
        for k in ([kernel] if kernel is not None else []) + list(kernels):
            if int(k) != k or k < 1 or k % 2 == 0:
                raise PassError(
                    f"net2deeper: kernel sizes must be odd positive integers (1, 3, 5, ...), got {k!r}")
        if relu not in ("auto", "never", "required"):
            raise PassError(f"net2deeper: relu must be 'auto', 'never' or 'required', got {relu!r}")
        self.kernel = None if kernel is None else int(kernel)
        self.kernels = tuple(int(k) for k in kernels)
        self.batchnorm = batchnorm
        self.relu = relu
        self.eps = float(eps)
        if max_new_params is not None and (int(max_new_params) != max_new_params or max_new_params < 1):
            raise PassError(f"net2deeper: max_new_params must be a positive integer, got {max_new_params!r}")
        self.max_new_params = None if max_new_params is None else int(max_new_params)

    def new_params(self, v: Value, kernel: int | None = None) -> int:
        """Parameters the inserted layer adds after ``v`` with kernel ``kernel`` (default: the
        configured one, else the smallest it may draw): ``C^2 k^s`` (Conv, ``s`` spatial axes) or
        ``F^2 + F`` (Gemm with bias), plus 4 per channel for the BatchNormalization."""
        c = int(v.shape[1])
        k = kernel or self.kernel or min(self.kernels)
        core = c * c * k ** (len(v.shape) - 2) if len(v.shape) > 2 else c * c + c
        return core + (4 * c if self.batchnorm else 0)

    def kernels_within(self, graph: Graph, v: Value, bound: int | None = None) -> list[int]:
        """The kernels this pass may use after ``v`` within the size bound (the draw is among them)."""
        bound = new_params_bound(graph, self.max_new_params) if bound is None else bound
        ks = [self.kernel] if self.kernel is not None else list(self.kernels)
        return [k for k in ks if self.new_params(v, k) <= bound]

    def _size_reason(self, graph: Graph, v: Value, bound: int | None = None) -> str | None:
        bound = new_params_bound(graph, self.max_new_params) if bound is None else bound
        n = self.new_params(v)
        if n > bound:
            return (f"an identity layer after {v.name!r} ({int(v.shape[1])} channels) would add {n:,} "
                    f"parameters, over the bound of {bound:,}; deepen after a narrower value or pass a "
                    "larger max_new_params")
        return None

    def check(self, graph: Graph, site: ValueSite) -> str | None:
        try:
            v = resolve_value(graph, site.value)
        except GraphError as e:
            return str(e)
        reason = deepen_reason(graph, v)
        if reason is None and self.relu == "required" and not is_nonneg(graph, v):
            return f"{v.name!r} is not known non-negative, so a ReLU after it would not be the identity"
        return reason or self._size_reason(graph, v)

    def sites(self, graph: Graph) -> list[ValueSite]:
        bound = new_params_bound(graph, self.max_new_params)
        nonneg = nonneg_values(graph) if self.relu == "required" else {}
        return [ValueSite(v.name) for v in layer_outputs(graph)
                if deepen_reason(graph, v) is None and (self.relu != "required" or nonneg.get(v.name, False))
                and self._size_reason(graph, v, bound) is None]

    def parse_site(self, graph: Graph, text: str) -> ValueSite:
        return ValueSite(graph.find_value(text).name)

    def rewrite(self, graph: Graph, site: ValueSite, rng: np.random.Generator) -> PassResult:
        v = graph.find_value(site.value)
        c = int(v.shape[1])
        relu = self.relu != "never" and is_nonneg(graph, v)
        added = []
        info: dict = {"after": v.name}
        if len(v.shape) > 2:
            nsp = len(v.shape) - 2
            if self.kernel is not None:
                k = self.kernel
            else:   # drawn among the kernels within the size bound (check() made sure there is one)
                ks = self.kernels_within(graph, v) or list(self.kernels)
                k = ks[int(rng.integers(len(ks)))]
            name = graph.auto_node_name("Conv")
            w = graph.add_const(identity_conv_weight(c, k if nsp == 2 else [k] * nsp), f"{name}.weight")
            p = (k - 1) // 2
            layer = graph.insert_after(v, "Conv", [w], {"kernel_shape": [k] * nsp, "strides": [1] * nsp,
                                                        "pads": [p] * (2 * nsp), "dilations": [1] * nsp,
                                                        "group": 1}, name=name)
            info["kernel"] = int(k)
        else:
            name = graph.auto_node_name("Gemm")
            w = graph.add_const(np.eye(c, dtype=np.float32), f"{name}.weight")
            b = graph.add_const(np.zeros(c, dtype=np.float32), f"{name}.bias")
            layer = graph.insert_after(v, "Gemm", [w, b], {"transB": 1}, name=name)
            info["kernel"] = None
        added.append(layer)
        out = layer.outputs[0]
        if self.batchnorm:
            bn_name = graph.auto_node_name("BatchNormalization")
            arrs = identity_batchnorm(c, self.eps)
            consts = [graph.add_const(a, f"{bn_name}.{s}")
                      for a, s in zip(arrs, ("scale", "bias", "mean", "var"))]
            bn = graph.insert_after(out, "BatchNormalization", consts, {"epsilon": self.eps}, name=bn_name,
                                    meta={"calibrate": "identity"})
            added.append(bn)
            out = bn.outputs[0]
        if relu:
            added.append(graph.insert_after(out, "Relu", name=graph.auto_node_name("Relu")))
        info.update({"nodes": [n.name for n in added], "relu": bool(relu), "channels": c})
        return PassResult(graph, True, info)


__all__ = ["Net2Deeper", "ValueSite", "deepen_reason"]
