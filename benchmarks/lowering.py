"""Benchmark of the torch backend: lowering overhead and data pipeline throughput.

Two measurements, each side by side in one run:

1. **Lowering overhead.** One SGD training step (forward, cross-entropy, backward, optimizer step)
   of the module :func:`nashir.backends.torch.to_torch` makes from a VGG-like graph against a
   hand-written ``nn.Sequential`` of the same architecture and the same weights. The two steps are
   interleaved (A B, then B A, ...) so that drifts of the machine hit both; the result is the ratio
   of the median step times (lowered / hand-written). Target: <= 1.05 on CPU.
2. **Data pipeline.** Images per second that :class:`~nashir.backends.torch.sgdr.DeviceData`
   serves (shuffled batches of CIFAR-sized uint8 images with random crop + flip augmentation and
   normalisation, on the device) against the images per second the model trains at (batch size /
   median step time from 1.). Target: >= 10x, so that the data never limits training.

Usage::

    python benchmarks/lowering.py                      # CPU, batch 64, 30 rounds
    python benchmarks/lowering.py --threads 2 --rounds 50 --batch 128 --device cpu

Prints a table and the two ratios; ``--json`` prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nashir import GraphBuilder
from nashir.backends.torch import to_torch
from nashir.backends.torch.sgdr import DeviceData, resolve_device
from nashir.data import Dataset

WIDTHS = (32, 32, "M", 64, 64, "M", 128, "M")


def build_graph(seed: int = 0):
    """VGG-like CIFAR net: (conv3x3-BN-ReLU)x2, pool, x2, pool, x1, pool, Flatten, Gemm(10)."""
    b = GraphBuilder("vgg_bench", (3, 32, 32), seed=seed)
    h = b.input
    for w in WIDTHS:
        h = b.maxpool(h, 2) if w == "M" else b.conv_bn_relu(h, w, random_stats=True)
    h = b.flatten(h)
    return b.build(b.gemm(h, 10))


def build_sequential(graph) -> nn.Sequential:
    """The same network written by hand, with the graph's weights copied in."""
    layers: list[nn.Module] = []
    cin = 3
    for w in WIDTHS:
        if w == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            cin = w
    layers += [nn.Flatten(), nn.Linear(cin * 4 * 4, 10)]
    seq = nn.Sequential(*layers)
    convs = [n for n in graph.nodes if n.op_type == "Conv"]
    bns = [n for n in graph.nodes if n.op_type == "BatchNormalization"]
    gemm = [n for n in graph.nodes if n.op_type == "Gemm"][0]

    def t(v):
        return torch.from_numpy(v.const.copy())

    with torch.no_grad():
        for mod, node in zip([m for m in seq if isinstance(m, nn.Conv2d)], convs):
            mod.weight.copy_(t(node.inputs[1]))
        for mod, node in zip([m for m in seq if isinstance(m, nn.BatchNorm2d)], bns):
            mod.weight.copy_(t(node.inputs[1]))
            mod.bias.copy_(t(node.inputs[2]))
            mod.running_mean.copy_(t(node.inputs[3]))
            mod.running_var.copy_(t(node.inputs[4]))
        lin = seq[-1]
        lin.weight.copy_(t(gemm.inputs[1]))
        lin.bias.copy_(t(gemm.inputs[2]))
    return seq


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(module: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> float:
        _sync(x.device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(module(x), y)
        loss.backward()
        opt.step()
        _sync(x.device)
        return time.perf_counter() - t0

    return step


def bench_lowering(batch: int, rounds: int, warmup: int, device: torch.device) -> dict:
    g = build_graph()
    lowered = to_torch(g).to(device).train()
    seq = build_sequential(g).to(device).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    # same function: same outputs on the same batch before any step
    with torch.no_grad():
        diff = (lowered(x) - seq(x)).abs().max().item()
    step_l, step_s = make_step(lowered, x, y), make_step(seq, x, y)
    for _ in range(warmup):
        step_l()
        step_s()
    tl, ts = [], []
    for r in range(rounds):
        if r % 2 == 0:
            tl.append(step_l())
            ts.append(step_s())
        else:
            ts.append(step_s())
            tl.append(step_l())
    ml, ms = statistics.median(tl), statistics.median(ts)
    paired = statistics.median(a / b for a, b in zip(tl, ts))
    return {"batch": batch, "rounds": rounds, "lowered_step_s": ml, "sequential_step_s": ms,
            "ratio": ml / ms, "paired_ratio": paired, "train_images_per_s": batch / ml,
            "max_output_diff": diff}


def bench_data(n: int, batch: int, epochs: int, device: torch.device) -> dict:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.int64)
    small_x, small_y = x[:batch], y[:batch]
    data = Dataset("synthetic-cifar", x, y, small_x, small_y, small_x, small_y, num_classes=10,
                   mean=np.full(3, 120.0, np.float32), std=np.full(3, 60.0, np.float32), augment=True)
    dd = DeviceData(data, "train", device, augment=True, seed=0)
    for _batch in dd.batches(batch, shuffle=True):  # warm-up epoch
        pass
    times = []
    for _ in range(epochs):
        _sync(device)
        t0 = time.perf_counter()
        for _batch in dd.batches(batch, shuffle=True):
            pass
        _sync(device)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"images": n, "batch": batch, "epoch_s": t, "data_images_per_s": n / t}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64, help="images per training step (default 64)")
    ap.add_argument("--rounds", type=int, default=30, help="timed steps of each module (default 30)")
    ap.add_argument("--warmup", type=int, default=5,
                    help="untimed steps of each module first (default 5)")
    ap.add_argument("--data-images", type=int, default=20000,
                    help="images in the synthetic split (default 20000)")
    ap.add_argument("--data-epochs", type=int, default=3,
                    help="timed epochs of the data pipeline (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    low = bench_lowering(args.batch, args.rounds, args.warmup, device)
    dat = bench_data(args.data_images, args.batch, args.data_epochs, device)
    res = {
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), **{f"step_{k}": v for k, v in low.items()},
        **{f"data_{k}": v for k, v in dat.items()},
        "data_over_train": dat["data_images_per_s"] / low["train_images_per_s"],
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return res
    print(f"device {res['device']}, {res['threads']} thread(s), torch {res['torch']}")
    print(f"training step, batch {args.batch}, median of {args.rounds} interleaved steps:")
    print(f"  lowered (to_torch)     {low['lowered_step_s'] * 1e3:9.2f} ms")
    print(f"  hand-written Sequential{low['sequential_step_s'] * 1e3:9.2f} ms")
    print(f"  ratio lowered / hand-written = {low['ratio']:.3f}   (target <= 1.05)"
          f"   [median of per-round ratios {low['paired_ratio']:.3f}; outputs differ by "
          f"{low['max_output_diff']:.1e}]")
    print(f"data pipeline (DeviceData, crop+flip+normalise), {args.data_images} images:")
    print(f"  data  {dat['data_images_per_s']:12.0f} images/s")
    print(f"  train {low['train_images_per_s']:12.0f} images/s")
    print(f"  ratio data / train = {res['data_over_train']:.1f}x   (target >= 10x)")
    return res


if __name__ == "__main__":
    main()
