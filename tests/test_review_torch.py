"""Regression tests from a review of the torch backend, the data sets and ``nashir train``/``eval``."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch

from nashir import GraphBuilder
from nashir.backends.onnx import save
from nashir.backends.torch import TrainConfig, TrainingDiverged, evaluate, train
from nashir.backends.torch.sgdr import TrainConfigError
from nashir.cli import main
from nashir.data import load_dataset
from nashir.errors import BackendError, DataError


def small_cnn(seed=0):
    b = GraphBuilder("review_cnn", (1, 8, 8), seed=seed)
    h = b.conv_bn_relu(b.input, 4)
    h = b.gemm(b.flatten(b.maxpool(h, 2)), 10)
    return b.build(h)


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.onnx"
    save(small_cnn(), path)
    return path


# ------------------------------------------------------------------------------------------
# nashir train: output paths are checked before training; --history never clobbers a file
# ------------------------------------------------------------------------------------------


def test_output_in_a_missing_folder_fails_before_training(tmp_path, model, capsys):
    rc, out, err = run(capsys, "train", model, "-d", "digits", "-e", 1, "--no-progress",
                       "-o", tmp_path / "nodir" / "out.onnx")
    assert rc == 2 and "does not exist" in err and "nodir" in err
    assert "epoch" not in out  # refused up front, nothing was trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_history_may_not_be_the_input_model(tmp_path, model, capsys):
    before = digest(model)
    rc, _, err = run(capsys, "train", model, "-d", "digits", "-e", 1, "--no-progress",
                     "-o", tmp_path / "out.onnx", "--history", model)
    assert rc == 2 and "--history" in err and "input model" in err
    assert digest(model) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_history_may_not_be_the_output(tmp_path, model, capsys):
    out = tmp_path / "out.onnx"
    rc, _, err = run(capsys, "train", model, "-d", "digits", "-e", 1, "--no-progress",
                     "-o", out, "--history", out)
    assert rc == 2 and "--output" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_history_under_a_file_fails_before_training_and_writes_nothing(tmp_path, model, capsys):
    (tmp_path / "afile").write_text("x")
    rc, out, err = run(capsys, "train", model, "-d", "digits", "-e", 1, "--no-progress",
                       "-o", tmp_path / "out.onnx", "--history", tmp_path / "afile" / "h.json")
    assert rc == 2 and "Traceback" not in err and "afile" in err
    assert "epoch" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "m.onnx"]


# ------------------------------------------------------------------------------------------
# Seeds out of scikit-learn's range
# ------------------------------------------------------------------------------------------


def test_negative_seed_is_bad_input(tmp_path, model, capsys):
    rc, _, err = run(capsys, "train", model, "-d", "digits", "-e", 1, "--seed", -1,
                     "-o", tmp_path / "o.onnx")
    assert rc == 2 and "seed" in err and "Traceback" not in err
    with pytest.raises(DataError, match="seed"):
        load_dataset("digits", seed=-1)


def test_large_seeds_split_digits():
    # 2**32 - 1 used to crash: the second split is seeded with seed + 1, beyond sklearn's range.
    for seed in (2**32 - 1, 2**32, 2**40):
        ds = load_dataset("digits", seed=seed)
        assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 1797
    # seeds inside the range keep their split
    a, b = load_dataset("digits", seed=5), load_dataset("digits", seed=5 + 2**32)
    assert np.array_equal(a.y_test, b.y_test) and np.array_equal(a.x_val, b.x_val)


def test_train_config_seed_range():
    TrainConfig(epochs=1, seed=2**64 - 1)
    for bad in (-1, 2**64):
        with pytest.raises(TrainConfigError, match="seed"):
            TrainConfig(epochs=1, seed=bad)


# ------------------------------------------------------------------------------------------
# npz values beyond float32
# ------------------------------------------------------------------------------------------


def test_npz_float64_beyond_float32_range(tmp_path):
    x = np.full((40, 1, 4, 4), 1e39)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from the cast, a clear error instead
        with pytest.raises(DataError, match="float32"):
            load_dataset(f"npz:{tmp_path / 'd.npz'}")


# ------------------------------------------------------------------------------------------
# Divergence that the training loss does not show
# ------------------------------------------------------------------------------------------


def test_overflow_after_the_last_step_is_training_diverged():
    # One step per epoch with a huge rate: the only training loss is finite (taken before the
    # update), but the updated network's outputs are NaN. Used to return a broken model.
    data = load_dataset("digits")
    cfg = TrainConfig(epochs=1, batch_size=4096, lr_start=1e30, device="cpu", threads=1)
    with pytest.raises(TrainingDiverged) as ei:
        train(small_cnn(), data, cfg)
    assert ei.value.epoch == 0 and ei.value.step == 0


def test_cli_writes_nothing_when_the_outputs_overflow(tmp_path, model, capsys):
    out = tmp_path / "out.onnx"
    rc, _, err = run(capsys, "train", model, "-d", "digits", "-e", 1, "--batch-size", 4096,
                     "--lr-start", "1e30", "--device", "cpu", "--no-progress", "-o", out,
                     "--history", tmp_path / "h.json")
    assert rc == 1 and "Traceback" not in err and "epoch 0" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_constant_that_is_not_finite_from_the_start_is_not_divergence():
    # Add of a fixed (1, C, H, W) mask with -inf entries, then Relu: the outputs are finite, the
    # mask buffer is not; the post-epoch weight check must only flag what training broke.
    b = GraphBuilder("masked", (1, 8, 8), seed=0)
    h = b.conv(b.input, 4)
    mask = np.zeros((1, 4, 8, 8), np.float32)
    mask[:, :, 0, :] = -np.inf
    h = b.relu(b.op("Add", h, b.graph.add_const(mask, "mask")))
    g = b.build(b.gemm(b.flatten(b.maxpool(h, 2)), 10))
    trained, history = train(g, load_dataset("digits"), TrainConfig(epochs=1, device="cpu", threads=1))
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    assert np.array_equal(trained.value("mask").const, mask)


def test_output_batch_that_differs_from_the_input_batch_is_a_backend_error():
    # Reshape to (-1, 128) turns a batch of B images into 2B rows; this used to escape as a raw
    # ValueError from cross_entropy. (The ONNX importer refuses such a Reshape, so this is the
    # Python API's path.)
    b = GraphBuilder("rs", (1, 8, 8), seed=0)
    h = b.conv(b.input, 4)
    h = b.op("Reshape", h, b.graph.add_const(np.array([-1, 128], np.int64), "tgt"))
    g = b.build(b.gemm(h, 10))
    data = load_dataset("digits")
    with pytest.raises(BackendError, match=r"\(256, 10\).*\(128, 10\)"):
        train(g, data, TrainConfig(epochs=1, device="cpu", threads=1))
    with pytest.raises(BackendError, match="expected logits"):
        evaluate(g, data, "val", device="cpu", batch_size=64)


def flat_bn_graph():
    """Conv -> Flatten -> Gemm -> BatchNormalization on (N, F) -> Gemm (Net2Deeper on a flat value)."""
    b = GraphBuilder("flatbn", (1, 8, 8), seed=0)
    h = b.flatten(b.maxpool(b.conv(b.input, 4), 2))
    h = b.bn(b.gemm(h, 16))
    return b.build(b.gemm(h, 10))


def test_a_last_training_batch_of_one_image_is_merged():
    # 1079 digits training images with batch 1078 leave one image: BatchNorm over (1, F) used to
    # fail with a raw ValueError. The single image now joins the batch before it.
    data = load_dataset("digits")
    _, history = train(flat_bn_graph(), data, TrainConfig(epochs=1, batch_size=1078, device="cpu",
                                                          threads=1))
    assert np.isfinite(history[0]["loss"])
    from nashir.backends.torch.sgdr import DeviceData

    dd = DeviceData(data, "train", "cpu")
    sizes = [len(y) for _, y in dd.batches(1078, shuffle=True)]
    assert sizes == [1079] and dd.num_batches(1078, shuffle=True) == 1
    assert [len(y) for _, y in dd.batches(1078)] == [1078, 1] and dd.num_batches(1078) == 2
    sizes = [len(y) for _, y in dd.batches(154, shuffle=True)]  # 1079 = 7 * 154 + 1
    assert sizes == [154] * 6 + [155]
    ys = torch.cat([y for _, y in dd.batches(154, shuffle=True)])
    assert torch.equal(torch.sort(ys).values, torch.sort(dd.y).values)  # every image once


def test_batch_of_one_with_flat_batchnorm_is_a_backend_error():
    g = flat_bn_graph()
    g.find_node("bn_0").meta["calibrate"] = "identity"
    with pytest.raises(BackendError, match="batch of 1 images"):
        train(g, load_dataset("digits"), TrainConfig(epochs=1, batch_size=1, device="cpu", threads=1))
    g.find_node("bn_0").meta.clear()
    with pytest.raises(BackendError, match="forward pass failed on a batch of 1 images"):
        train(g, load_dataset("digits"), TrainConfig(epochs=1, batch_size=1, device="cpu", threads=1))
