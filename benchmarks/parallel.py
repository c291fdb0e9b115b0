"""Neighbour training of one NASH step: Ray with 2 workers of 1 thread against in-process with 2 threads.

The jobs are those of one hill-climbing step of the ``demo`` preset on scikit-learn's digits
(arXiv 1711.04528, Algorithm 1): ``n_neigh - 1 = 3`` children of the start network, each made by
``n_nm = 2`` random network morphisms, plus the start network itself, each trained
``epoch_neigh = 6`` epochs with SGDR (batch 64). The same jobs are trained, alternately in one run:

* ``inprocess`` -- :class:`~nashir.search.executor.InProcessExecutor` with 2 torch threads: the
  jobs one after the other, each using both cores;
* ``ray``       -- :class:`~nashir.search.ray_executor.RayExecutor` on a local Ray instance with 2
  CPUs, ``workers=2, cpus_per_trial=1``: two jobs at once, one torch thread each;
* ``inprocess-1`` -- in-process with 1 torch thread, for reference: what the threads of one job
  are worth on these small networks.

Printed: the Ray instance's start time, the first Ray round apart (its worker processes start and
import torch then: a once-per-search cost), the median wall time of the step for each executor
over the following rounds, and the speed-ups ``inprocess / ray`` and ``inprocess-1 / ray``.

Usage::

    python benchmarks/parallel.py              # 3 timed rounds
    python benchmarks/parallel.py --rounds 5 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time


def make_jobs(epochs: int | None, seed: int):
    """The Job objects of step 1 of the demo preset (children of the start network + itself)."""
    import numpy as np

    from nashir.backends.onnx import model_bytes
    from nashir.passes import Constraints, sample_morphisms
    from nashir.search import preset
    from nashir.search.executor import DataSpec, Job
    from nashir.search.nash import candidate_id, candidate_seed
    from nashir.search.startnet import start_network

    cfg = preset("demo", device="cpu", seed=seed)
    if epochs is not None:
        cfg = cfg.replace(epoch_neigh=epochs)
    spec = DataSpec(cfg.dataset, cfg.data_dir, seed=cfg.seed)
    data = spec.load()
    parent = start_network(data.input_shape, data.num_classes, cfg.widths, seed=seed)
    train = cfg.train_kwargs(epochs=cfg.epoch_neigh, device="cpu")
    jobs = []
    for j in range(1, cfg.n_neigh):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, j, 0]))
        child, applied = sample_morphisms(parent, cfg.n_nm, rng, passes=cfg.passes, constraints=Constraints())
        meta = {n.name: {"calibrate": n.meta["calibrate"]} for n in child.nodes if "calibrate" in n.meta}
        jobs.append(
            Job(
                candidate_id(1, j),
                model_bytes(child),
                train,
                spec,
                seed=candidate_seed(seed, 1, j, 1),
                node_meta=meta,
            )
        )
    jobs.append(
        Job(
            candidate_id(1, cfg.n_neigh), model_bytes(parent), train, spec, seed=candidate_seed(seed, 1, 4, 1)
        )
    )
    return cfg, spec, data, jobs


def run_step(executor, jobs) -> tuple[float, list]:
    t0 = time.perf_counter()
    results = list(executor.run(jobs))
    wall = time.perf_counter() - t0
    bad = [r for r in results if r.status != "ok"]
    if bad:
        raise SystemExit(f"{bad[0].candidate_id} did not train: {bad[0].reason}")
    return wall, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per executor (after the first)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per job (default: the preset's 6)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    import ray
    import torch

    from nashir.search.executor import InProcessExecutor
    from nashir.search.ray_executor import RayExecutor

    cfg, spec, data, jobs = make_jobs(args.epochs, args.seed)
    print(
        f"jobs: {len(jobs)} networks ({', '.join(j.candidate_id for j in jobs)}), {cfg.epoch_neigh} epochs "
        f"each, batch {cfg.batch_size}, digits {len(data.y_train)} train / {len(data.y_val)} val images; "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    inproc = InProcessExecutor(threads=2)
    inproc.prepare(spec, data)
    inproc1 = InProcessExecutor(threads=1)
    inproc1.prepare(spec, data)
    t0 = time.perf_counter()
    rayex = RayExecutor(workers=2, cpus_per_trial=1, init_kwargs={"logging_level": logging.ERROR})
    rayex.start()
    t_start = time.perf_counter() - t0
    print(f"Ray local instance started in {t_start:.1f} s (once per search)", flush=True)
    first, res = run_step(rayex, jobs)
    procs = sorted({r.worker for r in res})
    print(
        f"ray, first round (worker processes start, import torch, load digits): {first:.2f} s on {procs}",
        flush=True,
    )

    times: dict[str, list[float]] = {"inprocess": [], "ray": [], "inprocess-1": []}
    accs: dict[str, list[float]] = {}
    try:
        for i in range(args.rounds):
            order = [("inprocess", inproc), ("ray", rayex), ("inprocess-1", inproc1)]
            if i % 2:
                order.reverse()  # alternate who goes first
            for name, ex in order:
                wall, res = run_step(ex, jobs)
                times[name].append(wall)
                accs[name] = [r.val_acc for r in sorted(res, key=lambda r: r.candidate_id)]
                print(f"round {i + 1}: {name:11s} {wall:7.2f} s", flush=True)
    finally:
        rayex.close()
        inproc.close()
        inproc1.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    speedup = med["inprocess"] / med["ray"]
    print()
    print("| executor | trials at once x torch threads | step wall time (median) |")
    print("|---|---|---:|")
    print(f"| in-process | 1 x 2 | {med['inprocess']:.2f} s |")
    print(f"| Ray, local instance | 2 x 1 | {med['ray']:.2f} s |")
    print(f"| in-process (reference) | 1 x 1 | {med['inprocess-1']:.2f} s |")
    print(
        f"speed-up in-process / Ray: {speedup:.2f}x  (per round: "
        + ", ".join(f"{a / b:.2f}" for a, b in zip(times["inprocess"], times["ray"]))
        + ")"
    )
    print(f"speed-up in-process 1 thread / Ray: {med['inprocess-1'] / med['ray']:.2f}x")
    same = accs["inprocess-1"] == accs["ray"]
    print(
        f"validation accuracies, Ray = in-process with 1 thread: {same} ({accs['ray']}); "
        f"in-process with 2 threads: {accs['inprocess']}"
    )
    print(f"load average after the run: {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "times": times,
                    "median": med,
                    "speedup": speedup,
                    "ray_start": t_start,
                    "ray_first_round": first,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
