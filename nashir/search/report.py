"""Summaries, plots and the markdown report of a NASH run folder (``nashir report RUN_DIR``).

Reads the ledger read-only. Plots (matplotlib, Agg backend, PNG):

``val_acc.png``
    The validation accuracy of every candidate per step (children, the current best trained
    further, the start network), with the line of each step's best.
``lineage.png``
    The lineage tree: one point per candidate (x = step, y = index in the step), an edge from each
    candidate to its parent, the winners' path drawn thick.
``params_acc.png``
    Parameters (log scale) against validation accuracy, one point per trained candidate.

``report.md`` gathers the run's config, the per-step summary table, the final result and a table
of every candidate (morphisms, size, accuracy, seconds, status and reason).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from nashir.errors import SearchError
from nashir.search.ledger import Ledger, atomic_write

__all__ = ["format_summary", "format_curve", "format_morphisms", "load_run", "write_report", "PLOTS"]

PLOTS = ("val_acc.png", "lineage.png", "params_acc.png")


def format_morphisms(morphisms: list[dict[str, Any]] | None, limit: int | None = None) -> str:
    """``net2wider@conv2, net2deeper@relu1`` from ``[{"pass", "site", ...}]`` (``-`` when empty)."""
    if not morphisms:
        return "-"
    parts = []
    for m in morphisms:
        site = m.get("site")
        if isinstance(site, dict):
            site = ",".join(f"{v}" for v in site.values())
        elif isinstance(site, (list, tuple)):
            site = ",".join(str(v) for v in site)
        parts.append(f"{m.get('pass', '?')}@{site}" if site not in (None, "") else str(m.get("pass", "?")))
    if limit is not None and len(parts) > limit:
        parts = parts[:limit] + [f"+{len(parts) - limit} more"]
    return ", ".join(parts)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _count(v: int | None) -> str:
    """``12,345``; ``-`` for a size that is unknown (a child that was never built)."""
    return "-" if v is None else f"{v:,}"


def format_summary(
    steps: list[dict[str, Any]],
    test_acc: float | None = None,
    test_acc_onnx: float | None = None,
    final_history: list[dict[str, Any]] | None = None,
    warnings: list[str] | None = None,
) -> str:
    """The per-step table: step, best candidate, its validation accuracy (%), parameters, MACs and
    the morphisms that made it (``-`` when the best of the previous step stayed); then the final
    training's curve (training loss and accuracy per epoch, when ``final_history`` is given), the
    test accuracy and every warning (``WARNING: ...``)."""
    rows = [("step", "best", "val acc %", "params", "MACs", "morphisms")]
    for s in steps:
        rows.append(
            (
                str(s["step"]),
                str(s["best"]),
                _pct(s.get("best_val_acc")),
                _count(s.get("params")),
                _count(s.get("macs")),
                format_morphisms(s.get("morphisms")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for k, r in enumerate(rows):
        cells = [
            r[0].rjust(widths[0]),
            r[1].ljust(widths[1]),
            r[2].rjust(widths[2]),
            r[3].rjust(widths[3]),
            r[4].rjust(widths[4]),
            r[5],
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("-" * max(len(x) for x in lines))
    if final_history:
        lines.append(format_curve(final_history))
    if test_acc is not None:
        tail = f"final test accuracy: {_pct(test_acc)} % (torch)"
        if test_acc_onnx is not None:
            tail += f", {_pct(test_acc_onnx)} % (onnxruntime, best.onnx)"
        lines.append(tail)
    for w in warnings or []:
        lines.append(f"WARNING: {w}")
    return "\n".join(lines)


def format_curve(history: list[dict[str, Any]], max_points: int = 8) -> str:
    """``final training: loss 0.61 0.42 ... 0.21, train acc 78.1 ... 92.3 %`` from a trainer history
    (at most ``max_points`` epochs shown, the first and the last always)."""
    n = len(history)
    if n <= max_points:
        pick = list(range(n))
    else:
        pick = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    loss = " ".join("-" if history[i].get("loss") is None else f"{history[i]['loss']:.3f}" for i in pick)
    acc = " ".join(_pct(history[i].get("train_acc")) for i in pick)
    shown = "" if len(pick) == n else f" (epochs {', '.join(str(i + 1) for i in pick)} of {n})"
    return f"final training{shown}: loss {loss}; train acc % {acc}"


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Everything the report needs from a run folder, read-only.

    Returns:
        ``{"run_dir", "config", "candidates", "steps", "final", "state"}``; ``steps`` as in
        :attr:`nashir.search.SearchResult.steps` (step 0 = the start network).

    Raises:
        SearchError: ``run_dir`` is not a nashir run.
    """
    from nashir.search.nash import step_rows

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SearchError(f"{run_dir} is not a folder; give the --out folder of a nashir search")
    with Ledger.open(run_dir, readonly=True) as led:
        return {
            "run_dir": run_dir,
            "config": led.config,
            "candidates": led.candidates(),
            "steps": step_rows(led),
            "final": led.get_meta("final"),
            "state": led.get_meta("state"),
        }


