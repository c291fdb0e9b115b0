"""ONNX in and out (DESIGN.md section 4).

* :func:`to_onnx` / :func:`save` / :func:`model_bytes`: IR -> ONNX opset 17, IR version 8 (loaded
  by onnxruntime 1.13 and later), weights as initializers not listed as inputs, symbolic batch
  dimension, written atomically.
* :func:`from_onnx` / :func:`load`: ONNX (opsets 7 to the newest the installed ``onnx`` defines,
  IR version 3 and up) -> IR, normalising constant subgraphs, every Flatten form, Gemm/MatMul+Add,
  ``auto_pad``, Dropout, Sum, BatchNormalization and Softmax of every opset.
* :func:`run`: onnxruntime inference on a graph, a model or a file (CUDA when really active).

``onnx`` is imported by this package; ``onnxruntime`` only when :func:`run` is called.
"""

from __future__ import annotations

from nashir.backends.onnx.exporter import (
    EXPORT_IR_VERSION,
    EXPORT_OPSET,
    ExportError,
    model_bytes,
    save,
    to_onnx,
)
from nashir.backends.onnx.runtime import make_session, run


def from_onnx(model, input_shape=None, base_dir=None):
    """Read an ``onnx.ModelProto`` into the IR; see :func:`.importer.from_onnx`."""
    from nashir.backends.onnx.importer import from_onnx as _f

    return _f(model, input_shape=input_shape, base_dir=base_dir)


def load(path_or_model, input_shape=None):
    """Read an ONNX file or ``onnx.ModelProto`` into the IR; see :func:`.importer.load`."""
    from nashir.backends.onnx.importer import load as _l

    return _l(path_or_model, input_shape=input_shape)


__all__ = [
    "to_onnx", "from_onnx", "load", "save", "model_bytes", "run", "make_session",
    "EXPORT_OPSET", "EXPORT_IR_VERSION", "ExportError",
]
