"""``nashir train`` and ``nashir eval``: train an ONNX model with SGDR, score it on a data set.

torch is imported only when a command runs. Bad input (unreadable model, unknown data set, missing
data folder, a model whose input does not fit the images, bad hyper-parameters) exits 2 without a
traceback; a diverged training run exits 1. The output model is written atomically and only after
training finished: on any error nothing is written, and the input model is never modified.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from nashir.errors import DataError, NashirError

_DATASET_HELP = (
    "digits (scikit-learn's 8x8 digits), cifar10, cifar100 (official python or binary files in "
    "--data-dir) or npz:PATH (arrays x (N,C,H,W) and y (N,))."
)


class UsageError(NashirError):
    """A combination of command-line flags that cannot work (exit 2)."""


def _load_model(path: str, input_shape: str | None = None):
    from nashir.backends.onnx import load
    from nashir.commands.show import parse_shape

    return load(path, input_shape=parse_shape(input_shape))


_INPUT_SHAPE_HELP = "Non-batch input dimensions for models whose input size is symbolic, e.g. 3,32,32."


def _load_data(dataset: str, data_dir: str | None, seed: int, augment: bool | None):
    from nashir.data import load_dataset

    return load_dataset(dataset, data_dir=data_dir, seed=seed, augment=augment)


def _same_file(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    try:
        return pb.exists() and os.path.samefile(pa, pb)
    except OSError:
        return pa.resolve() == pb.resolve()


def _check_output(path: str, flag: str) -> None:
    """Refuse an output path that cannot be written, before any work is done (exit 2)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path!r} is a folder; give a file name")
    parent = p.parent
    if not parent.is_dir():
        raise UsageError(
            f"{flag} {path!r}: folder {str(parent)!r} does not exist (or is not a folder); create it first"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path!r}: folder {str(parent)!r} is not writable")


#: TrainConfig field -> the flag that sets it (messages name the flag, not the field).
_FLAGS = {"epochs": "--epochs", "lr_start": "--lr-start", "lr_end": "--lr-end", "momentum": "--momentum",
          "nesterov": "--nesterov", "weight_decay": "--weight-decay", "batch_size": "--batch-size",
          "t_0": "--t0", "t_mult": "--t-mult", "device": "--device", "seed": "--seed", "threads": "--threads"}


def check_train_flags(epochs, lr_start, lr_end, batch_size, weight_decay, momentum, nesterov, t_0, t_mult,
                      seed, threads) -> None:
    """Check the training flags before anything is loaded; the message names the flag (exit 2)."""
    import math

    def bad(flag: str, value, expected: str) -> UsageError:
        return UsageError(f"{flag} {value}: expected {expected}")

    if epochs < 0:
        raise bad("--epochs", epochs, "an integer >= 0")
    for flag, v in (("--lr-start", lr_start), ("--lr-end", lr_end), ("--weight-decay", weight_decay),
                    ("--momentum", momentum)):
        if not math.isfinite(v) or v < 0:
            raise bad(flag, v, "a finite number >= 0")
    if lr_end > lr_start:
        raise UsageError(f"--lr-end {lr_end} is above --lr-start {lr_start}; SGDR anneals from --lr-start "
                         "down to --lr-end, so give --lr-end <= --lr-start")
    if momentum >= 1:
        raise bad("--momentum", momentum, "a number in [0, 1)")
    if nesterov and momentum == 0:
        raise UsageError("--nesterov needs --momentum > 0")
    if batch_size < 1:
        raise bad("--batch-size", batch_size, "an integer >= 1")
    if t_0 is not None and t_0 < 1:
        raise bad("--t0", t_0, "an integer number of epochs >= 1 (leave it out for one cycle)")
    if t_mult < 1:
        raise bad("--t-mult", t_mult, "an integer >= 1")
    if not 0 <= seed < 2**64:
        raise bad("--seed", seed, "an integer in [0, 2**64)")
    if threads is not None and threads < 1:
        raise bad("--threads", threads, "an integer >= 1")


def train_config(**kw):
    """A TrainConfig; a value it refuses is reported with its flag's name."""
    import re

    from nashir.backends.torch import TrainConfig
    from nashir.backends.torch.sgdr import TrainConfigError

    try:
        return TrainConfig(**kw)
    except TrainConfigError as e:
        msg = re.sub(r"TrainConfig\.(\w+)=", lambda m: _FLAGS.get(m.group(1), m.group(1)) + " ", str(e))
        msg = re.sub(r"\b(" + "|".join(_FLAGS) + r")=", lambda m: _FLAGS[m.group(1)] + " ",
                     msg.replace("TrainConfig: ", ""))
        raise UsageError(msg) from None


def _check_device(device: str) -> None:
    """Resolve --device before the model and data load (an unknown or absent device is exit 2)."""
    from nashir.backends.torch.sgdr import TrainConfigError, resolve_device

    try:
        resolve_device(device)
    except TrainConfigError as e:
        msg = str(e)
        raise UsageError(msg if "--device" in msg else f"--device {device!r}: {msg}") from None


