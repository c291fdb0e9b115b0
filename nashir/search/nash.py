"""The NASH driver: hill climbing over network morphisms (Elsken, Metzen & Hutter 2018,
arXiv 1711.04528, Sec. 4, Algorithm 1), with a run ledger that makes a run resumable.

Algorithm 1, with the paper's names::

    model_best <- model_0 (pretrained epochs_init epochs)
    for i = 1 .. n_steps:
        for j = 1 .. n_neigh - 1:
            model_j <- ApplyNetMorphs(model_best, n_NM)          # sample_morphisms
            model_j <- SGDR(model_j, epoch_neigh, lr_start, lr_end)
        model_n_neigh <- SGDR(model_best, epoch_neigh, lr_start, lr_end)   # the best, trained further
        model_best <- argmax_j  validation accuracy of model_j      (ties: fewer parameters)
    model_best <- SGDR(model_best, epoch_final, lr_start, lr_end) on train + validation
    return model_best and its test accuracy

``n_neigh = 1`` is the paper's "random networks" baseline (Table 1): each step makes one child by
``n_NM`` random morphisms, trains it, and it replaces the current model whatever its accuracy.

Determinism: every random choice derives from ``config.seed`` through
``numpy.random.SeedSequence([seed, step, index, purpose])`` (purpose 0: the morphisms, 1: the
training run, 2: the start network's initialisation, 3: a child's re-initialisation in the
no-morph baseline), and every candidate is made from the current best *as read back from its ONNX
bytes*, so an uninterrupted run and a run resumed from its ledger do exactly the same computations
(same seed, CPU, same thread count).

Common random numbers: every candidate of one step trains with the same training seed
(``index = 0``), so the same data order and the same augmentation draws: the step compares
architectures, not batch orders. Ties in validation accuracy go to the candidate with fewer
parameters, then to the earlier index (a child before the incumbent).

Symmetry breaking: the search's Net2WiderNet splits the absorbers' weights at random
(``config.widen_split``, default ``random``: a Dirichlet split, exact yet different for each
replica), so that widened filters receive different gradients and do not stay copies.

The final training warms its learning rate up linearly over ``config.final_warmup`` epochs and
is checked afterwards: a final model whose training accuracy or test accuracy falls more than
:data:`COLLAPSE_POINTS` points below the winner's own is flagged (``SearchResult.warnings``, the
ledger's ``final`` entry, the summary), never hidden.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nashir.errors import NashirError, SearchError
from nashir.ir import Graph
from nashir.search.config import SearchConfig, config_diff
from nashir.search.executor import STATUS_OK, DataSpec, Executor, InProcessExecutor, Job, Result
from nashir.search.ledger import (
    LEDGER_NAME,
    MAX_CANDIDATE_BYTES,
    Ledger,
    atomic_write,
    is_run,
    lock_run_dir,
    remove_stale_temp_files,
    stale_temp_files,
    unlock_run_dir,
)
from nashir.search.startnet import check_model_fits, start_network

__all__ = [
    "nash",
    "SearchResult",
    "SearchFailed",
    "candidate_seed",
    "prepare_run_dir",
    "RUN_FILES",
    "FINAL_ID",
    "INIT_ID",
    "candidate_id",
    "final_warnings",
    "search_passes",
    "COLLAPSE_POINTS",
]

INIT_ID = "init"
FINAL_ID = "final"
#: Entries of a run folder that ``--force`` replaces (anything else in the folder is left alone).
RUN_FILES = (
    LEDGER_NAME,
    f"{LEDGER_NAME}-journal",
    "candidates",
    "best.onnx",
    "log.jsonl",
    "summary.txt",
    "report",
)

_PURPOSE_MORPH, _PURPOSE_TRAIN, _PURPOSE_INIT, _PURPOSE_REINIT = 0, 1, 2, 3
#: A final model whose last-epoch training accuracy is more than this many percentage points below
#: the winner's last-epoch training accuracy in its step, or whose test accuracy is more than this
#: many points below the winner's validation accuracy, is flagged as a collapsed final training.
COLLAPSE_POINTS = 5.0
_FINAL_STEP_KEY = 1_000_000


class SearchFailed(SearchError):
    """The search could not go on (the start network or the final training did not train)."""

    exit_code = 1


def candidate_id(step: int, idx: int) -> str:
    """Ledger id of candidate ``idx`` (1-based) of hill-climbing step ``step`` (1-based): ``s2-c5``."""
    return f"s{step}-c{idx}"


def candidate_seed(seed: int, step: int, idx: int, purpose: int) -> int:
    """A 32-bit seed derived from the run seed for one candidate and purpose
    (``numpy.random.SeedSequence([seed, step, idx, purpose])``)."""
    return int(np.random.SeedSequence([int(seed), int(step), int(idx), int(purpose)]).generate_state(1)[0])


@dataclass
class SearchResult:
    """What :func:`nash` returns.

    Attributes:
        best: The final model (after the final training), weights trained.
        best_id: Ledger id of the architecture that won the last step (the parent of ``final``).
        test_acc: Test accuracy of ``best`` in [0, 1] (torch backend).
        test_acc_onnx: Test accuracy of ``best.onnx`` run by onnxruntime (None when not computed).
        val_acc: Validation accuracy of ``best_id`` when it won.
        params: Parameter count of ``best``.
        macs: Multiply-accumulates of ``best`` per image.
        steps: One dict per step (0 = start network): ``step``, ``best``, ``best_val_acc``,
            ``params``, ``macs``, ``morphisms`` (of the winner, that step).
        run_dir: The run folder (None for a temporary one, deleted at the end).
        config: The run's config.
        wall_seconds: Wall time of this call, s.
        job_seconds: Wall time the executor spent on the jobs of this call, s.
        train_seconds: Of that, time in training epochs and evaluations, s.
        trained: Ids of the candidates trained by this call (a resumed run skips finished ones).
        final_history: The final training's per-epoch history (``epoch``, ``loss``,
            ``train_acc``, ``lr``, ``seconds``).
        warnings: Lines that flag a problem with the result (a collapsed final training).
    """

    best: Graph
    best_id: str
    test_acc: float | None
    test_acc_onnx: float | None
    val_acc: float | None
    params: int
    macs: int
    steps: list[dict[str, Any]]
    run_dir: Path | None
    config: SearchConfig
    wall_seconds: float = 0.0
    job_seconds: float = 0.0
    train_seconds: float = 0.0
    trained: list[str] = field(default_factory=list)
    final_history: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary_table(self) -> str:
        """The per-step table (step, best, validation accuracy, parameters, morphisms), the final
        training's curve and any warning, as text."""
        from nashir.search.report import format_summary

        return format_summary(
            self.steps, self.test_acc, self.test_acc_onnx, self.final_history, self.warnings
        )