def _save_fig(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write(path, buf.getvalue())


def _integer_axes(ax, x: bool = False, y: bool = False) -> None:
    from matplotlib.ticker import MaxNLocator

    if x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if y:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _plot_val_acc(run: dict[str, Any], plt) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {
        "init": ("s", "tab:gray", "start network"),
        "child": ("o", "tab:blue", "child (morphed)"),
        "incumbent": ("D", "tab:orange", "current best, trained further"),
    }
    for kind, (marker, color, label) in styles.items():
        pts = [
            (c["step"], 100 * c["val_acc"])
            for c in run["candidates"]
            if c["kind"] == kind and c["status"] == "ok" and c["val_acc"] is not None
        ]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, color=color, alpha=0.75, label=label, zorder=3)
    bad = [(c["step"], 0.0) for c in run["candidates"] if c["status"] in ("diverged", "failed")]
    if bad:
        ax.scatter(*zip(*bad), marker="x", color="tab:red", label="diverged / failed", zorder=3)
    best = [(s["step"], 100 * s["best_val_acc"]) for s in run["steps"] if s["best_val_acc"] is not None]
    if best:
        ax.plot(*zip(*best), color="black", lw=2, label="best of the step", zorder=4)
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("NASH: every candidate per step")
    _integer_axes(ax, x=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _plot_lineage(run: dict[str, Any], plt) -> Any:
    cands = run["candidates"]
    pos = {c["id"]: (c["step"], c["idx"]) for c in cands}
    winners: set[str] = set()
    final = next((c for c in cands if c["kind"] == "final"), None)
    cur = final["id"] if final else (run["steps"][-1]["best"] if run["steps"] else None)
    by_id = {c["id"]: c for c in cands}
    while cur is not None and cur in by_id and cur not in winners:
        winners.add(cur)
        cur = by_id[cur]["parent"]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * (1 + max((c["step"] for c in cands), default=1))), 4.5))
    for c in cands:
        p = c["parent"]
        if p in pos:
            on_path = c["id"] in winners and p in winners
            ax.plot(
                [pos[p][0], pos[c["id"]][0]],
                [pos[p][1], pos[c["id"]][1]],
                color="black" if on_path else "0.75",
                lw=2.5 if on_path else 0.8,
                zorder=1,
            )
    ok = [c for c in cands if c["status"] == "ok" and c["val_acc"] is not None]
    if ok:
        sc = ax.scatter(
            [pos[c["id"]][0] for c in ok],
            [pos[c["id"]][1] for c in ok],
            c=[100 * c["val_acc"] for c in ok],
            cmap="viridis",
            s=80,
            zorder=3,
            edgecolors="k",
        )
        fig.colorbar(sc, ax=ax, label="validation accuracy (%)")
    fin = [c for c in cands if c["kind"] == "final" and c["status"] == "ok"]
    if fin:
        ax.scatter(
            [pos[c["id"]][0] for c in fin],
            [pos[c["id"]][1] for c in fin],
            marker="*",
            s=220,
            color="gold",
            edgecolors="k",
            zorder=4,
            label="final model (train + val)",
        )
    bad = [c for c in cands if c["status"] != "ok"]
    if bad:
        ax.scatter(
            [pos[c["id"]][0] for c in bad],
            [pos[c["id"]][1] for c in bad],
            marker="x",
            color="tab:red",
            s=60,
            zorder=3,
            label="diverged / failed / pending",
        )
    if fin or bad:
        # Below the axes, so that it never hides a candidate or a label (the data fill the corners).
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    for c in cands:
        if c["id"] in winners:
            ax.annotate(c["id"], pos[c["id"]], textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.set_xlabel("step (0 = start network, last = final training)")
    ax.set_ylabel("candidate index in the step")
    ax.set_title("lineage: edges to the parent, winners' path thick")
    _integer_axes(ax, x=True, y=True)
    ax.grid(alpha=0.2)
    return fig


def _plot_params(run: dict[str, Any], plt) -> Any:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ok = [c for c in run["candidates"] if c["status"] == "ok" and c["val_acc"] is not None and c["params"]]
    if ok:
        from matplotlib.colors import BoundaryNorm
        from matplotlib.ticker import MaxNLocator

        # Steps are integers: one colour per step (bins centred on the integers), integer ticks.
        lo = min(int(c["step"]) for c in ok)
        hi = max(int(c["step"]) for c in ok)
        cmap = plt.get_cmap("plasma", hi - lo + 1)
        norm = BoundaryNorm([k - 0.5 for k in range(lo, hi + 2)], cmap.N)
        sc = ax.scatter(
            [c["params"] for c in ok],
            [100 * c["val_acc"] for c in ok],
            c=[c["step"] for c in ok],
            cmap=cmap,
            norm=norm,
            edgecolors="k",
            zorder=3,
        )
        cb = fig.colorbar(sc, ax=ax, label="step")
        ticks = [t for t in MaxNLocator(integer=True).tick_values(lo, hi) if lo <= t <= hi]
        cb.set_ticks(ticks)
        cb.set_ticklabels([str(int(t)) for t in ticks])
        ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("size against accuracy")
    ax.grid(alpha=0.3, which="both")
    return fig


def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write the three PNG plots and ``report.md`` for a run (finished or in progress).

    Args:
        run_dir: The run folder (``nashir search --out``); only read.
        out_dir: Where to write (default ``RUN_DIR/report``); created if missing.

    Returns:
        The paths written (plots first, ``report.md`` last).

    Raises:
        SearchError: ``run_dir`` is not a nashir run, or it has no trained candidate yet.
    """
    run = load_run(run_dir)
    if not any(c["status"] == "ok" for c in run["candidates"]):
        raise SearchError(f"{run_dir}: no candidate has finished training yet; nothing to report")
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    written = []
    for name, fn in zip(PLOTS, (_plot_val_acc, _plot_lineage, _plot_params)):
        fig = fn(run, plt)
        try:
            _save_fig(fig, out / name)
        finally:
            plt.close(fig)
        written.append(out / name)
    md = _markdown(run, out)
    atomic_write(out / "report.md", md.encode("utf-8"))
    written.append(out / "report.md")
    return written


def _markdown(run: dict[str, Any], out: Path) -> str:
    cfg = run["config"]
    final = run["final"] or {}
    lines = [f"# NASH run `{run['run_dir']}`", ""]
    lines.append(f"State: **{run['state']}**.")
    if final:
        lines.append(
            f"Final model: architecture `{final.get('best')}`, {final.get('params', 0):,} parameters, "
            f"{final.get('macs', 0):,} MACs per image; "
            f"test accuracy **{_pct(final.get('test_acc'))} %** (torch)"
            + (
                f", {_pct(final.get('test_acc_onnx'))} % (onnxruntime on `best.onnx`)"
                if final.get("test_acc_onnx") is not None
                else ""
            )
            + "."
        )
        if final.get("mean") is not None:
            lines.append(
                f"`best.onnx` takes NCHW float32 images normalised as `(x - mean) / std` with "
                f"mean = {final['mean']} and std = {final['std']} (raw pixel units)."
            )
    lines += [
        "",
        "## Per step",
        "",
        "```",
        format_summary(run["steps"], final.get("test_acc"), final.get("test_acc_onnx")),
        "```",
        "",
    ]
    lines += ["## Plots", ""]
    for name, title in zip(PLOTS, ("Validation accuracy per step", "Lineage", "Parameters against accuracy")):
        lines.append(f"![{title}]({name})")
        lines.append("")
    lines += [
        "## Candidates",
        "",
        "| id | step | kind | parent | morphisms | params | MACs | val acc % | test acc % | train s "
        "| status |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in run["candidates"]:
        status = c["status"] + (f": {c['reason']}" if c.get("reason") else "")
        status = status.replace("|", "\\|").replace("\n", " ")
        secs = "-" if c["train_seconds"] is None else f"{c['train_seconds']:.1f}"
        morphs = format_morphisms(c["morphisms"]).replace("|", "/")
        lines.append(
            f"| {c['id']} | {c['step']} | {c['kind']} | {c['parent'] or '-'} | {morphs} | "
            f"{_count(c['params'])} | {_count(c['macs'])} | {_pct(c['val_acc'])} | {_pct(c['test_acc'])} | "
            f"{secs} | {status} |"
        )
    lines += ["", "## Configuration", "", "| key | value |", "|---|---|"]
    for k in sorted(cfg):
        lines.append(f"| {k} | `{cfg[k]}` |")
    lines.append("")
    return "\n".join(lines)
