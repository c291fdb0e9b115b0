"""Benchmark: the time of each morphism on a 50-conv network, as a ratio to copying its weights.

The script builds a CIFAR ResNet-style network with exactly 50 convolutions (a stem conv, three
stages of eight basic blocks of two 3x3 convs each (48), stride-2 convs opening stages 2 and 3, a
1x1 conv head; widths 32/64/128; 3x32x32 input) with BatchNorm after every conv and residual Adds
(so widening a stage's stream widens all its coupled producers). Then, alternating in one run so
that both see the same machine state, it times

* the baseline: copying every weight of the network with numpy (``[c.const.copy() for c in
  graph.constants()]``);
* each morphism's ``Pass.apply`` (analysis, weight transforms, shape inference) on a fresh clone
  (the clone is not timed), and the same plus ``Graph.verify`` as the pass manager runs it.

It prints the median of each, the ratio of the medians to the baseline's, the median of the
per-round ratios (each morphism against the copy of the same round, which cancels slow drifts of a
shared machine) and the ratio of the fastest rounds (the least disturbed). Target: ``apply`` <= 3x
the copy.

Usage::

    python benchmarks/morph.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from nashir import GraphBuilder
from nashir.ir import Graph
from nashir.passes import NodeSite, SkipSite, ValueSite, get_pass


def resnet50conv(seed: int = 0) -> Graph:
    """The 50-conv residual network described in the module docstring."""
    b = GraphBuilder("resnet_50conv", (3, 32, 32), seed=seed)
    h = b.relu(b.bn(b.conv(b.input, 32, bias=False, name="stem"), random_stats=True), name="stem_relu")
    for s, width in enumerate((32, 64, 128)):
        for k in range(8):
            stride = 2 if s > 0 and k == 0 else 1
            y = b.conv(h, width, stride=stride, bias=False, name=f"s{s}b{k}a")
            y = b.relu(b.bn(y, random_stats=True), name=f"s{s}b{k}a_relu")
            y = b.bn(b.conv(y, width, bias=False, name=f"s{s}b{k}b"), random_stats=True, name=f"s{s}b{k}b_bn")
            if stride == 1 and h.shape[1] == width:
                y = b.add(y, h, name=f"s{s}b{k}_sum")
            h = b.relu(y, name=f"s{s}b{k}_out")
    h = b.relu(b.conv(h, 128, kernel=1, name="head"), name="head_relu")
    g = b.build(b.gemm(b.flatten(b.global_avgpool(h)), 10, name="fc"))
    assert sum(n.op_type == "Conv" for n in g.nodes) == 50
    return g


def cases():
    """(label, pass, site) of the morphisms timed."""
    return [
        ("net2wider conv in a block (x2)", get_pass("net2wider", factor=2), NodeSite("s1b3a")),
        ("net2wider residual stream (x2, 8 coupled producers)", get_pass("net2wider", factor=2),
         NodeSite("s2b0b")),
        ("net2deeper conv3x3-BN-ReLU after a block", get_pass("net2deeper", kernel=3), ValueSite("s1b3_out")),
        ("add-skip stage 1 -> stage 2 (pooled)", get_pass("add-skip"), SkipSite("s0b2_out", "s1b4a_relu")),
        ("concat-skip into a block", get_pass("concat-skip"), SkipSite("s1b1_out", "s1b4a_relu")),
        ("widen-kernel 3x3 -> 5x5", get_pass("widen-kernel"), NodeSite("s2b4a")),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15, help="alternating rounds (default 15)")
    args = ap.parse_args()
    g = resnet50conv()
    consts = g.constants()
    nbytes = sum(c.const.nbytes for c in consts)
    print(f"network: {sum(n.op_type == 'Conv' for n in g.nodes)} convs, {len(g.nodes)} nodes, "
          f"{g.param_count():,} parameters, {nbytes / 2**20:.1f} MiB of weights")
    todo = cases()
    for _, p, s in todo:
        reason = p.check(g, s)
        assert reason is None, reason
    base: list[float] = []
    apply_t: dict[str, list[float]] = {lbl: [] for lbl, _, _ in todo}
    verify_t: dict[str, list[float]] = {lbl: [] for lbl, _, _ in todo}
    groups: dict[str, int] = {}
    rng = np.random.default_rng(0)
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        copies = [c.const.copy() for c in consts]
        base.append(time.perf_counter() - t0)
        del copies
        for lbl, p, s in todo:
            work = g.clone()
            t0 = time.perf_counter()
            res = p.apply(work, s, rng)
            t1 = time.perf_counter()
            groups[lbl] = len(res.info.get("producers", [None]))
            work.verify()
            t2 = time.perf_counter()
            apply_t[lbl].append(t1 - t0)
            verify_t[lbl].append(t2 - t0)
    b = statistics.median(base)
    print(f"baseline: copy all weights with numpy, median {b * 1e3:.2f} ms ({args.repeats} rounds)\n")
    w = max(len(lbl) for lbl in apply_t)
    head = ("apply ms", "ratio", "paired", "min", "+verify ms", "ratio")
    print(f"{'morphism'.ljust(w)}  {head[0]:>9}  {head[1]:>6}  {head[2]:>6}  {head[3]:>6}  {head[4]:>10}  "
          f"{head[5]:>6}")
    worst = 0.0
    for lbl in apply_t:
        a, v = statistics.median(apply_t[lbl]), statistics.median(verify_t[lbl])
        paired = statistics.median(x / y for x, y in zip(apply_t[lbl], base))
        fastest = min(apply_t[lbl]) / min(base)
        worst = max(worst, a / b)
        print(f"{lbl.ljust(w)}  {a * 1e3:9.2f}  {a / b:6.2f}  {paired:6.2f}  {fastest:6.2f}  "
              f"{v * 1e3:10.2f}  {v / b:6.2f}")
    print(f"\nworst apply / copy ratio (of medians): {worst:.2f} (target <= 3)")
    for lbl, k in groups.items():
        if k > 1:
            r = statistics.median(apply_t[lbl]) / b
            print(f"{lbl}: {k} producers widened in one morphism, {r / k:.2f} of the copy per producer")


if __name__ == "__main__":
    main()
