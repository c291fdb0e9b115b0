"""``nashir train`` and ``nashir eval`` end to end (CPU), and their bad-input behaviour."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from nashir import GraphBuilder
from nashir.backends.onnx import load, save
from nashir.backends.torch import evaluate
from nashir.cli import main
from nashir.data import load_dataset


def cnn(path, cin=1, hw=8, classes=10, seed=0, nan=False):
    b = GraphBuilder("cli_cnn", (cin, hw, hw), seed=seed)
    h = b.conv_bn_relu(b.input, 8, stride=1 if hw <= 8 else 4)
    h = b.flatten(b.global_avgpool(h)) if hw > 8 else b.flatten(b.maxpool(h, 2))
    h = b.gemm(h, classes)
    g = b.build(h)
    if nan:
        w = g.value("gemm_0.weight")
        a = w.const.copy()
        a[:] = np.nan
        g.set_const(w, a)
    save(g, path)
    return path


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def write_cifar10_binary(root, n_per_batch=16, n_test=16, seed=0):
    """A tiny CIFAR-10 folder in the official binary layout (records: 1 label byte + 3072 pixels)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}.bin", n_per_batch) for i in range(1, 6)] + [("test_batch.bin", n_test)]:
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], pixels], axis=1).tobytes())
    return root


def test_train_then_eval_digits(tmp_path, capsys):
    model = cnn(tmp_path / "m.onnx")
    original = model.read_bytes()
    out = tmp_path / "trained.onnx"
    hist = tmp_path / "hist.json"
    rc, stdout, err = run(capsys, "train", model, "--dataset", "digits", "--epochs", 3, "--lr-start", 0.1,
                          "--device", "cpu", "--threads", 1, "--history", hist, "-o", out, "--no-progress")
    assert rc == 0, err
    assert out.is_file() and model.read_bytes() == original
    assert stdout.count("epoch ") == 3 and "wrote" in stdout
    rows = json.loads(hist.read_text())
    assert [r["epoch"] for r in rows] == [0, 1, 2] and all("val_acc" in r for r in rows)
    g = load(out)
    g.verify()
    accs = {}
    for runtime in ("torch", "onnxruntime"):
        rc, stdout, err = run(capsys, "eval", out, "--dataset", "digits", "--runtime", runtime,
                              "--device", "cpu", "--json")
        assert rc == 0, err
        res = json.loads(stdout)
        assert res["split"] == "test" and res["images"] == 359
        accs[runtime] = (res["accuracy"], res["loss"])
    assert accs["torch"][0] == pytest.approx(accs["onnxruntime"][0], abs=1.5 / 359)
    assert accs["torch"][1] == pytest.approx(accs["onnxruntime"][1], rel=1e-4)
    assert accs["torch"][0] > 0.7
    # the printed accuracy is the API's
    want, _ = evaluate(g, load_dataset("digits", seed=0), "val", device="cpu")
    rc, stdout, _ = run(capsys, "eval", out, "--dataset", "digits", "--split", "val", "--device", "cpu")
    assert rc == 0 and stdout.startswith(f"accuracy {want:.4f}")


def test_train_on_a_tiny_cifar10_binary_folder(tmp_path, capsys):
    data = write_cifar10_binary(tmp_path / "data")
    model = cnn(tmp_path / "c.onnx", cin=3, hw=32)
    out = tmp_path / "out.onnx"
    rc, stdout, err = run(capsys, "train", model, "--dataset", "cifar10", "--data-dir", data, "--epochs", 1,
                          "--batch-size", 8, "--device", "cpu", "-o", out, "--no-progress")
    assert rc == 0, err
    assert out.is_file()
    rc, stdout, err = run(capsys, "eval", out, "--dataset", "cifar10", "--data-dir", data, "--device", "cpu")
    assert rc == 0 and stdout.startswith("accuracy ") and "16 images" in stdout


