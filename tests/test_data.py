"""Tests of nashir.data: digits, CIFAR-10/100 in both official layouts, npz, and bad input."""

from __future__ import annotations

import builtins
import os
import pickle
import struct
import sys

import numpy as np
import pytest

from nashir.data import Dataset, load_dataset
from nashir.errors import DataError, NashirError

# ----------------------------------------------------------------------------------------------
# Helpers: tiny CIFAR folders written like the real files
# ----------------------------------------------------------------------------------------------

N_PER_FILE = 20


def _py2_str(b: bytes) -> bytes:
    """A Python 2 ``str`` pickled with protocol 2 (SHORT_BINSTRING / BINSTRING)."""
    if len(b) < 256:
        return b"U" + bytes([len(b)]) + b
    return b"T" + struct.pack("<i", len(b)) + b


def _py2_int(i: int) -> bytes:
    if 0 <= i < 256:
        return b"K" + bytes([i])
    if 0 <= i < 65536:
        return b"M" + struct.pack("<H", i)
    return b"J" + struct.pack("<i", i)


def py2_pickle(d: dict) -> bytes:
    """The bytes Python 2's ``cPickle.dump(d, f, 2)`` writes for a CIFAR batch dict.

    Reproduces the real files' opcodes: py2 ``str`` keys, ``numpy.core.multiarray._reconstruct``,
    ``numpy.ndarray``, ``numpy.dtype`` globals and the array's ``__setstate__`` tuple.
    """
    out = [b"\x80\x02}("]
    for k, v in d.items():
        out.append(_py2_str(k.encode()))
        if isinstance(v, np.ndarray):
            assert v.dtype == np.uint8 and v.ndim == 2
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            out.append(_py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R")
            out.append(b"(" + _py2_int(1) + _py2_int(v.shape[0]) + _py2_int(v.shape[1]) + b"\x86")
            out.append(b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R")
            out.append(b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2)
            out.append(_py2_int(0) + b"tb")
            out.append(b"\x89" + _py2_str(v.tobytes()) + b"tb")
        elif isinstance(v, bytes):
            out.append(_py2_str(v))
        else:  # list of ints or of py2 strs
            items = (_py2_str(i) if isinstance(i, bytes) else _py2_int(int(i)) for i in v)
            out.append(b"](" + b"".join(items) + b"e")
    out.append(b"u.")
    return b"".join(out)


def _batch(rng: np.random.Generator, n: int, num_classes: int):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).tolist()
    return data, labels


def _write_pickle(path, d: dict, how: str) -> None:
    if how == "py2":
        path.write_bytes(py2_pickle({k.decode(): v for k, v in d.items()}))
    else:
        with open(path, "wb") as f:
            pickle.dump(d, f, protocol=2 if how == "protocol2" else pickle.HIGHEST_PROTOCOL)


def make_cifar(root, which: str, layout: str, how: str = "py2", subfolder: bool = True, seed: int = 0):
    """Write a tiny CIFAR folder; return {file name: (data (N, 3072) uint8, labels)} as written."""
    rng = np.random.default_rng(seed)
    written = {}
    if which == "cifar10":
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_file = "test_batch"
        folder = {"python": "cifar-10-batches-py", "binary": "cifar-10-batches-bin"}[layout]
        ncls = 10
    else:
        train_files = ["train"]
        test_file = "test"
        folder = {"python": "cifar-100-python", "binary": "cifar-100-binary"}[layout]
        ncls = 100
    d = root / folder if subfolder else root
    d.mkdir(parents=True, exist_ok=True)
    for name in [*train_files, test_file]:
        n = N_PER_FILE * (5 if which == "cifar100" and name == "train" else 1)
        data, labels = _batch(rng, n, ncls)
        written[name] = (data, labels)
        if layout == "python":
            if which == "cifar10":
                dct = {
                    b"batch_label": b"training batch",
                    b"labels": labels,
                    b"data": data,
                    b"filenames": [b"x.png"] * n,
                }
            else:
                coarse = [lab // 5 for lab in labels]
                dct = {
                    b"filenames": [b"x.png"] * n,
                    b"batch_label": b"training batch",
                    b"fine_labels": labels,
                    b"coarse_labels": coarse,
                    b"data": data,
                }
            _write_pickle(d / name, dct, how)
        else:
            lab = np.asarray(labels, dtype=np.uint8)[:, None]
            if which == "cifar100":
                lab = np.concatenate([lab // 5, lab], axis=1)  # coarse, fine
            np.concatenate([lab, data], axis=1).tofile(d / (name + ".bin"))
    return written


# ----------------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------------


def test_digits_shapes_and_sizes():
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset)
    assert ds.input_shape == (1, 8, 8)
    assert ds.num_classes == 10
    assert ds.augment is False
    n = len(ds.y_train) + len(ds.y_val) + len(ds.y_test)
    assert n == 1797
    assert abs(len(ds.y_val) - 0.2 * n) <= 2 and abs(len(ds.y_test) - 0.2 * n) <= 2
    for x, y in (ds.split("train"), ds.split("val"), ds.split("test")):
        assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == (1, 8, 8)
        assert y.dtype == np.int64 and len(y) == len(x)
        assert x.min() >= 0 and x.max() <= 16
    assert ds.mean.shape == (1,) and ds.std.shape == (1,)
    assert ds.mean.dtype == np.float32
    np.testing.assert_allclose(ds.mean[0], ds.x_train.mean(), rtol=1e-5)
    np.testing.assert_allclose(ds.std[0], ds.x_train.std(), rtol=1e-5)


def test_digits_split_is_disjoint_and_complete():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    allx = np.concatenate([ds.x_train, ds.x_val, ds.x_test]).reshape(1797, -1)
    ref = load_digits().images.reshape(1797, -1).astype(np.float32)
    # Same multiset of images: sort rows lexicographically and compare.
    a = allx[np.lexsort(allx.T[::-1])]
    b = ref[np.lexsort(ref.T[::-1])]
    np.testing.assert_array_equal(a, b)


def test_digits_stratified():
    ds = load_dataset("digits")
    overall = np.bincount(np.concatenate([ds.y_train, ds.y_val, ds.y_test]), minlength=10) / 1797
    for y in (ds.y_train, ds.y_val, ds.y_test):
        frac = np.bincount(y, minlength=10) / len(y)
        assert np.abs(frac - overall).max() < 0.01


def test_digits_deterministic_by_seed():
    a, b, c = load_dataset("digits", seed=3), load_dataset("digits", seed=3), load_dataset("digits", seed=4)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(a.split(split)[0], b.split(split)[0])
        np.testing.assert_array_equal(a.split(split)[1], b.split(split)[1])
    assert not np.array_equal(a.y_val, c.y_val)


def test_split_trainval_and_unknown():
    ds = load_dataset("digits")
    x, y = ds.split("trainval")
    assert len(x) == len(ds.x_train) + len(ds.x_val)
    np.testing.assert_array_equal(x[: len(ds.x_train)], ds.x_train)
    np.testing.assert_array_equal(y[len(ds.y_train) :], ds.y_val)
    with pytest.raises(DataError, match="unknown split 'validation'.*train, val, test, trainval"):
        ds.split("validation")


def test_augment_override():
    assert load_dataset("digits", augment=True).augment is True


def test_unknown_name_lists_accepted():
    with pytest.raises(DataError) as ei:
        load_dataset("imagenet")
    msg = str(ei.value)
    for name in ("digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "npz:PATH"):
        assert name in msg
    assert isinstance(ei.value, NashirError)
    with pytest.raises(DataError, match="npz:PATH"):
        load_dataset("npz")
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("foo:bar")


# ----------------------------------------------------------------------------------------------
# CIFAR
# ----------------------------------------------------------------------------------------------


def _check_cifar(ds: Dataset, written: dict, which: str):
    if which == "cifar10":
        train_names, test_name, ncls = [f"data_batch_{i}" for i in range(1, 6)], "test_batch", 10
    else:
        train_names, test_name, ncls = ["train"], "test", 100
    data = np.concatenate([written[n][0] for n in train_names])
    labels = np.concatenate([np.asarray(written[n][1]) for n in train_names])
    n = len(labels)
    n_val = n // 5
    assert ds.num_classes == ncls
    assert ds.augment is True
    assert ds.x_train.dtype == np.uint8 and ds.input_shape == (3, 32, 32)
    assert len(ds.y_train) == n - n_val and len(ds.y_val) == n_val
    assert len(ds.y_test) == len(written[test_name][1])
    # The validation set is the last fifth of the training files.
    np.testing.assert_array_equal(ds.y_train, labels[: n - n_val])
    np.testing.assert_array_equal(ds.y_val, labels[n - n_val :])
    np.testing.assert_array_equal(ds.y_test, written[test_name][1])
    # One image, pixel by pixel: row = 1024 R, 1024 G, 1024 B, each 32x32 row-major (CHW).
    k = 7
    row = data[k]
    img = ds.x_train[k]
    for c in range(3):
        for i in (0, 5, 31):
            for j in (0, 17, 31):
                assert img[c, i, j] == row[c * 1024 + i * 32 + j]
    np.testing.assert_array_equal(ds.x_val[0].reshape(-1), data[n - n_val])
    np.testing.assert_array_equal(ds.x_test[3].reshape(-1), written[test_name][0][3])
    # Normalisation from the training part, per channel, in raw units.
    xt = ds.x_train.astype(np.float64)
    np.testing.assert_allclose(ds.mean, xt.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(ds.std, xt.std(axis=(0, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
@pytest.mark.parametrize("how", ["py2", "protocol2", "highest"])
def test_cifar_python_layout(tmp_path, which, how):
    written = make_cifar(tmp_path, which, "python", how=how)
    _check_cifar(load_dataset(which, tmp_path), written, which)


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
def test_cifar_binary_layout(tmp_path, which):
    written = make_cifar(tmp_path, which, "binary")
    _check_cifar(load_dataset(which, str(tmp_path)), written, which)


@pytest.mark.parametrize("layout", ["python", "binary"])
def test_cifar_files_directly_in_data_dir(tmp_path, layout):
    written = make_cifar(tmp_path, "cifar10", layout, subfolder=False)
    _check_cifar(load_dataset("cifar10", tmp_path), written, "cifar10")


def test_cifar_layouts_agree(tmp_path):
    a = make_cifar(tmp_path / "a", "cifar10", "python", seed=5)
    b = make_cifar(tmp_path / "b", "cifar10", "binary", seed=5)
    assert all(np.array_equal(a[k][0], b[k][0]) for k in a)
    da, db = load_dataset("cifar10", tmp_path / "a"), load_dataset("cifar10", tmp_path / "b")
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(da.split(split)[0], db.split(split)[0])
        np.testing.assert_array_equal(da.split(split)[1], db.split(split)[1])


def test_cifar_augment_override(tmp_path):
    make_cifar(tmp_path, "cifar10", "binary")
    assert load_dataset("cifar10", tmp_path, augment=False).augment is False


class _EvilSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("evil", [_EvilSystem, _EvilEval])
def test_malicious_pickle_refused(tmp_path, evil):
    make_cifar(tmp_path, "cifar10", "python", how="highest")
    marker = tmp_path / "marker"
    payload = {b"data": evil(marker), b"labels": [0]}
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump(payload, f, protocol=2)
    with pytest.raises(DataError) as ei:
        load_dataset("cifar10", tmp_path)
    msg = str(ei.value)
    assert "refused" in msg and "data_batch_1" in msg
    assert ("system" in msg) if evil is _EvilSystem else ("eval" in msg)
    assert not marker.exists()


def test_malicious_pickle_other_globals_refused(tmp_path):
    make_cifar(tmp_path, "cifar10", "python")
    # A hand-written pickle calling subprocess.getoutput, and one calling builtins.getattr.
    bad = [
        b"\x80\x02csubprocess\ngetoutput\nX\x04\x00\x00\x00trueq\x85R.",
        b"\x80\x02cbuiltins\ngetattr\ncbuiltins\nint\nX\x03\x00\x00\x00mro\x86R.",
    ]
    for blob in bad:
        (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(blob)
        with pytest.raises(DataError, match="refused to unpickle global"):
            load_dataset("cifar10", tmp_path)


def test_missing_data_dir_message():
    with pytest.raises(DataError) as ei:
        load_dataset("cifar10")
    msg = str(ei.value)
    assert "data_dir" in msg
    for s in (
        "cifar-10-batches-py",
        "cifar-10-batches-bin",
        "data_batch_1",
        "test_batch.bin",
        "https://www.cs.toronto.edu/~kriz/cifar.html",
    ):
        assert s in msg


def test_nonexistent_folder_message(tmp_path):
    with pytest.raises(DataError, match="does not exist") as ei:
        load_dataset("cifar100", tmp_path / "nope")
    msg = str(ei.value)
    for s in ("cifar-100-python", "cifar-100-binary", "train.bin", "test.bin"):
        assert s in msg


def test_empty_folder_lists_expected_files(tmp_path):
    with pytest.raises(DataError) as ei:
        load_dataset("cifar10", tmp_path)
    msg = str(ei.value)
    for s in ["cifar-10-batches-py", "cifar-10-batches-bin", "test_batch", "test_batch.bin"] + [
        f"data_batch_{i}" for i in range(1, 6)
    ]:
        assert s in msg
    assert "python version" in msg and "binary version" in msg
    assert "cifar-10-python.tar.gz" in msg


def test_missing_file_named(tmp_path):
    make_cifar(tmp_path, "cifar10", "python")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks data_batch_3"):
        load_dataset("cifar10", tmp_path)


def test_tarball_hint(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match="extract it first"):
        load_dataset("cifar10", tmp_path)


def test_malformed_binary(tmp_path):
    make_cifar(tmp_path, "cifar10", "binary")
    p = tmp_path / "cifar-10-batches-bin" / "data_batch_2.bin"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(DataError, match="data_batch_2.bin.*not a positive multiple"):
        load_dataset("cifar10", tmp_path)


def test_malformed_pickles(tmp_path):
    make_cifar(tmp_path, "cifar10", "python")
    p = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    good = p.read_bytes()
    p.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match="data_batch_4.*could not read"):
        load_dataset("cifar10", tmp_path)
    with open(p, "wb") as f:  # wrong array shape
        pickle.dump({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, f)
    with pytest.raises(DataError, match=r"'data' must be a uint8 array of shape \(N, 3072\)"):
        load_dataset("cifar10", tmp_path)
    with open(p, "wb") as f:  # missing labels
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8)}, f)
    with pytest.raises(DataError, match="no key 'labels'"):
        load_dataset("cifar10", tmp_path)
    with open(p, "wb") as f:  # label count mismatch
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match="must be 3 integer labels"):
        load_dataset("cifar10", tmp_path)
    with open(p, "wb") as f:  # labels out of range for CIFAR-10
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 42]}, f)
    with pytest.raises(DataError, match=r"outside \[0, 10\)"):
        load_dataset("cifar10", tmp_path)


# ----------------------------------------------------------------------------------------------
# npz
# ----------------------------------------------------------------------------------------------


def _npz(tmp_path, name="d.npz", **arrays):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def test_npz_seeded_stratified_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 3, 6, 5), dtype=np.uint8)
    y = np.repeat(np.arange(4), 50)
    p = _npz(tmp_path, x=x, y=y)
    ds = load_dataset(f"npz:{p}", seed=1)
    assert ds.input_shape == (3, 6, 5) and ds.x_train.dtype == np.uint8 and ds.num_classes == 4
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (140, 30, 30)
    for yy in (ds.y_train, ds.y_val, ds.y_test):
        counts = np.bincount(yy, minlength=4)
        assert counts.max() - counts.min() <= 1
    # Every image is where its label says.
    for xx, yy in (ds.split("train"), ds.split("val"), ds.split("test")):
        for xi, yi in zip(xx[:5], yy[:5]):
            matches = np.where((x == xi).all(axis=(1, 2, 3)))[0]
            assert y[matches[0]] == yi
    again = load_dataset(f"npz:{p}", seed=1)
    np.testing.assert_array_equal(ds.y_val, again.y_val)
    np.testing.assert_array_equal(ds.x_test, again.x_test)
    assert ds.augment is False


