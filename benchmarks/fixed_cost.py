"""Benchmark: the fixed cost of a NASH search outside training, and where it goes (issue 13).

Runs one search in this process (default: the demo preset on scikit-learn's digits, CPU, one torch
thread) and splits its wall time into the training epochs and evaluations (what
``SearchResult.train_seconds`` counts: every epoch's seconds, its validation pass included, plus
the extra splits scored) and everything else: drawing the morphisms, ONNX serialisation and
import, lowering to torch, the SQLite ledger, candidate files, logging, the final onnxruntime
check. Each of those is timed by wrapping the function that does it (the wrappers cost a few
microseconds a call), so the table says where the fixed cost per candidate goes. Targets: outside
training <= 3 % of the demo search.

Usage::

    nice -n 19 python benchmarks/fixed_cost.py [--preset demo] [--seed 0] [--threads 1] [--out DIR]
        [--steps N] (fewer steps for a quick look)
"""

from __future__ import annotations

import argparse
import collections
import functools
import importlib
import tempfile
import time
from pathlib import Path

#: (module, attribute, label): the functions timed. A function called inside another one that is
#: timed too is counted in both; the table says which include which.
TIMED = [
    ("nashir.passes", "sample_morphisms", "sample_morphisms (draw + rewrite + verify)"),
    ("nashir.ir", "Graph.verify", "Graph.verify (all calls)"),
    ("nashir.backends.onnx", "load", "ONNX import (nashir.backends.onnx.load)"),
    ("nashir.backends.onnx", "model_bytes", "ONNX export (model_bytes)"),
    ("nashir.backends.torch.api", "to_torch", "lowering (to_torch) in train"),
    ("nashir.backends.torch.api", "update_weights", "update_weights (write-back)"),
    ("nashir.search.ledger", "Ledger.add_candidate", "ledger: add_candidate"),
    ("nashir.search.ledger", "Ledger.finish_candidate", "ledger: finish_candidate"),
    ("nashir.search.ledger", "Ledger.finish_step", "ledger: finish_step"),
    ("nashir.search.ledger", "Ledger.write_candidate_onnx", "candidate file write (fsync)"),
    ("nashir.search.ledger", "Ledger.read_candidate_onnx", "candidate file read + SHA-256"),
    ("nashir.search.ledger", "Ledger.set_meta", "ledger: set_meta"),
    ("nashir.backends.torch.sgdr", "DeviceData.__init__", "DeviceData (a split onto the device)"),
    ("nashir.search.nash", "_ort_accuracy", "onnxruntime check of best.onnx"),
]


def _wrap(totals: dict, counts: dict, label: str, fn):
    @functools.wraps(fn)
    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            totals[label] += time.perf_counter() - t0
            counts[label] += 1

    return timed


def instrument() -> tuple[dict, dict]:
    totals: dict = collections.defaultdict(float)
    counts: dict = collections.defaultdict(int)
    for mod, attr, label in TIMED:
        m = importlib.import_module(mod)
        owner, name = (m, attr) if "." not in attr else (getattr(m, attr.split(".")[0]), attr.split(".")[1])
        setattr(owner, name, _wrap(totals, counts, label, getattr(owner, name)))
    return totals, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    import nashir.backends.onnx  # noqa: F401 - imports are start-up, not the search's cost
    import nashir.backends.torch  # noqa: F401
    from nashir.search import nash, preset
    from nashir.search.executor import DataSpec

    torch.set_num_threads(args.threads)
    cfg = preset(args.preset, seed=args.seed, threads=args.threads, device="cpu")
    if args.steps is not None:
        cfg = cfg.replace(n_steps=args.steps)
    data = DataSpec(cfg.dataset, cfg.data_dir, seed=cfg.seed).load()
    totals, counts = instrument()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="nashir-fixed-")) / "run"
    t0 = time.perf_counter()
    res = nash(None, data, cfg, run_dir=out, progress=False)
    wall = time.perf_counter() - t0
    n_cand = len(res.trained)
    outside = wall - res.train_seconds
    print(f"{args.preset} preset, seed {args.seed}, {args.threads} torch thread(s): test acc "
          f"{100 * res.test_acc:.2f} %, wall {wall:.1f} s, training epochs + evaluations "
          f"{res.train_seconds:.1f} s, outside them {outside:.2f} s = {100 * outside / wall:.2f} % "
          f"(target <= 3 %)" + (f", {n_cand} candidates" if n_cand else ""))
    print(f"  {'where (inclusive)':48s} {'calls':>6s} {'seconds':>8s} {'% wall':>7s} {'ms/call':>8s}")
    for _, _, label in TIMED:
        if counts[label]:
            print(f"  {label:48s} {counts[label]:6d} {totals[label]:8.3f} {100 * totals[label] / wall:6.2f}% "
                  f"{1e3 * totals[label] / counts[label]:8.2f}")


if __name__ == "__main__":
    main()
