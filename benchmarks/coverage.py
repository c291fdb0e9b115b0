"""Coverage of torchvision classifiers (issue 16): import, round trip, and the sites each pass offers.

For each classifier (resnet18/50, resnext50_32x4d, wide_resnet50_2, regnet_y_400mf, vgg11_bn,
densenet121, mobilenet_v2, mobilenet_v3_small, efficientnet_b0, shufflenet_v2_x1_0, squeezenet1_0,
googlenet, mnasnet1_0) the script

1. builds the model with random weights (``torchvision.models.<name>(weights=None)`` when
   torchvision imports; otherwise a hand-written torch model of the same architecture family,
   reduced to a few blocks, marked ``block`` in the output: torchvision is not a dependency);
   BatchNorm statistics are randomised so that they matter;
2. exports it with ``torch.onnx.export`` (TorchScript exporter, opset 17, dynamic batch, 3x224x224)
   and imports it with nashir (``import ok`` or the error);
3. saves it again with nashir and compares onnxruntime on the torch export and on nashir's file
   (``roundtrip``: max |delta| / max(1, max |y|) over a batch of 2);
4. counts, per pass, the sites offered and the layers of that kind:
   ``net2wider``: Conv/Gemm layers that some site widens (a site widens its whole coupled
   producer group) / all Conv and Gemm layers, and the number of sites; ``net2deeper``: sites /
   layer outputs; ``widen-kernel``: sites / Convs; ``add-skip``, ``concat-skip``: targets that
   take some skip / layer outputs, and the number of (source, target) sites;
5. applies one morph per pass at a seeded random site and checks preservation with onnxruntime
   (``exact``: the worst max |delta| / tolerance, <= 1 is exact);
6. computes, for every site of every pass, the parameters one morph adds (from shapes, without
   applying it; checked against an applied morph wherever that adds under 2 M parameters) and
   reports the largest.

Usage::

    python benchmarks/coverage.py [--models resnet18,vgg11_bn] [--json out.json] [--no-morph]

It prints one Markdown table row per model (the table in docs/passes.md is this output).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
import traceback
import warnings

import numpy as np

MODELS = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "regnet_y_400mf", "vgg11_bn",
          "densenet121", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x1_0",
          "squeezenet1_0", "googlenet", "mnasnet1_0"]
PASSES = ["net2wider", "net2deeper", "widen-kernel", "add-skip", "concat-skip"]


# ---------------------------------------------------------------------------------------------- models


def build(name: str):
    """``(module, source)``: the torchvision model, or the hand-written fallback (``"block"``)."""
    import torch

    torch.manual_seed(0)
    try:
        import torchvision.models as tvm

        kw = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        m = getattr(tvm, name)(weights=None, **kw)
        src = "torchvision"
    except Exception:  # noqa: BLE001 - torchvision missing or not importable beside this torch
        from fallback_models import FALLBACKS

        m = FALLBACKS[name]()
        src = "block"
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval(), src


def export(model, hw: int = 224) -> bytes:
    import torch

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, hw, hw),), f, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return f.getvalue()


# ---------------------------------------------------------------------------------------------- growth


def _w(nd):
    return nd.inputs[1].const


def wider_growth(flow, q: int) -> int:
    """Parameters net2wider adds when it widens ``flow`` from ``n`` to ``q``
    (:func:`nashir.passes.net2wider.new_params`: the producers' new rows and biases, a column per new
    carried element in every absorber, an entry per new element in every per-channel array)."""
    from nashir.passes.net2wider import new_params

    return new_params(flow, q)


def growth(graph, pname, p, site) -> int:
    """Parameters one morph of pass ``p`` at ``site`` adds (from shapes; nothing is applied)."""
    from nashir.passes import channel_flow

    if pname == "net2wider":   # the largest factor the pass draws there (those over the size bound are not)
        flow = channel_flow(graph, site.node, permuted=True)
        return wider_growth(flow, max(p._candidates(graph, flow)[0]))
    if pname == "net2deeper":   # the largest kernel it may draw there
        v = graph.find_value(site.value)
        return p.new_params(v, max(p.kernels_within(graph, v)))
    if pname == "widen-kernel":
        w = _w(graph.node(site.node))
        grown = [k + 2 * b for k, b in zip(w.shape[2:], p.grow(w.shape[2:]))]
        return int(w.shape[0] * w.shape[1] * (math.prod(grown) - math.prod(w.shape[2:])))
    a, b = graph.find_value(site.src), graph.find_value(site.dst)
    if pname == "add-skip":
        return int(a.shape[1]) * int(b.shape[1])
    return p.new_channels(graph, a, b, channel_flow(graph, b, couple=False))[1]


# ---------------------------------------------------------------------------------------------- one model


def analyse(name: str, morph: bool = True, max_check: int = 2_000_000) -> dict:
    import nashir
    from nashir.backends.onnx import run
    from nashir.passes import channel_flow, check_preservation, get_pass
    from nashir.passes.analysis import layer_outputs

    row: dict = {"model": name}
    t0 = time.perf_counter()
    model, row["source"] = build(name)
    blob = export(model)
    try:
        g = nashir.load(blob)
    except Exception as e:  # noqa: BLE001 - reported in the table
        row["import"] = f"refused: {str(e).splitlines()[0][:120]} {' '.join(str(e).splitlines()[1:3])}"
        return row
    row["import"] = "ok"
    row["params"] = g.param_count()
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    want = run(blob, x)[0]
    got = run(nashir.backends.onnx.model_bytes(g), x)[0]
    row["roundtrip"] = float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))
    convs = [n for n in g.nodes if n.op_type == "Conv"]
    layers = [n for n in g.nodes if n.op_type in ("Conv", "Gemm", "ConvTranspose")]
    louts = layer_outputs(g)
    rng = np.random.default_rng(0)
    row["passes"] = {}
    largest = {}
    for pname in PASSES:
        p = get_pass(pname)
        t = time.perf_counter()
        sites = p.sites(g)
        entry: dict = {"sites": len(sites), "seconds": round(time.perf_counter() - t, 2)}
        if pname == "net2wider":
            covered = set()
            for s in sites:
                covered.update(q.name for q in channel_flow(g, s.node, permuted=True).producers)
            entry.update(covered=len(covered), of=len(layers))
        elif pname == "widen-kernel":
            entry.update(covered=len(sites), of=len(convs))
        elif pname == "net2deeper":
            entry.update(covered=len(sites), of=len(louts))
        else:
            entry.update(covered=len({s.dst for s in sites}), of=len(louts))
        growths = [(growth(g, pname, p, s), s) for s in sites]
        if growths:
            gmax, smax = max(growths, key=lambda t: t[0])
            largest[pname] = {"params": int(gmax), "site": str(smax)}
            # the formula against an applied morph, on the cheapest site under max_check
            small = [t for t in growths if t[0] <= max_check]
            if small and pname != "net2wider":
                gs, ss = min(small, key=lambda t: t[0])
                g2 = g.clone()
                v = g.find_value(str(ss)) if pname == "net2deeper" else None
                p2 = get_pass(pname, kernel=max(p.kernels_within(g, v))) if pname == "net2deeper" else p
                p2.apply(g2, ss, rng)
                entry["growth_checked"] = g2.param_count() - g.param_count() == gs
        if morph and sites:
            s = sites[int(rng.integers(len(sites)))]
            g2 = g.clone()
            opts = {"factor": 2, "split": "random"} if pname == "net2wider" else {}
            res = get_pass(pname, **opts).apply(g2, s, rng)
            g2.verify()
            if pname == "net2wider":
                flow = channel_flow(g, s.node, permuted=True)
                grown = g2.param_count() - g.param_count()
                entry["growth_checked"] = grown == wider_growth(flow, res.info["to"])
            rep = check_preservation(g, g2, n=2, runtimes=["onnxruntime"])
            entry["morph"] = {"site": str(s), "max_abs": rep.max_abs, "ratio": rep.max_abs / rep.tolerance,
                              "ok": bool(rep.ok)}
        row["passes"][pname] = entry
    row["largest_growth"] = largest
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def table(rows: list[dict]) -> str:
    head = ("| model | src | import | round trip max|Δ| | net2wider layers (sites) | net2deeper "
            "| widen-kernel | add-skip targets (sites) | concat-skip targets (sites) "
            "| one morph each: worst |Δ|/tol |")
    out = [head, "|" + "---|" * 10]
    for r in rows:
        if r.get("import") != "ok":
            out.append(f"| {r['model']} | {r.get('source', '')} | {r.get('import')} |" + " |" * 7)
            continue
        p = r["passes"]
        cell = {k: f"{v['covered']}/{v['of']}" for k, v in p.items()}
        for k in ("net2wider", "add-skip", "concat-skip"):
            cell[k] += f" ({p[k]['sites']})"
        worst = max((v["morph"]["ratio"] for v in p.values() if "morph" in v), default=float("nan"))
        out.append(f"| {r['model']} | {r['source']} | ok | {r['roundtrip']:.1e} | {cell['net2wider']} | "
                   f"{cell['net2deeper']} | {cell['widen-kernel']} | {cell['add-skip']} | "
                   f"{cell['concat-skip']} | {worst:.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", default=None, help="write every figure to this JSON file")
    ap.add_argument("--no-morph", action="store_true", help="count sites only")
    args = ap.parse_args(argv)
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    rows = []
    for name in args.models.split(","):
        try:
            row = analyse(name, morph=not args.no_morph)
        except Exception as e:  # noqa: BLE001 - one model's failure must not hide the others
            row = {"model": name, "import": f"error: {type(e).__name__}: {e}"}
            traceback.print_exc()
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
