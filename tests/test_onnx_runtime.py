"""run()/make_session(): provider choice (CUDA only when really active), inputs, sources."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from nashir import GraphBuilder
from nashir.backends.onnx import make_session, model_bytes, run, to_onnx
from nashir.backends.onnx import runtime as rt
from nashir.errors import BackendError, ImportErrorONNX


def _graph():
    b = GraphBuilder("r", input_shape=(3, 4, 4))
    return b.build(b.relu(b.input))


class _FakeSession:
    """Stands in for InferenceSession: records the providers asked for, reports ``active``."""

    made: list = []

    def __init__(self, src, so, providers, active):
        self.asked = list(providers)
        self._active = active(self.asked)
        _FakeSession.made.append(self.asked)

    def get_providers(self):
        return self._active


def _patch(monkeypatch, available, active):
    _FakeSession.made = []
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(available))
    monkeypatch.setattr(
        ort, "InferenceSession", lambda src, so, providers: _FakeSession(src, so, providers, active)
    )


def test_cuda_kept_when_active(monkeypatch):
    _patch(monkeypatch, [rt._CUDA, rt._CPU], lambda asked: asked)
    s = make_session(_graph())
    assert s.asked == [rt._CUDA, rt._CPU] and _FakeSession.made == [[rt._CUDA, rt._CPU]]


def test_cuda_offered_but_not_active_falls_back_to_cpu(monkeypatch):
    _patch(monkeypatch, [rt._CUDA, rt._CPU], lambda asked: [rt._CPU])  # e.g. no driver / no device
    s = make_session(_graph())
    assert s.asked == [rt._CPU] and _FakeSession.made == [[rt._CUDA, rt._CPU], [rt._CPU]]


def test_cpu_only_build(monkeypatch):
    _patch(monkeypatch, [rt._CPU], lambda asked: asked)
    assert make_session(_graph()).asked == [rt._CPU]


def test_explicit_providers(monkeypatch):
    _patch(monkeypatch, [rt._CUDA, rt._CPU], lambda asked: asked)
    assert make_session(_graph(), providers=[rt._CPU]).asked == [rt._CPU]


def test_real_session_on_this_machine():
    s = make_session(_graph())
    assert s.get_providers()[0] in (rt._CPU, rt._CUDA)
    if rt._CUDA not in ort.get_available_providers():
        assert s.get_providers() == [rt._CPU]


@pytest.mark.parametrize("kind", ["graph", "model", "bytes", "path"])
def test_sources(kind, tmp_path):
    g = _graph()
    x = np.random.default_rng(0).normal(size=(3, 3, 4, 4)).astype(np.float32)
    if kind == "graph":
        src = g
    elif kind == "model":
        src = to_onnx(g)
    elif kind == "bytes":
        src = model_bytes(g)
    else:
        src = tmp_path / "m.onnx"
        src.write_bytes(model_bytes(g))
    (y,) = run(src, x)
    assert np.array_equal(y, np.maximum(x, 0))


def test_bad_sources(tmp_path):
    with pytest.raises(ImportErrorONNX, match="does not exist"):
        run(tmp_path / "missing.onnx", np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(BackendError, match="expected a Graph"):
        run(42, np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(BackendError, match="onnxruntime cannot load"):
        run(b"not a model", np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(BackendError, match="onnxruntime failed to run"):
        run(_graph(), np.zeros((1, 5, 4, 4), np.float32))  # wrong channel count
