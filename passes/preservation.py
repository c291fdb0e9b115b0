"""Function preservation is checked, never assumed (DESIGN.md section 5).

:func:`check_preservation` runs two graphs on the same random inputs in inference mode, with
onnxruntime (:func:`nashir.backends.onnx.run`) and, when installed, the torch backend
(:func:`nashir.backends.torch.to_torch`), and reports the largest difference of their outputs.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from nashir.errors import BackendError, NashirError
from nashir.ir import Graph

log = logging.getLogger("nashir.passes")

#: float32 tolerance factor: ``max|delta| <= RTOL * max(1, max|y|)``.
RTOL = 1e-4

RUNTIMES = ("onnxruntime", "torch")

#: Memory cap, in bytes, of a check on random inputs: the inputs and every activation of the larger graph
#: for the whole batch. A batch that does not fit is made smaller; when one sample does not fit, the check
#: is refused (:class:`CheckTooLarge`).
MAX_CHECK_BYTES = 1 << 30


class CheckTooLarge(NashirError):
    """A preservation check on random inputs would need more memory than :data:`MAX_CHECK_BYTES`."""


def _per_sample_bytes(graph: Graph) -> int:
    """Bytes of the inputs and every node output of ``graph`` for one sample (batch axis dropped)."""
    total = 0
    for k, v in enumerate([*graph.inputs, *(o for nd in graph.nodes for o in nd.outputs)]):
        dims = [int(d) for d in (v.shape or ())[1:] if not isinstance(d, str)]
        item = np.dtype(v.dtype if v.dtype.startswith("float") else np.float32).itemsize
        # random inputs are drawn in float64 and then cast: 8 more bytes per input value
        total += math.prod(dims) * (item + (8 if k < len(graph.inputs) else 0))
    return total


def check_batch(graphs: Sequence[Graph], n: int) -> int:
    """The batch (at most ``n``) whose check on random inputs fits :data:`MAX_CHECK_BYTES`.

    Raises:
        CheckTooLarge: not even one sample fits; the message gives the estimate and the cap.
    """
    per = max(_per_sample_bytes(g) for g in graphs)
    fits = MAX_CHECK_BYTES // per if per else n
    if fits < 1:
        g = max(graphs, key=_per_sample_bytes)
        shapes = [list(v.shape) for v in g.inputs]
        raise CheckTooLarge(
            f"checking preservation of graph {g.name!r} (input shape(s) {shapes}) needs about "
            f"{per / 2**30:.1f} GiB for a single sample, above the cap of {MAX_CHECK_BYTES / 2**30:.1f} GiB "
            "(nashir.passes.preservation.MAX_CHECK_BYTES); skip the check (morph without --check) or check a "
            "smaller version of the model"
        )
    return int(min(n, fits))


@dataclass
class PreservationReport:
    """The outcome of :func:`check_preservation` (worst over the runtimes that ran).

    Attributes:
        max_abs: ``max |y_after - y_before|`` over every output element (inf when the outputs
            differ in number or shape, or are not finite).
        max_rel: ``max_abs / max|y_before|`` (relative to the outputs' scale).
        ok: ``max_abs <= tolerance`` in every runtime.
        tolerance: ``RTOL * max(1, max|y_before|)`` (float32: ``RTOL = 1e-4``).
        runtime: the runtimes that ran, e.g. ``"onnxruntime, torch"``.
        details: per runtime ``{"max_abs", "max_rel", "ok", "tolerance"}``, or ``{"error": ...}``
            for a runtime that was tried automatically and failed.
    """

    max_abs: float
    max_rel: float
    ok: bool
    tolerance: float
    runtime: str
    details: dict = field(default_factory=dict)

    def __str__(self) -> str:
        verdict = "preserved" if self.ok else "NOT preserved"
        return (f"{verdict}: max |diff| = {self.max_abs:.3g} (relative {self.max_rel:.3g}, tolerance "
                f"{self.tolerance:.3g}) [{self.runtime}]")


def random_inputs(graph: Graph, n: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs for every data input of ``graph``, batch ``n``.

    Raises:
        BackendError: an input has a symbolic dimension other than the batch (axis 0).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for v in graph.inputs:
        shape = []
        for i, d in enumerate(v.shape):
            if isinstance(d, (int, np.integer)):
                shape.append(int(d))
            elif i == 0:
                shape.append(int(n))
            else:
                raise BackendError(
                    f"input {v.name!r} has a symbolic dimension {d!r} at axis {i}; pass inputs= explicitly"
                )
        dtype = v.dtype if v.dtype.startswith("float") else np.float32
        out[v.name] = rng.standard_normal(shape).astype(dtype)
    return out


def _feeds(before: Graph, after: Graph, inputs, n: int, seed: int) -> tuple[dict, dict]:
    if inputs is None:
        fb = random_inputs(before, check_batch([before, after], n), seed)
    elif isinstance(inputs, Mapping):
        fb = {k: np.asarray(v) for k, v in inputs.items()}
    elif isinstance(inputs, np.ndarray) or not isinstance(inputs, Sequence):
        fb = {before.inputs[0].name: np.asarray(inputs)}
    else:
        fb = {v.name: np.asarray(x) for v, x in zip(before.inputs, inputs)}
    if [v.name for v in before.inputs] == [v.name for v in after.inputs]:
        return fb, fb
    if len(before.inputs) != len(after.inputs):
        raise BackendError(
            f"the graphs have different inputs: {[v.name for v in before.inputs]} vs "
            f"{[v.name for v in after.inputs]}"
        )
    fa = {va.name: fb[vb.name] for vb, va in zip(before.inputs, after.inputs)}
    return fb, fa


def _run_onnx(graph: Graph, feed: dict) -> list[np.ndarray]:
    from nashir.backends.onnx import run

    return [np.asarray(y) for y in run(graph, feed)]


def _run_torch(graph: Graph, feed: dict) -> list[np.ndarray]:
    import torch

    from nashir.backends.torch import to_torch

    mod = to_torch(graph)
    mod.eval()
    args = [torch.from_numpy(np.ascontiguousarray(feed[v.name])) for v in graph.inputs]
    with torch.no_grad():
        y = mod(*args)
    ys = list(y) if isinstance(y, (tuple, list)) else [y]
    return [t.detach().cpu().numpy() for t in ys]


def compare_outputs(yb: list[np.ndarray], ya: list[np.ndarray], rtol: float = RTOL) -> dict:
    """``{"max_abs", "max_rel", "ok", "tolerance"}`` for two lists of outputs (see
    :class:`PreservationReport`)."""
    ymax = max((float(np.max(np.abs(y))) if y.size else 0.0) for y in yb) if yb else 0.0
    tol = rtol * max(1.0, ymax)
    if len(yb) != len(ya) or any(a.shape != b.shape for a, b in zip(ya, yb)):
        return {"max_abs": float("inf"), "max_rel": float("inf"), "ok": False, "tolerance": tol,
                "note": f"output shapes differ: {[b.shape for b in yb]} vs {[a.shape for a in ya]}"}
    diffs = [np.abs(a.astype(np.float64) - b.astype(np.float64)) for a, b in zip(ya, yb)]
    max_abs = max((float(d.max()) if d.size else 0.0) for d in diffs) if diffs else 0.0
    if not np.isfinite(max_abs) or not all(np.isfinite(y).all() for y in ya):
        max_abs = float("inf")
    max_rel = max_abs / ymax if ymax > 0 else (0.0 if max_abs == 0 else float("inf"))
    return {"max_abs": max_abs, "max_rel": max_rel, "ok": bool(max_abs <= tol), "tolerance": tol}


def check_preservation(before: Graph, after: Graph, inputs=None, n: int = 8, seed: int = 0,
                       runtimes: Sequence[str] | None = None, rtol: float = RTOL) -> PreservationReport:
    """Run ``before`` and ``after`` on the same inputs and compare their outputs.

    Args:
        before, after: the graphs (unchanged); outputs are compared in order.
        inputs: None (random standard-normal NCHW float32, batch ``n``, from ``seed``), one array
            for a single-input graph, a list of arrays in input order, or a dict name -> array.
        n: batch size of random inputs; made smaller when the check would need more memory than
            :data:`MAX_CHECK_BYTES`.
        seed: seed of random inputs.
        runtimes: ``"onnxruntime"`` and/or ``"torch"``; default onnxruntime, plus torch when it is
            installed (a torch failure is then recorded in ``details`` instead of raised).
        rtol: tolerance factor; the check passes when ``max|delta| <= rtol * max(1, max|y|)``.

    Returns:
        A :class:`PreservationReport` (the worst over the runtimes).

    Raises:
        BackendError: a runtime named in ``runtimes`` cannot run a graph; unknown runtime names.
        CheckTooLarge: random inputs of even one sample would pass :data:`MAX_CHECK_BYTES`.
    """
    auto = runtimes is None
    if auto:
        runtimes = ["onnxruntime"] + (["torch"] if importlib.util.find_spec("torch") is not None else [])
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise BackendError(f"check_preservation: runtimes must be among {RUNTIMES}, got {list(runtimes)}")
    fb, fa = _feeds(before, after, inputs, n, seed)
    details: dict = {}
    for rt in runtimes:
        fn = _run_onnx if rt == "onnxruntime" else _run_torch
        try:
            details[rt] = compare_outputs(fn(before, fb), fn(after, fa), rtol)
        except (NashirError, ImportError, RuntimeError) as e:
            if not auto or rt == "onnxruntime":
                raise
            details[rt] = {"error": f"{type(e).__name__}: {e}"}
            log.warning("check_preservation: the %s runtime failed: %s", rt, e)
    ran = {k: d for k, d in details.items() if "error" not in d}
    worst = max(ran.values(), key=lambda d: d["max_abs"])
    return PreservationReport(
        max_abs=worst["max_abs"], max_rel=worst["max_rel"], ok=all(d["ok"] for d in ran.values()),
        tolerance=worst["tolerance"], runtime=", ".join(ran), details=details,
    )


__all__ = ["check_preservation", "PreservationReport", "random_inputs", "compare_outputs", "RTOL",
           "MAX_CHECK_BYTES", "CheckTooLarge", "check_batch"]
