"""The Pareto search against NASH on Fashion-MNIST at equal search budget (issue 15, item 4).

Both searches start from the same start network, data and seed in the reduced set-up of
``benchmarks/search_fashion.py``: the first ``--train`` training images (default 6 000) and
``--val`` validation images (default 3 000), the full official test set, a 16/32/64 start network,
3 steps (generations) x 3 morphisms x 2 epochs, 4 epochs of pretraining and 6 of final training,
bf16 autocast, children up to 6 M MACs.

* ``nash``: 4 neighbours per step (3 children + the current best trained further).
* ``pareto``: 4 children per generation (8 proposed), cost = parameters, the exact and approximate
  morphisms. Before the final training both searches train ``4 + 3 * 4 * 2 = 28`` epochs. Then NASH
  trains its winner 6 epochs and the Pareto search trains each front point 6 epochs (reported).

The claim checked for each seed:

1. the front holds a model whose test accuracy is at least the NASH winner's;
2. the front holds a model at least 5x smaller (parameters) than the NASH winner whose test accuracy
   is within 1 point of it.

Printed: per seed the NASH winner (test accuracy, parameters), the front (id, parameters, test
accuracy) and the two checks; a markdown block for docs/performance.md; ``OUT/pareto_fashion.png``
(the fronts and the NASH winners). Results are appended to ``OUT/results.jsonl`` as each search
finishes, and a rerun with the same ``--out`` skips what is there.

Usage::

    python benchmarks/pareto_fashion.py --out /tmp/pareto-fashion                # seeds 0, 1, 2
    python benchmarks/pareto_fashion.py --out DIR --seeds 0 --threads 2
    python benchmarks/pareto_fashion.py --out DIR --plot-only

Needs the Fashion-MNIST IDX files (``apt-get install dataset-fashion-mnist``, or ``--data-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from search_fashion import base_config, reduced_data  # noqa: E402  (the shared reduced set-up)

CHILDREN, PROPOSALS = 4, 8


def run_nash(seed: int, data, threads: int | None, out: Path) -> dict:
    from nashir.search import nash

    cfg = base_config(seed, threads)
    t0 = time.perf_counter()
    res = nash(None, data, cfg, run_dir=out / f"nash-s{seed}", force=True, progress=False, onnx_check=False)
    return {"method": "nash", "seed": seed, "test_acc": res.test_acc, "params": res.params, "macs": res.macs,
            "search_epochs": cfg.epochs_init + cfg.n_steps * cfg.n_neigh * cfg.epoch_neigh,
            "final_epochs": cfg.epoch_final, "wall_s": time.perf_counter() - t0,
            "load_avg": os.getloadavg()[0]}


def run_pareto(seed: int, data, threads: int | None, out: Path) -> dict:
    from nashir.search.pareto import ParetoConfig, pareto

    cfg = ParetoConfig(base_config(seed, threads), cost="params", children=CHILDREN, proposals=PROPOSALS)
    t0 = time.perf_counter()
    res = pareto(None, data, cfg, run_dir=out / f"pareto-s{seed}", force=True, onnx_check=False)
    return {"method": "pareto", "seed": seed,
            "front": [{k: p[k] for k in ("id", "params", "macs", "val_acc", "test_acc")} for p in res.front],
            "search_epochs": cfg.search_epochs(), "final_epochs": cfg.search.epoch_final * len(res.front),
            "wall_s": time.perf_counter() - t0, "load_avg": os.getloadavg()[0]}


def load_results(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def checks(nash_row: dict, pareto_row: dict) -> dict:
    """The two claims of the issue for one seed."""
    front = pareto_row["front"]
    acc, params = nash_row["test_acc"], nash_row["params"]
    best = max(front, key=lambda p: p["test_acc"])
    small = [p for p in front if 5 * p["params"] <= params and p["test_acc"] >= acc - 0.01]
    return {"as_accurate": best["test_acc"] >= acc, "most_accurate": best,
            "five_x_smaller_within_1pt": bool(small), "smallest_ok": min(small, key=lambda p: p["params"])
            if small else None}


def summarise(results: list[dict], out: Path) -> str:
    by = {(r["method"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    lines = ["| seed | NASH winner: test acc %, params | front: params -> test acc % | as accurate "
             "| 5x smaller within 1 pt | search epochs (NASH / Pareto) | wall s (NASH / Pareto) |",
             "|---:|---|---|---|---|---|---|"]
    for s in seeds:
        n, p = by.get(("nash", s)), by.get(("pareto", s))
        if n is None or p is None:
            continue
        c = checks(n, p)
        front = ", ".join(f"{q['params']:,} -> {100 * q['test_acc']:.2f}" for q in p["front"])
        small = c["smallest_ok"]
        lines.append(f"| {s} | {100 * n['test_acc']:.2f}, {n['params']:,} | {front} | "
                     f"{'yes' if c['as_accurate'] else 'no'} ({100 * c['most_accurate']['test_acc']:.2f}) | "
                     f"{'yes (' + format(small['params'], ',') + ')' if small else 'no'} | "
                     f"{n['search_epochs']} / {p['search_epochs']} | {n['wall_s']:.0f} / {p['wall_s']:.0f} |")
    text = "\n".join(lines)
    _plot(results, out / "pareto_fashion.png")
    return text


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    colors = plt.get_cmap("tab10")
    for r in results:
        c = colors(r["seed"] % 10)
        if r["method"] == "nash":
            ax.scatter([r["params"]], [100 * (1 - r["test_acc"])], marker="*", s=220, color=c, edgecolors="k",
                       zorder=4, label=f"NASH winner, seed {r['seed']}")
        else:
            f = r["front"]
            ax.plot([p["params"] for p in f], [100 * (1 - p["test_acc"]) for p in f], "o-", color=c, zorder=3,
                    label=f"Pareto front, seed {r['seed']}")
            for p in f:
                ax.annotate(p["id"], (p["params"], 100 * (1 - p["test_acc"])), textcoords="offset points",
                            xytext=(4, 4), fontsize=6.5)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test error (%)")
    ax.set_title("Fashion-MNIST (reduced): Pareto front vs NASH winner, equal search budget")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the runs, results.jsonl and the PNG")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--train", type=int, default=6_000, help="training images (default 6 000)")
    ap.add_argument("--val", type=int, default=3_000, help="validation images (default 3 000)")
    ap.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST IDX files")
    ap.add_argument("--plot-only", action="store_true", help="only summarise what --out holds")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.jsonl"
    results = load_results(res_path)
    if not args.plot_only:
        data = reduced_data(args.data_dir, args.train, args.val)
        done = {(r["method"], r["seed"]) for r in results}
        for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
            for method, fn in (("nash", run_nash), ("pareto", run_pareto)):
                if (method, seed) in done:
                    continue
                row = fn(seed, data, args.threads, out)
                results.append(row)
                with res_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{method} seed {seed}: {row.get('test_acc', '')} {row['wall_s']:.0f} s", flush=True)
    print(summarise(results, out))
    print(f"command: python benchmarks/pareto_fashion.py --out {out} --seeds {args.seeds} "
          f"--threads {args.threads}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
