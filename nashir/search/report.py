"""Summaries, plots and the markdown report of a NASH run folder (``nashir report RUN_DIR``).

Reads the ledger read-only. Plots (matplotlib, Agg backend, PNG):

``val_acc.png``
    The validation accuracy of every candidate per step (children, the current best trained
    further, the start network), with the line of each step's best.
``lineage.png``
    The lineage tree: one point per candidate (x = step, y = index in the step), an edge from each
    candidate to its parent labelled with the morphisms that made it, the incumbent (the current
    best trained further) drawn apart from the children, the final model's path drawn thick.
``params_acc.png``
    Parameters (log scale) against validation accuracy, one point per trained candidate; each
    step's winner ringed, the final model's test accuracy as a star.
``curves.png``
    Training curves from the stored histories: validation accuracy per epoch of every candidate
    (placed at its epoch in the run), and the final training's loss and training accuracy.

``report.md`` gathers the run's config, the per-step summary table, the final model's lineage in
one line, the per-morphism table (:func:`morphism_stats`), the final result and a table of every
candidate (morphisms, size, accuracy, seconds, status and reason).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from nashir.errors import SearchError
from nashir.search.ledger import Ledger, atomic_write

__all__ = [
    "format_summary", "format_curve", "format_morphisms", "format_lineage", "morphism_stats",
    "format_morphism_stats", "load_run", "write_report", "PLOTS",
]

PLOTS = ("val_acc.png", "lineage.png", "params_acc.png", "curves.png")

#: Short labels of the built-in passes on the lineage plot (others keep their name).
_SHORT = {"net2wider": "wider", "net2deeper": "deeper", "add-skip": "+skip", "concat-skip": "cat-skip",
          "widen-kernel": "kernel"}


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


def _final_path(cands: list[dict[str, Any]], steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The candidates from the start network to the final model (or the last step's best), in order."""
    by_id = {c["id"]: c for c in cands}
    final = next((c for c in cands if c["kind"] == "final"), None)
    cur = final["id"] if final else (steps[-1]["best"] if steps else None)
    path: list[dict[str, Any]] = []
    seen: set[str] = set()
    while cur is not None and cur in by_id and cur not in seen:
        seen.add(cur)
        path.append(by_id[cur])
        cur = by_id[cur]["parent"]
    return path[::-1]


def format_lineage(cands: list[dict[str, Any]], steps: list[dict[str, Any]]) -> str:
    """The final model's lineage in one line, e.g.
    ``init (26,202) -> s1-c3 net2deeper@flatten, add-skip@pool1->relu3 (176,474) -> s2-c5 trained
    further -> final (train+val)``: each architecture change with its morphisms and the new size."""
    parts = []
    for c in _final_path(cands, steps):
        if c["kind"] == "init":
            parts.append(f"init ({_count(c['params'])} params)")
        elif c["kind"] == "child":
            parts.append(f"{c['id']} {format_morphisms(c['morphisms'])} ({_count(c['params'])} params)")
        elif c["kind"] == "incumbent":
            parts.append(f"{c['id']} trained further")
        elif c["kind"] == "final":
            parts.append("final (train+val)")
        else:
            parts.append(c["id"])
    return " -> ".join(parts) if parts else "-"


