"""The Pareto search (nashir.search.pareto): dominance, the front and the parent/child sampling on
hand-made points; the command line's bad input (exit 2 naming the flag, nothing written); end to end
on digits: front/*.onnx, the ledger, resume after an interruption gives the uninterrupted run."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from nashir.cli import main
from nashir.errors import SearchError
from nashir.search import preset
from nashir.search.pareto import (
    MIN_BANDWIDTH,
    PARETO_PASSES,
    ParetoConfig,
    accept_children,
    dominates,
    draw_parents,
    format_front,
    front_points,
    inverse_density_weights,
    kde_bandwidth,
    pareto_front,
)

# ------------------------------------------------------------------------------------- bookkeeping


def test_dominates():
    assert dominates((0.1, 10), (0.2, 20))
    assert dominates((0.1, 10), (0.1, 20)) and dominates((0.1, 10), (0.2, 10))
    assert not dominates((0.1, 10), (0.1, 10))  # equal: neither dominates
    assert not dominates((0.1, 30), (0.2, 20)) and not dominates((0.2, 20), (0.1, 30))  # a trade-off
    assert not dominates((0.3, 30), (0.2, 20))


def test_pareto_front_on_hand_made_points():
    #        0: front   1: dominated by 0  2: front   3: duplicate of 2  4: front  5: dominated by 2 and 4
    pts = [(0.30, 100), (0.35, 120), (0.20, 400), (0.20, 400), (0.10, 1000), (0.25, 1000)]
    assert pareto_front(pts) == [0, 2, 4]
    assert pareto_front([]) == []
    assert pareto_front([(0.5, 1)]) == [0]
    # the front of (front + new points) is the front of everything (what resume relies on)
    new = [(0.28, 90), (0.05, 5000)]
    allp = pts + new
    f1 = [allp[i] for i in pareto_front(allp)]
    f2 = [x for x in [pts[i] for i in pareto_front(pts)] + new]
    assert sorted(f1) == sorted(f2[i] for i in pareto_front(f2))


def test_inverse_density_weights_by_hand():
    front = [1e4, 1.1e4, 1.2e4, 1e6]
    w = inverse_density_weights(front, front)
    x = np.log10(front)
    h = max(MIN_BANDWIDTH, x.std(ddof=1) * len(x) ** -0.2)
    dens = [
        np.mean([math.exp(-0.5 * ((a - b) / h) ** 2) / (h * math.sqrt(2 * math.pi)) for b in x]) for a in x
    ]
    want = np.array([1 / d for d in dens])
    np.testing.assert_allclose(w, want / want.sum(), rtol=1e-12)
    assert w[3] > 2 * w[0] and w.sum() == pytest.approx(1.0)  # the isolated large model is favoured
    assert kde_bandwidth(np.array([3.0])) == MIN_BANDWIDTH
    assert kde_bandwidth(np.array([2.0, 2.0])) == MIN_BANDWIDTH
    with pytest.raises(SearchError, match="positive"):
        inverse_density_weights([0], [1])
    with pytest.raises(SearchError, match="empty"):
        inverse_density_weights([1], [])


def test_parent_sampling_follows_the_inverse_density():
    front = [1e4, 1.05e4, 1.1e4, 2e5]
    w = inverse_density_weights(front, front)
    draws = draw_parents(front, 20000, np.random.default_rng(0))
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, w, atol=0.015)
    assert freq[3] > 2 * freq[0]  # the sparse end of the cost axis gets more parents
    assert draw_parents([123], 5, np.random.default_rng(1)) == [0] * 5
    assert draw_parents(front, 7, np.random.default_rng(3)) == draw_parents(
        front, 7, np.random.default_rng(3)
    )


def test_child_acceptance():
    front = [1e4, 1e5]
    assert accept_children([5e4, 6e4], front, 3, np.random.default_rng(0)) == [0, 1]  # fewer than k: all
    kids = [1e4, 1.01e4, 1.02e4, 3e6]
    picks = [accept_children(kids, front, 2, np.random.default_rng(s)) for s in range(300)]
    assert all(len(p) == 2 and len(set(p)) == 2 and p == sorted(p) for p in picks)
    share = np.mean([3 in p for p in picks])
    assert share > 0.9  # a child far from every front point is nearly always accepted


def test_front_points_from_ledger_rows():
    def row(i, step, kind, status, val, params, macs=None):
        return {
            "id": i,
            "step": step,
            "idx": 1,
            "kind": kind,
            "status": status,
            "val_acc": val,
            "params": params,
            "macs": macs or 10 * params,
        }

    rows = [
        row("init", 0, "init", "ok", 0.80, 1000),
        row("s1-c1", 1, "child", "ok", 0.85, 3000),
        row("s1-c2", 1, "child", "ok", 0.78, 2000),
        row("s1-c3", 1, "child", "failed", None, 10),
        row("s2-c1", 2, "child", "ok", 0.90, 500),
        row("final-init", 3, "final", "ok", 0.99, 1),
    ]
    assert [r["id"] for r in front_points(rows, "params", before_step=2)] == ["init", "s1-c1"]
    assert [r["id"] for r in front_points(rows, "params")] == ["s2-c1"]
    text = format_front(
        [
            {
                "id": "init",
                "params": 1000,
                "macs": 9000,
                "val_acc": 0.8,
                "test_acc": 0.81,
                "onnx": "front/init.onnx",
            }
        ],
        "params",
    )
    assert "init" in text and "1,000" in text and "80.00" in text and "front/init.onnx" in text


def test_pareto_config():
    base = preset("demo", n_neigh=3)
    c = ParetoConfig(base)
    assert c.n_children == 3 and c.n_proposals == 6 and c.cost == "params"
    d = c.to_dict()
    assert d["objective"] == "pareto" and d["children"] == 3 and d["proposals"] == 6
    assert ParetoConfig.from_dict({**d, "data": {}, "start_sha256": "x"}) == ParetoConfig(
        base, "params", 3, 6
    )
    with pytest.raises(SearchError, match="--cost"):
        ParetoConfig(base, cost="flops")
    with pytest.raises(SearchError, match="--proposals 2 is below --children 3"):
        ParetoConfig(base, children=3, proposals=2)
    with pytest.raises(SearchError, match="--children"):
        ParetoConfig(base, children=0)
    assert c.search_epochs() == base.epochs_init + base.n_steps * 3 * base.epoch_neigh
    assert set(PARETO_PASSES) >= {
        "prune-filters",
        "remove-layer",
        "remove-skip",
        "separable-conv",
        "net2wider",
    }


# ------------------------------------------------------------------------------------- the command line

NO_TRAIN = [
    "--steps",
    "0",
    "--epochs-init",
    "0",
    "--epochs-final",
    "0",
    "--widths",
    "4,8,8",
    "--device",
    "cpu",
]


def _fails(capsys, argv, *patterns):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    for p in patterns:
        assert p in err, (p, err)


@pytest.mark.parametrize(
    "flags,names",
    [
        (["--objective", "pareto", "--neighbors", "3"], ["--neighbors", "--objective nash"]),
        (["--objective", "pareto", "--no-morph"], ["--no-morph"]),
        (["--objective", "pareto", "--retrain-from-scratch"], ["--retrain-from-scratch"]),
        (["--cost", "macs"], ["--cost only apply to --objective pareto"]),
        (["--objective", "nash", "--children", "2"], ["--children"]),
        (["--proposals", "4"], ["--proposals"]),
        (["--objective", "pareto", "--cost", "flops"], ["--cost"]),
        (
            ["--objective", "pareto", "--children", "3", "--proposals", "2"],
            ["--proposals 2 is below --children 3"],
        ),
        (["--objective", "pareto", "--children", "0"], ["--children"]),
        (["--objective", "simplex"], ["--objective"]),
    ],
)
def test_bad_objective_flags_exit_2_and_write_nothing(tmp_path, capsys, flags, names):
    out = tmp_path / "run"
    _fails(capsys, ["search", *NO_TRAIN, *flags, "--out", str(out), "--quiet"], *names)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_resuming_a_nash_run_as_pareto_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", *NO_TRAIN, "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _fails(
        capsys,
        ["search", "--objective", "pareto", "--resume", "--out", str(out), "--quiet"],
        "--objective pareto",
        "nash run",
    )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# ------------------------------------------------------------------------------------- end to end

TINY = [
    "--dataset",
    "digits",
    "--widths",
    "4,8,8",
    "--steps",
    "2",
    "--children",
    "2",
    "--proposals",
    "4",
    "--epochs-neighbor",
    "1",
    "--epochs-init",
    "1",
    "--epochs-final",
    "1",
    "--threads",
    "1",
    "--device",
    "cpu",
]


def _ledger(run: Path):
    con = sqlite3.connect(run / "ledger.sqlite")
    rows = con.execute(
        "SELECT id, kind, parent, params, macs, status, val_acc, test_acc, morphisms, sha256 "
        "FROM candidates ORDER BY id"
    ).fetchall()
    con.close()
    return rows


@pytest.mark.slow
def test_a_tiny_pareto_search_writes_the_front(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["search", "--objective", "pareto", *TINY, "--out", str(out)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "Pareto front:" in cap.out and "point" in cap.out and "val acc %" in cap.out
    assert not (out / "best.onnx").exists()
    meta = json.loads((out / "front" / "front.json").read_text())
    pts = meta["points"]
    assert pts and sorted(p.name for p in (out / "front").glob("*.onnx")) == sorted(
        f"{p['id']}.onnx" for p in pts
    )
    costs = [p["params"] for p in pts]
    assert costs == sorted(costs)
    rows = _ledger(out)
    kinds = {r[1] for r in rows}
    assert kinds == {"init", "child", "final"}
    assert sum(r[1] == "child" for r in rows) == 4  # 2 generations x 2 children
    # the front is the non-dominated set of every trained candidate (independently recomputed)
    trained = [(1 - r[6], r[3], r[0]) for r in rows if r[1] in ("init", "child") and r[5] == "ok"]
    nd = [t[2] for t in trained if not any(dominates(u[:2], t[:2]) for u in trained)]
    assert sorted({p["id"] for p in pts}) == sorted(set(nd)) or set(p["id"] for p in pts) <= set(nd)
    # every front file runs in onnxruntime with the recorded accuracy
    from nashir.data import load_dataset
    from nashir.search.nash import _ort_accuracy

    data = load_dataset("digits", seed=0)
    for p in pts:
        assert _ort_accuracy(out / p["onnx"], data) == pytest.approx(p["test_acc_onnx"])
        assert abs(p["test_acc_onnx"] - p["test_acc"]) < 0.01
    # the summary is the table
    assert "point" in (out / "summary.txt").read_text()
    # the report draws the front
    assert main(["report", str(out)]) == 0
    assert (out / "report" / "front.png").is_file()
    assert "## Pareto front" in (out / "report" / "report.md").read_text()


class _Interrupting:
    """An in-process executor that stops the search (KeyboardInterrupt) after ``n`` results."""

    def __init__(self, n):
        from nashir.search import InProcessExecutor

        self.inner, self.n = InProcessExecutor(threads=1), n

    def prepare(self, spec, data=None):
        self.inner.prepare(spec, data)

    def run(self, jobs):
        for res in self.inner.run(jobs):
            if self.n == 0:
                raise KeyboardInterrupt
            self.n -= 1
            yield res

    def close(self):
        self.inner.close()


@pytest.mark.slow
def test_resume_after_an_interruption_gives_the_uninterrupted_run(tmp_path):
    from nashir.search.pareto import pareto

    cfg = ParetoConfig(
        preset(
            "demo",
            widths=(4, 8, 8),
            n_steps=2,
            epoch_neigh=1,
            epochs_init=1,
            epoch_final=1,
            threads=1,
            device="cpu",
        ),
        children=2,
        proposals=4,
    )
    a, b = tmp_path / "a", tmp_path / "b"
    ra = pareto(None, None, cfg, run_dir=a)
    with pytest.raises(KeyboardInterrupt):
        pareto(None, None, cfg, run_dir=b, executor=_Interrupting(3))  # init + 2 children of generation 1
    done = {r[0] for r in _ledger(b) if r[5] == "ok"}
    assert done == {"init", "s1-c1", "s1-c2"}
    rb = pareto(None, None, cfg, run_dir=b, resume=True)
    assert not done & set(rb.trained)  # finished candidates are not trained again
    assert _ledger(a) == _ledger(b)
    assert [p["id"] for p in ra.front] == [p["id"] for p in rb.front]
    for p in ra.front:
        assert (a / p["onnx"]).read_bytes() == (b / p["onnx"]).read_bytes()
    with pytest.raises(SearchError, match="differing keys"):
        pareto(
            None, None, ParetoConfig(cfg.search, cost="macs", children=2, proposals=4), run_dir=b, resume=True
        )
