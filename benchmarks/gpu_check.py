"""GPU check of issue 13: one prepared script, at most 8 minutes on one GPU, that prints a table.

(a) **Lowering.** NASH's start network for Fashion-MNIST, trained one epoch by nashir, then lowered
    by nashir (``to_torch``) and written by hand as plain ``torch.nn`` modules with the same weights:
    on CUDA under bf16 autocast (channels_last) both must give the same predictions on the test set
    (and agree to float32 rounding without autocast).
(b) **Training throughput.** Images per second of nashir's loop (``train_module``: device-resident
    data, bf16 autocast, channels_last, SGDR, no host sync per step) against a hand-written minimal
    loop (same lowered network, same batch of 128, data on the device, SGD with momentum, no
    augmentation, no schedule), for the start network and for a grown one (10 morphisms). nashir is
    timed without augmentation (like for like) and with the data set's augmentation (what the
    search does). Target: nashir >= 0.9 x the minimal loop.
(c) **Concurrent candidates.** k children of the start network trained one after another against
    all k at once on the one GPU: k threads with a CUDA stream each (in process), and k worker
    processes (what Ray's fractional GPUs, ``--gpus-per-trial 1/k``, give; warmed up before timing,
    like Ray's long-lived workers). Target: >= 1.5 x the sequential throughput.
(d) **A short NASH search** on Fashion-MNIST (the ``fashion`` preset, on CUDA): test accuracy and
    wall time. Target (issue 13): >= 95.5 % test accuracy in <= 10 minutes of one H200; this
    script's budget leaves the search what (a)-(c) did not use of 8 minutes, so the preset's time is
    printed next to the target.

Every ratio is measured side by side in one run (absolute times drift on a shared machine).

On the GPU machine, from the root of a checkout::

    mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/
    # (on this machine, beforehand: data/ is ignored by git, so carry it)
    pip install torch        # a CUDA build, if the machine has none
    pip install -e .
    python benchmarks/gpu_check.py --data-dir data/fashion-mnist

With the project's device tool: ``run(command="pip install -e . && python benchmarks/gpu_check.py
--data-dir data/fashion-mnist", carry=["data/fashion-mnist"], timeout_s=600)`` (the virtual
environment of this machine does not travel: its torch is a CPU build).

``--smoke`` runs every section on the CPU (or the GPU, if there is one) at toy sizes in about a
minute, to check that the script works; its figures mean nothing.

Usage::

    python benchmarks/gpu_check.py --data-dir DIR [--k 4] [--epochs 2] [--budget-s 480]
        [--skip a,b,c,d] [--search-preset fashion] [--smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROWS: list[tuple[str, str, str, str]] = []   # (check, measured, target, verdict)


def row(check: str, measured: str, target: str = "", ok: bool | None = None) -> None:
    verdict = "" if ok is None else ("PASS" if ok else "FAIL")
    ROWS.append((check, measured, target, verdict))
    print(f"  {check}: {measured}" + (f"  (target {target}: {verdict})" if target else ""), flush=True)


def print_table() -> None:
    w = [max(len(r[i]) for r in ROWS + [("check", "measured", "target", "verdict")]) for i in range(4)]
    line = "  ".join(f"{{:{n}s}}" for n in w)
    print()
    print(line.format("check", "measured", "target", "verdict"))
    print("  ".join("-" * n for n in w))
    for r in ROWS:
        print(line.format(*r))


# -------------------------------------------------------------------------------------------- setup


def load_data(args):
    from nashir.data import load_dataset

    if args.smoke and not (args.data_dir and Path(args.data_dir).is_dir()):
        data = load_dataset("digits", seed=0)
    else:
        data = load_dataset("fashion-mnist", args.data_dir)
    if args.smoke:   # toy sizes
        data = dataclasses.replace(data, x_train=data.x_train[:512], y_train=data.y_train[:512],
                                   x_val=data.x_val[:256], y_val=data.y_val[:256],
                                   x_test=data.x_test[:256], y_test=data.y_test[:256])
    return data


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def grown(graph, n: int, seed: int):
    """``graph`` after ``n`` random morphisms (the search's draw), under the fashion preset's MAC cap."""
    import numpy as np

    from nashir.passes import Constraints, sample_morphisms

    cons = Constraints(max_macs=16_000_000)
    child, _ = sample_morphisms(graph, n, np.random.default_rng(seed), constraints=cons)
    return child


# -------------------------------------------------------------------------------------------- (a)


def hand_written(graph):
    """The start network (a chain of Conv, BatchNormalization, Relu, MaxPool, Flatten, Gemm) as plain
    torch modules with the graph's weights."""
    import torch
    import torch.nn as nn

    layers, prev = [], graph.inputs[0]
    for nd in graph.nodes:
        if nd.inputs[0] is not prev:
            raise SystemExit(f"hand_written: node {nd.name} does not continue the chain")
        a = nd.attrs
        if nd.op_type == "Conv":
            w = nd.inputs[1].const
            p = a["pads"]
            if p[: len(p) // 2] != p[len(p) // 2:]:
                raise SystemExit(f"hand_written: asymmetric pads at {nd.name}")
            m = nn.Conv2d(w.shape[1] * a["group"], w.shape[0], tuple(w.shape[2:]), stride=tuple(a["strides"]),
                          padding=tuple(p[:2]), dilation=tuple(a["dilations"]), groups=a["group"],
                          bias=len(nd.inputs) > 2 and nd.inputs[2] is not None)
            m.weight.data = torch.from_numpy(w.copy())
            if m.bias is not None:
                m.bias.data = torch.from_numpy(nd.inputs[2].const.copy())
        elif nd.op_type == "BatchNormalization":
            c = nd.inputs[1].const.shape[0]
            m = nn.BatchNorm2d(c, eps=a["epsilon"])
            for t, v in zip((m.weight, m.bias, m.running_mean, m.running_var), nd.inputs[1:5]):
                t.data = torch.from_numpy(v.const.copy().reshape(c))
        elif nd.op_type == "Relu":
            m = nn.ReLU()
        elif nd.op_type == "MaxPool":
            if any(a["pads"]) or a["ceil_mode"]:
                raise SystemExit(f"hand_written: padded or ceil-mode pooling at {nd.name}")
            m = nn.MaxPool2d(tuple(a["kernel_shape"]), tuple(a["strides"]))
        elif nd.op_type == "Flatten":
            m = nn.Flatten(a["axis"])
        elif nd.op_type == "Gemm":
            w = nd.inputs[1].const
            m = nn.Linear(w.shape[1], w.shape[0], bias=len(nd.inputs) > 2)
            m.weight.data = torch.from_numpy(w.copy())
            if m.bias is not None:
                m.bias.data = torch.from_numpy(nd.inputs[2].const.copy().reshape(-1))
        else:
            raise SystemExit(f"hand_written: op {nd.op_type} ({nd.name}) is not in the start network")
        layers.append(m)
        prev = nd.outputs[0]
    return nn.Sequential(*layers)


def logits(module, data, device, bf16: bool):
    import torch

    from nashir.backends.torch.sgdr import DeviceData

    module.eval().to(device)
    if bf16:
        module.to(memory_format=torch.channels_last)
    dd = DeviceData(data, "test", device)
    outs = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for xb, _ in dd.batches(1000):
            if bf16:
                xb = xb.contiguous(memory_format=torch.channels_last)
            outs.append(module(xb).float())
    return torch.cat(outs), dd.y


def section_a(args, data, device, bf16):
    from nashir.backends.torch import TrainConfig, to_torch, train
    from nashir.search.startnet import start_network

    start = start_network(data.input_shape, data.num_classes)
    trained, _ = train(start, data, TrainConfig(epochs=1, device=str(device), precision=args.precision,
                                                eval_split=None, seed=0))
    for use_bf16 in sorted({False, bf16}):
        a, y = logits(to_torch(trained), data, device, use_bf16)
        b, _ = logits(hand_written(trained), data, device, use_bf16)
        agree = (a.argmax(1) == b.argmax(1)).float().mean().item()
        diff = (a - b).abs().max().item() / max(1.0, a.abs().max().item())
        acc = (a.argmax(1) == y).float().mean().item()
        what = "bf16 autocast" if use_bf16 else "float32"
        if use_bf16:
            row(f"(a) lowered vs hand-written, {what}, same predictions",
                f"{100 * agree:.2f} % of {len(y)} (max rel |dlogits| {diff:.1e}, acc {100 * acc:.1f} %)",
                ">= 99.9 %", agree >= 0.999)
        else:
            row(f"(a) lowered vs hand-written, {what}", f"max rel |dlogits| {diff:.1e}, agree "
                f"{100 * agree:.2f} %", "<= 1e-4", diff <= 1e-4)
    return start


# -------------------------------------------------------------------------------------------- (b)


def minimal_loop(module, data, device, bf16: bool, epochs: int, batch: int) -> float:
    """A hand-written training loop: images/s over ``epochs`` epochs (the module is warmed up first)."""
    import torch
    import torch.nn.functional as F

    module.to(device).train()
    if bf16:
        module.to(memory_format=torch.channels_last)
    x = torch.from_numpy(data.x_train).to(device)
    y = torch.from_numpy(data.y_train.astype("int64")).to(device)
    c = x.shape[1]
    scale = torch.tensor(1.0 / data.std, dtype=torch.float32, device=device).view(1, c, 1, 1)
    shift = torch.tensor(-data.mean / data.std, dtype=torch.float32, device=device).view(1, c, 1, 1)
    opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    n = x.shape[0]

    def epoch():
        perm = torch.randperm(n, device=device)
        for i in range(0, n - batch + 1, batch):
            idx = perm[i:i + batch]
            xb = x[idx].float() * scale + shift
            if bf16:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = module(xb)
            loss = F.cross_entropy(out.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (n // batch) * batch

    epoch()   # warm-up: cuDNN autotuning, allocator
    sync(device)
    t0 = time.perf_counter()
    images = sum(epoch() for _ in range(epochs))
    sync(device)
    return images / (time.perf_counter() - t0)


def nashir_loop(graph, data, device, args, epochs: int, augment: bool) -> float:
    """nashir's train_module: images/s over ``epochs`` epochs after a warm-up call."""
    from nashir.backends.torch import TrainConfig, to_torch
    from nashir.backends.torch.sgdr import train_module

    d = dataclasses.replace(data, augment=augment)
    module = to_torch(graph)
    kw = dict(batch_size=args.batch_size, device=str(device), precision=args.precision, eval_split=None,
              seed=0)
    train_module(module, d, TrainConfig(epochs=1, **kw))   # warm-up
    sync(device)
    t0 = time.perf_counter()
    hist = train_module(module, d, TrainConfig(epochs=epochs, **kw))
    sync(device)
    wall = time.perf_counter() - t0
    return epochs * len(d.y_train) / wall if hist else math.nan


def section_b(args, data, device, bf16, start):
    from nashir.backends.torch import to_torch

    big = grown(start, 10, seed=1)
    for label, g in (("start network", start), (f"grown ({g_desc(big)})", big)):
        hand = minimal_loop(to_torch(g), data, device, bf16, args.epochs, args.batch_size)
        plain = nashir_loop(g, data, device, args, args.epochs, augment=False)
        aug = nashir_loop(g, data, device, args, args.epochs, augment=True)
        row(f"(b) training images/s, {label}",
            f"nashir {plain:,.0f} / minimal {hand:,.0f} = {plain / hand:.2f} (with augmentation "
            f"{aug / hand:.2f})", ">= 0.9", plain / hand >= 0.9)


def g_desc(g) -> str:
    return f"{sum(n.op_type == 'Conv' for n in g.nodes)} convs, {g.param_count() / 1e6:.2f} M params, " \
           f"{g.mac_count() / 1e6:.1f} M MACs"


# -------------------------------------------------------------------------------------------- (c)

_WORKER_DATA = {}


def _worker(task):
    """A worker process: ``("warm", data_dir, smoke)`` loads the data and initialises CUDA;
    ``("train", onnx_bytes, cfg_kwargs)`` trains one candidate and returns its training seconds."""
    import torch

    from nashir.backends.onnx import load
    from nashir.backends.torch import TrainConfig, to_torch
    from nashir.backends.torch.sgdr import train_module

    kind = task[0]
    if kind == "warm":
        ns = argparse.Namespace(data_dir=task[1], smoke=task[2])
        _WORKER_DATA["data"] = load_data(ns)
        if torch.cuda.is_available():
            torch.zeros(1, device="cuda")
            torch.backends.cudnn.benchmark = True
        else:
            torch.set_num_threads(1)
        time.sleep(0.5)   # so that every worker of the pool gets one warm-up task
        return os.getpid()
    graph = load(task[1])
    t0 = time.perf_counter()
    train_module(to_torch(graph), _WORKER_DATA["data"], TrainConfig(**task[2]))
    return time.perf_counter() - t0


def section_c(args, data, device, start):
    import torch

    from nashir.backends.onnx import model_bytes
    from nashir.backends.torch import TrainConfig, to_torch
    from nashir.backends.torch.sgdr import train_module

    k = args.k
    children = [grown(start, 3, seed=100 + j) for j in range(k)]
    kw = dict(epochs=args.epochs, batch_size=args.batch_size, device=str(device), precision=args.precision,
              eval_split=None, seed=0)
    images = k * args.epochs * len(data.y_train)
    old_bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True   # set once: the threads would toggle it against each other
    try:
        train_module(to_torch(children[0]), data, TrainConfig(**{**kw, "epochs": 1}))   # warm-up
        sync(device)
        t0 = time.perf_counter()
        for g in children:
            train_module(to_torch(g), data, TrainConfig(**kw))
        sync(device)
        seq = time.perf_counter() - t0

        modules = [to_torch(g) for g in children]
        errors: list[BaseException] = []

        def run(m):
            try:
                if device.type == "cuda":
                    with torch.cuda.stream(torch.cuda.Stream(device)):
                        train_module(m, data, TrainConfig(**kw))
                        torch.cuda.current_stream(device).synchronize()
                else:
                    train_module(m, data, TrainConfig(**kw))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(m,)) for m in modules]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sync(device)
        thr = time.perf_counter() - t0
        if errors:
            raise errors[0]
    finally:
        torch.backends.cudnn.benchmark = old_bench
    row(f"(c) {k} candidates at once, threads + CUDA streams", f"{images / thr:,.0f} img/s vs sequential "
        f"{images / seq:,.0f} = {seq / thr:.2f} x", ">= 1.5 x", seq / thr >= 1.5)
    if args.no_processes:
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    blobs = [model_bytes(g) for g in children]
    with ProcessPoolExecutor(max_workers=k, mp_context=mp.get_context("spawn")) as pool:
        t0 = time.perf_counter()
        pids = set(pool.map(_worker, [("warm", args.data_dir, args.smoke)] * k))
        warm = time.perf_counter() - t0
        pool.map(_worker, [("train", blobs[0], {**kw, "epochs": 1})] * k)   # warm-up of each worker
        t0 = time.perf_counter()
        secs = list(pool.map(_worker, [("train", b, kw) for b in blobs]))
        proc = time.perf_counter() - t0
    row(f"(c) {k} candidates at once, {len(pids)} processes (as Ray with --gpus-per-trial {1 / k:g})",
        f"{images / proc:,.0f} img/s = {seq / proc:.2f} x sequential (start-up {warm:.0f} s, each "
        f"{min(secs):.1f}-{max(secs):.1f} s)", ">= 1.5 x", seq / proc >= 1.5)


# -------------------------------------------------------------------------------------------- (d)


def section_d(args, data, device, left_s: float):
    from nashir.search import nash, preset

    if args.smoke:
        cfg = preset("fashion", device=str(device), seed=0, n_steps=1, n_neigh=2, n_nm=1, epoch_neigh=1,
                     epochs_init=1, epoch_final=1, precision=args.precision)
    else:
        cfg = preset(args.search_preset, device=str(device), seed=0, precision=args.precision)
    row("(d) search configuration", f"preset {cfg.preset}: {cfg.n_steps} steps x {cfg.n_neigh} neighbours "
        f"x {cfg.epoch_neigh} epochs, {cfg.epochs_init} init + {cfg.epoch_final} final epochs "
        f"({cfg.budget_epochs()} in all), {left_s:.0f} s left of the budget")
    with tempfile.TemporaryDirectory(prefix="nashir-gpu-check-") as tmp:
        t0 = time.perf_counter()
        res = nash(None, data, cfg, run_dir=Path(tmp) / "run", progress=False)
        wall = time.perf_counter() - t0
    row("(d) NASH search on Fashion-MNIST", f"test acc {100 * res.test_acc:.2f} % (onnxruntime "
        f"{100 * (res.test_acc_onnx or math.nan):.2f} %), {res.params:,} params, wall {wall:.0f} s",
        ">= 95.5 % in <= 600 s", res.test_acc >= 0.955 and wall <= 600)


# -------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="folder with Fashion-MNIST's four .gz files")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs in (b) and (c)")
    ap.add_argument("--k", type=int, default=4, help="concurrent candidates in (c)")
    ap.add_argument("--no-processes", action="store_true", help="(c) without the worker processes")
    ap.add_argument("--search-preset", default="fashion")
    ap.add_argument("--skip", default="", help="sections to leave out, e.g. c,d")
    ap.add_argument("--budget-s", type=float, default=480.0)
    ap.add_argument("--smoke", action="store_true", help="toy sizes, any device: does the script work?")
    args = ap.parse_args()

    import torch

    from nashir.backends.torch.sgdr import resolve_device
    from nashir.errors import NashirError

    try:
        device = resolve_device(args.device)
    except NashirError as e:   # e.g. --device cuda on a machine without CUDA: say so, no traceback
        print(f"{e}; this check needs a GPU, `--smoke` runs it at toy sizes on the CPU", file=sys.stderr)
        return 2
    bf16 = device.type == "cuda"
    args.precision = args.precision or ("bf16" if bf16 else "fp32")
    bf16 = args.precision == "bf16"
    if device.type != "cuda" and not args.smoke:
        print("no CUDA device: this check needs a GPU; `--smoke` runs it at toy sizes on the CPU",
              file=sys.stderr)
        return 2
    if device.type != "cuda":
        torch.set_num_threads(1)
    if args.smoke:
        args.k, args.epochs = min(args.k, 2), 1
    skip = set(args.skip.split(",")) - {""}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"nashir gpu_check: {name}, torch {torch.__version__}, precision {args.precision}, batch "
          f"{args.batch_size}{', SMOKE (toy sizes)' if args.smoke else ''}", flush=True)
    t_start = time.perf_counter()
    data = load_data(args)
    print(f"  data: {data.name}, {len(data.y_train)} train / {len(data.y_val)} val / {len(data.y_test)} test",
          flush=True)
    from nashir.search.startnet import start_network

    start = start_network(data.input_shape, data.num_classes)
    if "a" not in skip:
        start = section_a(args, data, device, bf16)
    if "b" not in skip:
        section_b(args, data, device, bf16, start)
    if "c" not in skip:
        section_c(args, data, device, start)
    if "d" not in skip:
        section_d(args, data, device, args.budget_s - (time.perf_counter() - t_start))
    total = time.perf_counter() - t_start
    row("total wall time", f"{total:.0f} s", f"<= {args.budget_s:.0f} s", total <= args.budget_s)
    print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
