"""Multi-objective search: a Pareto front over validation error and cost, grown and shrunk by
network morphisms (after LEMONADE: Elsken, Metzen & Hutter, "Efficient Multi-Objective Neural
Architecture Search via Lamarckian Evolution", ICLR 2019, arXiv 1804.09081, Algorithm 1).

NASH (:mod:`nashir.search.nash`) climbs towards one winner, and since every exact morphism adds
parameters the winner is the largest network that helped. This driver keeps a *population*, the
Pareto front of (validation error, cost) over every network trained so far, with cost the
parameter count or the multiply-accumulates per image (``cost="params" | "macs"``)::

    P <- {model_0 pretrained epochs_init epochs}
    for g = 1 .. n_steps:                                       # generations
        F <- ParetoFront(P)                                     # (validation error, cost), both minimised
        density <- KDE of log10(cost) over F                    # the cheap objective
        for p = 1 .. n_proposals:                               # proposals: cheap, nothing trained
            parent <- draw from F with probability ~ 1 / density(cost(parent))
            child_p <- ApplyNetMorphs(parent, n_NM)             # exact and approximate morphisms
        accept n_children proposals, without replacement, with probability ~ 1 / density(cost(child))
        train each accepted child epoch_neigh epochs with SGDR (inherited weights)
        P <- P + the trained children
    for each point of ParetoFront(P): train epoch_final epochs on train + validation, score on test

**Parent and child sampling (the rule).** LEMONADE draws parents and accepts children with
probability inversely proportional to a kernel density estimate over the cheap objective, so that
sparse regions of the cost axis get more offspring. nashir uses a one-dimensional Gaussian KDE of
``log10(cost)`` over the current front, bandwidth ``h = max(0.05, s * n**(-1/5))`` (Scott's rule,
``s`` the sample standard deviation of the front's log-costs, ``n`` its size; the floor of 0.05
decades keeps a front of one point, or of equal costs, well defined). Weights are ``1 / density``,
normalised; parents are drawn with replacement, children accepted without replacement. The log
scale makes a network twice as large as its neighbour as far from it as one twice as small.

**Front bookkeeping.** Both objectives are minimised; ``a`` dominates ``b`` when it is no worse in
both and better in one (:func:`dominates`). Since dominance is transitive, the front of (old front
+ children) equals the front of every network trained so far, so the population needs no state of
its own: it is recomputed from the ledger (every ``ok`` candidate of the earlier generations), which
makes a run resumable by the same mechanism as NASH. Points with equal objectives are one point
(the earlier candidate stays).

**Approximate children recover by training, without distillation.** A child made by an approximate
morphism (``remove-layer``, ``remove-skip``, ``prune-filters``, ``separable-conv``) starts below its
parent's accuracy by the error the morphism reports; it is trained ``epoch_neigh`` epochs from its
inherited weights like every other child (LEMONADE, Sec. 3.1, recovers approximate morphisms by a
short training as well). nashir does not distil from the parent: the trainer
(:func:`nashir.backends.torch.train`) optimises the cross-entropy on the labels only.

**Common random numbers.** All children of a generation train with one training seed (same data
order and augmentation), and all final trainings with one seed, as in NASH.

The ledger holds the same rows as a NASH run (kinds ``init``, ``child``, ``final``; step = the
generation, ``n_steps + 1`` for the final trainings); its ``steps`` table holds, per generation, the
most accurate point of the front; meta ``front-<g>`` lists the front after generation ``g`` and meta
``front`` the final points. The result is ``front/<id>.onnx``, one file per point (no ``best.onnx``),
and ``front/front.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
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
from nashir.search.config import SearchConfig
from nashir.search.executor import STATUS_OK, DataSpec, Executor, InProcessExecutor, Job, Result
from nashir.search.ledger import (
    Ledger,
    atomic_write,
    lock_run_dir,
    remove_stale_temp_files,
    unlock_run_dir,
)
from nashir.search.nash import (
    _PURPOSE_INIT,
    _PURPOSE_MORPH,
    _PURPOSE_TRAIN,
    INIT_ID,
    RUN_FILES,
    SearchFailed,
    _check_resumable,
    _clear_run,
    _data_info,
    _jsonable,
    _load_bytes,
    _lock_run,
    _Log,
    _node_meta,
    _ort_accuracy,
    _read_start,
    _rss_mb,
    _unlock,
    candidate_id,
    candidate_seed,
    prepare_run_dir,
)
from nashir.search.startnet import check_model_fits, start_network

__all__ = [
    "pareto", "ParetoConfig", "ParetoResult", "COSTS", "PARETO_PASSES", "dominates", "pareto_front",
    "inverse_density_weights", "draw_parents", "accept_children", "kde_bandwidth", "front_points",
    "format_front", "FRONT_DIR", "PARETO_RUN_FILES", "pareto_passes", "final_id",
]

#: The cost objectives: parameter scalars, or multiply-accumulates per image.
COSTS = ("params", "macs")
#: The passes the Pareto search samples from by default: NASH's exact morphisms and the approximate ones.
PARETO_PASSES = ("net2deeper", "net2wider", "add-skip", "concat-skip", "remove-layer", "remove-skip",
                 "prune-filters", "separable-conv")
#: The folder of the result: one ONNX file per point of the final front, and front.json.
FRONT_DIR = "front"
#: What ``--force`` replaces in a Pareto run folder.
PARETO_RUN_FILES = (*RUN_FILES, FRONT_DIR)
#: Smallest KDE bandwidth, in decades of cost (see the module docstring).
MIN_BANDWIDTH = 0.05

_PURPOSE_PARENT, _PURPOSE_ACCEPT = 4, 5
_FINAL_SEED_KEY = 1_000_000


def final_id(cid: str) -> str:
    """Ledger id of the final training of front point ``cid``: ``final-s2-c3``."""
    return f"final-{cid}"


# ------------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class ParetoConfig:
    """Settings of a Pareto run: a :class:`SearchConfig` for everything shared with NASH, plus the
    multi-objective settings.

    The :class:`SearchConfig` fields mean: ``n_steps`` generations, ``n_nm`` morphisms per child,
    ``epoch_neigh`` training epochs per child, ``epoch_final`` final epochs per front point,
    ``epochs_init``, the learning rates, ``max_params``/``max_macs`` (bounds on every child),
    ``passes`` (default :data:`PARETO_PASSES`), the seed, device and precision. ``n_neigh``,
    ``morph`` and ``retrain_from_scratch`` are NASH's and have no effect here.

    Attributes:
        search: the shared settings.
        cost: ``"params"`` or ``"macs"``: the second objective.
        children: children trained per generation (LEMONADE's n_ac; default ``search.n_neigh``,
            which trains as many networks per generation as a NASH step does).
        proposals: children proposed per generation (LEMONADE's n_pc; default ``2 * children``),
            of which ``children`` are accepted by the inverse density of their cost.

    Raises:
        SearchError: an unknown cost, ``children < 1`` or ``proposals < children`` (naming the flag).
    """

    search: SearchConfig
    cost: str = "params"
    children: int | None = None
    proposals: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.search, SearchConfig):
            raise SearchError(f"ParetoConfig.search must be a SearchConfig, got {type(self.search).__name__}")
        if self.cost not in COSTS:
            raise SearchError(f"--cost must be one of {', '.join(COSTS)}, got {self.cost!r}")
        for name, v in (("children", self.children), ("proposals", self.proposals)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise SearchError(f"--{name} must be an integer >= 1, got {v!r}")
        if self.proposals is not None and self.proposals < self.n_children:
            raise SearchError(f"--proposals {self.proposals} is below --children {self.n_children}: a "
                              "generation accepts its children among its proposals; give at least as many")

    @property
    def n_children(self) -> int:
        return int(self.children if self.children is not None else self.search.n_neigh)

    @property
    def n_proposals(self) -> int:
        return int(self.proposals if self.proposals is not None else 2 * self.n_children)

    def to_dict(self) -> dict[str, Any]:
        """The ledger's config: the search fields plus ``objective``, ``cost``, ``children`` and
        ``proposals`` (resolved)."""
        return {**self.search.to_dict(), "objective": "pareto", "cost": self.cost,
                "children": self.n_children, "proposals": self.n_proposals}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ParetoConfig:
        """Inverse of :meth:`to_dict` (a ledger's config; data and hash keys are ignored)."""
        from dataclasses import fields

        names = {f.name for f in fields(SearchConfig)}
        search = SearchConfig.from_dict({k: v for k, v in d.items() if k in names})
        return cls(search, cost=d.get("cost", "params"), children=d.get("children"),
                   proposals=d.get("proposals"))

    def search_epochs(self) -> int:
        """Epochs the search trains before the final trainings: ``epochs_init + n_steps * children *
        epoch_neigh`` (the budget compared with NASH's ``epochs_init + n_steps * n_neigh * epoch_neigh``)."""
        return self.search.epochs_init + self.search.n_steps * self.n_children * self.search.epoch_neigh


def pareto_passes(config: SearchConfig) -> list:
    """The pass objects the Pareto search samples from: ``config.passes`` (default
    :data:`PARETO_PASSES`), with Net2WiderNet's split set to ``config.widen_split``."""
    from nashir.passes import get_pass

    return [get_pass(n, split=config.widen_split) if n == "net2wider" else get_pass(n)
            for n in (config.passes or PARETO_PASSES)]


# ------------------------------------------------------------------------------------- bookkeeping
def dominates(a, b) -> bool:
    """True when objective vector ``a`` Pareto-dominates ``b`` (every objective minimised): ``a`` is no
    worse in every objective and strictly better in at least one."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(points) -> list[int]:
    """Indices of the non-dominated points (every objective minimised), in input order; of points
    with equal objectives only the first is kept."""
    pts = [tuple(float(x) for x in p) for p in points]
    out = []
    for i, p in enumerate(pts):
        if any(dominates(q, p) for q in pts):
            continue
        if any(pts[j] == p for j in out):
            continue
        out.append(i)
    return out


def kde_bandwidth(x: np.ndarray) -> float:
    """Scott's rule for one dimension, ``s * n**(-1/5)`` (``s`` the sample standard deviation), at
    least :data:`MIN_BANDWIDTH`."""
    x = np.asarray(x, dtype=np.float64)
    s = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    return max(MIN_BANDWIDTH, s * len(x) ** -0.2) if len(x) else MIN_BANDWIDTH


def inverse_density_weights(costs, reference, bandwidth: float | None = None) -> np.ndarray:
    """Sampling weights ``~ 1 / p(log10 cost)`` for ``costs``, with ``p`` the Gaussian KDE of
    ``log10`` of the ``reference`` costs (the front), normalised to sum to one.

    Args:
        costs: positive costs (parameters or MACs) to weigh.
        reference: positive costs the density is estimated from (non-empty).
        bandwidth: in decades; default :func:`kde_bandwidth` of the reference.

    Raises:
        SearchError: an empty reference or a cost that is not positive.
    """
    c = np.asarray(list(costs), dtype=np.float64)
    r = np.asarray(list(reference), dtype=np.float64)
    if len(r) == 0:
        raise SearchError("inverse_density_weights: the reference (the front) is empty")
    if np.any(c <= 0) or np.any(r <= 0):
        raise SearchError("inverse_density_weights: costs must be positive (parameters or MACs)")
    lc, lr = np.log10(c), np.log10(r)
    h = kde_bandwidth(lr) if bandwidth is None else float(bandwidth)
    z = (lc[:, None] - lr[None, :]) / h
    dens = np.exp(-0.5 * z * z).mean(axis=1) / (h * math.sqrt(2 * math.pi))
    w = 1.0 / np.maximum(dens, 1e-300)
    return w / w.sum()


def draw_parents(front_costs, k: int, rng: np.random.Generator) -> list[int]:
    """``k`` indices into the front, drawn with replacement with probability ``~ 1 / density``."""
    w = inverse_density_weights(front_costs, front_costs)
    return [int(i) for i in rng.choice(len(w), size=int(k), replace=True, p=w)]


def accept_children(child_costs, front_costs, k: int, rng: np.random.Generator) -> list[int]:
    """Indices of the accepted children (at most ``k``, all when there are fewer), drawn without
    replacement with probability ``~ 1 / density`` of their cost under the front's KDE; sorted."""
    n = len(child_costs)
    if n <= k:
        return list(range(n))
    w = inverse_density_weights(child_costs, front_costs)
    return sorted(int(i) for i in rng.choice(n, size=int(k), replace=False, p=w))


def _objectives(row: dict[str, Any], cost: str) -> tuple[float, float]:
    return 1.0 - float(row["val_acc"]), float(row[cost])


def front_points(rows: list[dict[str, Any]], cost: str,
                 before_step: int | None = None) -> list[dict[str, Any]]:
    """The Pareto front of the trained candidates among ``rows`` (ledger rows; ``init`` and ``child``
    with status ok, a validation accuracy and a cost; with ``before_step`` only those of earlier
    generations), sorted by cost, then error, then id."""
    cand = [r for r in rows if r["kind"] in ("init", "child") and r["status"] == STATUS_OK
            and r.get("val_acc") is not None and r.get(cost)
            and (before_step is None or int(r["step"]) < before_step)]
    cand.sort(key=lambda r: (int(r["step"]), int(r["idx"])))
    idx = pareto_front([_objectives(r, cost) for r in cand])
    pts = [cand[i] for i in idx]
    pts.sort(key=lambda r: (float(r[cost]), 1.0 - float(r["val_acc"]), r["id"]))
    return pts


def format_front(points: list[dict[str, Any]], cost: str = "params") -> str:
    """The front as a table: id, parameters, MACs, validation and test accuracy (%), file.

    ``points`` are dicts with ``id``, ``params``, ``macs``, ``val_acc``, ``test_acc`` and optionally
    ``test_acc_onnx`` and ``onnx`` (as :attr:`ParetoResult.front` and the ledger's meta ``front``)."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    rows = [("point", "params", "MACs", "val acc %", "test acc %", "onnxruntime %", "file")]
    for p in points:
        rows.append((str(p["id"]), f"{int(p['params']):,}", f"{int(p['macs']):,}", pct(p.get("val_acc")),
                     pct(p.get("test_acc")), pct(p.get("test_acc_onnx")), str(p.get("onnx") or "-")))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        cells = [r[0].ljust(w[0])] + [r[i].rjust(w[i]) for i in range(1, 6)] + [r[6]]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("-" * len(lines[0]))
    lines.append(f"(Pareto front of validation error and {cost}; sorted by {cost})")
    return "\n".join(lines)


@dataclass
class ParetoResult:
    """What :func:`pareto` returns.

    Attributes:
        front: one dict per point of the final front, by increasing cost: ``id`` (the search
            candidate), ``final`` (its final training's id), ``params``, ``macs``, ``val_acc``,
            ``test_acc`` (torch), ``test_acc_onnx`` (onnxruntime on the file, or None), ``onnx``
            (the file, relative to the run folder), ``parent``, ``morphisms``.
        models: the trained final graphs, in the order of ``front``.
        run_dir: the run folder (None for a temporary one, deleted at the end).
        config: the run's :class:`ParetoConfig`.
        generations: per generation ``{"step", "front": [ids], "best", "best_val_acc"}``.
        wall_seconds, job_seconds, train_seconds: as :class:`nashir.search.SearchResult`.
        trained: ids trained by this call (a resumed run skips finished ones).
    """

    front: list[dict[str, Any]]
    models: list[Graph]
    run_dir: Path | None
    config: ParetoConfig
    generations: list[dict[str, Any]] = field(default_factory=list)
    wall_seconds: float = 0.0
    job_seconds: float = 0.0
    train_seconds: float = 0.0
    trained: list[str] = field(default_factory=list)

    def front_table(self) -> str:
        """:func:`format_front` of the result."""
        return format_front(self.front, self.config.cost)


# ------------------------------------------------------------------------------------- the driver
def pareto(
    model0: Graph | None,
    data,
    config: ParetoConfig,
    executor: Executor | None = None,
    run_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    force: bool = False,
    progress: bool = False,
    onnx_check: bool = True,
    echo=None,
) -> ParetoResult:
    """Run the Pareto search (see the module docstring) and return the final front.

    Args:
        model0: the start network (input ``(N, C, H, W)`` of the data, output ``(N, classes)``
            logits); None: :func:`~nashir.search.startnet.start_network` sized to the data, or the
            start model stored in the run folder (``resume``).
        data: a :class:`nashir.data.Dataset`, or None to load ``config.search.dataset``.
        config: a :class:`ParetoConfig`.
        executor: who trains the candidates (default :class:`InProcessExecutor`).
        run_dir: the run folder; None: a temporary folder, deleted at the end.
        resume: continue the run in ``run_dir`` (finished candidates are not trained again).
        force: replace the run in ``run_dir`` (only nashir's own files, ``front/`` included).
        progress: per-epoch progress bars of the in-process executor.
        onnx_check: score every front file on the test set with onnxruntime as well.
        echo: called with one line of text per generation (None = silent).

    Returns:
        The :class:`ParetoResult`.

    Raises:
        SearchError: a refused run folder (:func:`~nashir.search.nash.prepare_run_dir`), a resumed
            ledger of another configuration or of a NASH run, a start model that does not fit.
        SearchFailed: the start network did not train, or no front point's final training finished.
        DataError: the data set cannot be loaded.
    """
    t_wall = time.perf_counter()
    if not isinstance(config, ParetoConfig):
        raise SearchError(f"config must be a ParetoConfig, got {type(config).__name__}")
    scfg = config.search
    spec = DataSpec(scfg.dataset, scfg.data_dir, seed=scfg.seed)
    try:
        pareto_passes(scfg)
    except NashirError as e:
        raise SearchError(f"--passes: {e}") from None
    tmp_holder = None
    if run_dir is None:
        if resume or force:
            raise SearchError("resume/force need a run folder (run_dir)")
        tmp_holder = tempfile.TemporaryDirectory(prefix="nashir-pareto-")
        run_path = Path(tmp_holder.name)
        action = "create"
    else:
        run_path = Path(run_dir)
        action = prepare_run_dir(run_path, resume, force)
    if action == "resume":
        with Ledger.open(run_path, readonly=True) as led:
            if led.config.get("objective") != "pareto":
                raise SearchError(f"--resume: the run in {run_path} is a NASH run, not a Pareto run; resume "
                                  "it without --objective pareto, or start a new run (--out)")
    if data is None:
        data = spec.load()

    from nashir.backends.onnx import model_bytes

    stored_start = run_path / "candidates" / "start.onnx"
    start_blob = None
    if model0 is None and action == "resume" and stored_start.is_file():
        start_blob = _read_start(run_path, stored_start)
        model0 = _load_bytes(start_blob, f"run folder {run_path}: candidates/start.onnx")
    if model0 is None:
        model0 = start_network(data.input_shape, data.num_classes, scfg.widths,
                               seed=candidate_seed(scfg.seed, 0, 0, _PURPOSE_INIT))
    check_model_fits(model0, data.input_shape, data.num_classes, what="start model")
    for limit, count, flag in ((scfg.max_params, model0.param_count(), "--max-params"),
                               (scfg.max_macs, model0.mac_count(), "--max-macs")):
        if limit is not None and count > limit:
            raise SearchError(f"the start model has {count} {flag[6:]}, above {flag} {limit}; raise {flag} "
                              "or start from a smaller model")
    if start_blob is None:
        start_blob = model_bytes(model0)
    stored_cfg = {**config.to_dict(), "data": _data_info(data),
                  "start_sha256": hashlib.sha256(start_blob).hexdigest()}

    lock = dir_lock = None
    try:
        if tmp_holder is None:
            if action == "create":
                run_path.mkdir(parents=True, exist_ok=True)
            dir_lock = lock_run_dir(run_path)
            again = prepare_run_dir(run_path, resume, force)
            if again != action:  # pragma: no cover - the folder changed between the two decisions
                raise SearchError(f"run folder {run_path} changed while this search was getting ready; "
                                  "nothing was written: start it again")
        if action in ("resume", "replace"):
            lock = _lock_run(run_path)
        if action == "resume":
            ledger = Ledger.open(run_path)
            try:
                _check_resumable(ledger, stored_cfg, run_path)
            except BaseException:
                ledger.close()
                raise
        else:
            remove_stale_temp_files(run_path)
            if action == "replace":
                _clear_run(run_path)
                front_dir = run_path / FRONT_DIR
                if front_dir.is_dir() and not front_dir.is_symlink():
                    shutil.rmtree(front_dir)
            ledger = Ledger.create(run_path, stored_cfg)
            _unlock(lock)
            lock = _lock_run(run_path)
    except BaseException:
        _unlock(lock)
        unlock_run_dir(dir_lock)
        raise
    own_executor = executor is None
    if executor is None:
        executor = InProcessExecutor(threads=scfg.threads, progress=progress)
    log = _Log(run_path / "log.jsonl")
    try:
        return _drive(model0, start_blob, data, config, executor, ledger, log, spec, action, onnx_check, echo,
                      t_wall, None if tmp_holder is not None else run_path)
    finally:
        log.close()
        ledger.close()
        _unlock(lock)
        unlock_run_dir(dir_lock)
        if own_executor:
            executor.close()
        if tmp_holder is not None:
            tmp_holder.cleanup()


def _drive(model0, start_blob, data, config: ParetoConfig, executor: Executor, ledger: Ledger, log: _Log,
           spec: DataSpec, action: str, onnx_check: bool, echo, t_wall: float,
           run_path: Path | None) -> ParetoResult:
    scfg = config.search
    cost = config.cost
    run_dir = ledger.run_dir
    log.event("resume" if action == "resume" else "start", config=config.to_dict(), pid=os.getpid(),
              rss_mb=_rss_mb())
    executor.prepare(spec, data)
    start_path = run_dir / "candidates" / "start.onnx"
    if not start_path.is_file():
        start_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(start_path, start_blob)
    stats: dict[str, Any] = {"job": 0.0, "train": 0.0, "trained": []}
    train_kw = scfg.train_kwargs()

    def record(res: Result) -> None:
        onnx_rel = None
        if res.status == STATUS_OK and res.onnx is not None:
            onnx_rel = ledger.write_candidate_onnx(res.candidate_id, res.onnx)   # file first, then the row
        ledger.finish_candidate(res.candidate_id, res.status, val_acc=res.val_acc,
                                test_acc=res.metrics.get("test_acc"), train_seconds=res.train_seconds,
                                job_seconds=res.seconds, history=res.history, metrics=res.metrics,
                                onnx=onnx_rel, reason=res.reason)
        stats["job"] += res.seconds
        stats["train"] += res.train_seconds + res.eval_seconds
        stats["trained"].append(res.candidate_id)
        log.event("candidate", id=res.candidate_id, status=res.status, val_acc=res.val_acc,
                  test_acc=res.metrics.get("test_acc"), seconds=round(res.seconds, 3), reason=res.reason,
                  rss_mb=_rss_mb())

    # ---- the start network
    if not ledger.is_finished(INIT_ID):
        iseed = candidate_seed(scfg.seed, 0, 0, _PURPOSE_TRAIN)
        ledger.add_candidate(INIT_ID, 0, 0, "init", None, [], model0.param_count(), model0.mac_count(),
                             seed=iseed, epochs=scfg.epochs_init)
        for res in executor.run([Job(INIT_ID, start_blob, {**train_kw, "epochs": scfg.epochs_init}, spec,
                                     seed=iseed, node_meta=_node_meta(model0))]):
            record(res)
    init_row = ledger.candidate(INIT_ID)
    if init_row["status"] != STATUS_OK:
        raise SearchFailed(f"the start network did not train ({init_row['status']}): {init_row['reason']}; "
                           "lower --lr-start or check the start model")
    if echo is not None:
        echo(f"generation 0: start network {init_row['params']:,} params, {init_row['macs']:,} MACs, "
             f"val acc {100 * init_row['val_acc']:.2f}%")

    generations: list[dict[str, Any]] = []
    for gen in range(1, scfg.n_steps + 1):
        if ledger.step(gen) is None:
            _run_generation(gen, config, executor, ledger, spec, train_kw, record, log)
        front = front_points(ledger.candidates(), cost, before_step=gen + 1)
        ids = [r["id"] for r in front]
        if ledger.get_meta(f"front-{gen}") is None:
            ledger.set_meta(f"front-{gen}", ids)
        st = ledger.step(gen)
        generations.append({"step": gen, "front": ids, "best": st["best"],
                            "best_val_acc": st["best_val_acc"]})
        if echo is not None:
            echo(f"generation {gen}: front of {len(ids)}: "
                 + ", ".join(f"{r['id']} ({int(r[cost]):,} {cost}, {100 * r['val_acc']:.2f}%)"
                             for r in front))

    # ---- final training of every front point on train + validation, then the test set
    front = front_points(ledger.candidates(), cost)
    fseed = candidate_seed(scfg.seed, _FINAL_SEED_KEY, 0, _PURPOSE_TRAIN)
    jobs = []
    for k, row in enumerate(front, start=1):
        fid = final_id(row["id"])
        if ledger.is_finished(fid):
            continue
        ledger.add_candidate(fid, scfg.n_steps + 1, k, "final", row["id"], [], row["params"], row["macs"],
                             seed=fseed, epochs=scfg.epoch_final)
        jobs.append(Job(fid, ledger.read_candidate_onnx(row["id"]),
                        {**train_kw, "epochs": scfg.epoch_final, "train_split": "trainval",
                         "eval_split": None, "warmup_epochs": scfg.final_warmup},
                        spec, seed=fseed, evaluate=("test",)))
    if echo is not None and jobs:
        echo(f"final: training {len(jobs)} front point(s) for {scfg.epoch_final} epochs on train+val")
    for res in executor.run(jobs):
        record(res)
    front_dir = run_dir / FRONT_DIR
    front_dir.mkdir(exist_ok=True)
    points, models = [], []
    keep_files = {"front.json"}
    for row in front:
        frow = ledger.candidate(final_id(row["id"]))
        if frow is None or frow["status"] != STATUS_OK:
            log.event("warning", message=f"the final training of front point {row['id']} did not finish: "
                                         f"{None if frow is None else frow['reason']}")
            continue
        blob = ledger.read_candidate_onnx(frow["id"])
        name = f"{row['id']}.onnx"
        atomic_write(front_dir / name, blob)
        keep_files.add(name)
        ort_key = f"test_acc_onnx:{frow['id']}"
        ort = ledger.get_meta(ort_key)
        if onnx_check and ort is None:
            ort = _ort_accuracy(front_dir / name, data)
            ledger.set_meta(ort_key, ort)
        points.append({"id": row["id"], "final": frow["id"], "params": int(frow["params"]),
                       "macs": int(frow["macs"]), "val_acc": row["val_acc"], "test_acc": frow["test_acc"],
                       "test_acc_onnx": ort, "onnx": f"{FRONT_DIR}/{name}", "parent": row["parent"],
                       "morphisms": row["morphisms"]})
        models.append(_load_bytes(blob))
    if not points:
        raise SearchFailed("no final training of a front point finished; see the ledger's reasons")
    for q in front_dir.iterdir():   # a point that left the front on an earlier, interrupted run
        if q.name not in keep_files and q.suffix == ".onnx" and q.is_file():
            q.unlink()
    meta = {"points": points, "cost": cost, "mean": [float(v) for v in data.mean],
            "std": [float(v) for v in data.std]}
    atomic_write(front_dir / "front.json", (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
    ledger.set_meta("front", meta)
    ledger.set_meta("state", "done")
    table = format_front(points, cost)
    atomic_write(run_dir / "summary.txt", (table + "\n").encode())
    wall = time.perf_counter() - t_wall
    log.event("final", front=[p["id"] for p in points], wall_seconds=round(wall, 3),
              job_seconds=round(stats["job"], 3), train_seconds=round(stats["train"], 3), rss_mb=_rss_mb())
    return ParetoResult(front=points, models=models, run_dir=run_path, config=config, generations=generations,
                        wall_seconds=wall, job_seconds=stats["job"], train_seconds=stats["train"],
                        trained=list(stats["trained"]))


def _run_generation(gen: int, config: ParetoConfig, executor: Executor, ledger: Ledger, spec: DataSpec,
                    train_kw: dict, record, log: _Log) -> None:
    """One generation: propose, accept by inverse density, train the accepted children, record the
    generation's most accurate front point in the steps table."""
    from nashir.backends.onnx import model_bytes
    from nashir.passes import Constraints, sample_morphisms

    scfg = config.search
    cost = config.cost
    front = front_points(ledger.candidates(), cost, before_step=gen)
    costs = [float(r[cost]) for r in front]
    prng = np.random.default_rng(np.random.SeedSequence([scfg.seed, gen, 0, _PURPOSE_PARENT]))
    parents = draw_parents(costs, config.n_proposals, prng)
    passes = pareto_passes(scfg)
    constraints = Constraints(max_params=scfg.max_params, max_macs=scfg.max_macs)
    blobs: dict[str, bytes] = {}
    proposals = []   # (proposal index, parent row, child blob, morphisms, params, macs, node meta)
    for p, pi in enumerate(parents, start=1):
        prow = front[pi]
        if prow["id"] not in blobs:
            blobs[prow["id"]] = ledger.read_candidate_onnx(prow["id"])
        rng = np.random.default_rng(np.random.SeedSequence([scfg.seed, gen, p, _PURPOSE_MORPH]))
        try:
            child, applied = sample_morphisms(_load_bytes(blobs[prow["id"]]), scfg.n_nm, rng, passes=passes,
                                              constraints=constraints)
            child.verify()
            if not applied:
                raise SearchError(getattr(applied, "note", None) or "no morphism applied")
            blob = model_bytes(child)
        except Exception as e:   # a proposal that cannot be made is dropped (never trained)
            log.event("proposal", generation=gen, proposal=p, parent=prow["id"], accepted=False,
                      reason=f"{type(e).__name__}: {e}")
            continue
        proposals.append((p, prow, blob, _jsonable(applied), child.param_count(), child.mac_count(),
                          _node_meta(child)))
    ccost = [float(pr[4] if cost == "params" else pr[5]) for pr in proposals]
    arng = np.random.default_rng(np.random.SeedSequence([scfg.seed, gen, 0, _PURPOSE_ACCEPT]))
    take = accept_children(ccost, costs, config.n_children, arng)
    for k, pr in enumerate(proposals):
        log.event("proposal", generation=gen, proposal=pr[0], parent=pr[1]["id"], accepted=k in take,
                  params=pr[4], macs=pr[5], morphisms=[f"{m.get('pass')}@{m.get('site')}" for m in pr[3]])
    tseed = candidate_seed(scfg.seed, gen, 0, _PURPOSE_TRAIN)   # common random numbers in the generation
    jobs = []
    for j, k in enumerate(take, start=1):
        p, prow, blob, applied, params, macs, meta = proposals[k]
        cid = candidate_id(gen, j)
        if ledger.is_finished(cid):
            continue
        ledger.add_candidate(cid, gen, j, "child", prow["id"], applied, params, macs, seed=tseed,
                             epochs=scfg.epoch_neigh)
        jobs.append(Job(cid, blob, {**train_kw, "epochs": scfg.epoch_neigh}, spec, seed=tseed,
                        node_meta=meta))
    del proposals, blobs
    for res in executor.run(jobs):
        record(res)
    after = front_points(ledger.candidates(), cost, before_step=gen + 1)
    best = max(after, key=lambda r: (r["val_acc"], -float(r[cost])))
    ledger.set_meta(f"front-{gen}", [r["id"] for r in after])
    ledger.finish_step(gen, best["id"], best["val_acc"])
