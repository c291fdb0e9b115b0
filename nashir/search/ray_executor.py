"""The Ray executor: a NASH step's neighbours trained at once as Ray tasks (DESIGN.md section 7).

Each :class:`~nashir.search.executor.Job` becomes one Ray task that asks for ``cpus_per_trial``
CPUs and ``gpus_per_trial`` GPUs; Ray's scheduler places it on a worker process of any node with
those resources free. What travels: the job (the network as ONNX bytes, its training settings, a
:class:`~nashir.search.executor.DataSpec` naming the data set) to the worker, the
:class:`~nashir.search.executor.Result` (trained network as ONNX bytes plus metrics) back. The data
set itself never travels: a worker process loads it from its spec the first time it needs it and
keeps it in a module-level cache for the tasks it runs after that. A task runs torch on
``threads`` threads (default: its CPUs). The driver (the search process) stays the only writer of
the ledger and of the run folder.

Failures: a task whose worker process dies (killed, out of memory, segfault, node lost) is run
again by Ray once (``max_retries=1``: Ray retries tasks after *system* failures, not after a
Python exception); if the second attempt dies too, the executor returns a ``failed``
:class:`Result` naming the error and the search goes on. :func:`~nashir.search.executor.run_job`
itself never raises for a bad network (diverged and failed results come back as results).

Without an address the executor starts a local Ray instance (dashboard off) on first use and
shuts it down in :meth:`RayExecutor.close`; with ``address="auto"`` or ``"HOST:PORT"`` it joins a
running cluster (``ray start --head``) and leaves it running. On one machine with several GPUs,
``gpus_per_trial=1`` gives one trial per GPU: Ray gives each task its own GPU through
``CUDA_VISIBLE_DEVICES`` and runs a GPU task in a fresh worker process (Ray's default for GPU
tasks, ``max_calls=1``), so a trial always sees exactly the GPU it was given.

Ray is an optional dependency (``pip install 'nashir[ray]'``); this module imports it only inside
functions, so importing :mod:`nashir.search` never imports Ray.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from nashir.errors import NashirError, SearchError
from nashir.search.executor import STATUS_FAILED, DataSpec, Executor, Job, Result, run_job

__all__ = ["RayExecutor", "INSTALL_HINT", "import_ray", "check_device", "worker_dataset"]

#: The command that installs the optional Ray dependency.
INSTALL_HINT = "pip install 'nashir[ray]'"

# Data sets loaded by this worker process, by DataSpec.key() (one load per process and spec).
_DATASETS: dict[str, Any] = {}


def import_ray():
    """Import and return the ``ray`` module.

    Raises:
        SearchError: Ray is not installed; the message says how to install it.
    """
    try:
        import ray
    except ImportError as e:
        raise SearchError(
            f"--executor ray needs the Ray package, which cannot be imported here ({e}). "
            f"Install it with: {INSTALL_HINT}   (or use --executor inprocess)"
        ) from None
    return ray


def check_device(device: str | None, gpus_per_trial: float, what: str = "--device") -> None:
    """Refuse a training device that the trials' resource request cannot serve.

    A Ray trial trains on the GPU Ray gave it when ``gpus_per_trial > 0``, else on the CPU.

    Raises:
        SearchError: ``device`` is ``cuda``/``cuda:N`` with ``gpus_per_trial == 0`` (the trial
            would use a GPU Ray did not reserve for it), or ``cpu`` with ``gpus_per_trial > 0``
            (GPUs reserved and left idle).
    """
    dev = (device or "auto").strip().lower()
    if dev.startswith("cuda") and gpus_per_trial <= 0:
        raise SearchError(
            f"{what} {device} with the Ray executor needs a GPU per trial; give --gpus-per-trial 1 "
            "(each trial then trains on the GPU Ray assigns it), or drop --device"
        )
    if dev == "cpu" and gpus_per_trial > 0:
        raise SearchError(
            f"{what} cpu contradicts --gpus-per-trial {gpus_per_trial:g}: the reserved GPUs would stay "
            "idle; drop one of them"
        )


def worker_dataset(spec: DataSpec):
    """The data set of ``spec``, loaded once per process and cached (by :meth:`DataSpec.key`).

    Raises:
        DataError: The data set cannot be loaded on this machine.
    """
    key = spec.key()
    if key not in _DATASETS:
        _DATASETS[key] = spec.load()
    return _DATASETS[key]


def _task_device(job: Job, gpu_ids: list) -> str:
    """The device a trial trains on: the task's GPU (``cuda``, i.e. the one GPU that Ray's
    ``CUDA_VISIBLE_DEVICES`` leaves visible) when it was given one and the job does not ask for
    the CPU; otherwise the CPU (a task without GPUs must not touch one: Ray leaves
    ``CUDA_VISIBLE_DEVICES`` alone for such tasks)."""
    asked = str(job.train.get("device") or "auto").strip().lower()
    if gpu_ids and asked != "cpu":
        return "cuda"
    return "cpu"


def _ray_task(job: Job, threads: int, job_fn: Callable[..., Result]) -> Result:
    """Body of one Ray task (runs in a Ray worker process): train ``job`` with ``job_fn``
    (:func:`~nashir.search.executor.run_job`) on the worker's cached data set."""
    import ray

    gpu_ids = list(ray.get_gpu_ids())
    node = ray.get_runtime_context().get_node_id() or "?"
    worker = f"ray:{node[:8]}:pid{os.getpid()}" + (f":gpu{','.join(map(str, gpu_ids))}" if gpu_ids else "")
    try:
        data = worker_dataset(job.data)
    except NashirError as e:
        return Result(
            job.candidate_id,
            STATUS_FAILED,
            reason=f"data set {job.data.dataset!r} could not be loaded on Ray node {node[:8]}: {e}",
            worker=worker,
        )
    try:  # the whole task (training and the evaluations after it) on the trial's threads
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # run_job reports the missing backend as the job's failure
        pass
    return job_fn(job, data, threads=threads, device=_task_device(job, gpu_ids), worker=worker)


