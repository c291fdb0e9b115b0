"""Search configuration: :class:`SearchConfig`, its presets and its validation.

The names follow Algorithm 1 of NASH (Elsken, Metzen & Hutter 2018, arXiv 1711.04528, Sec. 4):
``n_steps`` hill-climbing steps; in each, ``n_neigh`` candidates (``n_neigh - 1`` children made by
``n_nm`` random network morphisms of the current best, plus the current best itself), each trained
``epoch_neigh`` epochs with SGDR from ``lr_start`` down to ``lr_end``; finally the winner trains
``epoch_final`` epochs on train + validation. ``epochs_init`` is the pretraining of the start
network (the paper: 20 epochs, Sec. 5.1).

This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from nashir.errors import SearchError

__all__ = [
    "SearchConfig", "PRESETS", "DEFAULT_PRESETS", "default_preset", "preset", "FLAG_NAMES", "RUNTIME_KEYS",
    "config_diff",
]

#: Command-line flag of each field, used in error messages.
FLAG_NAMES: dict[str, str] = {
    "dataset": "--dataset",
    "data_dir": "--data-dir",
    "n_steps": "--steps",
    "n_neigh": "--neighbors",
    "n_nm": "--morphs",
    "epoch_neigh": "--epochs-neighbor",
    "epoch_final": "--epochs-final",
    "epochs_init": "--epochs-init",
    "lr_start": "--lr-start",
    "lr_end": "--lr-end",
    "batch_size": "--batch-size",
    "max_params": "--max-params",
    "max_macs": "--max-macs",
    "device": "--device",
    "seed": "--seed",
    "sgdr": "--no-sgdr",
    "morph": "--no-morph",
    "retrain_from_scratch": "--retrain-from-scratch",
    "widths": "--widths",
    "threads": "--threads",
    "passes": "--passes",
    "precision": "--precision",
    "compile": "--compile",
    "final_warmup": "--final-warmup",
    "widen_split": "--widen-split",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "preset": "--preset",
}

#: Fields that do not change the result of a CPU run (or that may legitimately change between a
#: run and its resumption: where the data lives, how many threads, which device). They are stored
#: in the ledger but not compared on ``--resume``.
RUNTIME_KEYS = frozenset({"data_dir", "device", "threads", "preset", "compile"})


@dataclass(frozen=True)
class SearchConfig:
    """Every setting of one NASH run (Algorithm 1 of arXiv 1711.04528, with the paper's names).

    Attributes:
        dataset: Data set spec for :func:`nashir.data.load_dataset` (``digits``,
            ``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``, ``npz:PATH``).
        data_dir: Folder holding the CIFAR or IDX files (None: digits / npz, or the default
            folders of Fashion-MNIST / MNIST).
        n_steps: Hill-climbing steps (>= 0; 0 = pretrain and final training only).
        n_neigh: Candidates per step (>= 1): ``n_neigh - 1`` morphed children plus the current
            best trained further. ``n_neigh = 1`` is the paper's "random networks" baseline: each
            step one morphed child replaces the current best whatever its accuracy (a random walk
            over morphisms).
        n_nm: Network morphisms applied to make one child (>= 1).
        epoch_neigh: Epochs each candidate trains per step (>= 1 when ``n_steps > 0``).
        epoch_final: Epochs of the final training on train + validation (>= 0).
        epochs_init: Epochs of pretraining of the start network (>= 0).
        lr_start: SGDR's eta_max, the learning rate at the start of each training call (> 0).
        lr_end: SGDR's eta_min, the rate at the end of each call (0 <= lr_end <= lr_start).
        batch_size: Images per SGD step (>= 1).
        max_params: Upper bound on a child's parameter count (None = unbounded); morphisms that
            would exceed it are not sampled.
        max_macs: Upper bound on a child's multiply-accumulates per image (None = unbounded), the
            knob for training time: an epoch costs about proportionally to it.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        seed: The one seed every random choice derives from (>= 0).
        sgdr: Cosine annealing (True) or a constant ``lr_start`` (False: the "no SGDR" baseline).
        morph: Children inherit their parent's weights through the morphism (True) or are
            re-initialised and trained from scratch (False: the "no network morphism" baseline;
            the architecture is still the morphed one).
        retrain_from_scratch: The final model is re-initialised and trained for its whole lineage's
            budget (``epochs_init + n_steps * epoch_neigh + epoch_final`` epochs) on train +
            validation instead of ``epoch_final`` epochs from its inherited weights.
        widths: Channels of the start network's three convolutions (None = by data set: 64/128/256
            for 32x32 images, 16/32/64 for smaller ones).
        threads: ``torch.set_num_threads`` for training (None = torch's default).
        passes: Names of the morphism passes to sample from (None = ``nashir.passes.SEARCH_PASSES``:
            net2deeper, net2wider, add-skip, concat-skip).
        precision: ``auto`` (bf16 autocast on CUDA, float32 on CPU), ``fp32`` or ``bf16``
            (:class:`nashir.backends.torch.sgdr.TrainConfig`).
        compile: Train every candidate through ``torch.compile`` (``TrainConfig.compile``); off by
            default, as a candidate's few epochs rarely repay the compilation (docs/training.md,
            "torch.compile"). How, not what: it may change on ``--resume``.
        final_warmup: Linear learning-rate warm-up of the final training, in epochs (>= 0;
            Goyal et al. 2017, arXiv 1706.02677, Sec. 2.2). The final SGDR call restarts at
            ``lr_start`` from a model that has converged on the training split; without a warm-up
            the first steps can throw it out of its minimum (docs/search.md, "Final training").
        widen_split: How Net2WiderNet splits an absorber's weights among a channel's replicas in
            the search: ``random`` (default; a Dirichlet split, exact and symmetry-breaking) or
            ``equal`` (Net2Net's 1/|R(c)|: replicas get identical gradients and stay copies).
        momentum: SGD momentum (the paper: 0.9).
        weight_decay: L2 weight decay (the paper: 5e-4).
        preset: Name of the preset the values came from (informational).

    Raises:
        SearchError: On construction, for an out-of-range or contradictory value; the message
            names the command-line flag.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    n_steps: int = 5
    n_neigh: int = 5
    n_nm: int = 3
    epoch_neigh: int = 6
    epoch_final: int = 15
    epochs_init: int = 15
    lr_start: float = 0.05
    lr_end: float = 0.0
    batch_size: int = 64
    max_params: int | None = None
    max_macs: int | None = None
    device: str = "auto"
    seed: int = 0
    sgdr: bool = True
    morph: bool = True
    retrain_from_scratch: bool = False
    widths: tuple[int, ...] | None = None
    threads: int | None = None
    passes: tuple[str, ...] | None = None
    precision: str = "auto"
    compile: bool = False
    final_warmup: float = 1.0
    widen_split: str = "random"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    preset: str | None = None

    def __post_init__(self) -> None:
        # normalise list-valued fields to tuples (JSON round trips give lists)
        for name in ("widths", "passes"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(v))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every value and the combinations; raises :class:`SearchError` naming the flag."""

        def flag(name: str) -> str:
            return f"{FLAG_NAMES.get(name, name)} ({name})"

        def need_int(name: str, lo: int, why: str = "") -> None:
            v = getattr(self, name)
            if not _is_int(v) or v < lo:
                raise SearchError(f"{flag(name)} must be an integer >= {lo}, got {v!r}{why}")

        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise SearchError(
                f"{flag('dataset')} must be a data set name (digits, cifar10, cifar100, npz:PATH)"
            )
        need_int("n_steps", 0)
        need_int(
            "n_neigh",
            1,
            ": every step trains n_neigh - 1 morphed children plus the current best; "
            "use --neighbors 1 for the random-network baseline",
        )
        need_int("n_nm", 1, ": a child is made by at least one network morphism")
        need_int(
            "epoch_neigh",
            1 if self.n_steps > 0 else 0,
            ": every candidate must train at least one epoch to be compared (or use --steps 0)",
        )
        need_int("epoch_final", 0)
        need_int("epochs_init", 0)
        need_int("batch_size", 1)
        need_int("seed", 0)
        for name in ("lr_start", "lr_end", "momentum", "weight_decay"):
            v = getattr(self, name)
            if not _is_num(v) or not math.isfinite(v) or v < 0:
                raise SearchError(f"{flag(name)} must be a finite number >= 0, got {v!r}")
        if self.lr_start <= 0:
            raise SearchError(f"{flag('lr_start')} must be > 0, got {self.lr_start!r}")
        if self.lr_end > self.lr_start:
            raise SearchError(
                f"--lr-end {self.lr_end:g} is above --lr-start {self.lr_start:g}: SGDR anneals from "
                "lr_start down to lr_end; give --lr-end <= --lr-start"
            )
        if self.momentum >= 1:
            raise SearchError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.max_params is not None and (not _is_int(self.max_params) or self.max_params < 1):
            raise SearchError(f"{flag('max_params')} must be a positive integer, got {self.max_params!r}")
        if self.max_macs is not None and (not _is_int(self.max_macs) or self.max_macs < 1):
            raise SearchError(f"{flag('max_macs')} must be a positive integer, got {self.max_macs!r}")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise SearchError(f"{flag('threads')} must be an integer >= 1, got {self.threads!r}")
        if not isinstance(self.device, str) or not self.device:
            raise SearchError(f"{flag('device')} must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.widths is not None:
            if len(self.widths) != 3 or not all(_is_int(w) and w >= 1 for w in self.widths):
                raise SearchError(
                    f"{flag('widths')} must be three positive integers (channels of the start "
                    f"network's three convolutions), got {self.widths!r}"
                )
        if self.passes is not None:
            if not self.passes or not all(isinstance(p, str) and p for p in self.passes):
                raise SearchError(
                    f"{flag('passes')} must name at least one morphism pass, got {self.passes!r}"
                )
        if self.precision not in ("auto", "fp32", "bf16"):
            raise SearchError(f"{flag('precision')} must be auto, fp32 or bf16, got {self.precision!r}")
        if not _is_num(self.final_warmup) or not math.isfinite(self.final_warmup) or self.final_warmup < 0:
            raise SearchError(
                f"{flag('final_warmup')} must be a finite number of epochs >= 0, got {self.final_warmup!r}"
            )
        if self.widen_split not in ("random", "equal"):
            raise SearchError(f"{flag('widen_split')} must be random or equal, got {self.widen_split!r}")
        for name in ("sgdr", "morph", "retrain_from_scratch", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise SearchError(f"{flag(name)} must be a boolean, got {getattr(self, name)!r}")
        if self.retrain_from_scratch and self.lineage_epochs() == 0:
            raise SearchError(
                "--retrain-from-scratch trains the final architecture anew for its lineage's epochs "
                "(epochs_init + n_steps * epoch_neigh + epoch_final), which is 0 here; give "
                "--epochs-final >= 1"
            )

    # ------------------------------------------------------------------ helpers
    def replace(self, **changes: Any) -> SearchConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every field (tuples become lists)."""
        d = asdict(self)
        for k in ("widths", "passes"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`SearchError`."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SearchError(
                f"unknown search config key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return cls(**d)

    def train_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keyword arguments of :class:`nashir.backends.torch.sgdr.TrainConfig` shared by every
        candidate of the run (SGD with momentum and weight decay under SGDR, training on the train
        split, scored on the validation split); ``epochs`` and ``seed`` are set per job."""
        kw = dict(lr_start=self.lr_start, lr_end=self.lr_end, momentum=self.momentum,
                  weight_decay=self.weight_decay, batch_size=self.batch_size, sgdr=self.sgdr,
                  device=self.device, precision=self.precision, train_split="train", eval_split="val")
        if self.compile:
            kw["compile"] = True
        kw.update(overrides)
        return kw

    def lineage_epochs(self) -> int:
        """Epochs the final model's lineage trains in total:
        ``epochs_init + n_steps * epoch_neigh + epoch_final``."""
        return self.epochs_init + self.n_steps * self.epoch_neigh + self.epoch_final

    def budget_epochs(self) -> int:
        """Epochs of training the whole run costs (the sum over every network trained):
        ``epochs_init + n_steps * n_neigh * epoch_neigh + final`` where final is
        ``epoch_final`` or, with ``retrain_from_scratch``, :meth:`lineage_epochs`."""
        final = self.lineage_epochs() if self.retrain_from_scratch else self.epoch_final
        return self.epochs_init + self.n_steps * self.n_neigh * self.epoch_neigh + final


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: The presets: ``paper`` is Sec. 5.1 of arXiv 1711.04528 (CIFAR-10: n_steps 5, n_neigh 8,
#: n_NM 5, epoch_neigh 17, epoch_final 20, 20 epochs of pretraining, SGDR 0.05 -> 0, batch 128);
#: ``demo`` is sized for scikit-learn's 8x8 digits on two CPU cores (a few minutes); ``fashion`` for
#: Fashion-MNIST on two CPU cores within an hour (bf16 autocast, which pays on processors with
#: native bf16 units; docs/search.md gives the measured time).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        n_steps=5,
        n_neigh=8,
        n_nm=5,
        epoch_neigh=17,
        epoch_final=20,
        epochs_init=20,
        lr_start=0.05,
        lr_end=0.0,
        batch_size=128,
    ),
    "demo": dict(
        n_steps=5,
        n_neigh=5,
        n_nm=3,
        epoch_neigh=6,
        epoch_final=15,
        epochs_init=15,
        lr_start=0.05,
        lr_end=0.0,
        batch_size=64,
    ),
    "fashion": dict(
        n_steps=3,
        n_neigh=4,
        n_nm=3,
        epoch_neigh=3,
        epoch_final=20,
        epochs_init=8,
        lr_start=0.05,
        lr_end=0.0,
        batch_size=128,
        max_macs=16_000_000,
        precision="bf16",
    ),
}

#: The preset a data set gets when none is named (any other data set: ``paper``).
DEFAULT_PRESETS: dict[str, str] = {"digits": "demo", "fashion-mnist": "fashion", "mnist": "fashion"}


def default_preset(dataset: str) -> str:
    """The preset used for ``dataset`` when ``--preset`` is not given (:data:`DEFAULT_PRESETS`)."""
    return DEFAULT_PRESETS.get(str(dataset).strip().lower(), "paper")


def preset(name: str, **overrides: Any) -> SearchConfig:
    """The :class:`SearchConfig` of preset ``name`` (``paper``, ``demo``, ``fashion``) with ``overrides``.

    Raises:
        SearchError: Unknown preset (the message lists them) or an invalid override.
    """
    if name not in PRESETS:
        raise SearchError(f"unknown preset {name!r}; expected one of {', '.join(sorted(PRESETS))}")
    values: dict[str, Any] = dict(PRESETS[name])
    values.update(overrides)
    values["preset"] = name
    return SearchConfig(**values)


def config_diff(stored: dict[str, Any], given: dict[str, Any], keys=None) -> list[str]:
    """Keys whose values differ between two config dicts, ignoring :data:`RUNTIME_KEYS`.

    Args:
        stored: The ledger's config (``SearchConfig.to_dict()`` plus extras such as ``init_sha256``).
        given: The config asked for now, same form.
        keys: Restrict the comparison to these keys (None = every key in either dict).

    Returns:
        Sorted lines ``"key: ledger=<v>, given=<v>"``; empty when they agree.
    """
    names = set(stored) | set(given) if keys is None else set(keys)
    out = []
    for k in sorted(names - RUNTIME_KEYS):
        a, b = stored.get(k), given.get(k)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            same = float(a) == float(b)
        else:
            same = a == b
        if not same:
            out.append(f"{k}: ledger={a!r}, given={b!r}")
    return out
