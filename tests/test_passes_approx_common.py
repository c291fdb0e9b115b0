"""Shared checks of the approximate passes (imported as ``test_passes_approx_common``): the error a
pass reports in ``info["error"]`` against an independent measurement with the torch backend."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_passes_nets import plain_net

from nashir.passes import get_pass, measure_error
from nashir.passes.approximate import APPROX_PASSES, MEASURE_BATCH, MEASURE_SEED
from nashir.passes.preservation import random_inputs


def torch_outputs(graph, x):
    import torch

    from nashir.backends.torch import to_torch

    m = to_torch(graph)
    m.eval()
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy().astype(np.float64)


def assert_reported_error(before, after, info):
    """``info["error"]`` is what torch measures on the same random inputs (batch 8, seed 0)."""
    err = info["error"]
    assert err["batch"] == MEASURE_BATCH and err["seed"] == MEASURE_SEED and err["runtime"] == "onnxruntime"
    x = random_inputs(before, MEASURE_BATCH, MEASURE_SEED)[before.inputs[0].name]
    yb, ya = torch_outputs(before, x), torch_outputs(after, x)
    max_abs = float(np.abs(ya - yb).max())
    scale = float(np.abs(yb).max())
    assert err["max_abs"] == pytest.approx(max_abs, abs=2e-5 * max(1.0, scale))
    assert err["max_rel"] == pytest.approx(err["max_abs"] / scale, rel=1e-4)
    assert err["tolerance"] == pytest.approx(1e-4 * max(1.0, scale), rel=1e-5)
    assert err["within_tolerance"] == (err["max_abs"] <= err["tolerance"])
    assert info["params_before"] == before.param_count() and info["params_after"] == after.param_count()
    assert info["macs_before"] == before.mac_count() and info["macs_after"] == after.mac_count()
    json.dumps(info)   # the ledger stores it


def test_every_approximate_pass_is_registered_and_not_exact():
    for name in APPROX_PASSES:
        p = get_pass(name)
        assert p.exact is False and p.description


def test_measure_error_of_identical_graphs_is_zero():
    g = plain_net()
    err = measure_error(g, g.clone())
    assert err["max_abs"] == 0.0 and err["within_tolerance"] is True


def test_measure_error_names_what_it_could_not_measure():
    from nashir import GraphBuilder

    b = GraphBuilder("sym", (3, 4, 4), seed=0)
    g = b.build(b.gemm(b.flatten(b.conv(b.input, 2)), 2))
    g.inputs[0].shape = ("N", 3, "H", 4)   # a symbolic spatial size: no random inputs can be drawn
    err = measure_error(g, g)
    assert err["max_abs"] is None and "not measured" in err["note"]


def test_measure_false_leaves_the_error_out():
    g = plain_net()
    p = get_pass("prune-filters", fraction=0.5, measure=False)
    res = p.apply(g, p.sites(g)[0])
    assert "error" not in res.info and res.info["params_after"] < res.info["params_before"]


def test_morph_check_reports_the_error_of_an_approximate_pass(tmp_path, capsys):
    import nashir
    from nashir.cli import main

    model = tmp_path / "m.onnx"
    nashir.save(plain_net(seed=1), model)
    out_file = tmp_path / "p.onnx"
    code = main(["morph", str(model), "--apply", "prune-filters:c2", "--check", "-o", str(out_file)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "prune-filters at c2: from=6, to=" in out and "approximate: measured max |diff| = " in out
    assert "reported, not failed" in out and (tmp_path / "p.onnx").is_file()
    assert nashir.load(tmp_path / "p.onnx").node("c2").inputs[1].shape[0] < 6
    # an exact morph over the tolerance still fails (nothing here is over it: the exact path is unchanged)
    code = main(["morph", str(model), "--widen", "c2", "--check", "-o", str(tmp_path / "w.onnx")])
    out = capsys.readouterr().out
    assert code == 0 and "reported, not failed" not in out
