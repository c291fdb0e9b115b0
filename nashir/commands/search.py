"""``nashir search`` (a NASH run) and ``nashir report`` (plots and markdown for a run folder).

``nashir search`` with no argument runs the ``demo`` preset on scikit-learn's digits into
``./runs/digits-demo-<date>-<time>``. Every flag of :class:`nashir.search.SearchConfig` has a
command-line name (``--steps`` = n_steps, ``--neighbors`` = n_neigh, ``--morphs`` = n_NM, ...);
a flag given explicitly overrides the preset.

``--resume`` continues the run in ``--out``: flags not given take the run's own values, flags
given must agree with them (otherwise the differing keys are listed and nothing happens).

Bad input (unknown data set, missing data folder, contradictory flags, an ``--init`` model whose
input does not fit the data, a run folder that is not a nashir run) exits 2 with one message and
changes nothing on disk. torch is imported only when the search starts.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import click

from nashir.errors import SearchError

_DATASET_HELP = (
    "digits (scikit-learn's 8x8 digits, the default), fashion-mnist, mnist (official IDX files in "
    "--data-dir, $NASHIR_DATA/<name> or /usr/share/datasets/<name>), cifar10, cifar100 (official "
    "python or binary files in --data-dir) or npz:PATH (arrays x (N,C,H,W) and y (N,))."
)

# CLI parameter -> SearchConfig field, for the options that map one to one
_FIELDS = {
    "dataset": "dataset",
    "data_dir": "data_dir",
    "steps": "n_steps",
    "neighbors": "n_neigh",
    "morphs": "n_nm",
    "epochs_neighbor": "epoch_neigh",
    "epochs_final": "epoch_final",
    "epochs_init": "epochs_init",
    "lr_start": "lr_start",
    "lr_end": "lr_end",
    "batch_size": "batch_size",
    "max_params": "max_params",
    "max_macs": "max_macs",
    "device": "device",
    "seed": "seed",
    "threads": "threads",
    "precision": "precision",
    "compile": "compile",
    "final_warmup": "final_warmup",
    "widen_split": "widen_split",
}
# boolean switches -> (field, value when the switch is given)
_SWITCHES = {
    "no_sgdr": ("sgdr", False),
    "no_morph": ("morph", False),
    "retrain_from_scratch": ("retrain_from_scratch", True),
}


def _ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        vals = tuple(int(t) for t in re.split(r"[,\s]+", text.strip()) if t)
    except ValueError:
        raise SearchError(f"{flag} takes comma-separated integers such as 16,32,64, got {text!r}") from None
    return vals


def _names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(t for t in re.split(r"[,\s]+", text.strip()) if t)


def default_out(dataset: str, preset_name: str, now: float | None = None) -> Path:
    """``runs/<dataset>-<preset>-<YYYYmmdd-HHMMSS>`` (dataset ``npz:dir/x.npz`` gives ``npz-x``)."""
    name = dataset.strip()
    if name.lower().startswith("npz:"):
        name = "npz-" + Path(name[4:]).stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "data"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return Path("runs") / f"{name.lower()}-{preset_name}-{stamp}"


def check_writable_folder(path: str | Path, flag: str) -> None:
    """Refuse an output folder nashir cannot write, before anything is loaded: a file where a folder
    must be (the path itself or one of its parents), or a folder without write permission (the nearest
    one that exists; for an existing run also its ledger and candidates/).

    Raises:
        SearchError: naming the flag, the path and the part that is in the way.
    """
    import os

    p = Path(path)
    q = p
    while not os.path.lexists(q) and q.parent != q:
        q = q.parent
    if q.exists() and not q.is_dir():
        where = "it" if q == p else str(q)
        raise SearchError(f"{flag} {p}: {where} is a file, not a folder; give a folder path")
    if not q.exists():   # a dangling symlink on the way
        raise SearchError(f"{flag} {p}: {q} is a broken symbolic link; give a folder path")
    if not os.access(q, os.W_OK | os.X_OK):
        raise SearchError(f"{flag} {p}: folder {q} is not writable; choose another {flag} (or fix its "
                          "permissions)")
    if q == p:
        for inner in (p / "ledger.sqlite", p / "candidates"):
            if inner.exists() and not os.access(inner, os.W_OK | (os.X_OK if inner.is_dir() else 0)):
                raise SearchError(f"{flag} {p}: {inner} is not writable; choose another {flag} (or fix its "
                                  "permissions)")


def _stderr_is_terminal() -> bool:
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _given(ctx: click.Context, name: str) -> bool:
    src = ctx.get_parameter_source(name)
    return src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")


def build_config(ctx: click.Context, params: dict, stored: dict | None = None):
    """The :class:`SearchConfig` the flags ask for.

    Without ``stored``: the preset (``--preset``, default by data set: ``demo`` for digits,
    ``fashion`` for fashion-mnist and mnist, ``paper`` otherwise) with every explicitly given flag
    applied. With ``stored`` (a ledger's config, for
    ``--resume``): the stored values with every explicitly given flag applied.
    """
    from nashir.search import SearchConfig, preset
    from nashir.search.config import PRESETS, default_preset

    given = {k: v for k, v in params.items() if _given(ctx, k)}
    overrides: dict = {}
    for opt, fld in _FIELDS.items():
        if opt in given:
            overrides[fld] = given[opt]
    for opt, (fld, val) in _SWITCHES.items():
        if given.get(opt):
            overrides[fld] = val
    if "widths" in given:
        overrides["widths"] = _ints(given["widths"], "--widths")
    if "passes" in given:
        overrides["passes"] = _names(given["passes"])
    if "no_sgdr" in given and given["no_sgdr"] and "lr_end" in given:
        raise SearchError(
            "--lr-end has no effect with --no-sgdr (a constant learning rate --lr-start); drop one of them"
        )
    if params.get("init") and "widths" in given:
        raise SearchError(
            "--widths sizes the generated start network; it has no effect with --init MODEL.onnx. "
            "Drop one of them"
        )
    if stored is not None:
        base = {k: v for k, v in stored.items() if k in SearchConfig.__dataclass_fields__}
        if "preset" in given and given["preset"] != base.get("preset"):
            if given["preset"] not in PRESETS:
                raise SearchError(
                    f"unknown preset {given['preset']!r}; expected one of {', '.join(sorted(PRESETS))}"
                )
            base.update(PRESETS[given["preset"]])
            base["preset"] = given["preset"]
        base.update(overrides)
        return SearchConfig.from_dict(base)
    dataset = overrides.get("dataset", params.get("dataset") or "digits")
    name = params.get("preset") or default_preset(dataset)
    if params.get("init") and "epochs_init" not in overrides:
        overrides["epochs_init"] = 0  # a given start model is taken as trained
    overrides.setdefault("dataset", dataset)
    return preset(name, **overrides)


@click.command("search")
@click.option("--dataset", "-d", default="digits", show_default=True, help=_DATASET_HELP)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder with the CIFAR files (either official layout) or the Fashion-MNIST / MNIST IDX files.",
)
@click.option(
    "--preset",
    type=click.Choice(["demo", "fashion", "paper"]),
    default=None,
    help="Settings to start from: paper (arXiv 1711.04528 Sec. 5.1: 5 steps, 8 neighbours, 5 morphisms, "
    "17 epochs per neighbour, 20 final, 20 pretraining, lr 0.05 -> 0, batch 128), demo (digits on "
    "2 CPU cores in a few minutes) or fashion (Fashion-MNIST on 2 CPU cores within an hour: 3 steps, "
    "4 neighbours, 3 morphisms, 3 epochs per neighbour, 20 final, 8 pretraining, batch 128, bf16, "
    "children up to 16 M MACs). "
    "Default: demo for digits, fashion for fashion-mnist and mnist, paper otherwise.",
)
@click.option("--steps", type=int, default=None, help="n_steps: hill-climbing steps.")
@click.option(
    "--neighbors",
    type=int,
    default=None,
    help="n_neigh: candidates per step (n_neigh - 1 morphed children + the current best). "
    "1 = the paper's random-network baseline (one child replaces the model each step).",
)
@click.option("--morphs", type=int, default=None, help="n_NM: network morphisms per child.")
@click.option(
    "--epochs-neighbor", type=int, default=None, help="epoch_neigh: epochs each candidate trains per step."
)
@click.option(
    "--epochs-final", type=int, default=None, help="epoch_final: epochs of the final training (train+val)."
)
@click.option(
    "--epochs-init",
    type=int,
    default=None,
    help="Epochs of pretraining of the start network (default 0 with --init).",
)
@click.option("--lr-start", type=float, default=None, help="SGDR's starting learning rate.")
@click.option("--lr-end", type=float, default=None, help="SGDR's final learning rate (<= --lr-start).")
@click.option("--batch-size", type=int, default=None, help="Images per SGD step.")
@click.option("--max-params", type=int, default=None, help="No child above this many parameters.")
@click.option(
    "--max-macs",
    type=int,
    default=None,
    help="No child above this many multiply-accumulates per image (bounds training time per epoch).",
)
@click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=None, help="The one seed of the run (default 0).")
@click.option("--threads", type=int, default=None, help="torch threads for training (default: torch's).")
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default=None,
    help="Training arithmetic: auto (bf16 autocast on CUDA, float32 on CPU; the default except in the "
    "fashion preset, which uses bf16), fp32, or bf16 (pays on CPUs with AMX / AVX512-BF16).",
)
@click.option(
    "--compile/--no-compile",
    default=None,
    help="Train the candidates through torch.compile (off by default: it pays for long trainings, not "
    "for a few epochs per candidate; see docs/training.md).",
)
@click.option(
    "--final-warmup",
    type=float,
    default=None,
    help="Epochs of linear learning-rate warm-up at the start of the final training (default 1).",
)
@click.option(
    "--widen-split",
    type=click.Choice(["random", "equal"]),
    default=None,
    help="Net2WiderNet's split of the absorbers' weights among replicas: random (default; exact and "
    "symmetry-breaking) or equal (Net2Net's 1/|R(c)|; replicas stay copies).",
)
@click.option(
    "--widths", default=None, help="Channels of the start network's three convolutions, e.g. 16,32,64."
)
@click.option(
    "--passes",
    default=None,
    help="Morphism passes to sample from, comma-separated "
    "(default: net2deeper, net2wider, add-skip, concat-skip).",
)
@click.option("--no-sgdr", is_flag=True, help="Baseline: constant learning rate --lr-start instead of SGDR.")
@click.option(
    "--no-morph",
    is_flag=True,
    help="Baseline: children keep the morphed architecture but are re-initialised and trained from scratch.",
)
@click.option(
    "--retrain-from-scratch",
    is_flag=True,
    help="Baseline: the final architecture is re-initialised and trained for its lineage's epochs.",
)
@click.option(
    "--init",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Start from this ONNX model instead of the generated start network.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(),
    default=None,
    help="Run folder. Default: runs/<dataset>-<preset>-<date>-<time> under the current folder.",
)
@click.option(
    "--resume", is_flag=True, help="Continue the run in --out without retraining finished candidates."
)
@click.option("--force", is_flag=True, help="Replace the nashir run in --out.")
@click.option(
    "--executor",
    type=click.Choice(["inprocess", "ray"]),
    default="inprocess",
    show_default=True,
    help="Who trains the candidates: inprocess (one after another, in this process) or ray (several "
    "at once as Ray tasks; needs pip install 'nashir[ray]'; see docs/distributed.md).",
)
@click.option(
    "--ray-address",
    default=None,
    help="With --executor ray: join a running Ray cluster (auto, or HOST:PORT of `ray start --head`). "
    "Default: start a local Ray instance for the run.",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="With --executor ray: most trials at once (default: as many as the resources allow; a local "
    "instance gets workers x cpus-per-trial CPUs).",
)
@click.option(
    "--gpus-per-trial",
    type=float,
    default=None,
    help="With --executor ray: GPUs per trial (default 0; 1 = one trial per GPU; 0.5 = two share one).",
)
@click.option(
    "--cpus-per-trial",
    type=float,
    default=None,
    help="With --executor ray: CPUs per trial, also its torch threads (default 1).",
)
@click.option("--quiet", "-q", is_flag=True,
              help="No progress bars; print only the result line (bars are shown only on a terminal).")
@click.option("--plugin", multiple=True, metavar="MODULE",
              help="Import MODULE first to register more passes (name them with --passes).")
@click.option("--input-shape", metavar="C,H,W", default=None,
              help="With --init: non-batch input dimensions for a model whose input size is symbolic.")
@click.option("--objective", type=click.Choice(["nash", "pareto"]), default=None,
              help="nash (default): hill climbing to one winner (best.onnx). pareto: a Pareto front of "
              "validation error and --cost, grown and shrunk by exact and approximate morphisms "
              "(front/*.onnx; docs/pareto.md).")
@click.option("--cost", type=click.Choice(["params", "macs"]), default=None,
              help="With --objective pareto: the cost objective, parameters (default) or MACs per image.")
@click.option("--children", type=int, default=None,
              help="With --objective pareto: children trained per generation (default: the preset's "
              "--neighbors, as many networks as a NASH step trains).")
@click.option("--proposals", type=int, default=None,
              help="With --objective pareto: children proposed per generation, of which --children are "
              "accepted by inverse density of their cost (default 2 x --children).")
@click.pass_context
def search(ctx, **params):
    """Run a NASH architecture search (hill climbing over network morphisms, arXiv 1711.04528).

    Writes the run folder (--out): ledger.sqlite, candidates/*.onnx, best.onnx, log.jsonl,
    summary.txt. `nashir report RUN_DIR` draws the plots.
    """
    from nashir.commands.show import parse_shape
    from nashir.search.ledger import is_run

    out = params["out"]
    resume = params["resume"]
    input_shape = parse_shape(params["input_shape"])
    if input_shape is not None and not params["init"]:
        raise SearchError("--input-shape sizes the --init model's input; give --init MODEL.onnx or drop it")
    if out is not None:
        check_writable_folder(out, "--out")   # before anything is read or loaded
    if resume and out is None:
        raise SearchError("--resume needs --out RUN_DIR (the folder of the run to continue)")
    if resume and params["force"]:
        raise SearchError(
            "--resume and --force contradict each other: --resume continues the run in --out, "
            "--force replaces it; give one of them"
        )
    stored = None
    if resume:
        if not is_run(out):
            from nashir.search.nash import prepare_run_dir

            prepare_run_dir(out, resume=True, force=False)  # raises the precise message
        from nashir.search.ledger import Ledger

        with Ledger.open(out, readonly=True) as led:
            stored = led.config
    if params["plugin"]:
        from nashir.passes import load_plugin

        for mod in params["plugin"]:
            load_plugin(mod)
    config = build_config(ctx, params, stored)
    pcfg = _pareto_config(ctx, params, config, stored)   # None: the NASH search, exactly as before
    executor = _make_executor(params, config)
    if executor is None and config.device.strip().lower() != "auto":
        from nashir.backends.torch.sgdr import resolve_device

        resolve_device(config.device)  # a bad or missing device is bad input: exit 2 before --force wipes
    if out is None:
        out = default_out(config.dataset, config.preset or "custom")
        check_writable_folder(out, "--out (default)")
    out = Path(out)
    from nashir.search.nash import prepare_run_dir

    prepare_run_dir(out, resume=resume, force=params["force"])  # refuse early, before loading anything

    from nashir.search.executor import DataSpec

    data = DataSpec(config.dataset, config.data_dir, seed=config.seed).load()
    model0 = None
    if params["init"]:
        from nashir.backends.onnx import load
        from nashir.search.startnet import check_model_fits

        model0 = load(params["init"], input_shape=input_shape)
        check_model_fits(model0, data.input_shape, data.num_classes, what=f"--init {params['init']}")

    quiet = params["quiet"]
    echo = None
    if not quiet:
        from tqdm.auto import tqdm

        echo = tqdm.write
        if pcfg is not None:
            echo(f"nashir search --objective pareto: {config.dataset} ({len(data.y_train)} train / "
                 f"{len(data.y_val)} val / {len(data.y_test)} test), preset {config.preset}, "
                 f"{config.n_steps} generations x {pcfg.n_children} children ({pcfg.n_proposals} proposed) x "
                 f"{config.epoch_neigh} epochs, {config.n_nm} morphisms per child, cost {pcfg.cost} -> {out}")
        else:
            echo(f"nashir search: {config.dataset} ({len(data.y_train)} train / {len(data.y_val)} val / "
                 f"{len(data.y_test)} test), preset {config.preset}, {config.n_steps} steps x "
                 f"{config.n_neigh} neighbours x {config.epoch_neigh} epochs, {config.n_nm} morphisms per "
                 f"child -> {out}")
    from nashir.search import nash

    try:
        if executor is not None:
            executor.prepare(DataSpec(config.dataset, config.data_dir, seed=config.seed), data)  # joins Ray
        if pcfg is not None:
            from nashir.search.pareto import pareto

            result = pareto(model0, data, pcfg, executor=executor, run_dir=out, resume=resume,
                            force=params["force"], progress=not quiet and _stderr_is_terminal(), echo=echo)
        else:
            result = nash(
                model0,
                data,
                config,
                executor=executor,
                run_dir=out,
                resume=resume,
                force=params["force"],
                progress=not quiet and _stderr_is_terminal(),
                echo=echo,
            )
    except KeyboardInterrupt:
        if (out / "ledger.sqlite").is_file():
            click.echo(f"\nthe run can be continued with: nashir search --resume --out {out}", err=True)
        raise
    finally:
        if executor is not None:
            executor.close()
    if pcfg is not None:
        _print_front(result, out, quiet)
        return
    best = out / "best.onnx"
    line = (
        f"best model: {best} ({result.params:,} params), test accuracy {100 * result.test_acc:.2f}%"
        + (f" (onnxruntime {100 * result.test_acc_onnx:.2f}%)" if result.test_acc_onnx is not None else "")
        + f", {result.wall_seconds:.0f} s"
    )
    if not quiet:
        click.echo("")
        click.echo(result.summary_table())
        click.echo(line)
        click.echo(f"plots and report: nashir report {out}")
    else:
        click.echo(line)


#: Flags that only mean something for one objective: NASH's (one winner by hill climbing) and the
#: Pareto search's (docs/pareto.md). Given with the other objective they are refused (exit 2).
_NASH_ONLY = {"neighbors": "--neighbors", "no_morph": "--no-morph",
              "retrain_from_scratch": "--retrain-from-scratch"}
_PARETO_ONLY = {"cost": "--cost", "children": "--children", "proposals": "--proposals"}


def _pareto_config(ctx: click.Context, params: dict, config, stored: dict | None):
    """The :class:`~nashir.search.pareto.ParetoConfig` for ``--objective pareto`` (None for NASH).

    The objective is the flag's, or on ``--resume`` the run's own. Raises SearchError (exit 2,
    nothing written) for a flag of the other objective, naming it, and for an ``--objective`` that
    is not the resumed run's."""
    ran = None if stored is None else stored.get("objective", "nash")
    objective = params.get("objective") or ran or "nash"
    if ran is not None and objective != ran:
        raise SearchError(f"--objective {objective}: the run in --out is a {ran} run; resume it with "
                          f"--objective {ran} (or without --objective), or start a new run")
    if objective == "nash":
        given = [flag for opt, flag in _PARETO_ONLY.items() if _given(ctx, opt)]
        if given:
            raise SearchError(f"{', '.join(given)} only apply to --objective pareto; add it or drop them")
        return None
    given = [flag for opt, flag in _NASH_ONLY.items() if _given(ctx, opt) and params.get(opt)]
    if given:
        raise SearchError(f"{', '.join(given)} only apply to the NASH search (--objective nash): the Pareto "
                          "search has no incumbent or single winner (use --children for the networks trained "
                          "per generation); drop them")
    from nashir.search.pareto import ParetoConfig

    keep = stored or {}
    return ParetoConfig(
        config,
        cost=params["cost"] if params.get("cost") is not None else keep.get("cost", "params"),
        children=params["children"] if params.get("children") is not None else keep.get("children"),
        proposals=params["proposals"] if params.get("proposals") is not None else keep.get("proposals"),
    )


def _print_front(result, out: Path, quiet: bool) -> None:
    """The end of a Pareto run: the front as a table (and where the files are)."""
    n = len(result.front)
    line = (f"Pareto front: {n} model(s) in {out / 'front'}, {result.front[0]['params']:,} to "
            f"{result.front[-1]['params']:,} params, {result.wall_seconds:.0f} s")
    if not quiet:
        click.echo("")
        click.echo(result.front_table())
        click.echo(line)
        click.echo(f"plots and report: nashir report {out}")
    else:
        click.echo(line)


_RAY_FLAGS = {
    "ray_address": "--ray-address",
    "workers": "--workers",
    "gpus_per_trial": "--gpus-per-trial",
    "cpus_per_trial": "--cpus-per-trial",
}


def _make_executor(params: dict, config):
    """The executor the flags ask for (None: the driver's default in-process one). Ray is imported
    here (a clear message when it is missing) but joined only just before the search starts."""
    if params["executor"] != "ray":
        given = [flag for opt, flag in _RAY_FLAGS.items() if params.get(opt) is not None]
        if given:
            raise SearchError(f"{', '.join(given)} only apply to --executor ray; add it or drop them")
        return None
    from nashir.search.executor import make_executor
    from nashir.search.ray_executor import check_device

    gpus = 0.0 if params["gpus_per_trial"] is None else params["gpus_per_trial"]
    cpus = 1.0 if params["cpus_per_trial"] is None else params["cpus_per_trial"]
    ex = make_executor(
        "ray",
        address=params["ray_address"],
        workers=params["workers"],
        cpus_per_trial=cpus,
        gpus_per_trial=gpus,
        threads=config.threads,
    )
    check_device(config.device, ex.gpus_per_trial)
    return ex


@click.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the plots and report.md (default RUN_DIR/report).",
)
def report(run_dir, out):
    """Write PNG plots and a markdown report for a NASH run folder.

    Plots: validation accuracy of every candidate per step with the best's line (val_acc.png), the
    lineage tree with the morphisms on its edges (lineage.png), parameters against accuracy with the
    winners and the final model marked (params_acc.png), training curves including the final
    training (curves.png); report.md links them and adds the final model's lineage and a
    per-morphism table.
    """
    from nashir.search.report import load_run, write_report

    if not Path(run_dir).is_dir():
        check_writable_folder(run_dir, "RUN_DIR")   # names a file in the way
        raise SearchError(f"{run_dir} is not a folder; give the --out folder of a nashir search")
    check_writable_folder(out if out is not None else Path(run_dir) / "report", "--out")
    paths = write_report(run_dir, out)
    run = load_run(run_dir)
    from nashir.search.report import (
        final_curve,
        format_lineage,
        format_morphism_stats,
        format_summary,
        morphism_stats,
    )

    final = run["final"] or {}
    click.echo(format_summary(run["steps"], final.get("test_acc"), final.get("test_acc_onnx"),
                              final_curve(run), final.get("warnings")))
    click.echo("lineage: " + format_lineage(run["candidates"], run["steps"]))
    click.echo(format_morphism_stats(morphism_stats(run["candidates"], run["steps"])))
    for p in paths:
        click.echo(f"wrote {p}")
