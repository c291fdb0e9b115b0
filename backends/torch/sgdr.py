"""Training and evaluation of a plain ``torch.nn.Module`` on a :class:`nashir.data.Dataset`.

NASH (Elsken et al. 2018, arXiv 1711.04528, Sec. 4 / Algorithm 1) trains every neighbour for a few
epochs with SGD and cosine annealing (SGDR, Loshchilov & Hutter 2017, arXiv 1608.03983): one
cosine cycle from ``lr_start`` to ``lr_end`` per call. This module implements that loop, device
resident data (one tensor per split, moved once), per-batch normalisation and augmentation on the
device without per-sample Python, bf16 autocast and channels_last on CUDA, and bitwise-repeatable
runs on CPU for a fixed seed (same thread count).

The graph IR is not needed here: the IR -> torch lowering calls :func:`train_module` with the
module it built.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nashir.data import SPLITS, Dataset
from nashir.errors import BackendError, DataError, NashirError, TrainingDiverged

__all__ = [
    "TrainConfigError",
    "TrainConfig",
    "PRECISIONS",
    "COMPILE_MODES",
    "use_bf16",
    "resolve_device",
    "sgdr_lr",
    "crop_at",
    "random_crop",
    "hflip_where",
    "random_flip",
    "DeviceData",
    "train_module",
    "evaluate_module",
    "cuda_flags",
    "PROGRESS_INTERVAL",
]


#: Values of :attr:`TrainConfig.precision`.
PRECISIONS = ("auto", "fp32", "bf16")

#: Values of :attr:`TrainConfig.compile_mode` (``torch.compile`` modes).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` means bf16 autocast on ``device`` (``auto``: on CUDA only)."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


class TrainConfigError(NashirError):
    """A :class:`TrainConfig` value (or device name) is invalid; bad input, exit code 2."""


# --------------------------------------------------------------------------------------------
# Configuration and schedule
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Hyper-parameters of one :func:`train_module` call.

    Attributes:
        epochs: Number of epochs (passes over ``train_split``) of this call; 0 does nothing.
        lr_start: Learning rate at the start of each SGDR cycle (eta_max of SGDR eq. 5).
        lr_end: Learning rate at the end of each cycle (eta_min), ``0 <= lr_end <= lr_start``.
        momentum: SGD momentum in [0, 1).
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        weight_decay: L2 weight decay (coupled, as in ``torch.optim.SGD``), >= 0.
        batch_size: Images per training step, >= 1. The last batch of an epoch may be smaller.
        sgdr: Cosine annealing per iteration (True) or a constant ``lr_start`` (False).
        t_0: Length of the first SGDR cycle in epochs (T_0); None = one cycle over the whole call
            (``epochs``), as NASH does.
        t_mult: Factor by which each cycle is longer than the previous one (T_mult >= 1).
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        seed: Seed of torch's global RNG (set at the start of the call) and of the data order /
            augmentation generator. On CPU the same seed gives the same run.
        threads: ``torch.set_num_threads`` for the call (restored afterwards); None = unchanged.
        progress: Show a tqdm bar per epoch.
        train_split: Split to train on, ``"train"`` or ``"trainval"`` (NASH's final training).
        eval_split: Split evaluated after every epoch (``"val"``, ``"test"``...), None = none.
        warmup_epochs: Linear learning-rate warm-up at the start of the call, in epochs (>= 0,
            fractional allowed; 0 = none): the SGDR rate of iteration ``s`` is multiplied by
            ``min(1, (s + 1) / W)`` with ``W = round(warmup_epochs * steps_per_epoch)`` (gradual
            warm-up, Goyal et al. 2017, arXiv 1706.02677, Sec. 2.2). NASH's final training uses
            it so that the restart at ``lr_start`` does not throw a converged model out of its
            minimum.
        precision: ``"auto"`` (bf16 autocast on CUDA, float32 on CPU), ``"fp32"`` or ``"bf16"``
            (autocast of the forward pass to bfloat16, weights and optimizer state stay float32;
            on CPU it pays where the processor has native bf16 units, AMX or AVX512-BF16, and is
            slow elsewhere). With bf16 the tensors are channels_last (NHWC in memory).
        compile: Run the full-size training batches through ``torch.compile(module)``. The
            compilation (tens of seconds on CPU, several on CUDA; the first epoch pays it) is
            worth it only when it is small against the training it speeds up: long trainings
            (final training, large data sets), not a few short epochs per candidate. See
            docs/training.md for the measured break-even.
        compile_mode: ``torch.compile``'s mode: ``"default"``, ``"reduce-overhead"`` (CUDA
            graphs: removes the per-kernel launch cost of small networks on a GPU) or
            ``"max-autotune"``.

    Raises:
        TrainConfigError: On construction, for any out-of-range value (the message names it).
    """

    epochs: int
    lr_start: float = 0.05
    lr_end: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    batch_size: int = 128
    sgdr: bool = True
    t_0: int | None = None
    t_mult: int = 1
    device: str = "auto"
    seed: int = 0
    threads: int | None = None
    progress: bool = False
    train_split: str = "train"
    eval_split: str | None = "val"
    warmup_epochs: float = 0.0
    precision: str = "auto"
    compile: bool = False
    compile_mode: str = "default"

    def __post_init__(self) -> None:
        def bad(field: str, expected: str) -> TrainConfigError:
            return TrainConfigError(f"TrainConfig.{field}={getattr(self, field)!r}: expected {expected}")

        def is_int(v: object) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v: object) -> bool:
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        if not is_int(self.epochs) or self.epochs < 0:
            raise bad("epochs", "an integer >= 0")
        for f in ("lr_start", "lr_end", "momentum", "weight_decay"):
            v = getattr(self, f)
            if not is_num(v) or not math.isfinite(v) or v < 0:
                raise bad(f, "a finite number >= 0")
        if self.lr_end > self.lr_start:
            raise TrainConfigError(
                f"TrainConfig: lr_end={self.lr_end} is above lr_start={self.lr_start}; the cosine "
                "schedule anneals from lr_start down to lr_end, so lr_end must be <= lr_start"
            )
        if self.momentum >= 1:
            raise bad("momentum", "a number in [0, 1)")
        if self.nesterov and self.momentum == 0:
            raise TrainConfigError("TrainConfig: nesterov=True needs momentum > 0")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise bad("batch_size", "an integer >= 1")
        if self.t_0 is not None and (not is_int(self.t_0) or self.t_0 < 1):
            raise bad("t_0", "None (one cycle over the call) or an integer number of epochs >= 1")
        if not is_int(self.t_mult) or self.t_mult < 1:
            raise bad("t_mult", "an integer >= 1")
        if not isinstance(self.device, str) or not self.device:
            raise bad("device", "'auto', 'cpu', 'cuda' or 'cuda:N'")
        if not is_int(self.seed) or not 0 <= self.seed < 2**64:
            raise bad("seed", "an integer in [0, 2**64)")
        if self.threads is not None and (not is_int(self.threads) or self.threads < 1):
            raise bad("threads", "None or an integer >= 1")
        if self.train_split not in SPLITS:
            raise bad("train_split", f"one of {', '.join(SPLITS)}")
        if self.eval_split is not None and self.eval_split not in SPLITS:
            raise bad("eval_split", f"None or one of {', '.join(SPLITS)}")
        if not is_num(self.warmup_epochs) or not math.isfinite(self.warmup_epochs) or self.warmup_epochs < 0:
            raise bad("warmup_epochs", "a finite number of epochs >= 0")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"one of {', '.join(PRECISIONS)}")
        if not isinstance(self.compile, (bool, np.bool_)):
            raise bad("compile", "True or False")
        if self.compile_mode not in COMPILE_MODES:
            raise bad("compile_mode", f"one of {', '.join(COMPILE_MODES)}")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn a device name into a :class:`torch.device`.

    Args:
        name: ``"auto"`` (CUDA when ``torch.cuda.is_available()``, else CPU), or any torch device
            string (``"cpu"``, ``"cuda"``, ``"cuda:0"``), or a ``torch.device``.

    Returns:
        The device.

    Raises:
        TrainConfigError: The name is not a device, or CUDA is asked for but not available.
    """
    if isinstance(name, torch.device):
        dev = name
    elif name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    else:
        try:
            dev = torch.device(name)
        except (RuntimeError, TypeError, ValueError) as e:
            raise TrainConfigError(
                f"device {name!r} is not a torch device; use 'auto', 'cpu' or 'cuda[:N]'"
            ) from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainConfigError(
                f"device {str(dev)!r} asked for, but CUDA is not available; use 'cpu' or 'auto'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainConfigError(
                f"device {str(dev)!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    return dev


def sgdr_lr(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning rate of one iteration under SGDR.

    Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", arXiv 1608.03983,
    Sec. 3, eq. (5):  ``eta_t = eta_min + 1/2 (eta_max - eta_min) (1 + cos(pi * T_cur / T_i))``,
    with ``eta_max = cfg.lr_start``, ``eta_min = cfg.lr_end``, ``T_cur`` the epochs (fractional,
    updated every iteration: ``T_cur = s / steps_per_epoch`` for the ``s``-th step of the cycle)
    since the last restart, and ``T_i`` the length of the current cycle in epochs:
    ``T_0 = cfg.t_0``, ``T_{i+1} = T_i * cfg.t_mult``. With ``cfg.t_0 = None`` there is a single
    cycle of ``T_0 = cfg.epochs`` epochs (NASH, arXiv 1711.04528, Sec. 4); steps at or past its end
    get ``lr_end``. With ``cfg.sgdr = False`` the rate is ``lr_start`` throughout. A warm-up
    (``cfg.warmup_epochs > 0``) multiplies the rate of step ``s`` by ``min(1, (s + 1) / W)``,
    ``W = max(1, round(cfg.warmup_epochs * steps_per_epoch))`` (Goyal et al. 2017, arXiv
    1706.02677, Sec. 2.2).

    Args:
        step: 0-based iteration index within the :func:`train_module` call.
        steps_per_epoch: Iterations per epoch (>= 1).
        cfg: Supplies ``lr_start, lr_end, sgdr, t_0, t_mult, epochs``.

    Returns:
        The learning rate for that iteration.

    Raises:
        TrainConfigError: ``step < 0`` or ``steps_per_epoch < 1``.
    """
    if step < 0 or steps_per_epoch < 1:
        raise TrainConfigError(
            f"sgdr_lr: need step >= 0 and steps_per_epoch >= 1, got {step}, {steps_per_epoch}"
        )
    warm = 1.0
    if cfg.warmup_epochs > 0:
        w = max(1, int(round(cfg.warmup_epochs * steps_per_epoch)))
        warm = min(1.0, (step + 1) / w)
    return warm * _cosine_lr(step, steps_per_epoch, cfg)


