"""``nashir morph MODEL.onnx ...``: apply network morphisms to an ONNX model; ``nashir passes``: list them.

The morph flags (``--widen``, ``--deepen``, ``--skip-add``, ``--skip-concat``, ``--widen-kernel``,
``--apply``) apply in the order given on the command line; ``--width``/``--factor`` belong to the
``--widen`` before them and ``--kernel`` to the ``--deepen`` before it. The input file is only read;
the output is written atomically, and nothing is written when an error occurs.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from nashir.errors import NashirError

ORDERED = ("widen", "width", "factor", "deepen", "kernel", "skip_add", "skip_concat", "widen_kernel", "apply")
_FLAG = {"widen": "--widen", "deepen": "--deepen", "skip_add": "--skip-add", "skip_concat": "--skip-concat",
         "widen_kernel": "--widen-kernel", "apply": "--apply", "width": "--width", "factor": "--factor",
         "kernel": "--kernel"}
_PASS = {"widen": "net2wider", "deepen": "net2deeper", "skip_add": "add-skip", "skip_concat": "concat-skip",
         "widen_kernel": "widen-kernel"}


class MorphUsageError(NashirError):
    """The morph flags do not fit together (exit 2)."""


class PreservationFailed(NashirError):
    """``--check`` found outputs that differ by more than the tolerance (exit 1)."""

    exit_code = 1


class _OrderedCommand(click.Command):
    """A command that records the order in which options occur (``ctx.meta['nashir.order']``)."""

    def make_parser(self, ctx):
        parser = super().make_parser(ctx)
        parse = parser.parse_args

        def parse_args(args):
            opts, largs, order = parse(args=args)
            ctx.meta["nashir.order"] = [getattr(p, "name", None) for p in order]
            return opts, largs, order

        parser.parse_args = parse_args
        return parser


def ordered_steps(order: list[str], values: dict[str, tuple]) -> list[dict]:
    """Turn the command line's option order and each option's values into morph steps.

    Returns:
        ``[{"flag", "pass", "target", "options"}]`` in command-line order.

    Raises:
        MorphUsageError: ``--width``/``--factor`` without a ``--widen`` before it, both given for one
            ``--widen``, or ``--kernel`` without a ``--deepen``; a bad ``--apply``.
    """
    queues = {k: list(v) for k, v in values.items()}
    steps: list[dict] = []
    for name in order:
        if name not in ORDERED or not queues.get(name):
            continue
        val = queues[name].pop(0)
        if name in ("width", "factor", "kernel"):
            owner = "widen" if name != "kernel" else "deepen"
            last = next((s for s in reversed(steps) if s["key"] == owner), None)
            if last is None:
                raise MorphUsageError(
                    f"{_FLAG[name]} {val} must follow the {_FLAG[owner]} NAME it belongs to, e.g. "
                    f"`{_FLAG[owner]} conv1 {_FLAG[name]} {val}`"
                )
            if name in ("width", "factor") and ({"width", "factor"} & set(last["options"])):
                raise MorphUsageError(
                    f"{_FLAG[owner]} {last['target']}: give either --width or --factor once, not both "
                    "or twice"
                )
            if name == "kernel" and "kernel" in last["options"]:
                raise MorphUsageError(f"--deepen {last['target']}: --kernel is given twice")
            last["options"][name] = val
            continue
        if name == "apply":
            pname, sep, site = val.partition(":")
            if not sep or not pname or not site:
                raise MorphUsageError(f"--apply {val!r}: expected PASS:SITE, e.g. --apply net2deeper:relu1")
            steps.append({"key": name, "flag": "--apply", "pass": pname, "target": site, "options": {}})
            continue
        steps.append({"key": name, "flag": _FLAG[name], "pass": _PASS[name], "target": val, "options": {}})
    return steps


def check_opset(opset: int | None, error=click.BadParameter) -> None:
    """Refuse an ``--opset`` the exporter cannot write, before any work is done (raises ``error``)."""
    if opset is None:
        return
    import onnx

    from nashir.backends.onnx.exporter import EXPORT_OPSET, MIN_EXPORT_OPSET

    newest = onnx.defs.onnx_opset_version()
    if not MIN_EXPORT_OPSET <= opset <= newest:
        raise error(f"--opset {opset}: nashir writes opsets {MIN_EXPORT_OPSET} to {newest} (default "
                    f"{EXPORT_OPSET}, which onnxruntime 1.13 and later load); pick one in that range")


def _default_output(model: str) -> Path:
    p = Path(model)
    stem = p.name[:-5] if p.name.lower().endswith(".onnx") else p.name
    return p.with_name(stem + ".morphed.onnx")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


@click.command("morph", cls=_OrderedCommand)
@click.argument("model", metavar="MODEL.onnx")
@click.option("--widen", multiple=True, metavar="NAME",
              help="Net2Wider a Conv/Gemm (node or output value name).")
@click.option("--width", multiple=True, type=int, metavar="N", help="New width for the --widen before it.")
@click.option("--factor", multiple=True, type=float, metavar="F",
              help="Widening factor (> 1) for the --widen before it (default 2).")
@click.option("--deepen", multiple=True, metavar="NAME",
              help="Net2Deeper: insert an identity layer after NAME.")
@click.option("--kernel", multiple=True, type=int, metavar="K",
              help="Kernel (odd) of the --deepen before it (default 3).")
@click.option("--skip-add", multiple=True, metavar="SRC:DST",
              help="Add a zero-initialised residual SRC -> DST.")
@click.option("--skip-concat", multiple=True, metavar="SRC:DST", help="Concatenate a skip SRC -> DST.")
@click.option("--widen-kernel", multiple=True, metavar="NAME", help="Grow a Conv kernel k -> k+2.")
@click.option("--apply", "apply", multiple=True, metavar="PASS:SITE",
              help="Apply any registered pass (plugins too) at SITE, as `--list-sites` prints it.")
@click.option("--split", type=click.Choice(["equal", "random"]), default="equal", show_default=True,
              help="How widened channels share their outgoing weights.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed for the morphisms' random choices.")
@click.option("-o", "--output", metavar="OUT.onnx", default=None,
              help="Output file [default: MODEL.morphed.onnx].")
@click.option("--check", is_flag=True, help="Compare both models in onnxruntime; exit 1 over tolerance.")
@click.option("--list-sites", is_flag=True, help="Print every applicable site of every pass; write nothing.")
@click.option("--plugin", multiple=True, metavar="MODULE", help="Import MODULE to register more passes.")
@click.option("--input-shape", metavar="C,H,W", default=None,
              help="Non-batch input dimensions for models whose input size is symbolic, e.g. 3,224,224.")
@click.option("--opset", type=int, default=None, metavar="N",
              help="ONNX opset to write (13 up to the newest the onnx package knows) [default: 17].")
@click.option("--external-data", is_flag=True,
              help="Store the weights in OUT.onnx.data beside the model (needed above protobuf's 2 GiB).")
@click.pass_context
def morph(ctx, model, widen, width, factor, deepen, kernel, skip_add, skip_concat, widen_kernel, apply,
          split, seed, output, check, list_sites, plugin, input_shape, opset, external_data):
    """Apply network morphisms to MODEL.onnx and write the result.

    The morph flags apply in the order given. NAME is a node name or the name of its output value
    (`nashir show MODEL` lists both). Example:

    \b
        nashir morph net.onnx --widen conv2 --factor 2 \\
            --deepen relu3 --kernel 5 --check
    """
    import numpy as np

    from nashir.backends.onnx import load, save
    from nashir.commands.show import parse_shape
    from nashir.errors import GraphError, NotApplicable, PassError, VerifyError
    from nashir.passes import available_passes, check_preservation, get_pass, load_plugin

    shape = parse_shape(input_shape)
    check_opset(opset, MorphUsageError)
    for mod in plugin:
        load_plugin(mod)
    values = {"widen": widen, "width": width, "factor": factor, "deepen": deepen, "kernel": kernel,
              "skip_add": skip_add, "skip_concat": skip_concat, "widen_kernel": widen_kernel, "apply": apply}
    steps = ordered_steps(ctx.meta.get("nashir.order", []), values)
    if not steps and not list_sites:
        raise MorphUsageError(
            "nothing to do: give a morph flag (--widen, --deepen, --skip-add, --skip-concat, --widen-kernel, "
            "--apply) or --list-sites"
        )
    out = Path(output) if output else _default_output(model)
    if not list_sites:
        if _same_file(out, Path(model)) or os.path.abspath(out) == os.path.abspath(model):
            raise MorphUsageError(
                f"-o {str(out)!r} is the input model; inputs are never overwritten, pick another")
        if out.parent.exists() and not out.parent.is_dir():
            raise MorphUsageError(
                f"-o {str(out)!r}: {str(out.parent)!r} is a file, not a folder; give a path in a folder")
        if not out.parent.is_dir():
            raise MorphUsageError(
                f"-o {str(out)!r}: folder {str(out.parent)!r} does not exist; create it first")
        if out.is_dir():
            raise MorphUsageError(f"-o {str(out)!r} is a folder; give a file name such as model.onnx")
    graph = load(model, input_shape=shape)
    if opset is not None and not list_sites:   # before any morph: an op the opset lacks fails now
        from nashir.backends.onnx.exporter import check_graph_opset

        check_graph_opset(graph, opset, MorphUsageError)
    original = graph.clone() if check else None
    rng = np.random.default_rng(seed)
    done: list[str] = []
    approx: list[str] = []   # applied passes with exact = False: --check reports their error, never fails
    for st in steps:
        what = f"{st['flag']} {st['target']}"
        if st["key"] == "apply":
            what = f"--apply {st['pass']}:{st['target']}"
        opts = dict(st["options"])
        if st["pass"] == "net2wider":
            if "width" not in opts and "factor" not in opts:
                opts["factor"] = 2.0
            opts["split"] = split
        if st["pass"] == "net2deeper":
            opts.setdefault("kernel", 3)
        try:
            p = get_pass(st["pass"], **opts)
        except PassError as e:
            raise MorphUsageError(f"{what}: {e}") from None
        try:
            site = p.parse_site(graph, st["target"])
        except (GraphError, NotApplicable) as e:
            raise MorphUsageError(f"{what}: {e}") from None
        reason = p.check(graph, site)
        if reason is not None:
            raise NotApplicable(f"{what}: {p.name} does not apply at {site}: {reason}")
        try:
            res = p.apply(graph, site, rng)
        except MemoryError:
            raise MorphUsageError(
                f"{what}: {p.name} at {site} needs more memory than there is; give a smaller width or kernel"
            ) from None
        except NashirError:
            raise
        except Exception as e:  # a bug in a (plugin) pass: reported with its context, exit 2
            before = ", ".join(done) or "none"
            raise PassError(
                f"{what}: {p.name} at {site} raised {type(e).__name__}: {e} (before it: {before}); this is a "
                "bug in the pass (NASHIR_DEBUG=1 shows the traceback)") from e
        try:
            graph.verify()
        except VerifyError as e:
            before = ", ".join(done) or "none"
            raise PassError(
                f"{what}: {p.name} left a graph that does not verify (before it: {before}):\n{e}") from e
        done.append(f"{p.name}@{site}")
        click.echo(f"{p.name} at {site}: {_describe(res.info)}")
        if not getattr(p, "exact", True):
            approx.append(f"{p.name}@{site}")
            err = res.info.get("error") if isinstance(res.info, dict) else None
            if isinstance(err, dict) and err.get("max_abs") is not None:
                click.echo(f"  approximate: measured max |diff| = {err['max_abs']:.3g} (relative "
                           f"{err['max_rel']:.3g}, {err.get('runtime')}, {err.get('batch')} random inputs)")
    if list_sites:
        for name in available_passes():
            try:
                p = get_pass(name)
            except PassError as e:  # a plugin pass that cannot be built without options
                click.echo(f"warning: {name}: no sites listed, it cannot be built without options ({e})",
                           err=True)
                continue
            except Exception as e:  # a misbehaving plugin factory: listed with a warning, the rest goes on
                click.echo(f"warning: {name}: no sites listed, building it raised {type(e).__name__}: {e}",
                           err=True)
                continue
            try:
                lines = [f"{name}\t{s}" for s in p.sites(graph.clone())]
            except Exception as e:  # a misbehaving plugin: warned about, the other passes are listed
                click.echo(f"warning: {name}: no sites listed, its sites() raised {type(e).__name__}: {e} "
                           "(a bug in the pass)", err=True)
                continue
            for line in lines:
                click.echo(line)
        if steps:
            click.echo("(sites of the morphed model; nothing was written)", err=True)
        return
    if check:
        rep = check_preservation(original, graph, n=8, seed=seed, runtimes=["onnxruntime"])
        click.echo(f"check: max |diff| = {rep.max_abs:.3g} (tolerance {rep.tolerance:.3g}, onnxruntime)")
        if not rep.ok and approx:
            click.echo(f"check: over the tolerance, as approximate morphisms (exact = False) change the "
                       f"function: {', '.join(approx)}; reported, not failed")
        elif not rep.ok:
            raise PreservationFailed(
                f"the morphed model differs from {model!r} by {rep.max_abs:.3g} > tolerance "
                f"{rep.tolerance:.3g}; "
                "nothing was written"
            )
    save(graph, out, opset=opset, external_data=external_data)
    click.echo(f"wrote {out} ({graph.param_count():,} parameters, {graph.mac_count():,} MACs per sample)")


def _describe(info: dict) -> str:
    keys = ("from", "to", "producers", "kernel", "relu", "nodes", "channels", "pooling", "split", "removed",
            "dropped", "fraction")
    parts = [f"{k}={info[k]}" for k in keys if k in info and info[k] not in (None, [], "")]
    return ", ".join(parts) if parts else "done"


@click.command("passes")
@click.option("--plugin", multiple=True, metavar="MODULE", help="Import MODULE first to register its passes.")
def passes_cmd(plugin):
    """List the registered morphism passes (built-in, entry points, plugins)."""
    from nashir.errors import PassError
    from nashir.passes import available_passes, get_pass, load_plugin, pass_source
    from nashir.passes.base import _REGISTRY, PLUGIN_ERRORS

    for mod in plugin:
        load_plugin(mod)
    names = available_passes()
    width = max(len(n) for n in names)
    for n in names:
        try:
            p = get_pass(n)
        except PassError as e:  # a plugin pass that needs options: list it from its class attributes
            p = _REGISTRY[n]
            click.echo(f"warning: {n}: cannot be built without options ({e})", err=True)
        kind = "exact" if getattr(p, "exact", True) else "approx"
        click.echo(f"{n.ljust(width)}  {kind:6}  {getattr(p, 'description', '')}  [{pass_source(n)}]")
    for ep, err in sorted(PLUGIN_ERRORS.items()):
        click.echo(f"warning: entry point {ep!r} of group nashir.passes failed to load: {err}", err=True)


__all__ = ["morph", "passes_cmd", "ordered_steps", "MorphUsageError", "PreservationFailed"]
