"""Summary table, plots and markdown report from a ledger (written by hand here: no training)."""

from __future__ import annotations

import pytest

from nashir.errors import SearchError
from nashir.search.ledger import Ledger
from nashir.search.report import (
    PLOTS,
    format_lineage,
    format_morphism_stats,
    format_morphisms,
    format_summary,
    load_run,
    morphism_stats,
    write_report,
)


def _fake_run(folder):
    led = Ledger.create(folder, {"seed": 0, "n_steps": 2, "dataset": "digits"})
    led.add_candidate("init", 0, 0, "init", None, [], 100, 1000)
    led.finish_candidate("init", "ok", val_acc=0.50, train_seconds=1.0)
    m1 = [{"pass": "net2wider", "site": "conv1", "info": {}}]
    m2 = [
        {"pass": "add-skip", "site": "relu1->relu2", "info": {}},
        {"pass": "net2deeper", "site": "pool1", "info": {}},
    ]
    led.add_candidate("s1-c1", 1, 1, "child", "init", m1, 150, 1500)
    led.finish_candidate("s1-c1", "ok", val_acc=0.70, train_seconds=2.0)
    led.add_candidate("s1-c2", 1, 2, "child", "init", m2, 180, 1900)
    led.finish_candidate("s1-c2", "diverged", reason="loss became nan | at epoch 0")
    led.add_candidate("s1-c3", 1, 3, "incumbent", "init", [], 100, 1000)
    led.finish_candidate("s1-c3", "ok", val_acc=0.60, train_seconds=1.0)
    led.finish_step(1, "s1-c1", 0.70)
    led.add_candidate("s2-c1", 2, 1, "child", "s1-c1", m2, 260, 2600)
    led.finish_candidate("s2-c1", "ok", val_acc=0.65, train_seconds=2.0)
    led.add_candidate("s2-c2", 2, 2, "incumbent", "s1-c1", [], 150, 1500)
    led.finish_candidate("s2-c2", "ok", val_acc=0.72, train_seconds=2.0)
    led.finish_step(2, "s2-c2", 0.72)
    led.add_candidate("final", 3, 0, "final", "s2-c2", [], 150, 1500)
    led.finish_candidate("final", "ok", test_acc=0.75, train_seconds=3.0, metrics={"test_acc": 0.75},
                         history=[{"epoch": 0, "loss": 1.2, "train_acc": 0.5, "lr": 0.05},
                                  {"epoch": 1, "loss": 0.8, "train_acc": 0.7, "lr": 0.0}])
    led.set_meta(
        "final",
        {
            "best": "s2-c2",
            "test_acc": 0.75,
            "test_acc_onnx": 0.75,
            "params": 150,
            "macs": 1500,
            "mean": [1.0],
            "std": [2.0],
        },
    )
    led.set_meta("state", "done")
    led.close()


def test_format_morphisms():
    assert format_morphisms([]) == "-"
    assert format_morphisms(None) == "-"
    ms = [
        {"pass": "net2wider", "site": "conv1"},
        {"pass": "add-skip", "site": "a->b"},
        {"pass": "x", "site": ""},
    ]
    assert format_morphisms(ms) == "net2wider@conv1, add-skip@a->b, x"
    assert format_morphisms(ms, limit=1) == "net2wider@conv1, +2 more"


def test_load_run_and_summary(tmp_path):
    _fake_run(tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert [s["best"] for s in run["steps"]] == ["init", "s1-c1", "s2-c2"]
    # the incumbent that won step 2 was made by no morphism in that step
    assert run["steps"][2]["morphisms"] == [] and run["steps"][1]["morphisms"][0]["pass"] == "net2wider"
    text = format_summary(run["steps"], 0.75, 0.7466)
    lines = text.splitlines()
    assert lines[0].split() == ["step", "best", "val", "acc", "%", "params", "MACs", "morphisms"]
    assert lines[3].split()[:5] == ["1", "s1-c1", "70.00", "150", "1,500"]
    assert "net2wider@conv1" in lines[3]
    assert lines[-1] == "final test accuracy: 75.00 % (torch), 74.66 % (onnxruntime, best.onnx)"


def test_write_report(tmp_path):
    import matplotlib.image

    _fake_run(tmp_path / "run")
    ledger_before = (tmp_path / "run" / "ledger.sqlite").read_bytes()
    paths = write_report(tmp_path / "run")
    assert [p.name for p in paths] == [*PLOTS, "report.md"]
    assert len(PLOTS) == 4 and "curves.png" in PLOTS
    for p in paths[:4]:
        img = matplotlib.image.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    md = paths[-1].read_text()
    for cid in ("init", "s1-c1", "s1-c2", "s1-c3", "s2-c1", "s2-c2", "final"):
        assert f"| {cid} |" in md
    assert "diverged: loss became nan \\| at epoch 0" in md  # the reason, table-safe
    assert "![Lineage](lineage.png)" in md and "75.00 %" in md and "(x - mean) / std" in md
    assert "![Training curves](curves.png)" in md and "## Morphisms" in md
    assert "Lineage of the final model: init (100 params) -> s1-c1 net2wider@conv1 (150 params)" in md
    assert "final training: loss 1.200 0.800; train acc % 50.00 70.00" in md
    assert (tmp_path / "run" / "ledger.sqlite").read_bytes() == ledger_before  # only read


def test_report_elsewhere_and_errors(tmp_path):
    _fake_run(tmp_path / "run")
    paths = write_report(tmp_path / "run", tmp_path / "elsewhere")
    assert all(p.parent == tmp_path / "elsewhere" for p in paths)
    with pytest.raises(SearchError, match="not a folder"):
        write_report(tmp_path / "missing")
    Ledger.create(tmp_path / "empty_run", {}).close()
    with pytest.raises(SearchError, match="no candidate has finished"):
        write_report(tmp_path / "empty_run")
    assert not (tmp_path / "empty_run" / "report").exists()


def test_lineage_in_one_line_and_the_morphism_table(tmp_path):
    _fake_run(tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert format_lineage(run["candidates"], run["steps"]) == (
        "init (100 params) -> s1-c1 net2wider@conv1 (150 params) -> s2-c2 trained further "
        "-> final (train+val)"
    )
    rows = {r["pass"]: r for r in morphism_stats(run["candidates"], run["steps"])}
    # net2wider: one child (s1-c1), trained, won step 1, +10 points against the incumbent s1-c3 (60 %)
    assert rows["net2wider"] == {"pass": "net2wider", "children": 1, "trained": 1, "won": 1,
                                 "mean_delta": pytest.approx(10.0), "deltas": 1}
    # add-skip and net2deeper: two children (s1-c2 diverged, s2-c1 65 % against s2-c2's 72 %)
    for name in ("add-skip", "net2deeper"):
        assert rows[name]["children"] == 2 and rows[name]["trained"] == 1 and rows[name]["won"] == 0
        assert rows[name]["mean_delta"] == pytest.approx(-7.0)
    text = format_morphism_stats(morphism_stats(run["candidates"], run["steps"]))
    assert text.splitlines()[0].split()[:4] == ["pass", "children", "trained", "won"]
    assert "+10.00 (n=1)" in text and "-7.00 (n=1)" in text