def _cosine_lr(step: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    if not cfg.sgdr:
        return float(cfg.lr_start)
    if cfg.t_0 is None:
        cycle = cfg.epochs * steps_per_epoch
        if cycle <= 0:
            return float(cfg.lr_start)
        t_cur = min(step, cycle)
    else:
        # Integer arithmetic in steps, so restarts land exactly on epoch boundaries.
        cycle = cfg.t_0 * steps_per_epoch
        t_cur = step
        if cfg.t_mult == 1:
            t_cur %= cycle
        else:
            while t_cur >= cycle:
                t_cur -= cycle
                cycle *= cfg.t_mult
    return float(cfg.lr_end + 0.5 * (cfg.lr_start - cfg.lr_end) * (1.0 + math.cos(math.pi * t_cur / cycle)))


# --------------------------------------------------------------------------------------------
# Augmentation (batched, on the device)
# --------------------------------------------------------------------------------------------


def crop_at(padded: torch.Tensor, off_y: torch.Tensor, off_x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Crop one window per image at given offsets, by advanced indexing (no per-sample loop).

    Args:
        padded: Images (B, C, Hp, Wp), any dtype.
        off_y: Top offsets (B,) int64 in ``[0, Hp - h]``.
        off_x: Left offsets (B,) int64 in ``[0, Wp - w]``.
        h: Crop height in pixels.
        w: Crop width in pixels.

    Returns:
        (B, C, h, w) with ``out[b] == padded[b, :, off_y[b]:off_y[b]+h, off_x[b]:off_x[b]+w]``.
    """
    b, c = padded.shape[:2]
    dev = padded.device
    rows = off_y.to(dev).view(b, 1) + torch.arange(h, device=dev).view(1, h)  # (B, h)
    cols = off_x.to(dev).view(b, 1) + torch.arange(w, device=dev).view(1, w)  # (B, w)
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def random_crop(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop of the original size from a zero-padded batch.

    The augmentation of the CIFAR ResNet recipe (He et al. 2016, arXiv 1512.03385, Sec. 4.2) that
    NASH uses: pad each side by ``pad`` pixels of value 0 (in raw pixel units, i.e. black, before
    normalisation), then take a window of the original size at a uniformly random offset.

    Args:
        x: Images (B, C, H, W), raw values (uint8 or float).
        pad: Zero padding per side, in pixels.
        generator: Torch generator on ``x.device`` (None: torch's default generator).

    Returns:
        (B, C, H, W), same dtype and device as ``x``.
    """
    if pad <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="constant", value=0)
    off = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=x.device)
    return crop_at(padded, off[0], off[1], h, w)


