"""Image classification data sets as numpy arrays (NCHW), read from local files only.

:func:`load_dataset` returns a :class:`Dataset`: train / validation / test arrays, the number of
classes, the per-channel normalisation and whether training batches are augmented. Nothing here
downloads anything and nothing imports torch; the torch backend moves the arrays to the device
once and normalises / augments per batch there (``nashir.backends.torch.sgdr.DeviceData``).

Accepted specs:

``digits``
    scikit-learn's bundled 8x8 digits (1797 images, 1 channel, values 0..16 stored as float32,
    10 classes), a stratified split seeded by ``seed`` into 60 % train, 20 % validation,
    20 % test. Augmentation off by default.
``cifar10`` / ``cifar100``
    The official CIFAR files in ``data_dir``, either the python version (pickled batches, read
    through a restricted unpickler that can build numpy arrays and nothing else) or the binary
    version. The NASH paper (Elsken et al. 2018, arXiv 1711.04528, Sec. 5.1) trains on 40 000 of
    the 50 000 training images and validates on the other 10 000; nashir holds out the *last*
    fifth of the training files (for the full set: the last 10 000 images, i.e. ``data_batch_5``)
    as validation. The split is fixed and independent of ``seed``. Stored as uint8; normalisation
    from the training part; augmentation (random crop from 4-pixel zero padding, horizontal flip)
    on by default.
``fashion-mnist`` / ``mnist``
    The four official IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each raw or ``.gz``) in ``data_dir``;
    without ``data_dir``, in ``$NASHIR_DATA/<name>`` and then ``/usr/share/datasets/<name>``, where
    Debian's ``dataset-fashion-mnist`` package installs Fashion-MNIST. 28x28 grey images, uint8,
    10 classes. The last 10 000 of the 60 000 training images are the validation set (as the NASH
    paper holds out the last 10 000 CIFAR training images), the official 10 000 test images the
    test set. Augmentation on by default: random crop from 2-pixel zero padding, plus horizontal
    flip for Fashion-MNIST only (a mirrored digit is another glyph; mirrored clothing is not).
``npz:PATH``
    A ``.npz`` file with ``x`` (N, C, H, W) uint8 or float and ``y`` (N,) integer labels, and
    optionally ``x_val, y_val`` and/or ``x_test, y_test``. A missing validation / test part is
    carved out of ``x, y`` by a stratified split seeded by ``seed`` (15 % of ``x`` each, so
    70 / 15 / 15 when neither is given). Augmentation off by default.

Errors: every problem (unknown spec, missing folder or file, malformed file, refused pickle
global) raises :class:`nashir.errors.DataError` naming the file and what was expected.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nashir.errors import DataError

__all__ = ["Dataset", "load_dataset", "read_idx", "SPLITS", "DATASET_NAMES", "RestrictedUnpickler"]

#: Split names accepted by :meth:`Dataset.split`.
SPLITS = ("train", "val", "test", "trainval")
#: Data set specs accepted by :func:`load_dataset` (``npz:PATH`` takes a path after the colon).
DATASET_NAMES = ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "npz:PATH")
#: Folders searched, in order, for the IDX files of ``fashion-mnist`` / ``mnist`` when no
#: ``data_dir`` is given: ``$NASHIR_DATA/<name>``, then this one (``/usr/share/datasets/<name>``).
SYSTEM_DATA_DIR = Path("/usr/share/datasets")

_CIFAR_PIXELS = 3 * 32 * 32


# --------------------------------------------------------------------------------------------
# The data set container
# --------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Train / validation / test arrays of one image classification data set.

    Attributes:
        name: Human-readable name (``"cifar10"``, ``"digits"``, ``"npz:/path/file.npz"``).
        x_train: Training images, shape (N, C, H, W) NCHW, dtype uint8 or float32, raw values.
        y_train: Training labels, shape (N,), int64 in ``[0, num_classes)``.
        x_val: Validation images, (N_val, C, H, W), same dtype as ``x_train``.
        y_val: Validation labels, (N_val,) int64.
        x_test: Test images, (N_test, C, H, W), same dtype as ``x_train``.
        y_test: Test labels, (N_test,) int64.
        num_classes: Number of classes.
        mean: Per-channel mean, shape (C,) float32, in units of the raw stored values (e.g.
            0..255 for uint8 CIFAR), computed from the training split.
        std: Per-channel standard deviation, shape (C,) float32, same units; a channel with zero
            spread gets 1. The trainer feeds ``(x - mean) / std`` to the network.
        augment: Whether training batches are augmented (random crop from ``crop_pad``-pixel zero
            padding and, if ``flip``, a random horizontal flip; done per batch on the device by
            the trainer).
        crop_pad: Zero padding of the random crop, pixels per side (CIFAR 4, (Fashion-)MNIST 2).
        flip: Whether augmentation mirrors images horizontally with probability 1/2.

    Raises:
        DataError: On construction, if the arrays do not fit together (ndim, lengths, channel
            count, dtype, label range).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: np.ndarray
    std: np.ndarray
    augment: bool = False
    crop_pad: int = 4
    flip: bool = True

    def __post_init__(self) -> None:
        pad = self.crop_pad
        if not isinstance(pad, (int, np.integer)) or isinstance(pad, bool) or pad < 0:
            raise DataError(f"data set {self.name!r}: crop_pad must be an integer >= 0, got {pad!r}")
        self.crop_pad = int(self.crop_pad)
        self.flip = bool(self.flip)
        shape = None
        for part in ("train", "val", "test"):
            x = getattr(self, f"x_{part}")
            y = getattr(self, f"y_{part}")
            if not isinstance(x, np.ndarray) or x.ndim != 4:
                raise DataError(
                    f"data set {self.name!r}: x_{part} must be a 4-D numpy array (N, C, H, W), "
                    f"got {getattr(x, 'shape', type(x).__name__)}"
                )
            if x.dtype not in (np.uint8, np.float32):
                raise DataError(
                    f"data set {self.name!r}: x_{part} has dtype {x.dtype}; expected uint8 or float32"
                )
            if not isinstance(y, np.ndarray) or y.ndim != 1 or len(y) != len(x):
                raise DataError(
                    f"data set {self.name!r}: y_{part} must be a 1-D array with one label per image "
                    f"({len(x)}), got shape {getattr(y, 'shape', None)}"
                )
            if y.dtype != np.int64:
                raise DataError(f"data set {self.name!r}: y_{part} has dtype {y.dtype}; expected int64")
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise DataError(
                    f"data set {self.name!r}: y_{part} has labels in [{y.min()}, {y.max()}], outside "
                    f"[0, {self.num_classes}) for num_classes={self.num_classes}"
                )
            if shape is None:
                shape = x.shape[1:]
            elif x.shape[1:] != shape:
                raise DataError(
                    f"data set {self.name!r}: x_{part} images have shape {x.shape[1:]}, but x_train "
                    f"has {shape}; all splits need the same (C, H, W)"
                )
        c = self.x_train.shape[1]
        self.mean = np.asarray(self.mean, dtype=np.float32).reshape(-1)
        self.std = np.asarray(self.std, dtype=np.float32).reshape(-1)
        if self.mean.shape != (c,) or self.std.shape != (c,):
            raise DataError(
                f"data set {self.name!r}: mean/std must have one value per channel ({c}), got "
                f"{self.mean.shape} and {self.std.shape}"
            )
        if not (np.all(np.isfinite(self.std)) and np.all(self.std > 0)):
            raise DataError(f"data set {self.name!r}: std must be finite and > 0, got {self.std}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of one split.

        Args:
            name: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"`` (train and validation
                concatenated, in that order; a new array, used for NASH's final training).

        Returns:
            ``(x, y)``: x of shape (N, C, H, W) (uint8 or float32), y of shape (N,) int64.

        Raises:
            DataError: ``name`` is not one of the splits above.
        """
        if name == "train":
            return self.x_train, self.y_train
        if name == "val":
            return self.x_val, self.y_val
        if name == "test":
            return self.x_test, self.y_test
        if name == "trainval":
            return (
                np.concatenate([self.x_train, self.x_val]),
                np.concatenate([self.y_train, self.y_val]),
            )
        raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")

    def __repr__(self) -> str:
        c, h, w = self.input_shape
        return (
            f"Dataset({self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
            f"test={len(self.y_test)}, input=({c}, {h}, {w}) {self.x_train.dtype}, "
            f"classes={self.num_classes}, augment={self.augment}"
            + (f" (crop pad {self.crop_pad}{', flip' if self.flip else ''})" if self.augment else "")
            + ")"
        )


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def load_dataset(
    spec: str,
    data_dir: str | Path | None = None,
    seed: int = 0,
    augment: bool | None = None,
) -> Dataset:
    """Load a data set from local files (never downloads).

    Args:
        spec: ``"digits"``, ``"fashion-mnist"``, ``"mnist"``, ``"cifar10"``, ``"cifar100"`` or
            ``"npz:PATH"`` (case of the name does not matter). See the module docstring for each.
        data_dir: Folder holding the CIFAR files (either official layout; required for
            ``cifar10`` / ``cifar100``) or the IDX files (``fashion-mnist`` / ``mnist``; optional,
            see the module docstring for the folders searched without it); ignored otherwise.
        seed: Seed (an integer >= 0) of the stratified splits of ``digits`` and ``npz`` (the CIFAR
            split is fixed).
        augment: Override the data set's default augmentation flag (on for CIFAR and
            (Fashion-)MNIST, off otherwise).

    Returns:
        The :class:`Dataset`, images NCHW.

    Raises:
        DataError: Unknown spec (the message lists the accepted ones), missing ``data_dir`` or
            files (the message lists the expected files and both layouts), malformed files, a
            pickle that asks for anything but numpy arrays, a negative or non-integer seed.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data set spec must be a non-empty string; expected one of {_names()}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"data set seed {seed!r}: expected an integer >= 0 (CLI: --seed)")
    spec = spec.strip()
    head, sep, rest = spec.partition(":")
    name = head.lower()
    if name == "npz" and sep:
        ds = _load_npz(Path(rest).expanduser(), seed)
    elif name == "npz":
        raise DataError("data set spec 'npz' needs a path: 'npz:PATH' (a .npz file with arrays x and y)")
    elif sep:
        raise DataError(f"unknown data set {spec!r}; expected one of {_names()}")
    elif name == "digits":
        ds = _load_digits(seed)
    elif name in ("cifar10", "cifar100"):
        ds = _load_cifar(name, data_dir)
    elif name in _IDX_SETS:
        ds = _load_idx_set(name, data_dir)
    else:
        raise DataError(f"unknown data set {spec!r}; expected one of {_names()}")
    if augment is not None:
        ds.augment = bool(augment)
    return ds


def _names() -> str:
    return ", ".join(DATASET_NAMES)


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of x (N, C, H, W), in float64, without big copies."""
    c = x.shape[1]
    mean = np.zeros(c, np.float64)
    std = np.ones(c, np.float64)
    if x.shape[0] == 0 or x[0].size == 0:
        return mean.astype(np.float32), std.astype(np.float32)
    for ch in range(c):
        plane = x[:, ch]
        if x.dtype == np.uint8:
            # Exact and cheap: a 256-bin histogram instead of a float copy of the channel.
            counts = np.bincount(plane.reshape(-1), minlength=256).astype(np.float64)
            values = np.arange(256, dtype=np.float64)
            n = counts.sum()
            m = (counts * values).sum() / n
            var = (counts * (values - m) ** 2).sum() / n
        else:
            flat = plane.reshape(plane.shape[0], -1)
            n = flat.size
            m = sum(float(flat[i : i + 4096].sum(dtype=np.float64)) for i in range(0, len(flat), 4096)) / n
            var = (
                sum(
                    float(((flat[i : i + 4096].astype(np.float64) - m) ** 2).sum())
                    for i in range(0, len(flat), 4096)
                )
                / n
            )
        mean[ch] = m
        s = float(np.sqrt(var))
        std[ch] = s if s > 0 and np.isfinite(s) else 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def _stratified_split(y: np.ndarray, n_out: int, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, out) with ``n_out`` held out, stratified by y when every class allows it."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if n_out <= 0:
        return idx, idx[:0]
    if n_out >= len(y):
        raise DataError(f"{what}: cannot hold out {n_out} of {len(y)} samples; provide more data")
    classes, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 and len(classes) <= min(n_out, len(y) - n_out) else None
    # scikit-learn takes seeds in [0, 2**32); larger seeds (and seed + 1 at the top) wrap around.
    keep, out = train_test_split(
        idx, test_size=n_out, random_state=int(seed) % 2**32, shuffle=True, stratify=stratify
    )
    return np.sort(keep), np.sort(out)


