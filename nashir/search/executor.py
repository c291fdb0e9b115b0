"""Executors: who trains a NASH step's candidates (DESIGN.md section 7).

The candidates of one step are independent, so the driver hands them to an executor as
:class:`Job` objects and consumes :class:`Result` objects as they complete. A job carries a network
as ONNX bytes plus its training configuration and a data set spec (not the data), so it can
travel to another process or machine; the result carries the trained network as ONNX bytes plus
its metrics. The driver alone writes the ledger; executors never touch the run folder.

Interface (every executor)::

    ex.prepare(spec, data)          # make the data set available (in-process: cache the object)
    for job in jobs: ex.submit(job)
    for result in ex.as_completed():   # one Result per submitted job, in completion order
        ...

:class:`InProcessExecutor` trains the jobs one after another, in this process, lazily: a job is
trained when the driver asks for the next result, so each result is recorded before the next
job starts. :class:`nashir.search.ray_executor.RayExecutor` implements the same three methods
with Ray tasks; the worker body is :func:`run_job`, a plain function of a job and a data set.

The torch and ONNX backends are imported inside :func:`run_job` only: importing this module
imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import json
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nashir.errors import NashirError, SearchError, TrainingDiverged

__all__ = [
    "STATUS_OK",
    "STATUS_DIVERGED",
    "STATUS_FAILED",
    "DataSpec",
    "Job",
    "Result",
    "Executor",
    "InProcessExecutor",
    "run_job",
    "make_executor",
    "EXECUTORS",
]

#: Result status: trained and scored.
STATUS_OK = "ok"
#: Result status: the training loss became NaN/inf (:class:`nashir.errors.TrainingDiverged`).
STATUS_DIVERGED = "diverged"
#: Result status: anything else went wrong (the reason says what).
STATUS_FAILED = "failed"


@dataclass(frozen=True)
class DataSpec:
    """Names a data set so that a worker can load it: the arguments of
    :func:`nashir.data.load_dataset`.

    Attributes:
        dataset: ``digits``, ``cifar10``, ``cifar100`` or ``npz:PATH``.
        data_dir: Folder of the CIFAR files, or None.
        seed: Seed of the stratified splits (digits, npz).
        augment: Override of the data set's augmentation flag, or None.
    """

    dataset: str
    data_dir: str | None = None
    seed: int = 0
    augment: bool | None = None

    def key(self) -> str:
        """A canonical string naming this spec (cache key)."""
        return json.dumps([self.dataset, self.data_dir, self.seed, self.augment])

    def load(self):
        """Load the data set (:func:`nashir.data.load_dataset`); raises ``DataError``."""
        from nashir.data import load_dataset

        return load_dataset(self.dataset, data_dir=self.data_dir, seed=self.seed, augment=self.augment)


@dataclass
class Job:
    """One network to train: what travels from the driver to a worker.

    Attributes:
        candidate_id: The ledger id of the candidate (e.g. ``s2-c5``).
        onnx: The network as ONNX model bytes (input NCHW float32, output logits).
        train: Keyword arguments of :class:`nashir.backends.torch.sgdr.TrainConfig` (epochs,
            lr_start, lr_end, momentum, weight_decay, batch_size, sgdr, device, train_split,
            eval_split); ``seed``, ``threads`` and ``progress`` are set by the executor.
        data: The data set to train on.
        seed: Seed of the training run (data order, augmentation, torch RNG); the candidates of
            one NASH step share it (common random numbers).
        reinit: Re-initialise every weight before training
            (:func:`nashir.search.startnet.reinitialize`).
        reinit_seed: Seed of that re-initialisation (None: ``seed``).
        node_meta: Node ``meta`` entries ONNX does not carry, restored after loading, e.g.
            ``{"deeper_bn_3": {"calibrate": "identity"}}`` for Net2Deeper's data-dependent BN init.
        evaluate: Splits scored after training (e.g. ``("test",)``); their accuracy and loss land
            in ``Result.metrics`` as ``<split>_acc`` / ``<split>_loss``.
        graph: The network as a :class:`nashir.ir.Graph`, given instead of (or with) ``onnx`` to an
            executor whose :attr:`Executor.takes_graphs` is True (it trains in the driver's process,
            so the ONNX export and import are skipped); the worker takes ownership (it may change
            node meta). None for executors that ship jobs elsewhere.
    """

    candidate_id: str
    onnx: bytes | None
    train: dict[str, Any]
    data: DataSpec
    seed: int
    reinit: bool = False
    reinit_seed: int | None = None
    node_meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluate: tuple[str, ...] = ()
    graph: Any = None


@dataclass
class Result:
    """What comes back from a worker for one :class:`Job`.

    Attributes:
        candidate_id: The job's candidate id.
        status: :data:`STATUS_OK`, :data:`STATUS_DIVERGED` or :data:`STATUS_FAILED`.
        onnx: The trained network as ONNX bytes (None unless ok).
        val_acc: Validation accuracy in [0, 1] after training (None when the job had no eval
            split or did not finish).
        history: Per-epoch dicts from the trainer (epoch, loss, train_acc, val_acc, lr, seconds).
        seconds: Wall time of the whole job on the worker (load, train, evaluate, serialise), s.
        train_seconds: Wall time of the training epochs (including the per-epoch validation), s; for
            a job that diverged or failed while training, the time spent in the training call.
        eval_seconds: Wall time of the evaluations after training (``Job.evaluate``), s.
        metrics: Extra scores, ``<split>_acc`` and ``<split>_loss`` for each ``Job.evaluate`` split.
        reason: Why the job did not succeed (None when ok).
        worker: Who trained it (``"inprocess"``, a Ray node id...).
    """

    candidate_id: str
    status: str
    onnx: bytes | None = None
    val_acc: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    worker: str | None = None


def run_job(
    job: Job,
    data,
    *,
    threads: int | None = None,
    progress: bool = False,
    device: str | None = None,
    worker: str = "inprocess",
) -> Result:
    """Train one job on ``data`` and return its :class:`Result` (the worker body of every executor).

    Loads the ONNX bytes into the IR, restores ``job.node_meta``, optionally re-initialises,
    trains with :func:`nashir.backends.torch.train` under ``TrainConfig(**job.train, seed=job.seed)``
    and scores ``job.evaluate``. Never raises for a bad network: a non-finite loss gives status
    ``diverged``, any other :class:`Exception` status ``failed`` with the reason.

    Args:
        job: The job.
        data: The :class:`nashir.data.Dataset` of ``job.data``.
        threads: ``torch.set_num_threads`` for the training (None = unchanged).
        progress: Show the trainer's per-epoch tqdm bar.
        device: Overrides ``job.train["device"]`` (a worker that owns one GPU, say).
        worker: Recorded in ``Result.worker``.

    Returns:
        The result.
    """
    t0 = time.perf_counter()
    history: list[dict[str, Any]] = []
    t_train: list[float] = []  # start of the training call, once it began

    def spent_training() -> float:
        return time.perf_counter() - t_train[0] if t_train else 0.0

    def unfinished(status: str, reason: str) -> Result:
        """The result of a job that did not finish training (no model, no accuracy)."""
        return Result(
            job.candidate_id,
            status,
            history=history,
            seconds=time.perf_counter() - t0,
            train_seconds=spent_training(),
            reason=reason,
            worker=worker,
        )

    try:
        import onnx

        from nashir.backends import onnx as nonnx
        from nashir.backends import torch as ntorch
        from nashir.backends.torch.sgdr import TrainConfig

        if job.graph is not None:   # an in-process job: no ONNX round trip
            graph = job.graph
        else:
            graph = nonnx.load(onnx.load_model_from_string(job.onnx))
        for name, meta in job.node_meta.items():
            graph.node(name).meta.update(meta)
        if job.reinit:
            from nashir.search.startnet import reinitialize

            rseed = job.seed if job.reinit_seed is None else job.reinit_seed
            graph = reinitialize(graph, np.random.default_rng(rseed))
        kw = dict(job.train)
        kw["seed"] = int(job.seed)
        kw["threads"] = threads
        kw["progress"] = bool(progress)
        if device is not None:
            kw["device"] = device
        cfg = TrainConfig(**kw)
        t_train.append(time.perf_counter())
        trained, history = ntorch.train(graph, data, cfg)
        train_seconds = float(sum(h.get("seconds") or 0.0 for h in history))
        val_acc = history[-1].get("val_acc") if history else None
        metrics: dict[str, float] = {}
        splits = list(job.evaluate)
        if val_acc is None and cfg.eval_split is not None:
            splits = [cfg.eval_split, *[s for s in splits if s != cfg.eval_split]]
        t_eval = time.perf_counter()
        for split in splits:
            acc, loss = ntorch.evaluate(
                trained, data, split=split, device=cfg.device, precision=cfg.precision
            )
            metrics[f"{split}_acc"] = float(acc)
            metrics[f"{split}_loss"] = float(loss)
        if val_acc is None and cfg.eval_split is not None:
            val_acc = metrics[f"{cfg.eval_split}_acc"]
        eval_seconds = time.perf_counter() - t_eval
        blob = nonnx.model_bytes(trained)
        del trained, graph
        return Result(
            job.candidate_id,
            STATUS_OK,
            onnx=blob,
            val_acc=None if val_acc is None else float(val_acc),
            history=history,
            seconds=time.perf_counter() - t0,
            train_seconds=train_seconds,
            eval_seconds=eval_seconds,
            metrics=metrics,
            worker=worker,
        )
    except TrainingDiverged as e:
        return unfinished(STATUS_DIVERGED, str(e))
    except NashirError as e:
        return unfinished(STATUS_FAILED, f"{type(e).__name__}: {e}")
    except Exception as e:  # a broken network must not stop the search; the reason is recorded
        return unfinished(STATUS_FAILED, traceback.format_exception_only(type(e), e)[-1].strip())


class Executor(ABC):
    """Trains jobs; results come back as they complete. Use as a context manager.

    Subclasses implement :meth:`submit` and :meth:`as_completed` (and :meth:`prepare` and
    :meth:`close` when they hold resources). The driver calls, per step: ``submit`` for every job,
    then iterates ``as_completed()`` to the end, recording each result before asking for the next.
    """

    name = "executor"
    #: Whether jobs may carry the network as :attr:`Job.graph` (the driver then skips the ONNX
    #: export): only for executors that train in the driver's own process.
    takes_graphs = False

    def prepare(self, spec: DataSpec, data=None) -> None:
        """Make the data set ``spec`` available to the workers; ``data`` is the already loaded
        :class:`nashir.data.Dataset` when the driver has it (may be shipped instead of reloaded)."""
        return None

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Queue one job (returns at once)."""

    @abstractmethod
    def as_completed(self) -> Iterator[Result]:
        """Yield one :class:`Result` for each submitted, not yet returned job, in completion order."""

    def run(self, jobs: Iterable[Job]) -> Iterator[Result]:
        """Submit every job, then yield results as they complete."""
        for j in jobs:
            self.submit(j)
        return self.as_completed()

    def close(self) -> None:
        """Release workers and caches."""
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcessExecutor(Executor):
    """Trains jobs one after another in this process (data loaded once and cached).

    Args:
        threads: ``torch.set_num_threads`` during training (None = torch's default).
        progress: Show the trainer's per-epoch progress bar.
        device: Override every job's device (None = the job's own).
    """

    name = "inprocess"
    takes_graphs = True

    def __init__(self, threads: int | None = None, progress: bool = False, device: str | None = None):
        self.threads = threads
        self.progress = progress
        self.device = device
        self._queue: deque[Job] = deque()
        self._data: dict[str, Any] = {}

    def prepare(self, spec: DataSpec, data=None) -> None:
        if data is not None:
            self._data[spec.key()] = data
        elif spec.key() not in self._data:
            self._data[spec.key()] = spec.load()

    def _dataset(self, spec: DataSpec):
        if spec.key() not in self._data:
            self._data[spec.key()] = spec.load()
        return self._data[spec.key()]

    def submit(self, job: Job) -> None:
        self._queue.append(job)

    def as_completed(self) -> Iterator[Result]:
        while self._queue:
            job = self._queue.popleft()
            yield run_job(
                job,
                self._dataset(job.data),
                threads=self.threads,
                progress=self.progress,
                device=self.device,
                worker=self.name,
            )

    def close(self) -> None:
        self._queue.clear()
        self._data.clear()


#: Executor names accepted by :func:`make_executor`.
EXECUTORS = ("inprocess", "ray")


def make_executor(name: str = "inprocess", **kw) -> Executor:
    """An executor by name: ``inprocess`` (:class:`InProcessExecutor`) or ``ray``
    (:class:`nashir.search.ray_executor.RayExecutor`, imported only when asked for).

    Raises:
        SearchError: Unknown name; ``ray`` without Ray installed (the message says
            ``pip install 'nashir[ray]'``).
    """
    if name == "inprocess":
        return InProcessExecutor(**kw)
    if name == "ray":
        from nashir.search.ray_executor import RayExecutor

        return RayExecutor(**kw)
    raise SearchError(f"unknown executor {name!r}; expected one of {', '.join(EXECUTORS)}")
