"""nashir: NASH (Elsken, Metzen & Hutter 2018, arXiv 1711.04528) as a graph-IR toolkit.

Networks live in a framework-neutral graph IR (:class:`Graph`, ONNX op semantics, NCHW, numpy
weights); network morphisms are rewrite passes (:mod:`nashir.passes`); backends lower the IR to
PyTorch and to ONNX (:mod:`nashir.backends`). ``import nashir`` imports neither torch nor
onnxruntime.
"""

from __future__ import annotations

from nashir.builder import GraphBuilder
from nashir.errors import (
    BackendError,
    DataError,
    GraphError,
    NashirError,
    NotApplicable,
    OpError,
    PassError,
    SearchError,
    ShapeError,
    TrainingDiverged,
    UnsupportedOpError,
    VerifyError,
)
from nashir.ir import Graph, Node, Value

__version__ = "0.1.0"


def load(model, input_shape=None) -> Graph:
    """Read an ONNX model (path or ``onnx.ModelProto``) into the IR.

    See :func:`nashir.backends.onnx.from_onnx`.
    """
    from nashir.backends.onnx import load as _load

    return _load(model, input_shape=input_shape)


def save(graph: Graph, path, opset: int | None = None, **kw) -> None:
    """Write ``graph`` as ONNX, atomically; see :func:`nashir.backends.onnx.save`."""
    from nashir.backends.onnx import save as _save

    _save(graph, path, opset=opset, **kw)


def check_preservation(before: Graph, after: Graph, inputs=None, n: int = 8, seed: int = 0, **kw):
    """Run both graphs on the same random inputs.

    See :func:`nashir.passes.preservation.check_preservation`.
    """
    from nashir.passes.preservation import check_preservation as _cp

    return _cp(before, after, inputs=inputs, n=n, seed=seed, **kw)


__all__ = [
    "Graph", "Node", "Value", "GraphBuilder", "load", "save", "check_preservation",
    "NashirError", "GraphError", "OpError", "ShapeError", "VerifyError", "UnsupportedOpError", "PassError",
    "NotApplicable", "BackendError", "DataError", "TrainingDiverged", "SearchError", "__version__",
]
