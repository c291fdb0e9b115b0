"""Run a graph (or an ONNX file or model) through onnxruntime: :func:`run`.

The CUDA execution provider is used when onnxruntime offers it *and* the session really runs on it
(``session.get_providers()`` lists it first); otherwise the CPU provider. onnxruntime is imported
here, lazily, so that ``import nashir`` does not load it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from nashir.errors import BackendError, NashirError
from nashir.ir import Graph

_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"


def default_providers() -> list[str]:
    """``[CUDA, CPU]`` when this onnxruntime build offers CUDA, else ``[CPU]``."""
    import onnxruntime as ort

    avail = ort.get_available_providers()
    return [_CUDA, _CPU] if _CUDA in avail else [_CPU]


def _source(model):
    """(what to give InferenceSession, a label for messages)."""
    if isinstance(model, Graph):
        from nashir.backends.onnx.exporter import model_bytes

        return model_bytes(model), f"graph {model.name!r}"
    if isinstance(model, (bytes, bytearray)):
        return bytes(model), "model bytes"
    if isinstance(model, (str, os.PathLike)):
        p = os.fspath(model)
        if not os.path.isfile(p):
            from nashir.errors import ImportErrorONNX

            raise ImportErrorONNX(f"model file {p!r} does not exist; check the path")
        return p, f"file {p!r}"
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString(), f"model {model.graph.name!r}"
    raise BackendError(
        f"run: expected a Graph, an onnx.ModelProto, bytes or a path, got {type(model).__name__}"
    )


def make_session(model, providers: Sequence[str] | None = None):
    """An ``onnxruntime.InferenceSession`` for a Graph, an ``onnx.ModelProto``, bytes or a path.

    With ``providers=None`` CUDA is tried when offered and kept only if the session really runs on
    it (first in ``get_providers()``); else the session is a CPU one.

    Raises:
        BackendError: onnxruntime refuses the model (the message is onnxruntime's).
        ImportErrorONNX: a path that does not exist.
    """
    import onnxruntime as ort

    src, label = _source(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        if providers is not None:
            return ort.InferenceSession(src, so, providers=list(providers))
        provs = default_providers()
        sess = ort.InferenceSession(src, so, providers=provs)
        if _CUDA in provs and sess.get_providers()[:1] != [_CUDA]:
            sess = ort.InferenceSession(src, so, providers=[_CPU])
        return sess
    except NashirError:
        raise
    except Exception as e:  # onnxruntime raises its own exception types
        raise BackendError(f"onnxruntime cannot load {label}: {e}") from None


def run(model, inputs, providers: Sequence[str] | None = None) -> list[np.ndarray]:
    """Run ``model`` on ``inputs`` with onnxruntime (inference mode).

    Args:
        model: a :class:`~nashir.ir.Graph`, an ``onnx.ModelProto``, serialized bytes, or a path
            to an ``.onnx`` file (external data is resolved next to it).
        inputs: one array for the single data input (NCHW float32, any batch size), or a dict
            ``input name -> array``. Float arrays are cast to the input's element type.
        providers: onnxruntime execution providers; default CUDA when available and really active
            (checked with ``session.get_providers()``), else CPU.

    Returns:
        The outputs as numpy arrays, in the graph's output order.

    Raises:
        BackendError: onnxruntime cannot load or run the model, or ``inputs`` do not name the
            model's inputs (the message lists them).
    """
    sess = make_session(model, providers)
    names = [i.name for i in sess.get_inputs()]
    types = {i.name: i.type for i in sess.get_inputs()}
    if isinstance(inputs, Mapping):
        feed = dict(inputs)
        missing = [n for n in names if n not in feed]
        extra = [n for n in feed if n not in names]
        if missing or extra:
            raise BackendError(
                f"run: inputs {sorted(feed)} do not match the model's inputs {names}"
                + (f" (missing {missing})" if missing else "")
                + (f" (unknown {extra})" if extra else "")
            )
    else:
        if len(names) != 1:
            raise BackendError(
                f"run: the model has {len(names)} inputs {names}; pass a dict name -> array"
            )
        feed = {names[0]: inputs}
    for k, v in list(feed.items()):
        a = np.asarray(v)
        if types[k] == "tensor(float)" and a.dtype != np.float32:
            a = a.astype(np.float32)
        feed[k] = a
    try:
        return list(sess.run(None, feed))
    except Exception as e:
        raise BackendError(f"onnxruntime failed to run the model: {e}") from None