def test_npz_given_splits_and_float(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 1, 4, 4))  # float64 -> float32
    p = _npz(
        tmp_path,
        x=x,
        y=np.arange(30) % 3,
        x_val=x[:4],
        y_val=np.array([0, 1, 2, 5]),
        x_test=x[:6],
        y_test=np.zeros(6, np.int32),
    )
    ds = load_dataset(f"npz:{p}", augment=True)
    assert ds.x_train.dtype == np.float32 and len(ds.y_train) == 30
    assert len(ds.y_val) == 4 and len(ds.y_test) == 6
    assert ds.num_classes == 6 and ds.augment is True
    np.testing.assert_allclose(ds.mean[0], x.mean(), rtol=1e-5)


def test_npz_only_test_given(tmp_path):
    x = np.zeros((100, 1, 2, 2), np.uint8)
    p = _npz(tmp_path, x=x, y=np.arange(100) % 2, x_test=x[:7], y_test=np.zeros(7, np.int64))
    ds = load_dataset(f"npz:{p}")
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (85, 15, 7)


@pytest.mark.parametrize(
    "arrays, match",
    [
        (
            dict(x=np.zeros((10, 8, 8), np.uint8), y=np.zeros(10, np.int64)),
            r"'x' has shape \(10, 8, 8\).*4-D",
        ),
        (dict(x=np.zeros((10, 1, 8, 8), np.uint8)), "missing array 'y'"),
        (dict(y=np.zeros(10, np.int64)), "missing array 'x'"),
        (dict(x=np.zeros((10, 1, 8, 8), np.uint8), y=np.zeros(9, np.int64)), "9 labels but 'x' has 10"),
        (dict(x=np.zeros((10, 1, 8, 8), np.uint8), y=np.zeros(10, np.float32)), "integer class labels"),
        (dict(x=np.zeros((10, 1, 8, 8), np.int32), y=np.zeros(10, np.int64)), "dtype int32; expected uint8"),
        (dict(x=np.zeros((10, 1, 8, 8), np.uint8), y=np.zeros((10, 1), np.int64)), "expected 1-D"),
        (dict(x=np.zeros((10, 1, 8, 8), np.uint8), y=-np.ones(10, np.int64)), "negative labels"),
        (
            dict(x=np.zeros((10, 1, 8, 8), np.uint8), y=np.zeros(10, np.int64), x_val=np.zeros((2, 1, 8, 8))),
            "x_val and y_val must be given together",
        ),
        (
            dict(
                x=np.zeros((40, 1, 8, 8), np.uint8),
                y=np.zeros(40, np.int64),
                x_val=np.zeros((2, 1, 4, 4), np.uint8),
                y_val=np.zeros(2, np.int64),
            ),
            "x_val images have shape",
        ),
    ],
)
def test_npz_bad(tmp_path, arrays, match):
    p = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=match):
        load_dataset(f"npz:{p}")


