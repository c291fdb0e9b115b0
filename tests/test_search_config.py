"""SearchConfig: presets, validation messages (naming the flag), dict round trip, config_diff."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nashir.errors import SearchError
from nashir.search import PRESETS, SearchConfig, config_diff, preset


def test_paper_preset_has_the_papers_values():
    # arXiv 1711.04528 Sec. 5.1: n_steps 5, n_neigh 8, n_NM 5, epoch_neigh 17, epoch_final 20,
    # 20 epochs of pretraining, lr 0.05 -> 0, batch 128
    c = preset("paper")
    assert (c.n_steps, c.n_neigh, c.n_nm, c.epoch_neigh, c.epoch_final, c.epochs_init) == (
        5,
        8,
        5,
        17,
        20,
        20,
    )
    assert (c.lr_start, c.lr_end, c.batch_size) == (0.05, 0.0, 128)
    assert c.preset == "paper"
    assert c.sgdr and c.morph and not c.retrain_from_scratch


def test_preset_overrides_and_unknown_preset():
    c = preset("demo", n_steps=1, seed=7)
    assert c.n_steps == 1 and c.seed == 7 and c.n_neigh == PRESETS["demo"]["n_neigh"]
    with pytest.raises(SearchError, match="unknown preset 'fast'.*demo, fashion, paper"):
        preset("fast")


@pytest.mark.parametrize(
    "kw, pattern",
    [
        (dict(n_neigh=0), r"--neighbors \(n_neigh\) must be an integer >= 1, got 0"),
        (dict(n_nm=0), r"--morphs"),
        (dict(n_steps=-1), r"--steps"),
        (dict(epoch_neigh=0), r"--epochs-neighbor"),
        (dict(epoch_final=-2), r"--epochs-final"),
        (dict(epochs_init=-1), r"--epochs-init"),
        (dict(batch_size=0), r"--batch-size"),
        (dict(lr_start=0.01, lr_end=0.1), r"--lr-end 0.1 is above --lr-start 0.01"),
        (dict(lr_start=0.0), r"--lr-start \(lr_start\) must be > 0"),
        (dict(lr_start=float("nan")), r"--lr-start"),
        (dict(max_params=0), r"--max-params"),
        (dict(seed=-3), r"--seed"),
        (dict(threads=0), r"--threads"),
        (dict(widths=(8, 16)), r"--widths"),
        (dict(passes=()), r"--passes"),
        (dict(n_neigh=2.5), r"--neighbors"),
        (dict(n_steps=True), r"--steps"),
        (dict(dataset=""), r"--dataset"),
        (dict(momentum=1.0), r"momentum"),
        (dict(retrain_from_scratch=True, n_steps=0, epochs_init=0, epoch_final=0), r"--retrain-from-scratch"),
    ],
)
def test_bad_values_name_the_flag(kw, pattern):
    with pytest.raises(SearchError, match=pattern):
        SearchConfig(**kw)


def test_zero_steps_allows_zero_neighbour_epochs():
    c = SearchConfig(n_steps=0, epoch_neigh=0)
    assert c.n_steps == 0


def test_dict_round_trip_and_unknown_keys():
    c = SearchConfig(widths=[8, 16, 32], passes=["net2wider"], max_params=10_000)
    d = c.to_dict()
    assert d["widths"] == [8, 16, 32] and d["passes"] == ["net2wider"]
    assert SearchConfig.from_dict(d) == c
    assert c.widths == (8, 16, 32)
    with pytest.raises(SearchError, match="unknown search config key.*n_children"):
        SearchConfig.from_dict({**d, "n_children": 3})


def test_budgets():
    c = preset("paper")
    assert c.lineage_epochs() == 20 + 5 * 17 + 20
    assert c.budget_epochs() == 20 + 5 * 8 * 17 + 20
    r = c.replace(retrain_from_scratch=True)
    assert r.budget_epochs() == 20 + 5 * 8 * 17 + c.lineage_epochs()


def test_config_diff_ignores_runtime_keys_and_lists_the_rest():
    a = SearchConfig(seed=1, threads=2, device="cpu").to_dict()
    b = SearchConfig(seed=2, threads=1, device="cuda", n_steps=4).to_dict()
    diff = config_diff(a, b)
    assert [d.split(":")[0] for d in diff] == ["n_steps", "seed"]
    assert "seed: ledger=1, given=2" in diff
    assert config_diff(a, dict(a)) == []
    # ints and floats that are equal are the same value (JSON may turn 0.0 into 0)
    assert config_diff({"lr_end": 0}, {"lr_end": 0.0}) == []


def test_importing_nashir_search_does_not_import_torch():
    code = "import sys, nashir.search; print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_compile_reaches_the_training_and_may_change_on_resume():
    assert "compile" not in SearchConfig().train_kwargs()   # off: TrainConfig's default
    assert SearchConfig(compile=True).train_kwargs()["compile"] is True
    assert config_diff(SearchConfig().to_dict(), SearchConfig(compile=True).to_dict()) == []
    with pytest.raises(SearchError, match="--compile"):
        SearchConfig(compile="yes")