def _probe(address: str, timeout: float = 5.0) -> None:
    """Refuse a ``HOST:PORT`` address where no TCP server answers within ``timeout`` seconds.
    ``auto`` is first resolved as Ray does (``RAY_ADDRESS``, then the last ``ray start`` on this
    machine); ``local`` and ``ray://`` (Ray client) addresses are left to ``ray.init``.

    Raises:
        SearchError: Nothing listens at the address, or it is not ``HOST:PORT``.
    """
    addr = address.strip()
    shown = address
    if addr == "auto":
        resolved = _resolve_auto()
        if resolved is None:
            return
        addr, shown = resolved, f"auto (= {resolved})"
    if addr == "local" or "://" in addr:
        return
    host, sep, port = addr.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise SearchError(
            f"--ray-address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, the address `ray start "
            "--head` prints) nor auto"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise SearchError(
            f"--ray-address {shown}: no Ray cluster answers there ({type(e).__name__}: {e}). Start the "
            f"head node first (`ray start --head --port {port}`), check the address, or drop --ray-address "
            "to start a local Ray instance"
        ) from None


def _resolve_auto() -> str | None:
    """``HOST:PORT`` that ``ray.init(address="auto")`` would join (None: cannot tell).

    Raises:
        SearchError: No running Ray cluster is known on this machine.
    """
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # private API moved: let ray.init decide
        return None
    try:
        return canonicalize_bootstrap_address("auto")
    except ConnectionError as e:
        raise SearchError(
            f"--ray-address auto: {e} Start one with `ray start --head`, give its HOST:PORT, or drop "
            "--ray-address to start a local Ray instance"
        ) from None
    except Exception:
        return None


def _gist(exc: BaseException, limit: int = 400) -> str:
    """One line of an exception's message: its last line when the message holds a traceback
    (where the real error is), else its first."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[-1] if "Traceback (most recent call last)" in str(exc) else lines[0]
    return line[:limit]


def _check_amount(value, name: str, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SearchError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise SearchError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    if value > 1 and value != int(value):
        # Ray's rule: fractions of a resource below 1 (sharing), whole numbers above
        raise SearchError(f"{name} above 1 must be a whole number (Ray's resource rule), got {value!r}")
    return float(value)


class RayExecutor(Executor):
    """Trains jobs as Ray tasks, several at once, on a local Ray instance or a Ray cluster.

    Args:
        address: ``None`` starts a local Ray instance (dashboard off) when Ray is not yet
            initialised in this process, and shuts it down in :meth:`close` (unless the environment
            variable ``RAY_ADDRESS`` names a cluster: then that one is joined). ``"auto"`` or
            ``"HOST:PORT"`` joins a running cluster (``ray start --head``), which is left running.
            When Ray is already initialised in this process (``ray.init`` called by the user),
            that instance is used and left alone.
        workers: Most trials running at once (None: as many as the resources allow). For a
            local instance it also sizes the instance: ``workers * cpus_per_trial`` CPUs
            (default: every CPU of the machine).
        cpus_per_trial: CPUs each task asks Ray for (``num_cpus``); below 1 shares a CPU.
        gpus_per_trial: GPUs each task asks Ray for (``num_gpus``; 0 = train on the CPU; 1 = one
            trial per GPU; 0.5 = two trials share a GPU).
        threads: ``torch.set_num_threads`` in each trial (default ``max(1, floor(cpus_per_trial))``).
            A search is bitwise repeatable on CPU for a fixed thread count, so the in-process
            executor with the same ``threads`` gives the same ledger.
        max_retries: Extra attempts after the task's worker process died (Ray's ``max_retries``;
            Python exceptions are never retried).
        job_fn: The worker body, ``job_fn(job, data, threads=, device=, worker=) -> Result``
            (default :func:`~nashir.search.executor.run_job`); it must be importable on the
            workers (a module-level function).
        init_kwargs: Extra keyword arguments of ``ray.init`` (e.g. ``{"runtime_env": ...}``).

    Raises:
        SearchError: Ray is not installed (the message says ``pip install 'nashir[ray]'``), or a
            setting is out of range. :meth:`start` raises it when the cluster cannot be reached or
            cannot ever run one trial.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        cpus_per_trial: float = 1,
        gpus_per_trial: float = 0,
        threads: int | None = None,
        max_retries: int = 1,
        job_fn: Callable[..., Result] = run_job,
        init_kwargs: dict[str, Any] | None = None,
    ):
        self._ray = import_ray()
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise SearchError(f"--workers must be an integer >= 1, got {workers!r}")
        self.cpus_per_trial = _check_amount(cpus_per_trial, "--cpus-per-trial", allow_zero=False)
        self.gpus_per_trial = _check_amount(gpus_per_trial, "--gpus-per-trial", allow_zero=True)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise SearchError(f"threads must be an integer >= 1, got {threads!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise SearchError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self.address = address
        self.workers = workers
        self.threads = threads if threads is not None else max(1, math.floor(self.cpus_per_trial))
        self.max_retries = max_retries
        self.job_fn = job_fn
        self.init_kwargs = dict(init_kwargs or {})
        self._owns_ray = False
        self._remote = None
        self._queue: deque[Job] = deque()
        self._running: dict[Any, Job] = {}

    # ------------------------------------------------------------------------------ lifecycle
    @property
    def started(self) -> bool:
        """Whether :meth:`start` has connected this executor to Ray."""
        return self._remote is not None

    def start(self) -> None:
        """Connect to Ray (start the local instance, or join ``address``); idempotent.

        Raises:
            SearchError: The cluster at ``address`` cannot be reached, or no node of a local
                instance has the CPUs/GPUs one trial asks for.
        """
        if self._remote is not None:
            return
        ray = self._ray
        if self.address is None and os.environ.get("RAY_ADDRESS"):
            self.address = os.environ["RAY_ADDRESS"]  # Ray's convention: join the cluster it names
        if not ray.is_initialized():
            kw: dict[str, Any] = {"logging_level": logging.WARNING, **self.init_kwargs}
            if self.address is None:
                ncpu = os.cpu_count() or 1
                if self.workers is not None:
                    ncpu = max(1, math.ceil(self.workers * self.cpus_per_trial))
                kw.setdefault("num_cpus", ncpu)
                kw.setdefault("include_dashboard", False)
            else:
                _probe(self.address)  # ray.init retries an address where nothing answers forever
                kw["address"] = self.address
            try:
                ray.init(**kw)
            except Exception as e:  # ConnectionError, ValueError, RuntimeError... from ray.init
                where = "a local Ray instance" if self.address is None else f"--ray-address {self.address}"
                hint = (
                    "start the cluster first (`ray start --head` on the head node) or drop --ray-address "
                    "to start a local instance"
                    if self.address is not None
                    else "check the Ray installation (`ray --version`)"
                )
                why = f"{type(e).__name__}: {e}"
                cause = e.__cause__ or e.__context__
                if cause is not None:  # ray.init wraps the reason (e.g. an AuthenticationError)
                    why += f" (because {type(cause).__name__}: {_gist(cause)})"
                if "auth" in why.lower():
                    hint = (
                        "the cluster uses token authentication: export RAY_AUTH_MODE=token and make its "
                        "token available (~/.ray/auth_token or RAY_AUTH_TOKEN; `ray get-auth-token` on "
                        "the head prints it)"
                    )
                raise SearchError(f"could not start or join {where}: {why}; {hint}") from None
            self._owns_ray = True
        total = ray.cluster_resources()
        short = []
        for res, flag, want in (
            ("CPU", "--cpus-per-trial", self.cpus_per_trial),
            ("GPU", "--gpus-per-trial", self.gpus_per_trial),
        ):
            have = float(total.get(res, 0.0))
            if have < want:
                short.append(f"{flag} {want:g} (the Ray cluster has {have:g} {res}s in all)")
        if short:
            msg = "no Ray node can run a trial: " + "; ".join(short)
            if self._owns_ray and self.address is None:
                self.close()
                raise SearchError(msg + "; lower the request or join a cluster with --ray-address")
            warnings.warn(msg + "; the trials wait until such a node joins", RuntimeWarning, stacklevel=2)
        self._remote = ray.remote(
            num_cpus=self.cpus_per_trial,
            num_gpus=self.gpus_per_trial,
            max_retries=self.max_retries,
            retry_exceptions=False,
        )(_ray_task)

    def prepare(self, spec: DataSpec, data=None) -> None:
        """Connect to Ray (:meth:`start`). The data set is not shipped: each worker process loads
        ``spec`` itself the first time and caches it."""
        self.start()

    def close(self) -> None:
        """Cancel what is still queued or running; shut the local Ray instance down if this
        executor started it."""
        ray = self._ray
        self._queue.clear()
        if self._running and ray.is_initialized():
            for ref in list(self._running):
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished or gone; nothing to cancel
                    pass
        self._running.clear()
        self._remote = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    # ------------------------------------------------------------------------------ jobs
    def submit(self, job: Job) -> None:
        """Queue one job; it starts as soon as fewer than ``workers`` trials run.

        Raises:
            SearchError: The job's device cannot run under this executor's GPU request
                (:func:`check_device`).
        """
        check_device(job.train.get("device"), self.gpus_per_trial, what=f"job {job.candidate_id}: device")
        self.start()
        self._queue.append(job)
        self._pump()

    def _pump(self) -> None:
        limit = self.workers if self.workers is not None else math.inf
        while self._queue and len(self._running) < limit:
            job = self._queue.popleft()
            self._running[self._remote.remote(job, self.threads, self.job_fn)] = job

    def as_completed(self) -> Iterator[Result]:
        """Yield a :class:`Result` for every submitted job as its task finishes (completion order).
        A task that died ``max_retries + 1`` times, or raised, gives a ``failed`` result with the
        error as reason."""
        ray = self._ray
        while self._queue or self._running:
            self._pump()
            ready, _ = ray.wait(list(self._running), num_returns=1)
            ref = ready[0]
            job = self._running.pop(ref)
            self._pump()  # keep the workers busy while the driver records this result
            yield self._collect(ref, job)

    def _collect(self, ref, job: Job) -> Result:
        ray = self._ray
        exc = ray.exceptions
        try:
            res = ray.get(ref)
        except exc.RayTaskError as e:  # the worker body raised (not retried)
            cause = getattr(e, "cause", None) or e
            return Result(
                job.candidate_id, STATUS_FAILED, reason=f"the Ray task raised {type(cause).__name__}: {cause}"
            )
        except exc.TaskCancelledError:
            return Result(job.candidate_id, STATUS_FAILED, reason="the Ray task was cancelled")
        except exc.RayError as e:  # worker or node died on every attempt, object lost...
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return Result(
                job.candidate_id,
                STATUS_FAILED,
                reason=(
                    f"the Ray worker was lost on every attempt ({self.max_retries + 1} in all) "
                    f"({type(e).__name__}: {first})"
                ),
            )
        if not isinstance(res, Result):
            why = f"the worker returned {type(res).__name__}, not a Result"
            return Result(job.candidate_id, STATUS_FAILED, reason=why)
        return res

    def __repr__(self) -> str:
        return (
            f"RayExecutor(address={self.address!r}, workers={self.workers}, cpus_per_trial="
            f"{self.cpus_per_trial:g}, gpus_per_trial={self.gpus_per_trial:g}, threads={self.threads})"
        )
