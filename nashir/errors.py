"""The error hierarchy: every error nashir raises on purpose derives from :class:`NashirError`.

A message names the thing (file, node, value, flag), says what was expected, and what to do.
The CLI prints the message without a traceback and exits 2 for bad input, 1 otherwise.
"""

from __future__ import annotations


class NashirError(Exception):
    """Root of all nashir errors. ``exit_code`` is what the CLI exits with (2: bad input)."""

    exit_code = 2


class GraphError(NashirError):
    """A graph mutation or query was asked something the graph cannot do (unknown value, bad rewire)."""


class OpError(GraphError):
    """A node does not fit its op's schema: arity, attributes or parameter shapes."""


class ShapeError(GraphError):
    """Shape inference failed: input shapes that do not fit the op."""


class VerifyError(GraphError):
    """``Graph.verify()`` found broken invariants. ``problems`` lists each one (node and fix)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        head = f"graph failed verification ({len(self.problems)} problem(s)):"
        super().__init__("\n  - ".join([head, *self.problems]))


class ImportErrorONNX(NashirError):
    """An ONNX model could not be read into the IR (bad file, unsupported ops, unresolved shapes)."""


class UnsupportedOpError(ImportErrorONNX):
    """The model uses ops the IR does not support. ``ops`` maps op type -> list of node names."""

    def __init__(self, ops: dict[str, list[str]], where: str = "model"):
        self.ops = {k: list(v) for k, v in ops.items()}
        lines = [f"{op}: {', '.join(names)}" for op, names in sorted(self.ops.items())]
        super().__init__(
            f"{where} uses op(s) nashir does not support (nothing was written):\n  "
            + "\n  ".join(lines)
            + "\nSupported ops are listed by `nashir.ops.supported_ops()`; convert or remove these nodes "
            "first."
        )


class PassError(NashirError):
    """A morphism pass failed, or left a graph that does not verify; names the pass and those before it."""


class NotApplicable(PassError):
    """A pass does not apply at the asked site; the message is the analysis' reason."""


class BackendError(NashirError):
    """A backend (torch, onnxruntime) could not lower or run a graph."""

    exit_code = 1


class DataError(NashirError):
    """A data set could not be found or read, or does not fit the model."""


class TrainingDiverged(NashirError):
    """Training produced a non-finite loss. ``epoch`` and ``step`` say where (0-based)."""

    exit_code = 1

    def __init__(self, message: str, epoch: int | None = None, step: int | None = None):
        self.epoch = epoch
        self.step = step
        super().__init__(message)


class SearchError(NashirError):
    """The search was configured inconsistently, or its run folder cannot be used."""
