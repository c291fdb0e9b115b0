"""Benchmark: nashir load + save of a ResNet-50-sized ONNX model against plain onnx.load + onnx.save.

The script builds ResNet-50 (He et al. 2016, "Deep Residual Learning", table 1: bottleneck stages of
3, 4, 6, 3 blocks, about 25.6 M parameters, 224x224 input) with nashir's GraphBuilder, writes it once,
then times, alternating in one run so that both see the same machine state:

* plain:  ``onnx.load(src)`` then ``onnx.save(model, dst)``;
* nashir: ``nashir.load(src)`` (parse, fold, normalise, build and verify the IR) then
  ``nashir.save(graph, dst)`` (verify, lower to ONNX, serialise, atomic write).

It prints the median wall time of each (seconds) and the ratio nashir / plain (target <= 2.0).

Usage::

    python benchmarks/onnx_io.py [--repeats 7] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import onnx

import nashir
from nashir import GraphBuilder


def resnet50(seed: int = 0) -> nashir.Graph:
    """ResNet-50 v1.5 (stride on the 3x3 conv of each bottleneck) at 3x224x224, 1000 classes."""
    b = GraphBuilder("resnet50", input_shape=(3, 224, 224), seed=seed)
    h = b.relu(b.bn(b.conv(b.input, 64, 7, stride=2, pads=3, bias=False)))
    h = b.maxpool(h, 3, 2, pads=1)
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            y = b.relu(b.bn(b.conv(h, width, 1, bias=False)))
            y = b.relu(b.bn(b.conv(y, width, 3, stride=s, bias=False)))
            y = b.bn(b.conv(y, width * 4, 1, bias=False))
            if i == 0:
                short = b.bn(b.conv(h, width * 4, 1, stride=s, bias=False))
            else:
                short = h
            h = b.relu(b.add(y, short))
    h = b.flatten(b.global_avgpool(h))
    return b.build(b.gemm(h, 1000))


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats of each side (median reported)")
    ap.add_argument("--keep", type=Path, default=None, help="write the files here instead of a temp folder")
    args = ap.parse_args(argv)

    g = resnet50()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        src = folder / "resnet50.onnx"
        nashir.save(g, src)
        size = os.path.getsize(src)
        print(f"model: {len(g.nodes)} nodes, {g.param_count() / 1e6:.2f} M parameters, "
              f"{g.mac_count() / 1e9:.2f} G MACs, file {size / 2**20:.1f} MiB")

        def plain():
            m = onnx.load(str(src))
            onnx.save(m, str(folder / "plain.onnx"))

        def ours():
            graph = nashir.load(src)
            nashir.save(graph, folder / "nashir.onnx")

        plain()
        ours()   # warm-up: imports, page cache
        tp, tn = [], []
        for _ in range(args.repeats):
            tp.append(_time(plain))
            tn.append(_time(ours))
        mp, mn = statistics.median(tp), statistics.median(tn)
        print(f"plain onnx.load + onnx.save : median {mp:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in tp)})")
        print(f"nashir load + save          : median {mn:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in tn)})")
        print(f"ratio nashir / plain        : {mn / mp:.2f}  (target <= 2.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