def hflip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror (flip along W) the images where ``mask`` is True.

    Args:
        x: Images (B, C, H, W).
        mask: (B,) bool.

    Returns:
        (B, C, H, W): ``x[b].flip(-1)`` where ``mask[b]``, else ``x[b]``.
    """
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Horizontal flip of each image with probability ``p`` (see :func:`hflip_where`)."""
    mask = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return hflip_where(x, mask)


# --------------------------------------------------------------------------------------------
# Device-resident data
# --------------------------------------------------------------------------------------------


class DeviceData:
    """One split of a :class:`Dataset`, moved to the device once, served in normalised batches.

    The images stay in their stored dtype on the device (uint8 CIFAR: 1 byte per pixel, 150 MB for
    50 000 images) and are converted per batch: optional augmentation (random crop from
    ``pad``-pixel zero padding, random horizontal flip) on the raw values, then
    ``(x - mean) / std`` in float32. Batch order comes from a permutation drawn per epoch from a
    seeded :class:`torch.Generator` on the device, which also drives augmentation.

    Args:
        data: The data set.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"``.
        device: Target device.
        augment: Augment batches (training only; evaluation passes False).
        seed: Seed of the generator for shuffling and augmentation.
        pad: Zero padding of the random crop, in pixels (None = the data set's ``crop_pad``).
        flip: Random horizontal flips (None = the data set's ``flip``).

    Attributes:
        x: (N, C, H, W) images on the device, stored dtype.
        y: (N,) int64 labels on the device.
        generator: The seeded generator.

    Raises:
        DataError: Unknown split, or an empty one.
    """

    def __init__(
        self,
        data: Dataset,
        split: str,
        device: torch.device | str,
        *,
        augment: bool = False,
        seed: int = 0,
        pad: int | None = None,
        flip: bool | None = None,
    ):
        x, y = data.split(split)
        if len(y) == 0:
            raise DataError(
                f"data set {data.name!r}: split {split!r} is empty; nothing to train or evaluate on"
            )
        self.device = torch.device(device)
        self.split = split
        self.augment = bool(augment)
        self.pad = int(data.crop_pad if pad is None else pad)
        self.flip = bool(data.flip if flip is None else flip)
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        self.y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)).to(self.device)
        c = x.shape[1]
        self._scale = torch.from_numpy(1.0 / data.std.astype(np.float32)).to(self.device).view(1, c, 1, 1)
        self._shift = torch.from_numpy(-data.mean.astype(np.float32) / data.std.astype(np.float32))
        self._shift = self._shift.to(self.device).view(1, c, 1, 1)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def num_batches(self, batch_size: int, *, shuffle: bool = False) -> int:
        """Batches per epoch of :meth:`batches` with the same arguments.

        ``ceil(N / batch_size)`` (the last one may be smaller), one fewer when ``shuffle`` merges
        a last batch of a single image into the one before.
        """
        n = len(self)
        k = (n + batch_size - 1) // batch_size
        if shuffle and k > 1 and n % batch_size == 1:
            k -= 1
        return k

    def prepare(self, xb: torch.Tensor, augment: bool | None = None) -> torch.Tensor:
        """Augment (if asked) and normalise a raw batch (B, C, H, W) -> float32 (B, C, H, W)."""
        if self.augment if augment is None else augment:
            xb = random_crop(xb, self.pad, self.generator)
            if self.flip:
                xb = random_flip(xb, self.generator)
        return xb.to(torch.float32) * self._scale + self._shift

    def batches(
        self, batch_size: int, *, shuffle: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over one epoch.

        Args:
            batch_size: Images per batch.
            shuffle: Draw a fresh permutation from :attr:`generator` (else the stored order). This
                is the training order, so a last batch of a single image is merged into the one
                before (``batch_size + 1`` images): BatchNorm in training mode cannot normalise
                one image over a flat feature axis (N, F).

        Yields:
            ``(x, y)``: x (B, C, H, W) float32 normalised (augmented if :attr:`augment`), y (B,)
            int64, both on the device.
        """
        n = len(self)
        order = torch.randperm(n, generator=self.generator, device=self.device) if shuffle else None
        starts = list(range(0, n, batch_size))[: self.num_batches(batch_size, shuffle=shuffle)]
        for j, start in enumerate(starts):
            stop = n if j == len(starts) - 1 else start + batch_size
            if order is None:
                xb, yb = self.x[start:stop], self.y[start:stop]
            else:
                idx = order[start:stop]
                xb, yb = self.x[idx], self.y[idx]
            yield self.prepare(xb), yb


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


def _forward(module: torch.nn.Module, xb: torch.Tensor, epoch: int | None, step: int) -> torch.Tensor:
    """``module(xb)``; a failure inside torch becomes a BackendError that says where."""
    try:
        return module(xb)
    except (RuntimeError, ValueError) as e:
        where = f"epoch {epoch}, step {step}" if epoch is not None else f"evaluation batch {step}"
        raise BackendError(
            f"the forward pass failed on a batch of {xb.shape[0]} images ({where}): {type(e).__name__}: {e}"
        ) from e


def _check_logits(out: torch.Tensor, num_classes: int, batch: int) -> None:
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or tuple(out.shape) != (batch, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BackendError(
            f"the module's output for a batch of {batch} images has shape {shape}; expected logits "
            f"(batch, {num_classes}) = ({batch}, {num_classes}), one row per image, for a "
            f"{num_classes}-class data set (a Reshape that changes the batch size?)"
        )


def _finite_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """The module's floating parameters and buffers that hold only finite values (one sync).

    A constant that is not finite from the start (a ``-inf`` mask, say) is left out, so that
    :func:`_check_finite_state` flags only what training broke.
    """
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point() and t.numel()]
    if not tensors:
        return []
    flags = torch.stack([torch.isfinite(t).all() for t in tensors]).tolist()
    return [t for t, ok in zip(tensors, flags) if ok]


def _check_finite_state(tensors: list[torch.Tensor], epoch: int, step: int, lr: float) -> None:
    """Raise TrainingDiverged when one of ``tensors`` now holds NaN or inf (one sync)."""
    if not tensors:
        return
    ok = torch.stack([torch.isfinite(t).all() for t in tensors]).all()
    if not bool(ok.item()):
        raise TrainingDiverged(
            f"after epoch {epoch} (step {step}, lr {lr:.4g}) the weights hold NaN or infinite values "
            "although each training loss was finite; lower lr_start or check the model for exploding "
            "activations",
            epoch=epoch,
            step=step,
        )


#: Seconds between two refreshes of a training progress bar; each refresh reads one loss from the
#: device (a host sync), so the bar costs at most a couple of syncs per second, not one per step.
PROGRESS_INTERVAL = 0.5


@contextlib.contextmanager
def cuda_flags(device: torch.device) -> Iterator[None]:
    """On a CUDA device, ``torch.backends.cudnn.benchmark = True`` for the duration (cuDNN times
    its convolution algorithms once per input shape and keeps the fastest; the batch shape is fixed
    within a call, so this pays after the first step); the previous value is restored afterwards.
    Does nothing on other devices (CPU runs stay bitwise repeatable)."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def _first_nonfinite(values: list[float]) -> int | None:
    """Index of the first NaN or infinite entry of ``values``, or None."""
    for k, v in enumerate(values):
        if not math.isfinite(v):
            return k
    return None


def _evaluate(
    module: torch.nn.Module, dd: DeviceData, num_classes: int, batch_size: int, bf16: bool | None = None
) -> tuple[float, float]:
    was_training = module.training
    module.eval()
    bf16 = use_bf16("auto", dd.device) if bf16 is None else bf16
    correct = torch.zeros((), dtype=torch.int64, device=dd.device)
    loss_sum = torch.zeros((), dtype=torch.float32, device=dd.device)
    try:
        with torch.no_grad(), torch.autocast(dd.device.type, dtype=torch.bfloat16, enabled=bf16):
            for i, (xb, yb) in enumerate(dd.batches(batch_size)):
                if bf16 and xb.ndim == 4:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                out = _forward(module, xb, None, i)
                _check_logits(out, num_classes, xb.shape[0])
                out = out.float()
                loss_sum += F.cross_entropy(out, yb, reduction="sum")
                correct += (out.argmax(1) == yb).sum()
    finally:
        module.train(was_training)
    n = len(dd)
    c, loss = torch.stack([correct.double(), loss_sum.double()]).tolist()   # the one host sync
    return int(c) / n, loss / n


def evaluate_module(
    module: torch.nn.Module,
    data: Dataset,
    split: str,
    device: str | torch.device | None = None,
    batch_size: int = 512,
    precision: str = "auto",
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of a classifier on one split.

    Runs in eval mode (BatchNorm running statistics, no dropout) under ``torch.no_grad``; the
    module's previous train/eval mode is restored afterwards. With bf16 (``precision``, see
    :class:`TrainConfig`; ``auto`` = on CUDA) the forward pass runs under bf16 autocast with
    channels_last inputs.

    Args:
        module: Maps (B, C, H, W) float32 normalised images to logits (B, num_classes).
        data: The data set (normalised with its ``mean`` / ``std``; never augmented here).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"``.
        device: Where to evaluate; None = the device of the module's first parameter (CPU if it
            has none). The module is moved there.
        batch_size: Images per forward pass.
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"`` (see :class:`TrainConfig`).

    Returns:
        ``(accuracy, loss)``: the fraction of correct top-1 predictions in [0, 1] and the mean
        cross-entropy (nats per image).

    Raises:
        DataError: Unknown or empty split.
        BackendError: The module's output is not (B, num_classes).
        TrainConfigError: Bad device name or unavailable CUDA.
    """
    if device is None:
        p = next(module.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
    else:
        dev = resolve_device(device)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise TrainConfigError(f"evaluate_module: batch_size={batch_size!r}: expected an integer >= 1")
    if precision not in PRECISIONS:
        raise TrainConfigError(
            f"evaluate_module: precision={precision!r}: expected one of {', '.join(PRECISIONS)}"
        )
    bf16 = use_bf16(precision, dev)
    module.to(dev)
    if bf16:
        module.to(memory_format=torch.channels_last)
    dd = DeviceData(data, split, dev)
    try:
        with cuda_flags(dev):
            return _evaluate(module, dd, data.num_classes, batch_size, bf16)
    finally:
        if bf16:
            module.to(memory_format=torch.contiguous_format)


def _compiled(module: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module | None:
    """``torch.compile(module)`` when ``cfg.compile`` (None otherwise); compiled lazily on its first
    call. Raises BackendError when torch cannot compile at all."""
    if not cfg.compile:
        return None
    try:
        return torch.compile(module, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    except (RuntimeError, ValueError) as e:
        raise BackendError(
            f"torch.compile (compile_mode={cfg.compile_mode!r}) is not available here: {type(e).__name__}: "
            f"{e}; train without --compile"
        ) from e


def train_module(
    module: torch.nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    on_first_batch: Callable[[torch.nn.Module, torch.Tensor], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train a classifier in place with SGD + momentum + weight decay under SGDR.

    The learning rate is set before every iteration by :func:`sgdr_lr` (SGDR, arXiv 1608.03983,
    eq. 5; one cosine cycle over the call unless ``cfg.t_0`` is set, as in NASH, arXiv
    1711.04528, Sec. 4). Loss: cross-entropy on the logits. The training split lives on the device
    as one tensor (:class:`DeviceData`); batches are normalised and, when ``data.augment``,
    augmented on the device. With bf16 (``cfg.precision``; by default on CUDA) the forward pass
    runs under bf16 autocast with channels_last tensors; on CUDA ``cudnn.benchmark`` is on for the
    call (:func:`cuda_flags`); on CPU the run is deterministic for ``cfg.seed`` (given the same
    thread count and precision). With ``cfg.compile`` the full-size training batches run through
    ``torch.compile(module)`` (compiled on the first one); the last, smaller batch of an epoch, the
    first-batch callback and the evaluation run the module itself, so that one compilation serves
    the call.

    No host-device synchronisation per step: each step's loss is written into a device tensor of
    the epoch's losses and the correct predictions are summed on the device; both are read once at
    the end of the epoch (one sync), where divergence is checked. A progress bar reads one loss at
    most every :data:`PROGRESS_INTERVAL` seconds.

    Side effects: the module is moved to the device and left there (in train mode, default memory
    format); ``torch.manual_seed(cfg.seed)`` reseeds torch's global RNG; ``cfg.threads`` is applied
    with ``torch.set_num_threads`` for the call and then restored.

    Args:
        module: Maps (B, C, H, W) float32 normalised images (NCHW) to logits (B, num_classes).
        data: The data set; ``cfg.train_split`` is trained on, ``cfg.eval_split`` evaluated after
            every epoch.
        cfg: Hyper-parameters.
        on_first_batch: Called once as ``on_first_batch(module, xb)`` with the first normalised
            (and augmented) training batch xb (B, C, H, W) float32 on the device, after the module
            is moved there and put in train mode, before the first forward pass and optimizer step
            (the lowering calibrates identity BatchNorms with it). Not called when
            ``cfg.epochs == 0``.
        on_epoch: Called with each epoch's history dict as soon as the epoch is done (e.g. to print
            it while training goes on).

    Returns:
        One dict per epoch: ``epoch`` (0-based), ``loss`` (mean training cross-entropy over the
        epoch's images), ``train_acc`` (on the augmented training batches, in [0, 1]), ``val_acc``
        (accuracy on ``cfg.eval_split`` after the epoch, None if ``eval_split`` is None), ``lr``
        (the rate of the epoch's last iteration), ``seconds`` (wall time of the epoch, including
        evaluation and, in the first epoch, a ``torch.compile``).

    Raises:
        TrainingDiverged: The loss of an iteration is NaN or infinite, or after an epoch a
            parameter / buffer is not finite or the ``eval_split`` loss is NaN or infinite (the last
            update overflowed); ``epoch`` and ``step`` (0-based, step within the epoch) say where.
            It is raised at the end of that epoch (the losses are read once per epoch), so the
            epoch's later steps ran on non-finite values and the module's weights are not usable.
        BackendError: The module's output is not (B, num_classes), or ``torch.compile`` failed.
        DataError: Unknown or empty split.
        TrainConfigError: Bad device.
    """
    device = resolve_device(cfg.device)
    if cfg.epochs == 0:
        return []
    old_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    bf16 = use_bf16(cfg.precision, device)
    try:
        with cuda_flags(device):
            return _train(module, data, cfg, device, bf16, on_first_batch, on_epoch)
    finally:
        if bf16:
            module.to(memory_format=torch.contiguous_format)
        if cfg.threads is not None:
            torch.set_num_threads(old_threads)