def _progress(flag: bool | None) -> bool:
    """--progress/--no-progress, or by default: bars only when stderr is a terminal (in a log file they
    would redraw into thousands of lines)."""
    import sys

    if flag is not None:
        return flag
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _stage_text(path: Path, text: str) -> str:
    """Write ``text`` to a temporary file next to ``path``; return its name (move it with os.replace)."""
    import tempfile

    from nashir.files import give_default_mode

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            give_default_mode(f.fileno())   # mkstemp makes 0600; the output gets what the umask allows
            f.write(text)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


@click.command("train")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--dataset", "-d", required=True, help=_DATASET_HELP)
@click.option("--data-dir", type=click.Path(), default=None,
              help="Folder with the CIFAR files (either official layout).")
@click.option("--epochs", "-e", type=int, required=True,
              help="Epochs of this call (one SGDR cycle by default).")
@click.option("--lr-start", type=float, default=0.05, show_default=True,
              help="Learning rate at the start of each SGDR cycle.")
@click.option("--lr-end", type=float, default=0.0, show_default=True,
              help="Learning rate at the end of each cycle.")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Images per step.")
@click.option("--weight-decay", type=float, default=5e-4, show_default=True, help="L2 weight decay.")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum.")
@click.option("--nesterov/--no-nesterov", default=False, show_default=True, help="Nesterov momentum.")
@click.option("--t0", "t_0", type=int, default=None,
              help="SGDR warm restarts: length of the first cycle in epochs (default: one cycle).")
@click.option("--t-mult", type=int, default=1, show_default=True,
              help="SGDR warm restarts: each cycle is this many times longer than the one before.")
@click.option("--trainval/--no-trainval", default=False, show_default=True,
              help="Train on train+validation (NASH's final training) and report test accuracy.")
@click.option("--augment/--no-augment", default=None,
              help="Random crop + horizontal flip (default: on for CIFAR, off otherwise).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the data split (digits, npz), data order, augmentation and dropout.")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
@click.option("--history", "history_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the per-epoch history as JSON to this file.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar [default: when stderr is a terminal].")
@click.option("--compile", "compile_", is_flag=True,
              help="Run the training batches through torch.compile (pays for long trainings; see "
              "docs/training.md).")
@click.option("--input-shape", metavar="C,H,W", default=None, help=_INPUT_SHAPE_HELP)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Where to write the trained model (ONNX).")
@click.option("--opset", type=int, default=None, metavar="N",
              help="ONNX opset to write (13 up to the newest the onnx package knows) [default: 17].")
@click.option("--external-data", is_flag=True,
              help="Store the weights in OUTPUT.data beside the model (needed above protobuf's 2 GiB).")
def train(model, dataset, data_dir, epochs, lr_start, lr_end, batch_size, weight_decay, momentum, nesterov,
          t_0, t_mult, trainval, augment, device, seed, threads, history_path, progress, compile_,
          input_shape, output, opset, external_data):
    """Train MODEL (ONNX) with SGD and SGDR on a data set; write the trained model to -o.

    SGD with momentum and weight decay, the learning rate annealed per iteration from --lr-start
    to --lr-end by one cosine cycle (SGDR, Loshchilov & Hutter 2017), as NASH trains every
    candidate. BatchNorm layers that `nashir morph --deepen` inserted are calibrated to the identity
    on the first batch (the mark travels in the ONNX file's metadata). The output records the
    input normalisation (per-channel mean and std) in its metadata.

    \b
    Example:
      nashir train model.onnx --dataset cifar10 --data-dir ~/data \\
          --epochs 20 -o trained.onnx
    """
    check_train_flags(epochs, lr_start, lr_end, batch_size, weight_decay, momentum, nesterov, t_0, t_mult,
                      seed, threads)
    from nashir.commands.morph import check_opset

    check_opset(opset, UsageError)
    if input_shape is not None:
        from nashir.commands.show import parse_shape

        parse_shape(input_shape)
    if _same_file(model, output):
        raise UsageError(
            f"--output {output!r} is the input model; nashir never modifies its input, pick another file"
        )
    _check_output(output, "--output")
    if history_path is not None:
        if _same_file(model, history_path):
            raise UsageError(
                f"--history {history_path!r} is the input model; nashir never modifies its input, pick "
                "another file"
            )
        if _same_file(output, history_path) or Path(output).resolve() == Path(history_path).resolve():
            raise UsageError(f"--history {history_path!r} is the --output file; give them different names")
        _check_output(history_path, "--history")
    cfg = train_config(
        epochs=epochs, lr_start=lr_start, lr_end=lr_end, momentum=momentum, nesterov=nesterov,
        weight_decay=weight_decay, batch_size=batch_size, t_0=t_0, t_mult=t_mult, device=device, seed=seed,
        threads=threads, progress=_progress(progress), train_split="trainval" if trainval else "train",
        eval_split="test" if trainval else "val", compile=compile_,
    )
    _check_device(device)
    graph = _load_model(model, input_shape)
    if opset is not None:   # before training: an op the opset lacks (HardSwish below 14) fails now
        from nashir.backends.onnx.exporter import check_graph_opset

        check_graph_opset(graph, opset, UsageError)
    data = _load_data(dataset, data_dir, seed, augment)

    from nashir.backends.onnx import save
    from nashir.backends.torch import train as train_graph

    score = "test_acc" if trainval else "val_acc"
    click.echo(f"training {model} on {data!r} for {epochs} epoch(s), device {device}", err=True)
    def show(h: dict) -> None:   # printed as each epoch ends, not all at the end
        click.echo(
            f"epoch {h['epoch'] + 1:>3}/{epochs}  loss {h['loss']:.4f}  train_acc {h['train_acc']:.4f}  "
            f"{score} {h['val_acc']:.4f}  lr {h['lr']:.4g}  {h['seconds']:.1f}s"
        )
        import sys

        sys.stdout.flush()

    trained, history = train_graph(graph, data, cfg, on_epoch=show)
    staged = None
    if history_path is not None:
        rows = [{(score if k == "val_acc" else k): v for k, v in h.items()} for h in history]
        try:
            staged = _stage_text(Path(history_path), json.dumps(rows, indent=2) + "\n")
        except OSError as e:
            raise UsageError(f"--history {history_path!r}: cannot write: {e.strerror or e}") from e
    try:
        save(trained, output, opset=opset, external_data=external_data)
        if staged is not None:
            os.replace(staged, history_path)
            staged = None
    finally:
        if staged is not None:
            Path(staged).unlink(missing_ok=True)
    click.echo(f"wrote {output}")