# ------------------------------------------------------------------------------------- run folder
def prepare_run_dir(run_dir: str | os.PathLike, resume: bool, force: bool) -> str:
    """Decide what to do with ``run_dir`` without changing anything in it.

    Returns:
        ``"create"`` (missing or empty folder), ``"resume"`` (an existing run, ``resume`` given),
        or ``"replace"`` (an existing run, ``force`` given: its nashir files will be replaced).

    Raises:
        SearchError: ``resume`` and ``force`` together; ``resume`` on a folder without a run; a
            run without ``resume``/``force``; a non-empty folder that is not a nashir run (never
            written into, whatever the flags); a path that is a file.
    """
    p = Path(run_dir)
    if resume and force:
        raise SearchError(
            "--resume and --force contradict each other: --resume continues the run in --out, "
            "--force replaces it; give one of them"
        )
    if p.exists() and not p.is_dir():
        raise SearchError(f"--out {p} is a file, not a folder; give a folder for the run")
    stale = stale_temp_files(p) if p.exists() else []
    # a folder holding only the temp file of a ledger whose creation was killed counts as empty (the
    # search that takes it removes the temp file, holding the folder's lock)
    empty = not p.exists() or all(q in stale for q in p.iterdir())
    if empty:
        if resume:
            left = (f"; it holds {', '.join(q.name for q in stale)}, left by a search killed while creating "
                    "its ledger (a new run there removes it)") if stale else ""
            raise SearchError(
                f"--resume: {p} holds no nashir run to resume (no {LEDGER_NAME}){left}; "
                "drop --resume to start a new run there"
            )
        return "create"
    if not is_run(p):
        raise SearchError(
            f"{p} is not a nashir run ({LEDGER_NAME} missing or unreadable) and is not empty; nashir will "
            "not write into it. Choose another --out (a new or empty folder)"
        )
    if resume:
        return "resume"
    if force:
        return "replace"
    raise SearchError(f"run folder {p} exists already; add --resume to continue it, or --force to replace it")


def _clear_run(p: Path) -> None:
    for name in RUN_FILES:
        q = p / name
        if q.is_dir() and not q.is_symlink():
            shutil.rmtree(q)
        elif q.exists() or q.is_symlink():
            q.unlink()


