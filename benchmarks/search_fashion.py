"""The NASH paper's Table 1 on Fashion-MNIST, at a reduced size: NASH against its baselines.

Variants (arXiv 1711.04528, Sec. 5.1 and Table 1; every one from the same start network and seed):

* ``nash``           -- hill climbing: ``n_neigh - 1`` morphed children + the current best per step;
* ``random``         -- ``--neighbors 1``: one morphed child per step replaces the model whatever its
                        accuracy (a random walk over morphisms); it trains ``n_neigh * epoch_neigh``
                        epochs per step, so that the run costs as many epochs as ``nash``;
* ``no-morph``       -- ``--no-morph``: children keep the morphed architecture but are re-initialised
                        and trained from scratch;
* ``no-sgdr``        -- ``--no-sgdr``: a constant learning rate ``lr_start`` instead of cosine annealing;
* ``retrain``        -- ``--retrain-from-scratch``: the final architecture is re-initialised and trained
                        for its whole lineage's epochs;
* ``start-lineage``  -- the start network alone, trained on train + validation for as many epochs as
                        the NASH winner's lineage (``epochs_init + n_steps * epoch_neigh + epoch_final``);
* ``start-budget``   -- the start network alone, trained for as many epochs as the whole NASH search
                        trains in total (every candidate's epochs summed): equal epochs.

The reduced size: the first ``--train`` images of the official training part (default 5 000), the
first ``--val`` of the validation part (the last 10 000 training images; default 2 500), the full
official test set (10 000) for the figures; a start network of 16/32/64 channels; 3 steps x 4
neighbours x 3 morphisms x 2 epochs, 4 epochs of pretraining and 6 of final training (34 epochs in
all; the winner's lineage 16), bf16 autocast, children up to 6 M MACs. Each variant runs for every
seed; the same seed gives every variant the same start network, data and data order, so
differences are paired.

Printed: per variant the test accuracy mean +- standard deviation over seeds, parameters, wall
seconds; the paired difference to NASH (mean +- std over seeds, and how many seeds NASH won); a PNG
(``OUT/table1.png``) of every run. Results are appended to ``OUT/results.jsonl`` as each search
finishes, and a rerun with the same ``--out`` skips what is there (nothing computed is lost).

Usage::

    python benchmarks/search_fashion.py --out /tmp/fashion-table1            # 7 variants x 5 seeds
    python benchmarks/search_fashion.py --out DIR --seeds 0,1 --variants nash,random
    python benchmarks/search_fashion.py --out DIR --plot-only                # table + PNG from DIR

Needs the Fashion-MNIST IDX files (``apt-get install dataset-fashion-mnist``, or ``--data-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

VARIANTS = ("nash", "random", "no-morph", "no-sgdr", "retrain", "start-budget", "start-lineage")


def base_config(seed: int, threads: int | None):
    from nashir.search import SearchConfig

    return SearchConfig(
        dataset="fashion-mnist",
        n_steps=3,
        n_neigh=4,
        n_nm=3,
        epoch_neigh=2,
        epochs_init=4,
        epoch_final=6,
        lr_start=0.05,
        lr_end=0.0,
        batch_size=128,
        widths=(16, 32, 64),
        max_macs=6_000_000,
        precision="bf16",
        device="cpu",
        seed=seed,
        threads=threads,
        preset="table1-reduced",
    )


def config_for(variant: str, seed: int, threads: int | None):
    base = base_config(seed, threads)
    if variant == "nash":
        return base
    if variant == "random":
        return base.replace(n_neigh=1, epoch_neigh=base.n_neigh * base.epoch_neigh)
    if variant == "no-morph":
        return base.replace(morph=False)
    if variant == "no-sgdr":
        return base.replace(sgdr=False)
    if variant == "retrain":
        return base.replace(retrain_from_scratch=True)
    if variant == "start-lineage":
        return base.replace(n_steps=0, epochs_init=0, epoch_final=base.lineage_epochs())
    if variant == "start-budget":
        return base.replace(n_steps=0, epochs_init=0, epoch_final=base.budget_epochs())
    raise SystemExit(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def reduced_data(data_dir: str | None, n_train: int, n_val: int):
    """The first ``n_train`` training and ``n_val`` validation images, the whole test set; the
    normalisation of the full training part."""
    from nashir.data import Dataset, load_dataset

    d = load_dataset("fashion-mnist", data_dir=data_dir)
    return Dataset(
        name=f"fashion-mnist[{n_train}/{n_val}]",
        x_train=d.x_train[:n_train].copy(),
        y_train=d.y_train[:n_train].copy(),
        x_val=d.x_val[:n_val].copy(),
        y_val=d.y_val[:n_val].copy(),
        x_test=d.x_test,
        y_test=d.y_test,
        num_classes=d.num_classes,
        mean=d.mean,
        std=d.std,
        augment=d.augment,
        crop_pad=d.crop_pad,
        flip=d.flip,
    )


def run_one(variant: str, seed: int, data, threads: int | None) -> dict:
    from nashir.search import nash

    cfg = config_for(variant, seed, threads)
    t0 = time.perf_counter()
    res = nash(None, data, cfg, run_dir=None, progress=False, onnx_check=False)
    return {
        "variant": variant,
        "seed": seed,
        "test_acc": res.test_acc,
        "val_acc": res.val_acc,
        "params": res.params,
        "macs": res.macs,
        "wall_s": time.perf_counter() - t0,
        "train_s": res.train_seconds,
        "budget_epochs": cfg.budget_epochs(),
        "lineage_epochs": cfg.lineage_epochs(),
        "winner_morphisms": sum(len(s["morphisms"] or []) for s in res.steps),
        "warnings": res.warnings,
        "load_avg": os.getloadavg()[0],
    }


def load_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(results: list[dict], variants: list[str], out: Path) -> str:
    lines = []
    by = {(r["variant"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    head = (
        f"{'variant':14s} {'runs':>4s} {'epochs':>6s} {'test acc % mean +- std':>23s} "
        f"{'params':>9s} {'wall s':>7s} {'vs nash (paired) pts':>21s} {'nash wins':>9s}"
    )
    lines += [head, "-" * len(head)]
    for v in variants:
        rs = [r for r in results if r["variant"] == v]
        if not rs:
            continue
        accs = [100 * r["test_acc"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        diff = ""
        wins = ""
        if v != "nash":
            d = [100 * (by[(v, s)]["test_acc"] - by[("nash", s)]["test_acc"]) for s in seeds
                 if (v, s) in by and ("nash", s) in by]
            if d:
                dsd = statistics.stdev(d) if len(d) > 1 else 0.0
                diff = f"{statistics.mean(d):+.2f} +- {dsd:.2f}"
                wins = f"{sum(x < 0 for x in d)}/{len(d)}"
        lines.append(
            f"{v:14s} {len(rs):4d} {rs[0]['budget_epochs']:6d} {statistics.mean(accs):15.2f} +- {sd:4.2f} "
            f"{statistics.mean(r['params'] for r in rs):9,.0f} "
            f"{statistics.mean(r['wall_s'] for r in rs):7.0f} "
            f"{diff:>21s} {wins:>9s}"
        )
    lines.append("epochs = every network's epochs summed (the search's training budget);")
    lines.append("vs nash = test accuracy of the variant minus NASH's, same seed; "
                 "nash wins = seeds where NASH is strictly better")
    warn = [f"{r['variant']} seed {r['seed']}: {w}" for r in results for w in r.get("warnings") or []]
    lines += [f"WARNING {w}" for w in warn] or ["no final training collapsed (no warning in any run)"]
    _plot(results, variants, out / "table1.png")
    lines.append(f"plot: {out / 'table1.png'}")
    return "\n".join(lines)


def _plot(results: list[dict], variants: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    vs = [v for v in variants if any(r["variant"] == v for r in results)]
    by = {(r["variant"], r["seed"]): r for r in results}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, v in enumerate(vs):
        accs = [100 * r["test_acc"] for r in results if r["variant"] == v]
        ax.scatter([i] * len(accs), accs, color="tab:blue", alpha=0.6, zorder=3)
        m = statistics.mean(accs)
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        ax.errorbar([i + 0.18], [m], yerr=[sd], fmt="D", color="black", capsize=4, zorder=4)
    ax.set_xticks(range(len(vs)))
    ax.set_xticklabels(vs, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("each seed (dots), mean +- std (black)")
    ax.grid(alpha=0.3, axis="y")
    others = [v for v in vs if v != "nash"]
    for i, v in enumerate(others):
        d = [100 * (by[(v, s)]["test_acc"] - by[("nash", s)]["test_acc"])
             for (vv, s) in by if vv == v and ("nash", s) in by]
        if d:
            bx.scatter([i] * len(d), d, color="tab:orange", alpha=0.7, zorder=3)
            bx.errorbar([i + 0.18], [statistics.mean(d)], yerr=[statistics.stdev(d) if len(d) > 1 else 0],
                        fmt="D", color="black", capsize=4, zorder=4)
    bx.axhline(0, color="0.3", lw=1)
    bx.set_xticks(range(len(others)))
    bx.set_xticklabels(others, rotation=30, ha="right")
    bx.set_ylabel("variant minus NASH, same seed (points)")
    bx.set_title("paired difference to NASH (below 0: NASH better)")
    bx.grid(alpha=0.3, axis="y")
    fig.suptitle("Fashion-MNIST, reduced NASH Table 1 (benchmarks/search_fashion.py)")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for results.jsonl and table1.png")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 5)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--train", type=int, default=5_000, help="training images (default 5 000)")
    ap.add_argument("--val", type=int, default=2_500, help="validation images (default 2 500)")
    ap.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST IDX files")
    ap.add_argument("--plot-only", action="store_true", help="only summarise what --out holds")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; expected some of {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    results = load_results(path)
    if not args.plot_only:
        data = reduced_data(args.data_dir, args.train, args.val)
        print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, threads {args.threads}; "
              f"data {data!r}", flush=True)
        done = {(r["variant"], r["seed"]) for r in results}
        for s in seeds:  # seed-major: a partial run still has complete pairs
            for v in variants:
                if (v, s) in done:
                    continue
                r = run_one(v, s, data, args.threads)
                results.append(r)
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(r) + "\n")
                print(f"  {v:14s} seed {s}: test {100 * r['test_acc']:.2f}%, {r['params']:,} params, "
                      f"{r['wall_s']:.0f} s (load {r['load_avg']:.1f})", flush=True)
    print()
    print(summarise([r for r in results if r["variant"] in variants and r["seed"] in seeds], variants, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
