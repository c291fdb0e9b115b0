"""Benchmark: ``sample_morphisms(n=5)`` on a 1000-conv network against a 100-conv one (issue 13).

NASH's ApplyNetMorphs (arXiv 1711.04528, Algorithm 1) draws a morphism type, then a site, ``n_nm``
times. Its cost must follow the change, not the graph: the figure of merit is the ratio of the time
on 1000 convolutions to the time on 100, which is 10 for a cost linear in the graph and 100 for a
quadratic one (the skip passes used to list every (source, target) pair: 1.1 M sites at 1000
convs). Target: ratio <= 10.

The networks are plain chains of ``Conv3x3(8) -> BatchNorm -> Relu`` blocks on 1x16x16 inputs, a
MaxPool after each quarter of the blocks, then GlobalAveragePool, Flatten and a Gemm to 10 classes
(VGG-like, as NASH's start network grown deep). Each round times one call per size, alternating the
sizes so that both see the same machine state; the seeds differ per round (the draws differ), the
same seeds are used for both sizes. With ``--constraints`` every draw is also checked against
``Constraints(max_params=10**9, max_macs=10**12)`` (never binding, but the check runs, as in the
fashion preset of the search). Printed: the median time per size, the ratio of the medians, and the
median of the per-round ratios.

Usage::

    nice -n 19 python benchmarks/sample_morphisms.py [--rounds 5] [--small 100] [--large 1000]
        [--n 5] [--constraints] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from nashir import GraphBuilder
from nashir.ir import Graph


def chain(n_convs: int, width: int = 8, seed: int = 0) -> Graph:
    """The plain ``n_convs``-conv chain described in the module docstring."""
    b = GraphBuilder(f"chain{n_convs}", (1, 16, 16), seed=seed)
    h = b.input
    quarter = max(1, n_convs // 4)
    for k in range(n_convs):
        h = b.conv_bn_relu(h, width, name=f"c{k}")
        if (k + 1) % quarter == 0 and h.shape[2] > 2 and k + 1 < n_convs:
            h = b.maxpool(h)
    return b.build(b.gemm(b.flatten(b.global_avgpool(h)), 10, name="fc"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--large", type=int, default=1000)
    ap.add_argument("--n", type=int, default=5, help="morphisms per call (n_nm)")
    ap.add_argument("--constraints", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile one call on the large network")
    args = ap.parse_args()

    from nashir.passes import Constraints, sample_morphisms

    nets = {n: chain(n) for n in (args.small, args.large)}
    cons = Constraints(max_params=10**9, max_macs=10**12) if args.constraints else None
    if args.profile:
        import cProfile
        import pstats

        pr = cProfile.Profile()
        pr.enable()
        sample_morphisms(nets[args.large], args.n, np.random.default_rng(0), constraints=cons)
        pr.disable()
        pstats.Stats(pr).sort_stats("cumulative").print_stats(30)
        return
    times: dict[int, list[float]] = {n: [] for n in nets}
    ratios = []
    for r in range(args.rounds):
        row = {}
        for n, g in nets.items():
            t0 = time.perf_counter()
            _, done = sample_morphisms(g, args.n, np.random.default_rng(r), constraints=cons)
            row[n] = time.perf_counter() - t0
            assert len(done) == args.n, done.note
            times[n].append(row[n])
        ratios.append(row[args.large] / row[args.small])
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"sample_morphisms(n={args.n}) on plain conv chains, {args.rounds} rounds, "
          f"constraints={'on' if cons else 'off'}")
    for n, g in nets.items():
        print(f"  {n:5d} convs ({len(g.nodes):5d} nodes): median {med[n] * 1e3:9.1f} ms")
    print(f"  ratio {args.large}/{args.small}: of the medians {med[args.large] / med[args.small]:.2f}, "
          f"median per round {statistics.median(ratios):.2f}  (linear = {args.large / args.small:.0f}, "
          f"target <= 10)")


if __name__ == "__main__":
    main()