def _lock_run(run_dir: Path):
    """Take an exclusive advisory lock (``flock``) on the run's ledger file, so that two searches
    never write one run. Returns the lock's file descriptor (None where ``fcntl`` is missing).

    Raises:
        SearchError: Another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    fd = os.open(run_dir / LEDGER_NAME, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SearchError(
            f"another nashir search is writing the run in {run_dir} (its ledger is locked); wait for it to "
            "finish or stop it, or choose another --out"
        ) from None
    return fd


def _unlock(fd) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


class _Log:
    """Appends one JSON object per line to ``log.jsonl`` (flushed at every event)."""

    def __init__(self, path: Path | None):
        self._f = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115

    def event(self, event: str, **kw: Any) -> None:
        if self._f is None:
            return
        rec = {"time": round(time.time(), 3), "event": event, **kw}
        self._f.write(json.dumps(rec, sort_keys=True, default=str) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def _rss_mb() -> float | None:
    """Resident set size of this process in MiB (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _node_meta(graph: Graph) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for n in graph.nodes:
        keep = {}
        for k, v in n.meta.items():
            try:
                json.dumps(v)
            except (TypeError, ValueError):
                continue
            keep[k] = v
        if keep:
            out[n.name] = keep
    return out


def _load_bytes(blob: bytes, label: str | None = None) -> Graph:
    """The graph in ONNX bytes; ``label`` (a file of the run folder) is named when they do not import."""
    from nashir.backends.onnx import load

    try:
        return load(bytes(blob))
    except NashirError as e:
        if label is None:
            raise
        raise SearchError(f"{label} does not load as a model ({e}); the run folder is damaged: restore the "
                          "file, or start a new run") from None


def _data_info(data) -> dict[str, Any]:
    return {
        "name": data.name,
        "input_shape": list(data.input_shape),
        "num_classes": int(data.num_classes),
        "n_train": int(len(data.y_train)),
        "n_val": int(len(data.y_val)),
        "n_test": int(len(data.y_test)),
        "augment": bool(data.augment),
        "sha256": data_fingerprint(data),
    }


def data_fingerprint(data) -> str:
    """SHA-256 over every split's images and labels (dtype, shape and bytes), so that ``--resume`` notices
    a data set that changed even when its shapes did not."""
    h = hashlib.sha256()
    for part in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        a = np.ascontiguousarray(getattr(data, part))
        h.update(f"{part}:{a.dtype.str}:{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _ort_accuracy(path: Path, data, batch: int = 1024) -> float:
    """Test accuracy of an ONNX file under onnxruntime, inputs normalised as the trainer does:
    ``(x - mean) / std`` per channel (NCHW)."""
    from nashir.backends.onnx import make_session

    sess = make_session(str(path))
    name = sess.get_inputs()[0].name
    x, y = data.split("test")
    mean = data.mean.reshape(1, -1, 1, 1).astype(np.float32)
    std = data.std.reshape(1, -1, 1, 1).astype(np.float32)
    correct = 0
    for i in range(0, len(y), batch):
        xb = (x[i : i + batch].astype(np.float32) - mean) / std
        logits = sess.run(None, {name: xb})[0]
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    return correct / max(len(y), 1)


# ------------------------------------------------------------------------------------- the driver
def nash(
    model0: Graph | None,
    data,
    config: SearchConfig,
    executor: Executor | None = None,
    run_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = False,
    onnx_check: bool = True,
    echo=None,
) -> SearchResult:
    """Run NASH (Algorithm 1 of arXiv 1711.04528) and return the final model.

    Args:
        model0: The start network (input ``(N, C, H, W)`` of the data, output ``(N, classes)``
            logits). None: :func:`~nashir.search.startnet.start_network` sized to the data (a new
            run), or the start model stored in the run folder (``resume``).
        data: A :class:`nashir.data.Dataset`, or None to load ``config.dataset``.
        config: The settings (:class:`SearchConfig`).
        executor: Who trains the candidates (default :class:`InProcessExecutor` with
            ``config.threads``); it is closed at the end only when created here.
        run_dir: The run folder (ledger, candidates, best.onnx, log). None: a temporary folder,
            deleted at the end (nothing resumable).
        resume: Continue the run in ``run_dir``: finished candidates are not retrained and the
            result is the one an uninterrupted run gives.
        force: Replace the run in ``run_dir`` (only nashir's own files are removed).
        progress: tqdm bars for steps, candidates and epochs.
        onnx_check: Score ``best.onnx`` on the test set with onnxruntime as well.
        echo: Called with one line of text per step (None = silent), e.g. ``tqdm.write``.

    Returns:
        The :class:`SearchResult`.

    Raises:
        SearchError: Run folder refused (see :func:`prepare_run_dir`), a resumed ledger whose config
            differs (the message lists the keys), a start model that does not fit the data or is
            above ``max_params``.
        SearchFailed: The start network or the final training failed (exit code 1).
        DataError: The data set cannot be loaded.
    """
    t_wall = time.perf_counter()
    if not isinstance(config, SearchConfig):
        raise SearchError(f"config must be a SearchConfig, got {type(config).__name__}")
    spec = DataSpec(config.dataset, config.data_dir, seed=config.seed)
    if config.passes is not None:
        from nashir.passes import get_pass

        for name in config.passes:
            try:
                get_pass(name)
            except NashirError as e:
                raise SearchError(f"--passes: {e}") from None
    tmp_holder = None
    if run_dir is None:
        if resume or force:
            raise SearchError("resume/force need a run folder (run_dir)")
        tmp_holder = tempfile.TemporaryDirectory(prefix="nashir-run-")
        run_path = Path(tmp_holder.name)
        action = "create"
    else:
        run_path = Path(run_dir)
        action = prepare_run_dir(run_path, resume, force)  # refuses before anything is loaded
    if data is None:
        data = spec.load()

    from nashir.backends.onnx import model_bytes

    stored_start = run_path / "candidates" / "start.onnx"
    start_blob = None
    if model0 is None and action == "resume" and stored_start.is_file():
        start_blob = _read_start(run_path, stored_start)  # the very bytes of the run (no re-export)
        model0 = _load_bytes(start_blob, f"run folder {run_path}: candidates/start.onnx")
    if model0 is None:
        model0 = start_network(
            data.input_shape,
            data.num_classes,
            config.widths,
            seed=candidate_seed(config.seed, 0, 0, _PURPOSE_INIT),
        )
    check_model_fits(model0, data.input_shape, data.num_classes, what="start model")
    if config.max_params is not None and model0.param_count() > config.max_params:
        raise SearchError(
            f"the start model has {model0.param_count()} parameters, above --max-params "
            f"{config.max_params}; raise --max-params or start from a smaller model"
        )
    if config.max_macs is not None and model0.mac_count() > config.max_macs:
        raise SearchError(
            f"the start model has {model0.mac_count()} MACs per image, above --max-macs "
            f"{config.max_macs}; raise --max-macs or start from a smaller model"
        )
    if start_blob is None:
        start_blob = model_bytes(model0)
    stored_cfg = {
        **config.to_dict(),
        "data": _data_info(data),
        "start_sha256": hashlib.sha256(start_blob).hexdigest(),
    }

    lock = dir_lock = None
    try:
        if tmp_holder is None:
            # the folder's lock is taken before deciding again what to do with it, and held to the end:
            # of two searches on one --out, the second is refused here and writes nothing
            if action == "create":
                run_path.mkdir(parents=True, exist_ok=True)
            dir_lock = lock_run_dir(run_path)
            try:
                again = prepare_run_dir(run_path, resume, force)
            except SearchError as e:
                if action != "create":
                    raise
                raise SearchError(
                    f"another nashir search started a run in {run_path} while this one was getting ready; "
                    f"this one stops and wrote nothing ({e})"
                ) from None
            if again != action:  # pragma: no cover - the folder changed between the two decisions
                raise SearchError(f"run folder {run_path} changed while this search was getting ready; "
                                  "nothing was written: start it again")
        if action in ("resume", "replace"):
            lock = _lock_run(run_path)  # an older nashir locks the ledger file itself
        if action == "resume":
            ledger = Ledger.open(run_path)
            try:
                _check_resumable(ledger, stored_cfg, run_path)   # before anything is written
            except BaseException:
                ledger.close()
                raise
        else:
            remove_stale_temp_files(run_path)   # a killed creation's leftovers: no live creator (locked)
            if action == "replace":
                _clear_run(run_path)
            ledger = Ledger.create(run_path, stored_cfg)
            _unlock(lock)
            lock = _lock_run(run_path)
    except BaseException:
        _unlock(lock)
        unlock_run_dir(dir_lock)
        raise
    own_executor = executor is None
    if executor is None:
        executor = InProcessExecutor(threads=config.threads, progress=progress)
    log = _Log(run_path / "log.jsonl")
    bars: list[Any] = []
    try:
        return _drive(
            model0,
            start_blob,
            data,
            config,
            executor,
            ledger,
            log,
            spec,
            action,
            progress,
            onnx_check,
            echo,
            t_wall,
            None if tmp_holder is not None else run_path,
            bars,
        )
    finally:
        for b in bars:
            with contextlib.suppress(Exception):
                b.close()
        log.close()
        ledger.close()
        _unlock(lock)
        unlock_run_dir(dir_lock)
        if own_executor:
            executor.close()
        if tmp_holder is not None:
            tmp_holder.cleanup()


def _read_start(run_path: Path, path: Path) -> bytes:
    """The run's stored start model, refused unread when oversized and checked against the SHA-256 its
    config records (a swapped or damaged file is named)."""
    size = path.stat().st_size
    if size > MAX_CANDIDATE_BYTES:
        raise SearchError(f"run folder {run_path}: candidates/start.onnx is {size} bytes, too large for a "
                          "model; the run folder is damaged")
    blob = path.read_bytes()
    with Ledger.open(run_path, readonly=True) as led:
        want = led.config.get("start_sha256")
    if want is not None and hashlib.sha256(blob).hexdigest() != want:
        raise SearchError(
            f"run folder {run_path}: candidates/start.onnx is not the start model this run recorded (its "
            "SHA-256 differs from the ledger's); it was replaced or damaged: restore it, or start a new run"
        )
    return blob


def _check_resumable(ledger: Ledger, stored_cfg: dict[str, Any], run_path: Path) -> None:
    """Everything ``--resume`` relies on, checked before it writes anything: the same configuration and
    data (fingerprint), ledger rows that decode, and every trained candidate's file (confined to the run
    folder, hash as recorded)."""
    cfg = ledger.config
    given = dict(stored_cfg)
    old_data = cfg.get("data")
    if isinstance(old_data, dict) and "sha256" not in old_data and isinstance(given.get("data"), dict):
        given["data"] = {k: v for k, v in given["data"].items() if k != "sha256"}   # a run made before it
    diff = config_diff(cfg, given)
    if diff and all(d.startswith("data:") for d in diff) and isinstance(old_data, dict):
        new = given.get("data") or {}
        keys = sorted(k for k in set(old_data) | set(new) if old_data.get(k) != new.get(k))
        what = ("its contents (the SHA-256 fingerprint of the images and labels) differ"
                if keys == ["sha256"] else f"{', '.join(keys)} differ")
        raise SearchError(
            f"--resume: the data set is not the one the run in {run_path} was made with: {what}; resume with "
            "the run's own data, or start a new run (--out)"
        )
    if diff:
        raise SearchError(
            f"--resume: the run in {run_path} was made with another configuration; "
            "differing keys:\n  "
            + "\n  ".join(diff)
            + "\nResume with the run's own settings, or start a new run (--out)"
        )
    rows = ledger.candidates()
    trained = {r["id"] for r in rows if r["status"] == STATUS_OK and r.get("onnx")}
    for s in ledger.steps():
        if s["best"] not in trained:   # the next step would make its children from it
            raise SearchError(
                f"ledger {ledger.path}: step {s['step']}'s best {s['best']!r} is not a trained candidate of "
                "the run; the ledger was edited or damaged: restore it from a copy, or start a new run"
            )
    for key in ("final", "test_acc_onnx"):
        ledger.get_meta(key)
    for r in rows:
        if r["status"] == STATUS_OK and r.get("onnx"):
            ledger.read_candidate_onnx(r["id"])


def _drive(
    model0,
    start_blob,
    data,
    config: SearchConfig,
    executor: Executor,
    ledger: Ledger,
    log: _Log,
    spec: DataSpec,
    action: str,
    progress: bool,
    onnx_check: bool,
    echo,
    t_wall: float,
    run_path: Path | None,
    bars: list,
) -> SearchResult:

    run_dir = ledger.run_dir
    log.event(
        "resume" if action == "resume" else "start",
        config=config.to_dict(),
        pid=os.getpid(),
        rss_mb=_rss_mb(),
    )
    executor.prepare(spec, data)
    start_path = run_dir / "candidates" / "start.onnx"
    if not start_path.is_file():
        start_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(start_path, start_blob)

    stats = {"job": 0.0, "train": 0.0, "trained": []}
    train_kw = config.train_kwargs()

    def record(res: Result) -> None:
        onnx_rel = None
        if res.status == STATUS_OK and res.onnx is not None:
            onnx_rel = ledger.write_candidate_onnx(res.candidate_id, res.onnx)  # file first, then the row
        ledger.finish_candidate(
            res.candidate_id,
            res.status,
            val_acc=res.val_acc,
            test_acc=res.metrics.get("test_acc"),
            train_seconds=res.train_seconds,
            job_seconds=res.seconds,
            history=res.history,
            metrics=res.metrics,
            onnx=onnx_rel,
            reason=res.reason,
        )
        stats["job"] += res.seconds
        stats["train"] += res.train_seconds + res.eval_seconds
        stats["trained"].append(res.candidate_id)
        log.event(
            "candidate",
            id=res.candidate_id,
            status=res.status,
            val_acc=res.val_acc,
            test_acc=res.metrics.get("test_acc"),
            seconds=round(res.seconds, 3),
            train_seconds=round(res.train_seconds, 3),
            reason=res.reason,
            rss_mb=_rss_mb(),
        )

    def read_blob(cid: str) -> bytes:
        return ledger.read_candidate_onnx(cid)   # confined to candidates/, hash checked

    tqdm = None
    if progress:
        from tqdm.auto import tqdm

    # ---- step 0: the start network, pretrained epochs_init epochs
    if not ledger.is_finished(INIT_ID):
        ledger.add_candidate(
            INIT_ID,
            0,
            0,
            "init",
            None,
            [],
            model0.param_count(),
            model0.mac_count(),
            seed=candidate_seed(config.seed, 0, 0, _PURPOSE_TRAIN),
            epochs=config.epochs_init,
        )
        job = Job(
            INIT_ID,
            start_blob,
            {**train_kw, "epochs": config.epochs_init},
            spec,
            seed=candidate_seed(config.seed, 0, 0, _PURPOSE_TRAIN),
            node_meta=_node_meta(model0),
        )
        for res in executor.run([job]):
            record(res)
    init_row = ledger.candidate(INIT_ID)
    if init_row["status"] != STATUS_OK:
        raise SearchFailed(
            f"the start network did not train ({init_row['status']}): {init_row['reason']}; "
            "lower --lr-start or check the start model"
        )
    best_id, best_val = INIT_ID, init_row["val_acc"]
    best_blob = read_blob(INIT_ID)
    if echo is not None:
        echo(f"step 0: start network {init_row['params']} params, val acc {_pct(best_val)}")

    step_bar = None
    if tqdm is not None:
        step_bar = tqdm(total=config.n_steps, desc="NASH steps", unit="step", position=0)
        bars.append(step_bar)
    # ---- hill climbing
    for step in range(1, config.n_steps + 1):
        done = ledger.step(step)
        if done is not None:
            best_id, best_val = done["best"], done["best_val_acc"]
            best_blob = read_blob(best_id)
            if step_bar is not None:
                step_bar.update(1)
            continue
        best_id, best_val, best_blob = _run_step(
            step,
            best_id,
            best_val,
            best_blob,
            config,
            executor,
            ledger,
            spec,
            train_kw,
            record,
            read_blob,
            log,
            tqdm,
            bars,
        )
        row = ledger.candidate(best_id)
        log.event(
            "step",
            step=step,
            best=best_id,
            best_val_acc=best_val,
            params=row["params"],
            macs=row["macs"],
            rss_mb=_rss_mb(),
        )
        if echo is not None:
            echo(f"step {step}: best {best_id} val acc {_pct(best_val)}, {row['params']} params")
        if step_bar is not None:
            step_bar.update(1)
            step_bar.set_postfix(best=best_id, val=_pct(best_val), refresh=False)
    if step_bar is not None:
        step_bar.close()

    # ---- final training on train + validation, then the test set
    if not ledger.is_finished(FINAL_ID):
        g = _load_bytes(best_blob)
        epochs = config.lineage_epochs() if config.retrain_from_scratch else config.epoch_final
        fseed = candidate_seed(config.seed, _FINAL_STEP_KEY, 0, _PURPOSE_TRAIN)
        ledger.add_candidate(
            FINAL_ID,
            config.n_steps + 1,
            0,
            "final",
            best_id,
            [],
            g.param_count(),
            g.mac_count(),
            seed=fseed,
            epochs=epochs,
        )
        job = Job(
            FINAL_ID,
            best_blob,
            {**train_kw, "epochs": epochs, "train_split": "trainval", "eval_split": None,
             "warmup_epochs": config.final_warmup},
            spec,
            seed=fseed,
            reinit=config.retrain_from_scratch,
            evaluate=("test",),
            graph=g if executor.takes_graphs else None,
        )
        if echo is not None:
            echo(f"final: training {best_id} for {epochs} epochs on train+val")
        for res in executor.run([job]):
            record(res)
    frow = ledger.candidate(FINAL_ID)
    if frow["status"] != STATUS_OK:
        raise SearchFailed(
            f"the final training of {best_id} did not finish ({frow['status']}): {frow['reason']}"
        )
    final_blob = read_blob(FINAL_ID)
    best_graph = _load_bytes(final_blob)
    best_path = run_dir / "best.onnx"
    atomic_write(best_path, final_blob)
    test_acc = frow["test_acc"]
    ort_acc = ledger.get_meta("test_acc_onnx")
    if onnx_check and ort_acc is None:
        ort_acc = _ort_accuracy(best_path, data)
        ledger.set_meta("test_acc_onnx", ort_acc)
    steps = step_rows(ledger)
    final_history = list(frow.get("history") or [])
    warnings = final_warnings(ledger.candidate(best_id), frow, config)
    for w in warnings:
        log.event("warning", message=w)
    ledger.set_meta(
        "final",
        {
            "best": best_id,
            "test_acc": test_acc,
            "test_acc_onnx": ort_acc,
            "params": frow["params"],
            "macs": frow["macs"],
            "mean": [float(v) for v in data.mean],
            "std": [float(v) for v in data.std],
            "curve": [_curve_point(h) for h in final_history],
            "warnings": warnings,
        },
    )
    ledger.set_meta("state", "done")
    wall = time.perf_counter() - t_wall
    log.event(
        "final",
        best=best_id,
        test_acc=test_acc,
        test_acc_onnx=ort_acc,
        params=frow["params"],
        wall_seconds=round(wall, 3),
        job_seconds=round(stats["job"], 3),
        train_seconds=round(stats["train"], 3),
        rss_mb=_rss_mb(),
    )
    from nashir.search.report import format_summary

    summary = format_summary(steps, test_acc, ort_acc, final_history, warnings)
    atomic_write(run_dir / "summary.txt", (summary + "\n").encode())
    return SearchResult(
        best=best_graph,
        best_id=best_id,
        test_acc=test_acc,
        test_acc_onnx=ort_acc,
        val_acc=steps[-1]["best_val_acc"] if steps else None,
        params=int(frow["params"]),
        macs=int(frow["macs"]),
        steps=steps,
        run_dir=run_path,
        config=config,
        wall_seconds=wall,
        job_seconds=stats["job"],
        train_seconds=stats["train"],
        trained=list(stats["trained"]),
        final_history=final_history,
        warnings=warnings,
    )


def _curve_point(h: dict[str, Any]) -> dict[str, Any]:
    return {k: h.get(k) for k in ("epoch", "loss", "train_acc", "lr")}


def final_warnings(winner: dict[str, Any] | None, final: dict[str, Any], config: SearchConfig) -> list[str]:
    """Flags for a final training that wrecked the winner (an empty list when it did not).

    Two checks, each against :data:`COLLAPSE_POINTS` percentage points: the final training's
    last-epoch training accuracy against the winner's last-epoch training accuracy in its step
    (both on augmented batches of the training data), and the final model's test accuracy against
    the winner's validation accuracy. With ``retrain_from_scratch`` only the second applies (the
    final model does not continue from the winner).

    Args:
        winner: The ledger row of the winning candidate (``history``, ``val_acc``, ``id``).
        final: The ledger row of the final candidate (``history``, ``test_acc``).
        config: The run's config.

    Returns:
        Human-readable lines, each naming the two accuracies.
    """
    out: list[str] = []
    if winner is None:
        return out
    fh = final.get("history") or []
    wh = winner.get("history") or []
    if not config.retrain_from_scratch and fh and wh:
        a_w, a_f = wh[-1].get("train_acc"), fh[-1].get("train_acc")
        if a_w is not None and a_f is not None and 100 * (a_w - a_f) > COLLAPSE_POINTS:
            out.append(
                f"final training collapsed: its last-epoch training accuracy {100 * a_f:.2f}% is "
                f"{100 * (a_w - a_f):.1f} points below {winner['id']}'s {100 * a_w:.2f}%; the final model is "
                "worse than the architecture that won. Try a longer --final-warmup or a lower --lr-start"
            )
    t, v = final.get("test_acc"), winner.get("val_acc")
    if t is not None and v is not None and 100 * (v - t) > COLLAPSE_POINTS:
        out.append(
            f"final model's test accuracy {100 * t:.2f}% is {100 * (v - t):.1f} points below "
            f"{winner['id']}'s validation accuracy {100 * v:.2f}% (a collapsed final training, or a "
            "validation split that does not represent the test set)"
        )
    return out


def search_passes(config: SearchConfig) -> list:
    """The pass objects the search samples from: ``config.passes`` (default
    :data:`nashir.passes.SEARCH_PASSES`), with Net2WiderNet's split set to ``config.widen_split``."""
    from nashir.passes import SEARCH_PASSES, get_pass

    out = []
    for name in config.passes or SEARCH_PASSES:
        out.append(get_pass(name, split=config.widen_split) if name == "net2wider" else get_pass(name))
    return out


def _jsonable(morphisms) -> list:
    """``morphisms`` as the ledger can store them (JSON), whatever a misbehaving pass put in them."""
    try:
        return json.loads(json.dumps(list(morphisms), default=str))
    except (TypeError, ValueError):
        return [{"pass": str(m.get("pass")), "site": str(m.get("site"))} if isinstance(m, dict) else str(m)
                for m in morphisms]


def _run_step(
    step,
    best_id,
    best_val,
    best_blob,
    config: SearchConfig,
    executor: Executor,
    ledger: Ledger,
    spec,
    train_kw,
    record,
    read_blob,
    log,
    tqdm,
    bars,
):
    """One hill-climbing step; returns the new (best_id, best_val, best_blob)."""
    from nashir.backends.onnx import model_bytes
    from nashir.passes import Constraints, sample_morphisms

    random_walk = config.n_neigh == 1
    n_children = 1 if random_walk else config.n_neigh - 1
    constraints = Constraints(max_params=config.max_params, max_macs=config.max_macs)
    passes = search_passes(config)
    # common random numbers: one training seed (data order, augmentation) for the whole step
    tseed = candidate_seed(config.seed, step, 0, _PURPOSE_TRAIN)
    jobs: list[Job] = []
    # the current best as read back from its file, once per step (sample_morphisms leaves it as it
    # is); an executor in this process gets the graphs themselves, others ONNX bytes
    parent = _load_bytes(best_blob)
    graphs = executor.takes_graphs
    for j in range(1, n_children + 1):
        cid = candidate_id(step, j)
        if ledger.is_finished(cid):
            continue
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, step, j, _PURPOSE_MORPH]))
        child, applied, reason, blob = parent, [], None, None
        try:
            child, applied = sample_morphisms(   # the child verifies
                parent, config.n_nm, rng, passes=passes, constraints=constraints
            )
            if not graphs:
                blob = model_bytes(child)
        except Exception as e:  # a misbehaving (plugin) pass, MemoryError included: this child fails
            reason = f"morphing failed: {type(e).__name__}: {e}"
            applied = _jsonable(applied)
        note = getattr(applied, "note", None)
        if reason is None and not applied:
            reason = f"no morphism could be applied ({note or 'none applicable'})"
        kind_args = dict(seed=tseed, epochs=config.epoch_neigh)
        if reason is not None:
            # No child was built when morphing raised or no morphism applied (say every one would
            # break --max-params): ``child`` is then the parent, whose size would be misleading on
            # this row, so the size is left NULL. A morphed child that failed later (verify,
            # export) keeps its own size when it can be computed.
            size: tuple[int | None, int | None] = (None, None)
            if applied:
                try:
                    size = (child.param_count(), child.mac_count())
                except Exception:  # a broken graph: its size is unknown
                    size = (None, None)
            with ledger.transaction():
                ledger.add_candidate(cid, step, j, "child", best_id, list(applied), *size, **kind_args)
                ledger.finish_candidate(cid, "failed", reason=reason)
            log.event("candidate", id=cid, status="failed", reason=reason)
            continue
        if note:
            log.event("morphisms", id=cid, note=note)
        ledger.add_candidate(
            cid, step, j, "child", best_id, list(applied), child.param_count(), child.mac_count(), **kind_args
        )
        jobs.append(
            Job(
                cid,
                blob,
                {**train_kw, "epochs": config.epoch_neigh},
                spec,
                seed=tseed,
                reinit=not config.morph,
                reinit_seed=candidate_seed(config.seed, step, j, _PURPOSE_REINIT),
                node_meta=_node_meta(child),
                graph=child if graphs else None,
            )
        )
        del child
    if not random_walk:
        j = config.n_neigh
        cid = candidate_id(step, j)
        if not ledger.is_finished(cid):
            row = ledger.candidate(best_id)
            ledger.add_candidate(
                cid,
                step,
                j,
                "incumbent",
                best_id,
                [],
                row["params"],
                row["macs"],
                seed=tseed,
                epochs=config.epoch_neigh,
            )
            jobs.append(Job(cid, best_blob, {**train_kw, "epochs": config.epoch_neigh}, spec, seed=tseed,
                            graph=parent.clone() if graphs else None))
    bar = None
    if tqdm is not None and jobs:
        bar = tqdm(total=len(jobs), desc=f"step {step} neighbours", unit="net", position=1, leave=False)
        bars.append(bar)
    for res in executor.run(jobs):
        record(res)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(last=res.candidate_id, val=_pct(res.val_acc), refresh=False)
    if bar is not None:
        bar.close()
        bars.remove(bar)

    rows = ledger.candidates(step=step)
    ok = [r for r in rows if r["status"] == STATUS_OK and r["val_acc"] is not None]
    if random_walk:
        winner = ok[0] if ok else None  # the one child replaces the model whatever its accuracy
    else:
        winner = max(ok, key=lambda r: (r["val_acc"], -r["params"], -r["idx"])) if ok else None
    if winner is None:
        log.event("warning", step=step, message="no candidate of this step trained; the best is kept")
        new_id, new_val = best_id, best_val
    else:
        new_id, new_val = winner["id"], winner["val_acc"]
    ledger.finish_step(step, new_id, new_val)
    return new_id, new_val, (best_blob if new_id == best_id else read_blob(new_id))


def step_rows(ledger: Ledger) -> list[dict[str, Any]]:
    """Step 0 (the start network, once trained) and every finished step with its winner's size and
    morphisms: the rows of :attr:`SearchResult.steps`, the summary table and the report."""
    out = []
    init = ledger.candidate(INIT_ID)
    if init is not None and init["status"] == "ok":
        out.append({"step": 0, "best": INIT_ID, "best_val_acc": init["val_acc"], "params": init["params"],
                    "macs": init["macs"], "morphisms": []})
    for s in ledger.steps():
        row = ledger.candidate(s["best"]) or {}
        out.append({"step": s["step"], "best": s["best"], "best_val_acc": s["best_val_acc"],
                    "params": row.get("params"), "macs": row.get("macs"),
                    "morphisms": row.get("morphisms") if row.get("step") == s["step"] else []})
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"