def _make(
    name: str,
    xtr: np.ndarray,
    ytr: np.ndarray,
    xva: np.ndarray,
    yva: np.ndarray,
    xte: np.ndarray,
    yte: np.ndarray,
    num_classes: int,
    augment: bool,
    crop_pad: int = 4,
    flip: bool = True,
) -> Dataset:
    mean, std = _channel_stats(xtr)
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(xtr),
        y_train=np.ascontiguousarray(ytr, dtype=np.int64),
        x_val=np.ascontiguousarray(xva),
        y_val=np.ascontiguousarray(yva, dtype=np.int64),
        x_test=np.ascontiguousarray(xte),
        y_test=np.ascontiguousarray(yte, dtype=np.int64),
        num_classes=int(num_classes),
        mean=mean,
        std=std,
        augment=augment,
        crop_pad=crop_pad,
        flip=flip,
    )


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def _load_digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]  # (1797, 1, 8, 8), values 0..16
    y = bunch.target.astype(np.int64)
    n = len(y)
    n_test = int(round(0.2 * n))
    n_val = int(round(0.2 * n))
    rest, test = _stratified_split(y, n_test, seed, "digits")
    keep, val = _stratified_split(y[rest], n_val, seed + 1, "digits")
    train, val = rest[keep], rest[val]
    return _make("digits", x[train], y[train], x[val], y[val], x[test], y[test], 10, augment=False)


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The exact globals CIFAR's python pickles (and numpy array pickles in general) need."""
    try:  # numpy >= 2
        from numpy._core import multiarray as _ma
        from numpy._core import numeric as _num
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray as _ma  # type: ignore[no-redef]
        from numpy.core import numeric as _num  # type: ignore[no-redef]
    import _codecs

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickles of bytes with protocol < 3 go through _codecs.encode(str, "latin1").
        ("_codecs", "encode"): _codecs.encode,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = _ma._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = _ma.scalar
        if hasattr(_num, "_frombuffer"):  # protocol-5 array pickles (numpy >= 1.16)
            allowed[(f"{mod}.numeric", "_frombuffer")] = _num._frombuffer
    import builtins

    for t in (
        "bytes",
        "bytearray",
        "list",
        "tuple",
        "dict",
        "set",
        "frozenset",
        "int",
        "float",
        "complex",
        "str",
        "bool",
    ):
        allowed[("builtins", t)] = getattr(builtins, t)
        allowed[("__builtin__", t)] = getattr(builtins, t)  # Python 2 name of the module
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves only numpy-array globals.

    CIFAR's python batches are pickled dicts of a uint8 numpy array and lists of ints/strings. To
    rebuild them the pickle needs ``numpy.core.multiarray._reconstruct`` (or ``numpy._core...``),
    ``numpy.ndarray``, ``numpy.dtype`` and, for pickles written by Python 3, a few builtin types,
    ``_codecs.encode`` and ``numpy._core.numeric._frombuffer``. Every other global (``os.system``,
    ``builtins.eval``, ``subprocess.Popen``, ...) is refused *before* anything is called, so a
    malicious file cannot run code. Persistent ids are refused too.

    Raises:
        DataError: From :meth:`find_class`, naming the refused global and the file.
    """

    _ALLOWED: dict[tuple[str, str], Any] | None = None

    def __init__(self, file: io.BufferedIOBase, source: str = "<pickle>", **kwargs: Any):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._ALLOWED is None:
            RestrictedUnpickler._ALLOWED = _numpy_globals()
        obj = RestrictedUnpickler._ALLOWED.get((module, name))
        if obj is None:
            raise DataError(
                f"{self.source}: refused to unpickle global '{module}.{name}' — CIFAR batch files "
                "contain only numpy arrays and lists; this file is not a CIFAR batch (or has been "
                "tampered with). Nothing in it was run. Use the official files from "
                "https://www.cs.toronto.edu/~kriz/cifar.html"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source}: refused a pickle persistent id; this is not a CIFAR batch file")


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, source=str(path), encoding="bytes").load()
    except DataError:
        raise
    except Exception as e:  # truncated, corrupt, wrong format...
        raise DataError(
            f"{path}: could not read as a CIFAR python batch (pickle): {type(e).__name__}: {e}"
        ) from e


def _get(d: Any, key: str, path: Path) -> Any:
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a pickled dict (CIFAR python batch), got {type(d).__name__}")
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    keys = ", ".join(sorted(repr(k) for k in d))
    raise DataError(f"{path}: CIFAR python batch has no key {key!r} (keys: {keys})")


def _read_python_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    data = _get(d, "data", path)
    labels = _get(d, label_key, path)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _CIFAR_PIXELS
    ):
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (N, {_CIFAR_PIXELS}), got {desc}")
    try:
        y = np.asarray(labels)
    except Exception as e:
        raise DataError(f"{path}: {label_key!r} is not a list of integer labels") from e
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or len(y) != len(data):
        raise DataError(
            f"{path}: {label_key!r} must be {len(data)} integer labels (one per row of 'data'), "
            f"got {y.dtype} {y.shape}"
        )
    # Each row is 1024 red, 1024 green, 1024 blue values, each plane row-major: exactly CHW.
    return data.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _read_binary_batch(path: Path, n_label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    rec = n_label_bytes + _CIFAR_PIXELS
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: could not read: {e}") from e
    if raw.size == 0 or raw.size % rec:
        raise DataError(
            f"{path}: size {raw.size} bytes is not a positive multiple of the record size {rec} "
            f"({n_label_bytes} label byte(s) + {_CIFAR_PIXELS} pixels); the file is truncated or "
            "not a CIFAR binary batch"
        )
    raw = raw.reshape(-1, rec)
    y = raw[:, n_label_bytes - 1].astype(np.int64)  # CIFAR-100: (coarse, fine), we take fine
    x = np.ascontiguousarray(raw[:, n_label_bytes:]).reshape(-1, 3, 32, 32)
    return x, y


_CIFAR_LAYOUTS = {
    # name: (num_classes, python folder, python train files, python test, label key,
    #        binary folder, binary train files, binary test, label bytes, tarballs)
    "cifar10": (
        10,
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "labels",
        "cifar-10-batches-bin",
        [f"data_batch_{i}.bin" for i in range(1, 6)],
        "test_batch.bin",
        1,
        ("cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"),
    ),
    "cifar100": (
        100,
        "cifar-100-python",
        ["train"],
        "test",
        "fine_labels",
        "cifar-100-binary",
        ["train.bin"],
        "test.bin",
        2,
        ("cifar-100-python.tar.gz", "cifar-100-binary.tar.gz"),
    ),
}


def _load_cifar(name: str, data_dir: str | Path | None) -> Dataset:
    ncls, py_dir, py_train, py_test, key, bin_dir, bin_train, bin_test, nlab, tars = _CIFAR_LAYOUTS[name]
    py_files = [*py_train, py_test]
    bin_files = [*bin_train, bin_test]
    howto = (
        f"{name} is read from local files only. Expected, in data_dir, one of the official layouts:\n"
        f"  (a) python version: {py_dir}/ with {', '.join(py_files)}"
        " (or those files directly in data_dir)\n"
        f"  (b) binary version: {bin_dir}/ with {', '.join(bin_files)}"
        " (or those files directly in data_dir)\n"
        f"Get {tars[0]} or {tars[1]} from https://www.cs.toronto.edu/~kriz/cifar.html and extract "
        f"it into data_dir (tar xzf {tars[0]} -C DATA_DIR)."
    )
    if data_dir is None:
        raise DataError(f"{name} needs data_dir (the folder with the CIFAR files; CLI: --data-dir).\n{howto}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data_dir {str(root)!r} does not exist or is not a folder.\n{howto}")

    candidates = [
        ("python", root / py_dir, py_files),
        ("python", root, py_files),
        ("binary", root / bin_dir, bin_files),
        ("binary", root, bin_files),
    ]
    chosen = None
    partial: list[str] = []
    for kind, folder, files in candidates:
        present = [f for f in files if (folder / f).is_file()]
        if len(present) == len(files):
            chosen = (kind, folder)
            break
        if present:
            missing = [f for f in files if f not in present]
            partial.append(f"{folder}: has {', '.join(present)} but lacks {', '.join(missing)}")
    if chosen is None:
        detail = ""
        if partial:
            detail = "Incomplete folder(s):\n  " + "\n  ".join(partial) + "\n"
        tarballs = [t for t in tars if (root / t).is_file()]
        if tarballs:
            detail += f"Found {', '.join(tarballs)} in {root}: extract it first (tar xzf FILE -C {root}).\n"
        raise DataError(f"no {name} files found in {str(root)!r}.\n{detail}{howto}")

    kind, folder = chosen
    if kind == "python":
        parts = [_read_python_batch(folder / f, key) for f in py_train]
        x_te, y_te = _read_python_batch(folder / py_test, key)
    else:
        parts = [_read_binary_batch(folder / f, nlab) for f in bin_train]
        x_te, y_te = _read_binary_batch(folder / bin_test, nlab)
    x_all = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y_all = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    for yy, what in ((y_all, "training"), (y_te, "test")):
        if len(yy) and (yy.min() < 0 or yy.max() >= ncls):
            raise DataError(
                f"{folder}: {what} labels lie in [{yy.min()}, {yy.max()}], outside [0, {ncls}) for "
                f"{name}; are these {name} files?"
            )
    n = len(y_all)
    n_val = n // 5  # 10 000 of 50 000 as in the paper; one fifth for smaller (test) folders
    if n - n_val < 1:
        raise DataError(
            f"{folder}: only {n} training image(s); need at least 2 to split off a validation set"
        )
    x_tr, y_tr = x_all[: n - n_val], y_all[: n - n_val]
    x_va, y_va = x_all[n - n_val :], y_all[n - n_val :]
    return _make(name, x_tr, y_tr, x_va, y_va, x_te, y_te, ncls, augment=True)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST and MNIST (IDX files)
# --------------------------------------------------------------------------------------------

#: name -> (how to get the files, flip in augmentation)
_IDX_SETS = {
    "fashion-mnist": (
        "On Debian/Ubuntu: apt-get install dataset-fashion-mnist (installs them in "
        "/usr/share/datasets/fashion-mnist); or download the four .gz files from "
        "https://github.com/zalandoresearch/fashion-mnist (data/fashion) into one folder",
        True,
    ),
    "mnist": (
        "Download the four official .gz files (train-images-idx3-ubyte.gz, ...) of MNIST into one "
        "folder and pass it with --data-dir, or put them in $NASHIR_DATA/mnist",
        False,
    ),
}
_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
#: IDX element type codes (byte 3 of the magic number); nashir reads unsigned bytes only.
_IDX_UBYTE = 0x08
_IDX_VAL = 10_000  # the last 10 000 training images are the validation set
_IDX_MAX_ITEMS = 10_000_000  # an IDX header claiming more images than this is refused
_IDX_MAX_SIDE = 4096


def _idx_dirs(name: str, data_dir: str | Path | None) -> list[Path]:
    import os

    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    dirs = []
    env = os.environ.get("NASHIR_DATA")
    if env:
        dirs.append(Path(env).expanduser() / name)
    dirs.append(SYSTEM_DATA_DIR / name)
    return dirs


def _idx_path(folder: Path, base: str) -> Path | None:
    for cand in (folder / base, folder / (base + ".gz")):
        if cand.is_file():
            return cand
    return None


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read one IDX file (LeCun et al.'s MNIST format: big-endian magic ``0x0000TTDD`` with type
    ``TT = 0x08`` unsigned bytes and ``DD`` dimensions, then ``DD`` big-endian uint32 sizes, then
    the data), raw or gzip-compressed (by the ``.gz`` suffix).

    Args:
        path: The file.
        ndim: Dimensions expected: 3 for images (N, rows, cols), 1 for labels (N,).

    Returns:
        A uint8 array of the stored shape.

    Raises:
        DataError: Unreadable or corrupt gzip, bad magic number (not IDX, wrong element type or
            dimension count), sizes above the caps, or a file shorter or longer than its header
            says; the message names the file.
    """
    import gzip
    import zlib

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise DataError(f"{path}: truncated IDX file ({len(head)} bytes; the header needs 4)")
            if head[0] != 0 or head[1] != 0 or head[2] != _IDX_UBYTE or head[3] != ndim:
                raise DataError(
                    f"{path}: bad IDX magic number 0x{head.hex()}; expected 0x000008{ndim:02x} "
                    f"(unsigned bytes, {ndim} dimension(s)). Is this the right file "
                    f"({'images' if ndim == 3 else 'labels'}), and not an HTML page or a renamed file?"
                )
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header (the {ndim} sizes are cut off)")
            dims = [int(d) for d in np.frombuffer(dims_raw, dtype=">u4")]
            if dims[0] > _IDX_MAX_ITEMS or any(d > _IDX_MAX_SIDE or d < 1 for d in dims[1:]):
                raise DataError(
                    f"{path}: IDX header claims shape {tuple(dims)}; nashir reads at most "
                    f"{_IDX_MAX_ITEMS} items of at most {_IDX_MAX_SIDE} pixels a side"
                )
            need = int(np.prod(dims))
            body = bytearray()  # read in pieces: f.read(need) would allocate the header's claim up front
            while len(body) < need:
                piece = f.read(min(need - len(body), 1 << 24))
                if not piece:
                    break
                body += piece
            extra = f.read(1)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read the IDX file: {type(e).__name__}: {e}") from e
    if len(body) < need:
        raise DataError(
            f"{path}: truncated IDX file: the header claims shape {tuple(dims)} ({need} bytes of data), "
            f"but only {len(body)} bytes follow; download the file again"
        )
    if extra:
        raise DataError(
            f"{path}: {need} bytes of data expected after the header (shape {tuple(dims)}), but the file is "
            "longer; is it the right file?"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)  # writable, owns its memory