def morphism_stats(cands: list[dict[str, Any]], steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per morphism pass: how often it made a child, how often that child won its step, and the
    mean change of validation accuracy of its children against their step's incumbent.

    The incumbent (the current best trained further, same epochs, same data order) is the fair
    reference: a child's ``delta`` is ``child val acc - incumbent val acc`` of the same step, in
    percentage points; a step without an incumbent (``--neighbors 1``) gives no delta.

    Returns:
        One dict per pass (sorted by name): ``pass``, ``children`` (children whose morphisms
        include it), ``trained`` (of those, trained ok), ``won`` (of those, the step's winner),
        ``mean_delta`` (points, None without a comparable pair), ``deltas`` (how many pairs).
    """
    winners = {s["best"] for s in steps if s.get("step", 0) > 0}
    inc = {c["step"]: c["val_acc"] for c in cands if c["kind"] == "incumbent" and c["status"] == "ok"}
    stats: dict[str, dict[str, Any]] = {}
    for c in cands:
        if c["kind"] != "child":
            continue
        for name in sorted({m.get("pass", "?") for m in c["morphisms"] or []}):
            st = stats.setdefault(name, {"pass": name, "children": 0, "trained": 0, "won": 0, "_d": []})
            st["children"] += 1
            if c["status"] == "ok" and c["val_acc"] is not None:
                st["trained"] += 1
                if c["id"] in winners:
                    st["won"] += 1
                if inc.get(c["step"]) is not None:
                    st["_d"].append(100 * (c["val_acc"] - inc[c["step"]]))
    out = []
    for name in sorted(stats):
        st = stats[name]
        d = st.pop("_d")
        st["mean_delta"] = sum(d) / len(d) if d else None
        st["deltas"] = len(d)
        out.append(st)
    return out


def format_morphism_stats(rows: list[dict[str, Any]]) -> str:
    """:func:`morphism_stats` as an aligned text table."""
    table = [("pass", "children", "trained", "won step", "val acc vs incumbent, mean pts")]
    for r in rows:
        d = "-" if r["mean_delta"] is None else f"{r['mean_delta']:+.2f} (n={r['deltas']})"
        table.append((r["pass"], str(r["children"]), str(r["trained"]), str(r["won"]), d))
    w = [max(len(t[i]) for t in table) for i in range(5)]
    lines = []
    for k, t in enumerate(table):
        lines.append("  ".join([t[0].ljust(w[0]), *(t[i].rjust(w[i]) for i in (1, 2, 3)), t[4]]).rstrip())
        if k == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


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
        run = {
            "run_dir": run_dir,
            "config": led.config,
            "candidates": led.candidates(),
            "steps": step_rows(led),
            "final": led.get_meta("final"),
            "state": led.get_meta("state"),
        }
    if run["final"] is not None and not isinstance(run["final"], dict):
        raise SearchError(f"ledger {run_dir / 'ledger.sqlite'}: meta key 'final' is a JSON "
                          f"{type(run['final']).__name__}, expected an object; the ledger is damaged")
    return run


def final_curve(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The final training's per-epoch history of a loaded run (empty before it finished)."""
    final = next((c for c in run["candidates"] if c["kind"] == "final"), None)
    return list((final or {}).get("history") or [])


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
    path = {c["id"] for c in _final_path(cands, run["steps"])}
    winners = {s["best"] for s in run["steps"]}
    n_steps = 1 + max((c["step"] for c in cands), default=1)
    n_idx = 1 + max((c["idx"] for c in cands), default=1)
    fig, ax = plt.subplots(figsize=(max(7.0, 2.4 * n_steps), max(4.5, 0.9 * n_idx + 1.5)))
    for c in cands:
        p = c["parent"]
        if p not in pos:
            continue
        on_path = c["id"] in path and p in path
        (x0, y0), (x1, y1) = pos[p], pos[c["id"]]
        ax.plot([x0, x1], [y0, y1], color="black" if on_path else "0.75", lw=2.5 if on_path else 0.8,
                zorder=1)
        if c["kind"] == "child" and c["morphisms"]:
            label = "\n".join(_SHORT.get(m.get("pass"), str(m.get("pass"))) for m in c["morphisms"])
            ax.annotate(label, (x1, y1), textcoords="offset points", xytext=(-10, 0), ha="right", va="center",
                        fontsize=6.5, color="0.25", zorder=2)
    ok = [c for c in cands if c["status"] == "ok" and c["val_acc"] is not None and c["kind"] != "final"]
    vals = [100 * c["val_acc"] for c in ok]
    vmin, vmax = (min(vals), max(vals)) if vals else (0, 1)
    markers = {"init": ("s", "start network"), "child": ("o", "child (morphed)"),
               "incumbent": ("D", "incumbent (current best, trained further)")}
    sc = None
    for kind, (marker, label) in markers.items():
        pts = [c for c in ok if c["kind"] == kind]
        if not pts:
            continue
        sc = ax.scatter([pos[c["id"]][0] for c in pts], [pos[c["id"]][1] for c in pts],
                        c=[100 * c["val_acc"] for c in pts], cmap="viridis", vmin=vmin, vmax=vmax, s=90,
                        marker=marker, edgecolors="k", zorder=3, label=label)
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="validation accuracy (%)")
    fin = [c for c in cands if c["kind"] == "final" and c["status"] == "ok"]
    if fin:
        ax.scatter([pos[c["id"]][0] for c in fin], [pos[c["id"]][1] for c in fin], marker="*", s=260,
                   color="gold", edgecolors="k", zorder=4, label="final model (train + val)")
    bad = [c for c in cands if c["status"] != "ok"]
    if bad:
        ax.scatter([pos[c["id"]][0] for c in bad], [pos[c["id"]][1] for c in bad], marker="x",
                   color="tab:red", s=60, zorder=3, label="diverged / failed / pending")
    for c in cands:
        if c["id"] in winners or c["kind"] == "final":
            ax.annotate(c["id"], pos[c["id"]], textcoords="offset points", xytext=(6, 6), fontsize=7,
                        fontweight="bold" if c["id"] in path else "normal")
    # Below the axes, so that it never hides a candidate or a label (the data fill the corners).
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
    ax.set_xlabel("hill-climbing step (0 = start network, last = final training)")
    ax.set_ylabel("candidate index in the step")
    ax.set_title("lineage: each edge labelled with the morphisms that made the child; final path thick")
    ax.set_xlim(-0.6, n_steps - 0.4)
    ax.set_ylim(-0.6, n_idx - 0.4)
    _integer_axes(ax, x=True, y=True)
    ax.grid(alpha=0.2)
    return fig


def _plot_params(run: dict[str, Any], plt) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4.8))
    cands = run["candidates"]
    ok = [c for c in cands if c["status"] == "ok" and c["val_acc"] is not None and c["params"]]
    winners = {s["best"] for s in run["steps"]}
    if ok:
        from matplotlib.colors import BoundaryNorm
        from matplotlib.ticker import MaxNLocator

        # Steps are integers: one colour per step (bins centred on the integers), integer ticks.
        lo = min(int(c["step"]) for c in ok)
        hi = max(int(c["step"]) for c in ok)
        cmap = plt.get_cmap("plasma", hi - lo + 1)
        norm = BoundaryNorm([k - 0.5 for k in range(lo, hi + 2)], cmap.N)
        sc = ax.scatter([c["params"] for c in ok], [100 * c["val_acc"] for c in ok],
                        c=[c["step"] for c in ok], cmap=cmap, norm=norm, edgecolors="k", zorder=3,
                        label="candidate (validation)")
        cb = fig.colorbar(sc, ax=ax, label="hill-climbing step")
        ticks = [t for t in MaxNLocator(integer=True).tick_values(lo, hi) if lo <= t <= hi]
        cb.set_ticks(ticks)
        cb.set_ticklabels([str(int(t)) for t in ticks])
        won = [c for c in ok if c["id"] in winners]
        if won:
            ax.scatter([c["params"] for c in won], [100 * c["val_acc"] for c in won], s=190,
                       facecolors="none", edgecolors="black", linewidths=1.8, zorder=4,
                       label="winner of its step")
            for c in won:
                ax.annotate(c["id"], (c["params"], 100 * c["val_acc"]), textcoords="offset points",
                            xytext=(7, -10), fontsize=7)
    fin = [c for c in cands if c["kind"] == "final" and c["status"] == "ok" and c["test_acc"] is not None]
    for c in fin:
        ax.scatter([c["params"]], [100 * c["test_acc"]], marker="*", s=280, color="gold", edgecolors="k",
                   zorder=5, label="final model (test accuracy)")
    if ok or fin:
        ax.set_xscale("log")
        ax.legend(fontsize=7.5, loc="lower right")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("accuracy (%): validation; final model: test")
    ax.set_title("size against accuracy")
    ax.grid(alpha=0.3, which="both")
    return fig