def test_trainval_reports_test_accuracy(tmp_path, capsys):
    model = cnn(tmp_path / "m.onnx")
    rc, stdout, err = run(capsys, "train", model, "--dataset", "digits", "--epochs", 1, "--trainval",
                          "--device", "cpu", "--history", tmp_path / "h.json", "-o", tmp_path / "o.onnx",
                          "--no-progress")
    assert rc == 0, err
    assert "test_acc" in stdout
    (row,) = json.loads((tmp_path / "h.json").read_text())
    assert "test_acc" in row and "val_acc" not in row


def test_progress_bar_is_shown(tmp_path, capsys):
    model = cnn(tmp_path / "m.onnx")
    rc, _, err = run(capsys, "train", model, "--dataset", "digits", "--epochs", 1, "--device", "cpu",
                     "-o", tmp_path / "o.onnx", "--progress")
    assert rc == 0
    assert "epoch 1/1" in err and "batch" in err  # tqdm writes to stderr


# ----------------------------------------------------------------------------------------------
# bad input: exit 2 (1 for a diverged run), a message naming the problem, nothing written
# ----------------------------------------------------------------------------------------------


def assert_nothing_written(folder, keep):
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep)


def test_missing_data_folder(tmp_path, capsys):
    model = cnn(tmp_path / "c.onnx", cin=3, hw=32)
    missing = tmp_path / "no_such_folder"
    rc, _, err = run(capsys, "train", model, "--dataset", "cifar10", "--data-dir", missing, "--epochs", 1,
                     "-o", tmp_path / "out.onnx")
    assert rc == 2
    assert "no_such_folder" in err and "Traceback" not in err
    assert "python version" in err and "binary version" in err
    assert_nothing_written(tmp_path, ["c.onnx"])


def test_missing_data_files_are_listed(tmp_path, capsys):
    model = cnn(tmp_path / "c.onnx", cin=3, hw=32)
    (tmp_path / "empty").mkdir()
    rc, _, err = run(capsys, "eval", model, "--dataset", "cifar10", "--data-dir", tmp_path / "empty")
    assert rc == 2
    assert "data_batch_1" in err and "test_batch" in err


def test_model_input_shape_does_not_fit(tmp_path, capsys):
    model = cnn(tmp_path / "c.onnx", cin=3, hw=32)
    rc, _, err = run(capsys, "train", model, "--dataset", "digits", "--epochs", 1, "--device", "cpu",
                     "-o", tmp_path / "out.onnx")
    assert rc == 2
    assert "(N, 3, 32, 32)" in err and "(N, 1, 8, 8)" in err and "Traceback" not in err
    assert_nothing_written(tmp_path, ["c.onnx"])
    rc, _, err = run(capsys, "eval", model, "--dataset", "digits", "--runtime", "onnxruntime")
    assert rc == 2 and "(N, 3, 32, 32)" in err


def test_nan_loss_writes_nothing(tmp_path, capsys):
    model = cnn(tmp_path / "nan.onnx", nan=True)
    rc, _, err = run(capsys, "train", model, "--dataset", "digits", "--epochs", 2, "--device", "cpu",
                     "-o", tmp_path / "out.onnx", "--history", tmp_path / "h.json", "--no-progress")
    assert rc == 1
    assert "nan" in err.lower() and "epoch 0" in err and "Traceback" not in err
    assert_nothing_written(tmp_path, ["nan.onnx"])


def test_output_may_not_be_the_input(tmp_path, capsys):
    model = cnn(tmp_path / "m.onnx")
    before = model.read_bytes()
    rc, _, err = run(capsys, "train", model, "--dataset", "digits", "--epochs", 1, "-o", model)
    assert rc == 2 and "input model" in err
    assert model.read_bytes() == before