def _evaluate_ort(graph, data, split: str, batch_size: int) -> tuple[float, float]:
    """Accuracy and mean cross-entropy with onnxruntime on normalised images (float64 loss)."""
    import numpy as np

    from nashir.backends.onnx import make_session

    x, y = data.split(split)
    if len(y) == 0:
        raise DataError(f"data set {data.name!r}: split {split!r} is empty; nothing to evaluate")
    mean = data.mean.astype(np.float32).reshape(1, -1, 1, 1)
    std = data.std.astype(np.float32).reshape(1, -1, 1, 1)
    sess = make_session(graph)
    name = sess.get_inputs()[0].name
    correct = 0
    loss = 0.0
    for s in range(0, len(y), batch_size):
        xb = (x[s:s + batch_size].astype(np.float32) - mean) / std
        logits = sess.run(None, {name: xb})[0].astype(np.float64)
        yb = y[s:s + batch_size]
        m = logits.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
        loss += float((lse - logits[np.arange(len(yb)), yb]).sum())
        correct += int((logits.argmax(axis=1) == yb).sum())
    return correct / len(y), loss / len(y)


@click.command("eval")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--dataset", "-d", required=True, help=_DATASET_HELP)
@click.option("--data-dir", type=click.Path(), default=None,
              help="Folder with the CIFAR files (either official layout).")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True,
              help="Which part of the data set to score.")
@click.option("--runtime", type=click.Choice(["torch", "onnxruntime"]), default="torch", show_default=True,
              help="Run the model with the torch backend or with onnxruntime.")
@click.option("--batch-size", type=int, default=512, show_default=True, help="Images per forward pass.")
@click.option("--device", default="auto", show_default=True, help="torch runtime: auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the data split (digits, npz): use the seed the model was trained with.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--input-shape", metavar="C,H,W", default=None, help=_INPUT_SHAPE_HELP)
def eval_cmd(model, dataset, data_dir, split, runtime, batch_size, device, seed, as_json, input_shape):
    """Print MODEL's accuracy (and mean cross-entropy) on a split of a data set.

    \b
    Example:
      nashir eval trained.onnx --dataset cifar10 --data-dir ~/data --split test
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: expected an integer >= 1")
    if not 0 <= seed < 2**64:
        raise UsageError(f"--seed {seed}: expected an integer in [0, 2**64)")
    if input_shape is not None:
        from nashir.commands.show import parse_shape

        parse_shape(input_shape)
    if runtime == "torch":
        _check_device(device)
    graph = _load_model(model, input_shape)
    data = _load_data(dataset, data_dir, seed, augment=False)
    if runtime == "torch":
        from nashir.backends.torch import evaluate

        acc, loss = evaluate(graph, data, split, device=device, batch_size=batch_size)
    else:
        from nashir.backends.torch.api import check_fits

        check_fits(graph, data)
        acc, loss = _evaluate_ort(graph, data, split, batch_size)
    n = len(data.split(split)[1])
    if as_json:
        click.echo(json.dumps({"model": str(model), "dataset": data.name, "split": split, "runtime": runtime,
                               "images": n, "accuracy": acc, "loss": loss}))
    else:
        click.echo(
            f"accuracy {acc:.4f}  loss {loss:.4f}  ({split} split of {data.name}, {n} images, {runtime})"
        )