def _plot_curves(run: dict[str, Any], plt) -> Any:
    cands = run["candidates"]
    cfg = run["config"] or {}
    path = {c["id"] for c in _final_path(cands, run["steps"])}
    e0 = int(cfg.get("epochs_init") or 0)
    en = int(cfg.get("epoch_neigh") or 0)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"init": "tab:gray", "child": "tab:blue", "incumbent": "tab:orange"}
    labelled: set[str] = set()
    for c in cands:
        if c["kind"] not in colors:
            continue
        pts = [(h.get("epoch"), h.get("val_acc")) for h in c["history"] or []
               if h.get("epoch") is not None and h.get("val_acc") is not None]
        if not pts:
            continue
        start = 0 if c["kind"] == "init" else e0 + (c["step"] - 1) * en
        xs = [start + int(e) + 1 for e, _ in pts]
        ys = [100 * v for _, v in pts]
        on_path = c["id"] in path
        label = None
        if c["kind"] not in labelled:
            label = {"init": "start network", "child": "child", "incumbent": "incumbent"}[c["kind"]]
            labelled.add(c["kind"])
        ax.plot(xs, ys, color=colors[c["kind"]], lw=2.2 if on_path else 0.9, alpha=1.0 if on_path else 0.55,
                marker="." if len(xs) < 30 else None, label=label)
    ax.set_xlabel("epoch of the run (a step's candidates start where their parent stopped)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("every candidate's validation accuracy per epoch (final path thick)")
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend(fontsize=8, loc="lower right")
    final = next((c for c in cands if c["kind"] == "final"), None)
    hist = (final or {}).get("history") or []
    if hist:
        xs = [int(h.get("epoch", i)) + 1 for i, h in enumerate(hist)]
        loss = [h.get("loss") for h in hist]
        acc = [None if h.get("train_acc") is None else 100 * h["train_acc"] for h in hist]
        bx.plot(xs, loss, color="tab:red", marker="o", label="training loss")
        bx.set_ylabel("training loss (cross-entropy, nats)", color="tab:red")
        cx = bx.twinx()
        cx.plot(xs, acc, color="tab:green", marker="s", label="training accuracy")
        cx.set_ylabel("training accuracy (%), augmented batches", color="tab:green")
        bx.set_title(f"final training of {final['parent']} on train + validation")
    else:
        bx.text(0.5, 0.5, "no final training yet", ha="center", va="center", transform=bx.transAxes)
        bx.set_title("final training")
    bx.set_xlabel("epoch of the final training")
    _integer_axes(bx, x=True)
    bx.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write the PNG plots (:data:`PLOTS`) and ``report.md`` for a run (finished or in progress).

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
    for name, fn in zip(PLOTS, (_plot_val_acc, _plot_lineage, _plot_params, _plot_curves)):
        fig = fn(run, plt)
        try:
            _save_fig(fig, out / name)
        finally:
            plt.close(fig)
        written.append(out / name)
    md = _markdown(run, out)
    if (run["config"] or {}).get("objective") == "pareto":   # issue 15: the front, for Pareto runs only
        written.append(write_front_plot(run, out, plt))
        md += front_markdown(run)
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
        format_summary(run["steps"], final.get("test_acc"), final.get("test_acc_onnx"), final_curve(run),
                       final.get("warnings")),
        "```",
        "",
        "Lineage of the final model: " + format_lineage(run["candidates"], run["steps"]).replace("|", "/"),
        "",
        "## Morphisms",
        "",
        "How often each pass made a child, how often that child won its step, and its children's mean "
        "validation accuracy against the incumbent of the same step (same epochs and data order).",
        "",
        "```",
        format_morphism_stats(morphism_stats(run["candidates"], run["steps"])),
        "```",
        "",
    ]
    lines += ["## Plots", ""]
    for name, title in zip(PLOTS, ("Validation accuracy per step", "Lineage", "Parameters against accuracy",
                                   "Training curves")):
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