def test_npz_missing_and_not_npz(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    p = tmp_path / "junk.npz"
    p.write_bytes(b"definitely not a zip")
    with pytest.raises(DataError, match="could not read"):
        load_dataset(f"npz:{p}")
    # Object arrays need pickle: refused.
    q = tmp_path / "obj.npz"
    np.savez(q, x=np.array([object()], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match="could not read"):
        load_dataset(f"npz:{q}")


def test_data_module_does_not_import_torch():
    code = "import sys, nashir.data; sys.exit(1 if 'torch' in sys.modules else 0)"
    import subprocess

    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST / MNIST: small IDX files written like the official ones
# ----------------------------------------------------------------------------------------------

IDX_BASES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x000008DD, big-endian uint32 sizes, the data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def write_idx_set(folder, n_train=40, n_test=10, side=6, gz=True, seed=0, overrides=None):
    """A folder with the four IDX files (gz or raw); returns the arrays written."""
    import gzip

    rng = np.random.default_rng(seed)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_x": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, base in IDX_BASES.items():
        blob = (overrides or {}).get(key)
        if blob is None:
            blob = idx_bytes(arrays[key])
        if gz:
            with gzip.open(folder / (base + ".gz"), "wb") as f:
                f.write(blob)
        else:
            (folder / base).write_bytes(blob)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name,flip", [("fashion-mnist", True), ("mnist", False)])
def test_idx_set_split_and_augmentation(tmp_path, gz, name, flip):
    a = write_idx_set(tmp_path / "f", gz=gz)
    ds = load_dataset(name, data_dir=tmp_path / "f")
    # small files: the last fifth of the training images is the validation set (10 000 of 60 000
    # for the real files), in file order; the official test set is the test set
    np.testing.assert_array_equal(ds.x_train[:, 0], a["train_x"][:32])
    np.testing.assert_array_equal(ds.x_val[:, 0], a["train_x"][32:])
    np.testing.assert_array_equal(ds.y_val, a["train_y"][32:].astype(np.int64))
    np.testing.assert_array_equal(ds.x_test[:, 0], a["test_x"])
    assert ds.x_train.dtype == np.uint8 and ds.input_shape == (1, 6, 6) and ds.num_classes == 10
    assert ds.augment and ds.crop_pad == 2 and ds.flip is flip
    assert ds.x_train.flags.writeable
    assert ds.mean[0] == pytest.approx(a["train_x"][:32].mean(), rel=1e-5)


def test_idx_set_found_through_nashir_data_then_system_folder(tmp_path, monkeypatch):
    import nashir.data as nd

    write_idx_set(tmp_path / "env" / "fashion-mnist", seed=1)
    write_idx_set(tmp_path / "sys" / "fashion-mnist", seed=2)
    monkeypatch.setattr(nd, "SYSTEM_DATA_DIR", tmp_path / "sys")
    monkeypatch.setenv("NASHIR_DATA", str(tmp_path / "env"))
    env_first = load_dataset("fashion-mnist")
    monkeypatch.delenv("NASHIR_DATA")
    system = load_dataset("fashion-mnist")
    assert not np.array_equal(env_first.x_test, system.x_test)
    expect = write_idx_set(tmp_path / "again", seed=2)
    np.testing.assert_array_equal(system.x_test[:, 0], expect["test_x"])


def test_idx_missing_folder_and_files_say_what_and_how(tmp_path, monkeypatch):
    import nashir.data as nd

    monkeypatch.setattr(nd, "SYSTEM_DATA_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("NASHIR_DATA", raising=False)
    with pytest.raises(DataError) as ei:
        load_dataset("fashion-mnist")
    msg = str(ei.value)
    assert str(tmp_path / "nowhere" / "fashion-mnist") in msg and "no such folder" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "train-images-idx3-ubyte[.gz]" in msg
    write_idx_set(tmp_path / "f")
    (tmp_path / "f" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"lacks t10k-labels-idx1-ubyte\[\.gz\]") as ei:
        load_dataset("mnist", data_dir=tmp_path / "f")
    assert "--data-dir" in str(ei.value)


@pytest.mark.parametrize(
    "key,blob,match",
    [
        ("train_x", b"<html>not found</html>", "bad IDX magic number"),
        ("train_y", idx_bytes(np.zeros((40, 2), np.uint8)), "bad IDX magic number"),  # 2-D labels
        ("test_x", bytes([0, 0, 0x0D, 3]) + struct.pack(">III", 10, 6, 6), "bad IDX magic number"),  # float
        ("test_x", idx_bytes(np.zeros((10, 6, 6), np.uint8))[:-7], "truncated IDX file"),
        ("test_y", bytes([0, 0, 8, 1, 0]), "truncated IDX header"),
        ("train_x", b"\x00\x00", "truncated IDX file"),
        ("train_y", idx_bytes(np.zeros(40, np.uint8)) + b"\x00", "longer"),
        ("train_y", idx_bytes(np.zeros(39, np.uint8)), "39 labels, but .* holds 40 images"),
        ("test_y", idx_bytes(np.full(10, 10, np.uint8)), "label 10 is out of range"),
        ("train_x", bytes([0, 0, 8, 3]) + struct.pack(">III", 2**31, 6, 6), "at most 10000000 items"),
        # within the caps but claiming 168 TB: refused as truncated, never allocated (was a MemoryError)
        ("train_x", bytes([0, 0, 8, 3]) + struct.pack(">III", 10**7, 4096, 4096) + bytes(100),
         "truncated IDX file"),
    ],
)
def test_idx_faults_are_data_errors_naming_the_file(tmp_path, key, blob, match):
    write_idx_set(tmp_path / "f", gz=False, overrides={key: blob})
    with pytest.raises(DataError, match=match) as ei:
        load_dataset("fashion-mnist", data_dir=tmp_path / "f")
    assert IDX_BASES[key] in str(ei.value)


@pytest.mark.parametrize("part", ["train", "test"])
def test_idx_files_without_images_are_data_errors(tmp_path, part):
    # an empty test set used to pass the loader and crash the search (TypeError in the fingerprint)
    empty = {f"{part}_x": idx_bytes(np.zeros((0, 6, 6), np.uint8)),
             f"{part}_y": idx_bytes(np.zeros(0, np.uint8))}
    write_idx_set(tmp_path / "f", overrides=empty)
    with pytest.raises(DataError, match=IDX_BASES[f"{part}_x"] + r".gz: the file holds no images"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "f")


def test_idx_corrupt_gzip_is_a_data_error(tmp_path):
    write_idx_set(tmp_path / "f")
    (tmp_path / "f" / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: cannot read the IDX file"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "f")


@pytest.mark.slow
def test_real_fashion_mnist_files_when_installed():
    from nashir.data import SYSTEM_DATA_DIR

    folder = SYSTEM_DATA_DIR / "fashion-mnist"
    if not (folder / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    ds = load_dataset("fashion-mnist", data_dir=folder)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (50_000, 10_000, 10_000)
    assert ds.input_shape == (1, 28, 28) and ds.x_train.dtype == np.uint8
    # the official files are balanced: 6 000 training and 1 000 test images per class
    counts = np.bincount(np.concatenate([ds.y_train, ds.y_val]), minlength=10)
    assert counts.tolist() == [6000] * 10
    assert np.bincount(ds.y_test, minlength=10).tolist() == [1000] * 10
    assert ds.mean[0] == pytest.approx(72.94, abs=0.5)  # 0.286 * 255 over the 60 000: ~72.9


# ------------------------------------------------------------------ npz input sized by its claims


def _labels(n, y):
    return dict(x=np.zeros((n, 1, 4, 4), np.uint8), y=np.asarray(y, np.int64))


@pytest.mark.parametrize("y, match", [
    (np.r_[np.arange(40) % 4, [10**12]], r"label 1000000000000, which would make 1,000,000,000,001 classes, "
                                         r"above nashir's cap of 100,000"),
    (np.r_[np.arange(40) % 4, [5000]], r"labels go up to 5000, so there would be 5,001 classes, but only 5 "
                                       r"distinct labels occur"),
    (np.zeros(40), r"every label is 0; a classifier needs at least 2 classes"),
    (np.full(40, np.iinfo(np.int64).max), r"above nashir's cap"),
])
def test_npz_class_count_is_bounded_and_checked(tmp_path, y, match):
    p = _npz(tmp_path, **_labels(len(y), y))
    with pytest.raises(DataError, match=match):
        load_dataset(f"npz:{p}")


def test_npz_uint64_labels_above_int64(tmp_path):
    y = np.arange(40, dtype=np.uint64) % 4
    y[-1] = 2**64 - 1
    p = _npz(tmp_path, x=np.zeros((40, 1, 4, 4), np.uint8), y=y)
    with pytest.raises(DataError, match=r"above nashir's cap"):
        load_dataset(f"npz:{p}")


def test_npz_folder_and_npy_and_missing(tmp_path):
    with pytest.raises(DataError, match=r"npz:.*\bd is a folder; give the path of a \.npz file"):
        (tmp_path / "d").mkdir()
        load_dataset(f"npz:{tmp_path / 'd'}")
    np.save(tmp_path / "x.npy", np.zeros((3, 1, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"x\.npy is a single \.npy array of shape \(3, 1, 4, 4\), not an "):
        load_dataset(f"npz:{tmp_path / 'x.npy'}")
    with pytest.raises(DataError, match=r"not found"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")


def test_npz_whose_arrays_claim_more_than_the_machine_has(tmp_path):
    """A 200-byte archive whose x.npy header claims 2**50 bytes: refused from the header, nothing read."""
    import zipfile

    p = tmp_path / "bomb.npz"
    header = io_npy_header((2**40, 1, 32, 32), np.uint8)
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", header + b"\0" * 64)
        zf.writestr("y.npy", io_npy_header((3,), np.int64) + np.zeros(3, np.int64).tobytes())
    assert p.stat().st_size < 4096
    msg = r"bomb\.npz: its arrays would take \d+\.\d GiB once read, more than this machine's [\d.]+ GiB"
    with pytest.raises(DataError, match=msg):
        load_dataset(f"npz:{p}")


def io_npy_header(shape, dtype) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()
