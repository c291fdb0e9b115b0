"""NASH on scikit-learn's digits: the demo preset against two of the paper's baselines.

Compares, at the same epoch budget and for 3 seeds each (arXiv 1711.04528, Table 1 baselines):

* ``nash``     -- the demo preset (hill climbing: n_neigh - 1 morphed children + the current best);
* ``random``   -- ``--neighbors 1``: one morphed child per step replaces the model whatever its
                  accuracy; it trains ``n_neigh * epoch_neigh`` epochs per step so that the run
                  costs as many epochs as ``nash``;
* ``no-morph`` -- ``--no-morph``: the children keep the morphed architecture but are re-initialised
                  and trained from scratch.

Each search runs in its own subprocess (so peak RSS is per search). Printed per variant: test
accuracy mean and standard deviation (torch; onnxruntime on best.onnx agrees), wall seconds of the
search, the share of that wall time spent outside the training epochs and evaluations (target
<= 10 %), peak RSS (target <= 1.5 GB) and the RSS change from the end of the first step to the end
of the last (no growth expected beyond the networks' own size).

Usage::

    python benchmarks/search_digits.py                 # 3 variants x 3 seeds, demo preset
    python benchmarks/search_digits.py --seeds 0 --variants nash --threads 2
    python benchmarks/search_digits.py --one nash 0 OUTDIR   # one search (used internally)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("nash", "random", "no-morph")


def config_for(variant: str, seed: int, threads: int | None):
    from nashir.search import preset

    base = preset("demo", seed=seed, threads=threads, device="cpu")
    if variant == "nash":
        return base
    if variant == "random":
        return base.replace(n_neigh=1, epoch_neigh=base.n_neigh * base.epoch_neigh)
    if variant == "no-morph":
        return base.replace(morph=False)
    raise SystemExit(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def run_one(variant: str, seed: int, out: str, threads: int | None) -> dict:
    t_start = time.perf_counter()
    import torch  # noqa: F401  (imports are start-up, timed apart from the search)

    import nashir.backends.onnx  # noqa: F401
    import nashir.backends.torch  # noqa: F401
    from nashir.search import nash
    from nashir.search.executor import DataSpec

    cfg = config_for(variant, seed, threads)
    data = DataSpec(cfg.dataset, cfg.data_dir, seed=cfg.seed).load()
    startup = time.perf_counter() - t_start
    load_before = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    res = nash(None, data, cfg, run_dir=out, progress=False)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    events = [json.loads(x) for x in (Path(out) / "log.jsonl").read_text().splitlines()]
    step_rss = [e["rss_mb"] for e in events if e["event"] == "step" and e.get("rss_mb") is not None]
    return {
        "variant": variant,
        "seed": seed,
        "test_acc": res.test_acc,
        "test_acc_onnx": res.test_acc_onnx,
        "params": res.params,
        "wall_s": res.wall_seconds,
        "startup_s": startup,
        "train_eval_s": res.train_seconds,
        "job_s": res.job_seconds,
        "outside_share": 1.0 - res.train_seconds / res.wall_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_rss_mb": step_rss,
        "budget_epochs": cfg.budget_epochs(),
        "cpu_s": cpu,
        "load_avg": [load_before, os.getloadavg()[0]],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS)
    )
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per search (default: torch's)")
    ap.add_argument("--keep", default=None, help="keep the run folders under this folder")
    ap.add_argument("--json", default=None, help="also write every run's numbers to this JSON file")
    ap.add_argument("--one", nargs=3, metavar=("VARIANT", "SEED", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        v, s, out = args.one
        print(json.dumps(run_one(v, int(s), out, args.threads)))
        return 0

    variants = [v for v in args.variants.split(",") if v]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nashir-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}; runs in {root}")
    results = []
    for v in variants:
        for s in seeds:
            out = root / f"{v}-seed{s}"
            cmd = [sys.executable, __file__, "--one", v, str(s), str(out)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                print(p.stderr, file=sys.stderr)
                return p.returncode
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["process_s"] = time.perf_counter() - t0
            results.append(r)
            print(
                f"  {v:9s} seed {s}: test {100 * r['test_acc']:.2f}% "
                f"(onnxruntime {100 * r['test_acc_onnx']:.2f}%), "
                f"{r['params']:,} params, search {r['wall_s']:.1f} s (process {r['process_s']:.1f} s, "
                f"CPU {r['cpu_s']:.0f} s, load {r['load_avg'][0]:.1f}->{r['load_avg'][1]:.1f}), "
                f"outside training {100 * r['outside_share']:.1f}%, peak RSS {r['peak_rss_mb']:.0f} MB, "
                f"RSS per step {[round(x) for x in r['step_rss_mb']]} MB",
                flush=True,
            )
    print()
    head = (
        f"{'variant':9s} {'budget':>6s} {'test acc % (mean +- std)':>25s} {'search s':>9s} "
        f"{'outside train/eval':>18s} {'peak RSS MB':>11s} {'RSS step1->last MB':>19s}"
    )
    print(head)
    print("-" * len(head))
    for v in variants:
        rs = [r for r in results if r["variant"] == v]
        accs = [100 * r["test_acc"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        growth = max(
            (r["step_rss_mb"][-1] - r["step_rss_mb"][0]) if len(r["step_rss_mb"]) > 1 else 0.0 for r in rs
        )
        print(
            f"{v:9s} {rs[0]['budget_epochs']:6d} {statistics.mean(accs):17.2f} +- {sd:4.2f} "
            f"{statistics.mean(r['wall_s'] for r in rs):9.1f} "
            f"{100 * statistics.mean(r['outside_share'] for r in rs):17.1f}% "
            f"{max(r['peak_rss_mb'] for r in rs):11.0f} {growth:+19.1f}"
        )
    if len(variants) > 1 and "nash" in variants:
        base = statistics.mean(r["wall_s"] for r in results if r["variant"] == "nash")
        for v in variants:
            if v != "nash":
                w = statistics.mean(r["wall_s"] for r in results if r["variant"] == v)
                print(f"wall time {v} / nash: {w / base:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
