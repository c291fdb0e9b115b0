"""Benchmark: when does ``--compile`` (torch.compile of the lowered module) pay? (issue 13)

Trains NASH's start network (widths 16/32/64 on 28x28 Fashion-MNIST images, or 32/64/128 with
``--widths``) for a few epochs twice, side by side in one process: eagerly and with
``TrainConfig(compile=True)``, same seed, same data, one torch thread. The first compiled epoch
pays the compilation; the later ones show the speed-up. Printed: the seconds of each epoch, the
compilation (first compiled epoch minus a later one), the steady epoch ratio, and the break-even:
the number of epochs after which compiling has paid for itself
(``compile seconds / (eager epoch - compiled epoch)``), against NASH's budgets (a candidate trains
``epoch_neigh`` = 6 to 17 epochs, the final model 15 to 20).

Usage::

    nice -n 19 python benchmarks/compile.py [--dataset fashion-mnist] [--n-train 10000]
        [--epochs 3] [--batch-size 128] [--precision fp32] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n-train", type=int, default=10000, help="training images used (a prefix)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--widths", default=None, help="start network widths, e.g. 32,64,128")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--mode", default="default", help="torch.compile mode")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from nashir.backends.torch import TrainConfig, train
    from nashir.data import load_dataset
    from nashir.search.startnet import start_network

    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, args.data_dir)
    full = len(data.y_train)
    n = min(args.n_train, full)
    data = dataclasses.replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n],
                               x_val=data.x_val[:2000], y_val=data.y_val[:2000])
    widths = tuple(int(w) for w in args.widths.split(",")) if args.widths else None
    g = start_network(data.input_shape, data.num_classes, widths)
    rows = {}
    for compiled in (False, True):
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device=args.device, seed=0,
                          threads=args.threads, precision=args.precision, compile=compiled,
                          compile_mode=args.mode)
        t0 = time.perf_counter()
        _, hist = train(g, data, cfg)
        rows[compiled] = ([h["seconds"] for h in hist], time.perf_counter() - t0, hist[-1]["val_acc"])
    eager, comp = rows[False][0], rows[True][0]
    print(f"{args.dataset}: {n} training images, batch {args.batch_size}, {g.param_count():,} params, "
          f"{g.mac_count() / 1e6:.1f} M MACs, {args.precision}, {args.device}, {args.threads} thread(s), "
          f"torch {torch.__version__}, compile mode {args.mode}")
    print(f"  {'epoch':>5s} {'eager s':>8s} {'compiled s':>10s}")
    for i, (a, b) in enumerate(zip(eager, comp)):
        print(f"  {i:5d} {a:8.2f} {b:10.2f}")
    e_steady = min(eager[1:]) if len(eager) > 1 else eager[0]
    c_steady = min(comp[1:]) if len(comp) > 1 else comp[0]
    compile_s = comp[0] - c_steady
    print(f"  compilation ~{compile_s:.1f} s = {compile_s / e_steady:.1f} eager epochs; steady epoch "
          f"compiled/eager = {c_steady / e_steady:.2f}; val acc eager {rows[False][2]:.4f}, compiled "
          f"{rows[True][2]:.4f}")
    gain = e_steady - c_steady
    if gain > 0:
        images = compile_s / gain * n
        print(f"  break-even after {compile_s / gain:.1f} epochs of this size ({images:,.0f} images); at "
              f"full size ({full:,} images an epoch) after {images / full:.1f} epochs")
    else:
        print("  compiled epochs are not faster here: --compile never pays on this machine and network")


if __name__ == "__main__":
    main()
