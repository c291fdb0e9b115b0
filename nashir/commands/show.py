"""``nashir show MODEL.onnx``: the graph's text form, a table per node and totals (or ``--json``)."""

from __future__ import annotations

import json
import re

import click

from nashir.errors import NashirError


class BadShapeOption(NashirError):
    """``--input-shape`` is not a list of positive integers."""


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"3,224,224"`` (also ``3x224x224`` or ``3 224 224``) -> ``(3, 224, 224)``.

    Raises:
        BadShapeOption: anything else; the message shows the expected form.
    """
    if text is None:
        return None
    # digits separated by one comma or "x" (spaces around it allowed), or by spaces: every part counts
    ok = re.fullmatch(r"\d+(?:\s*[,x]\s*\d+|\s+\d+)*", text.strip()) is not None
    parts = re.findall(r"\d+", text)
    if not ok or not all(int(p) > 0 for p in parts):
        raise BadShapeOption(
            f"--input-shape {text!r} is not a list of positive integers; give the sample's non-batch "
            "dimensions, e.g. --input-shape 3,224,224"
        )
    return tuple(int(p) for p in parts)


def _shape(shape) -> list:
    return [d if isinstance(d, str) else int(d) for d in (shape or ())]


def tied_weights(graph) -> dict[str, list[str]]:
    """Parameters shared by several nodes (a tied layer), ``{constant name: [node names]}``.

    Import keeps a weight the model shares as one constant (and the torch backend as one
    parameter), also when the importer derives it (a transposed MatMul weight, once per source).
    A morph that changes a shared constant gives the node it changes its own copy: that node is
    untied from the others."""
    from nashir import ops

    users: dict[str, list[str]] = {}
    for n in graph.nodes:
        for v in ops.param_values(n):
            names = users.setdefault(v.name, [])
            if n.name not in names:
                names.append(n.name)
    return {k: v for k, v in users.items() if len(v) > 1}


def summary(graph) -> dict:
    """A JSON-ready summary: inputs, outputs, one row per node (name, output value, op, output shape,
    parameters, MACs per sample) and totals."""
    from nashir import ops

    rows = []
    for n in graph.nodes:
        rows.append({
            "name": n.name,
            "output": n.outputs[0].name,
            "op_type": n.op_type,
            "shape": _shape(n.outputs[0].shape),
            "params": ops.count_params(n),
            "macs": ops.count_macs(n),
        })
    return {
        "name": graph.name,
        "inputs": [{"name": v.name, "dtype": v.dtype, "shape": _shape(v.shape)} for v in graph.inputs],
        "outputs": [{"name": v.name, "dtype": v.dtype, "shape": _shape(v.shape)} for v in graph.outputs],
        "nodes": rows,
        "totals": {"nodes": len(graph.nodes), "params": graph.param_count(), "macs": graph.mac_count()},
        "tied": tied_weights(graph),
        "meta": {k: v for k, v in graph.meta.items() if isinstance(v, (int, str, float))},
    }


def table(info: dict) -> str:
    """The per-node table and the totals line of :func:`summary`, as aligned text."""
    head = ("name", "output", "op", "shape", "params", "MACs")
    body = [(r["name"], r["output"], r["op_type"], "[" + ",".join(str(d) for d in r["shape"]) + "]",
             f"{r['params']:,}", f"{r['macs']:,}") for r in info["nodes"]]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    right = {4, 5}

    def line(cells):
        cols = zip(cells, widths)
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(cols))

    t = info["totals"]
    out = [line(head), line(["-" * w for w in widths])]
    out += [line(b).rstrip() for b in body]
    out.append(f"total: {t['nodes']} nodes, {t['params']:,} parameters, {t['macs']:,} MACs per sample")
    tied = info.get("tied") or {}
    if tied:
        out.append("tied weights (one constant, several nodes; a morph that changes one of these nodes "
                   "gives it its own copy):")
        out += [f"  {k}: {', '.join(v)}" for k, v in tied.items()]
    return "\n".join(out)


@click.command("show")
@click.argument("model", metavar="MODEL.onnx")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (text form, nodes, totals).")
@click.option("--input-shape", metavar="C,H,W", default=None,
              help="Non-batch input dimensions for models whose input size is symbolic, e.g. 3,224,224.")
def show(model: str, as_json: bool, input_shape: str | None) -> None:
    """Print MODEL's graph (text form), a table per node and totals.

    The table lists each node's name, output value, op, output shape (batch N), parameter count and
    multiply-accumulates per sample. The model file is only read.
    """
    from nashir.backends.onnx import load

    shape = parse_shape(input_shape)
    graph = load(model, input_shape=shape)
    info = summary(graph)
    if as_json:
        info["text"] = str(graph)
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(str(graph))
    click.echo("")
    click.echo(table(info))