def _load_idx_set(name: str, data_dir: str | Path | None) -> Dataset:
    howto, flip = _IDX_SETS[name]
    dirs = _idx_dirs(name, data_dir)
    wanted = ", ".join(f"{b}[.gz]" for b in _IDX_FILES.values())
    folder = None
    missing_by_dir = []
    for d in dirs:
        if not d.is_dir():
            missing_by_dir.append(f"{d}: no such folder")
            continue
        missing = [b for b in _IDX_FILES.values() if _idx_path(d, b) is None]
        if not missing:
            folder = d
            break
        missing_by_dir.append(f"{d}: lacks {', '.join(m + '[.gz]' for m in missing)}")
    if folder is None:
        where = "--data-dir" if data_dir is not None else f"$NASHIR_DATA/{name} and {SYSTEM_DATA_DIR}/{name}"
        raise DataError(
            f"{name}: the IDX files were not found (looked in {where}):\n  "
            + "\n  ".join(missing_by_dir)
            + f"\nExpected {wanted} in one folder. {howto}."
        )
    arrays = {}
    for key, base in _IDX_FILES.items():
        p = _idx_path(folder, base)
        arrays[key] = read_idx(p, 3 if key.endswith("_x") else 1)
        arrays[key + "_path"] = p
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if len(x) != len(y):
            raise DataError(
                f"{arrays[part + '_y_path']}: {len(y)} labels, but {arrays[part + '_x_path']} holds {len(x)} "
                "images; the two files must come from the same release"
            )
        if len(x) == 0:
            raise DataError(
                f"{arrays[part + '_x_path']}: the file holds no images (its header says 0); "
                "download the file again"
            )
        if int(y.max()) >= 10:
            raise DataError(
                f"{arrays[part + '_y_path']}: label {int(y.max())} is out of range; {name} has classes 0..9"
            )
    xtr, ytr = arrays["train_x"], arrays["train_y"].astype(np.int64)
    xte, yte = arrays["test_x"], arrays["test_y"].astype(np.int64)
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(
            f"{arrays['test_x_path']}: images are {xte.shape[1:]}, "
            f"but the training images are {xtr.shape[1:]}"
        )
    n = len(ytr)
    n_val = _IDX_VAL if n > 2 * _IDX_VAL else n // 5  # small (test) files: one fifth
    if n - n_val < 1 or n_val < 1:
        raise DataError(f"{arrays['train_x_path']}: only {n} training image(s); need at least 2 to split")
    xtr, xte = xtr[:, None], xte[:, None]  # (N, 1, H, W)
    return _make(
        name, xtr[: n - n_val], ytr[: n - n_val], xtr[n - n_val :], ytr[n - n_val :], xte, yte, 10,
        augment=True, crop_pad=2, flip=flip,
    )