def _train(module, data, cfg, device, bf16, on_first_batch, on_epoch=None) -> list[dict]:
    torch.manual_seed(cfg.seed)
    module.to(device)
    if bf16:
        module.to(memory_format=torch.channels_last)
    train_dd = DeviceData(data, cfg.train_split, device, augment=data.augment, seed=cfg.seed)
    eval_dd = DeviceData(data, cfg.eval_split, device) if cfg.eval_split is not None else None
    watched = _finite_tensors(module)
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise BackendError("train_module: the module has no trainable parameters")
    opt: torch.optim.SGD | None = None  # built after on_first_batch, which may touch params
    compiled = None
    spe = train_dd.num_batches(cfg.batch_size, shuffle=True)
    # the epoch's per-step losses and its correct predictions, on the device: read once per epoch
    step_losses = torch.zeros(spe, dtype=torch.float32, device=device)
    history: list[dict] = []
    step = 0
    first = True
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        module.train()
        epoch_start = step
        sizes: list[int] = []
        correct = torch.zeros((), dtype=torch.int64, device=device)
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=spe, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, unit="batch")
        next_refresh = time.monotonic() + PROGRESS_INTERVAL
        lr = cfg.lr_start
        try:
            for i, (xb, yb) in enumerate(train_dd.batches(cfg.batch_size, shuffle=True)):
                if bf16 and xb.ndim == 4:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                if first:
                    first = False
                    if on_first_batch is not None:
                        try:
                            on_first_batch(module, xb)
                        except (RuntimeError, ValueError) as e:
                            raise BackendError(
                                f"the first-batch callback (BatchNorm calibration) failed on a batch "
                                f"of {xb.shape[0]} images: {type(e).__name__}: {e}"
                            ) from e
                        module.train()
                    opt = torch.optim.SGD(
                        [p for p in module.parameters() if p.requires_grad],
                        lr=cfg.lr_start,
                        momentum=cfg.momentum,
                        nesterov=cfg.nesterov,
                        weight_decay=cfg.weight_decay,
                    )
                    compiled = _compiled(module, cfg)
                lr = sgdr_lr(step, spe, cfg)
                for g in opt.param_groups:
                    g["lr"] = lr
                fwd = compiled if compiled is not None and xb.shape[0] == cfg.batch_size else module
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = _forward(fwd, xb, epoch, i)
                _check_logits(out, data.num_classes, xb.shape[0])
                out = out.float()
                loss = F.cross_entropy(out, yb)
                assert opt is not None
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step_losses[i] = loss.detach()   # no .item(): the device keeps running ahead
                correct += (out.detach().argmax(1) == yb).sum()
                sizes.append(int(yb.shape[0]))
                step += 1
                if bar is not None and (time.monotonic() >= next_refresh or i == spe - 1):
                    bar.set_postfix(loss=f"{step_losses[i].item():.3f}", lr=f"{lr:.3g}", refresh=False)
                    bar.update(i + 1 - bar.n)
                    next_refresh = time.monotonic() + PROGRESS_INTERVAL
        finally:
            if bar is not None:
                bar.close()
        # the epoch's one read from the device: its losses and its count of correct predictions
        read = torch.cat([step_losses[: len(sizes)].double(), correct.double().view(1)]).tolist()
        losses, n_correct = read[:-1], read[-1]
        bad = _first_nonfinite(losses)
        if bad is not None:
            raise TrainingDiverged(
                f"training loss became {losses[bad]} at epoch {epoch}, step {bad} (iteration "
                f"{epoch_start + bad} of the call, lr {sgdr_lr(epoch_start + bad, spe, cfg):.4g}); lower "
                "lr_start or check the model for exploding activations",
                epoch=epoch,
                step=bad,
            )
        loss_sum = 0.0
        for v, b in zip(losses, sizes):
            loss_sum += v * b
        n = len(train_dd)
        _check_finite_state(watched, epoch, spe - 1, lr)
        val_acc = None
        if eval_dd is not None:
            val_acc, val_loss = _evaluate(module, eval_dd, data.num_classes, max(cfg.batch_size, 512), bf16)
            if not math.isfinite(val_loss):
                raise TrainingDiverged(
                    f"after epoch {epoch} (step {spe - 1}, lr {lr:.4g}) the {cfg.eval_split} loss is "
                    f"{val_loss}: the network's outputs overflow although each training loss was "
                    "finite; lower lr_start or check the model for exploding activations",
                    epoch=epoch,
                    step=spe - 1,
                )
        history.append(
            {
                "epoch": epoch,
                "loss": loss_sum / n,
                "train_acc": int(n_correct) / n,
                "val_acc": val_acc,
                "lr": lr,
                "seconds": time.perf_counter() - t0,
            }
        )
        if on_epoch is not None:
            on_epoch(dict(history[-1]))
    module.train()
    return history