# ------------------------------------------------------------------------------------- Pareto runs
def _front_meta(run: dict[str, Any]) -> dict[str, Any]:
    """The ledger's meta ``front`` of a Pareto run (``{"points": [...], "cost": ...}``; empty before
    the final trainings finished)."""
    with Ledger.open(run["run_dir"], readonly=True) as led:
        meta = led.get_meta("front") or {}
    return meta if isinstance(meta, dict) else {}


def write_front_plot(run: dict[str, Any], out: Path, plt) -> Path:
    """``front.png`` of a Pareto run (``nashir search --objective pareto``): left, the final front,
    cost (log scale) against test error (%), each point labelled with its id, and the validation
    error every trained candidate had in the search (grey) with the front's validation error as a
    step line; right, the lineage in the same plane: an edge from each candidate to its parent, the
    ancestry of the front's points thick.

    Returns:
        The path written.
    """
    from nashir.search.pareto import front_points

    cost = (run["config"] or {}).get("cost", "params")
    cands = run["candidates"]
    pts = _front_meta(run).get("points") or []
    trained = [c for c in cands if c["kind"] in ("init", "child") and c["status"] == "ok"
               and c["val_acc"] is not None and c.get(cost)]
    by_id = {c["id"]: c for c in cands}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    if trained:
        ax.scatter([c[cost] for c in trained], [100 * (1 - c["val_acc"]) for c in trained], s=18,
                   color="0.7", zorder=2, label="every trained candidate (validation error)")
        vf = front_points(cands, cost)
        ax.step([c[cost] for c in vf], [100 * (1 - c["val_acc"]) for c in vf], where="post", color="tab:blue",
                lw=1.2, alpha=0.8, zorder=3, label="front in the search (validation error)")
    tp = [p for p in pts if p.get("test_acc") is not None]
    if tp:
        ax.plot([p[cost] for p in tp], [100 * (1 - p["test_acc"]) for p in tp], "o-", color="tab:red", ms=8,
                mec="k", zorder=4, label="final front (test error, after train + val)")
        for p in tp:
            ax.annotate(f"{p['id']}\n{p[cost]:,} {cost}", (p[cost], 100 * (1 - p["test_acc"])),
                        textcoords="offset points", xytext=(6, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"{'parameters' if cost == 'params' else 'MACs per image'} (log scale)")
    ax.set_ylabel("error (%)")
    ax.set_title("Pareto front: cost against test error")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7.5, loc="upper right")
    anc: set[str] = set()
    for p in pts:
        cur = p["id"]
        while cur in by_id and cur not in anc:
            anc.add(cur)
            cur = by_id[cur]["parent"]
    for c in trained:
        par = by_id.get(c["parent"]) if c["parent"] else None
        if par is None or par.get("val_acc") is None or not par.get(cost):
            continue
        thick = c["id"] in anc and par["id"] in anc
        bx.plot([par[cost], c[cost]], [100 * (1 - par["val_acc"]), 100 * (1 - c["val_acc"])],
                color="black" if thick else "0.75", lw=2 if thick else 0.7, zorder=1)
    if trained:
        sc = bx.scatter([c[cost] for c in trained], [100 * (1 - c["val_acc"]) for c in trained],
                        c=[c["step"] for c in trained], cmap="viridis", s=40, edgecolors="k", zorder=3)
        fig.colorbar(sc, ax=bx, label="generation")
        for c in trained:
            if c["id"] in {p["id"] for p in pts} or c["kind"] == "init":
                bx.annotate(c["id"], (c[cost], 100 * (1 - c["val_acc"])), textcoords="offset points",
                            xytext=(5, 4), fontsize=7)
    bx.set_xscale("log")
    bx.set_xlabel(f"{cost} (log scale)")
    bx.set_ylabel("validation error (%) after its search training")
    bx.set_title("lineage: each candidate to its parent; ancestry of the front thick")
    bx.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = out / "front.png"
    try:
        _save_fig(fig, path)
    finally:
        plt.close(fig)
    return path


def front_markdown(run: dict[str, Any]) -> str:
    """The report's section on a Pareto run: the front as a table and its plot."""
    from nashir.search.pareto import format_front

    meta = _front_meta(run)
    pts = meta.get("points") or []
    cost = meta.get("cost") or (run["config"] or {}).get("cost", "params")
    lines = ["", "## Pareto front", ""]
    if pts:
        lines += ["One ONNX file per point in `front/` (NCHW float32 images normalised as "
                  f"`(x - mean) / std`, mean = {meta.get('mean')}, std = {meta.get('std')}).", "", "```",
                  format_front(pts, cost), "```", ""]
    else:
        lines += ["The final trainings of the front have not finished yet.", ""]
    lines += ["![Pareto front](front.png)", ""]
    return "\n".join(lines)