# --------------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------------


def _check_x(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.ndim != 4:
        raise DataError(
            f"{path}: array {key!r} has shape {x.shape} ({x.ndim}-D); expected 4-D (N, C, H, W) in NCHW "
            "order (for grey images add a channel axis: x[:, None])"
        )
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise DataError(f"{path}: array {key!r} contains NaN or infinite values")
        with np.errstate(over="ignore"):
            x = x.astype(np.float32, copy=False)
        if not np.all(np.isfinite(x)):
            raise DataError(
                f"{path}: array {key!r} has values beyond float32's range (|x| > 3.4e38); rescale the images"
            )
        return x
    raise DataError(
        f"{path}: array {key!r} has dtype {x.dtype}; expected uint8 or a float type (convert with "
        "x.astype(np.uint8) or x.astype(np.float32))"
    )


#: Most classes a data set may have (the classifier is sized by the largest label + 1).
MAX_CLASSES = 100_000


def _check_y(path: Path, key: str, y: np.ndarray, n: int, xkey: str) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{path}: array {key!r} has shape {y.shape}; expected 1-D (N,) integer class labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: array {key!r} has dtype {y.dtype}; expected integer class labels 0..K-1")
    if len(y) != n:
        raise DataError(f"{path}: {key!r} has {len(y)} labels but {xkey!r} has {n} images; they must match")
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: {key!r} has negative labels (min {y.min()}); expected 0..K-1")
    if len(y) and int(y.max()) >= MAX_CLASSES:
        raise DataError(
            f"{path}: {key!r} has label {int(y.max())}, which would make {int(y.max()) + 1:,} classes, "
            f"above nashir's cap of {MAX_CLASSES:,} (nashir.data.MAX_CLASSES); labels must be class numbers "
            "0..K-1: renumber them"
        )
    return y.astype(np.int64)


def _check_classes(path: Path, labels: list[np.ndarray]) -> int:
    """The class count (largest label + 1), checked against the labels present: most of 0..K-1 must
    occur, so that one stray label cannot size the classifier."""
    present = np.unique(np.concatenate([a for a in labels if len(a)]))
    k = int(present.max()) + 1
    if len(present) < 2:
        raise DataError(f"{path}: every label is {int(present[0])}; a classifier needs at least 2 classes")
    if len(present) * 2 < k:
        raise DataError(
            f"{path}: the labels go up to {k - 1}, so there would be {k:,} classes, but only {len(present)} "
            f"distinct labels occur ({', '.join(str(int(v)) for v in present[-3:])} are the largest); labels "
            "must be class numbers 0..K-1 with most classes present: renumber them"
        )
    return k


def _memory_bytes() -> int | None:
    """Physical memory of this machine in bytes (None when the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _npz_sizes(path: Path, z) -> int:
    """Bytes the archive's arrays will take once read, from their .npy headers (nothing is decompressed),
    so that a small compressed file cannot make nashir allocate more than the machine has."""
    total = 0
    fmt = np.lib.format
    for name in z.zip.namelist():
        if not name.endswith(".npy"):
            continue
        with z.zip.open(name) as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
        total += int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
    return total


def _load_npz(path: Path, seed: int) -> Dataset:
    usage = ("expected a .npz with arrays x (N, C, H, W) and y (N,) (optionally x_val, y_val, x_test, "
             "y_test), written e.g. by np.savez(path, x=x, y=y)")
    if path.is_dir():
        raise DataError(f"npz:{path} is a folder; give the path of a .npz file ({usage})")
    if not path.is_file():
        raise DataError(f"npz file {str(path)!r} not found; {usage}")
    try:
        z = np.load(path, allow_pickle=False, mmap_mode=None)
    except Exception as e:
        raise DataError(
            f"{path}: could not read as an .npz archive of plain arrays: {type(e).__name__}: {e}"
        ) from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        kind = f"a single .npy array of shape {getattr(z, 'shape', '?')}" if isinstance(z, np.ndarray) else \
            type(z).__name__
        raise DataError(f"{path} is {kind}, not an .npz archive; {usage}")
    try:
        with z:
            need = _npz_sizes(path, z)
            have = _memory_bytes()
            if have is not None and need > have:
                raise DataError(
                    f"{path}: its arrays would take {need / 2**30:.1f} GiB once read, more than this "
                    f"machine's {have / 2**30:.1f} GiB of memory; use a smaller data set"
                )
            arrays = {k: z[k] for k in z.files}
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"{path}: could not read as an .npz archive of plain arrays: {type(e).__name__}: {e}"
        ) from e
    for k in ("x", "y"):
        if k not in arrays:
            raise DataError(
                f"{path}: missing array {k!r} (has: {', '.join(sorted(arrays)) or 'none'}); expected x "
                "(N, C, H, W) uint8/float and y (N,) int, optionally x_val, y_val, x_test, y_test"
            )
    for part in ("val", "test"):
        if (f"x_{part}" in arrays) != (f"y_{part}" in arrays):
            raise DataError(f"{path}: x_{part} and y_{part} must be given together (found only one)")

    x = _check_x(path, "x", arrays["x"])
    y = _check_y(path, "y", arrays["y"], len(x), "x")
    given: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for part in ("val", "test"):
        if f"x_{part}" in arrays:
            xp = _check_x(path, f"x_{part}", arrays[f"x_{part}"])
            yp = _check_y(path, f"y_{part}", arrays[f"y_{part}"], len(xp), f"x_{part}")
            if xp.shape[1:] != x.shape[1:]:
                raise DataError(
                    f"{path}: x_{part} images have shape {xp.shape[1:]}, x has {x.shape[1:]}; they must match"
                )
            if xp.dtype != x.dtype:
                raise DataError(f"{path}: x_{part} has dtype {xp.dtype}, x has {x.dtype}; they must match")
            given[part] = (xp, yp)

    n = len(y)
    idx = np.arange(n)
    held: dict[str, np.ndarray] = {}
    for i, part in enumerate(("val", "test")):
        if part in given:
            continue
        n_out = int(round(0.15 * n))
        if n_out < 1:
            raise DataError(
                f"{path}: only {n} images in x; too few to split off a {part} set (15 %). Provide more "
                f"images or x_{part}, y_{part}"
            )
        keep, out = _stratified_split(y[idx], n_out, seed + i, str(path))
        held[part] = idx[out]
        idx = idx[keep]
    parts = {p: given[p] if p in given else (x[held[p]], y[held[p]]) for p in ("val", "test")}
    if len(idx) == 0:
        raise DataError(f"{path}: no training images left after the split")
    x_tr, y_tr = x[idx], y[idx]
    num_classes = _check_classes(path, [y_tr, parts["val"][1], parts["test"][1]])
    return _make(
        f"npz:{path}", x_tr, y_tr, *parts["val"], *parts["test"], num_classes=num_classes, augment=False
    )