BAD_FLAGS = [
    (["--epochs", -1], "--epochs -1: expected an integer >= 0"),
    (["--lr-start", -0.1], "--lr-start -0.1: expected a finite number >= 0"),
    (["--lr-start", "nan"], "--lr-start nan: expected a finite number >= 0"),
    (["--weight-decay", "inf"], "--weight-decay inf: expected a finite number >= 0"),
    (["--lr-end", 1], "--lr-end 1.0 is above --lr-start 0.05"),
    (["--batch-size", 0], "--batch-size 0: expected an integer >= 1"),
    (["--momentum", 1], "--momentum 1.0: expected a number in [0, 1)"),
    (["--momentum", 0, "--nesterov"], "--nesterov needs --momentum > 0"),
    (["--t0", 0], "--t0 0: expected an integer number of epochs >= 1"),
    (["--t-mult", 0], "--t-mult 0: expected an integer >= 1"),
    (["--threads", 0], "--threads 0: expected an integer >= 1"),
    (["--seed", -1], "--seed -1: expected an integer in [0, 2**64)"),
    (["--input-shape", "1,x,8"], "--input-shape '1,x,8' is not a list of positive integers"),
    (["--device", "tpu9"], "--device 'tpu9'"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS)
def test_bad_flags_are_named_before_anything_loads(tmp_path, capsys, flags, message):
    """The message names the flag (not TrainConfig's field) and comes before the model and the data are
    read: the model here is not even an ONNX file and the data set does not exist."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not a model")
    args = ["train", model, "--dataset", "npz:absent.npz", "--epochs", 1, "-o", tmp_path / "o.onnx", *flags]
    rc, _, err = run(capsys, *args)
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert err.count("\n") == 1 and "TrainConfig" not in err
    assert_nothing_written(tmp_path, ["m.onnx"])
    assert model.read_bytes() == b"not a model"


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", 0], "--batch-size 0: expected an integer >= 1"),
    (["--seed", -1], "--seed -1"),
    (["--input-shape", "3,,3"], "--input-shape '3,,3'"),
    (["--device", "tpu9"], "--device 'tpu9'"),
])
def test_eval_bad_flags_before_anything_loads(tmp_path, capsys, flags, message):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not a model")
    rc, _, err = run(capsys, "eval", model, "--dataset", "npz:absent.npz", *flags)
    assert rc == 2 and message in err and "Traceback" not in err, err


def test_click_usage_errors_are_one_line(tmp_path, capsys):
    model = cnn(tmp_path / "m.onnx")
    rc, _, err = run(capsys, "train", model, "--dataset", "digits", "-o", tmp_path / "o.onnx")
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: Missing option '--epochs'")
    assert "nashir train --help" in err
    rc, _, err = run(capsys, "train", model, "--epochs", "many", "-d", "digits", "-o", tmp_path / "o.onnx")
    assert rc == 2 and err.count("\n") == 1 and "'many' is not a valid integer" in err
    assert_nothing_written(tmp_path, ["m.onnx"])


def test_input_shape_for_a_symbolic_model(tmp_path, capsys):
    import onnx

    model = cnn(tmp_path / "m.onnx")
    m = onnx.load(model)
    for d, name in zip(m.graph.input[0].type.tensor_type.shape.dim[2:], ("h", "w")):
        d.ClearField("dim_value")
        d.dim_param = name
    model.write_bytes(m.SerializeToString())
    rc, _, err = run(capsys, "eval", model, "--dataset", "digits")
    assert rc == 2 and "--input-shape" in err
    rc, out, err = run(capsys, "eval", model, "--dataset", "digits", "--input-shape", "1,8,8")
    assert rc == 0 and "accuracy" in out, err
    rc, out, err = run(capsys, "train", model, "--dataset", "digits", "--epochs", 1, "--device", "cpu",
                       "--input-shape", "1,8,8", "-o", tmp_path / "o.onnx")
    assert rc == 0, err


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_follow_the_umask_and_no_bar_off_a_terminal(tmp_path, capsys, umask):
    """-o and --history get 0666 & ~umask; stderr is not a terminal here, so no progress bar by default."""
    model = cnn(tmp_path / "m.onnx")
    old = os.umask(umask)
    try:
        rc, _, err = run(capsys, "train", model, "--dataset", "digits", "--epochs", 1, "--device", "cpu",
                         "-o", tmp_path / "o.onnx", "--history", tmp_path / "h.json")
    finally:
        os.umask(old)
    assert rc == 0, err
    for name in ("o.onnx", "h.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
    assert "batch/s" not in err and "\r" not in err


def test_unknown_dataset_and_missing_model(tmp_path, capsys):
    model = cnn(tmp_path / "m.onnx")
    rc, _, err = run(capsys, "eval", model, "--dataset", "imagenet-1k")
    assert rc == 2 and "digits" in err and "cifar10" in err
    rc, _, err = run(capsys, "eval", tmp_path / "absent.onnx", "--dataset", "digits")
    assert rc == 2 and "absent.onnx" in err


def test_npz_dataset(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 1, 8, 8), dtype=np.uint8)
    y = np.arange(60) % 10
    np.savez(tmp_path / "d.npz", x=x, y=y)
    model = cnn(tmp_path / "m.onnx")
    rc, stdout, err = run(capsys, "train", model, "--dataset", f"npz:{tmp_path / 'd.npz'}", "--epochs", 1,
                          "--device", "cpu", "-o", tmp_path / "o.onnx", "--no-progress")
    assert rc == 0, err
    assert os.path.isfile(tmp_path / "o.onnx")


def test_train_writes_external_data_at_the_opset_asked(tmp_path, capsys):
    import onnx

    model = cnn(tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    rc, stdout, err = run(capsys, "train", model, "--dataset", "digits", "--epochs", 0, "--device", "cpu",
                          "--opset", 18, "--external-data", "-o", out, "--no-progress")
    assert rc == 0, err
    m = onnx.load(str(out), load_external_data=False)
    assert {o.version for o in m.opset_import if o.domain in ("", "ai.onnx")} == {18}
    assert (tmp_path / "o.onnx.data").is_file()
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    rc, _, err = run(capsys, "train", model, "--dataset", "digits", "--epochs", 0, "--opset", 12,
                     "-o", tmp_path / "p.onnx")
    assert rc == 2 and "--opset 12" in err and not (tmp_path / "p.onnx").exists()


def test_epoch_lines_are_printed_as_each_epoch_ends(tmp_path, capsys, monkeypatch):
    """When epoch k is being evaluated, the line of epoch k-1 is already on stdout."""
    import sys

    from nashir.backends.torch import sgdr

    seen = []
    real = sgdr._evaluate

    def spy(*a, **k):
        out = capsys.readouterr()
        seen.append(out.out)
        sys.stdout.write(out.out)
        sys.stderr.write(out.err)
        return real(*a, **k)

    monkeypatch.setattr(sgdr, "_evaluate", spy)
    model = cnn(tmp_path / "m.onnx")
    rc, stdout, err = run(capsys, "train", model, "--dataset", "digits", "--epochs", 3, "--device", "cpu",
                          "--threads", 1, "-o", tmp_path / "o.onnx")
    assert rc == 0, err
    assert len(seen) == 3
    assert "epoch   1/3" not in seen[0] and "epoch   1/3" in seen[1] and "epoch   2/3" in seen[2]


def test_train_compile_flag_reaches_torch_compile(tmp_path, capsys, monkeypatch):
    import torch

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, mode=None: compiled.append(mode) or m)
    model = cnn(tmp_path / "m.onnx")
    rc, _, err = run(capsys, "train", model, "--dataset", "digits", "--epochs", 1, "--device", "cpu",
                     "--threads", 1, "--compile", "-o", tmp_path / "t.onnx", "--no-progress")
    assert rc == 0, err
    assert compiled == [None]
