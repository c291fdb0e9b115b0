"""The start network (paper's shape, sized to the data), start-model checks, re-initialisation."""

from __future__ import annotations

import numpy as np
import pytest

from nashir import GraphBuilder
from nashir.errors import SearchError
from nashir.search.startnet import check_model_fits, default_widths, reinitialize, start_network


@pytest.mark.parametrize(
    "shape, classes, widths, ops",
    [
        (
            (1, 8, 8),
            10,
            (16, 32, 64),
            ["Conv", "BatchNormalization", "Relu", "MaxPool"] * 2
            + ["Conv", "BatchNormalization", "Relu", "Flatten", "Gemm"],
        ),
        (
            (3, 32, 32),
            100,
            (64, 128, 256),
            ["Conv", "BatchNormalization", "Relu", "MaxPool"] * 2
            + ["Conv", "BatchNormalization", "Relu", "Flatten", "Gemm"],
        ),
        # a 2x2 image: the first pooling makes 1x1, the second is left out
        (
            (3, 2, 2),
            4,
            (16, 32, 64),
            [
                "Conv",
                "BatchNormalization",
                "Relu",
                "MaxPool",
                "Conv",
                "BatchNormalization",
                "Relu",
                "Conv",
                "BatchNormalization",
                "Relu",
                "Flatten",
                "Gemm",
            ],
        ),
    ],
)
def test_shape_of_the_start_network(shape, classes, widths, ops):
    g = start_network(shape, classes)
    assert [n.op_type for n in g.nodes] == ops
    convs = [n for n in g.nodes if n.op_type == "Conv"]
    assert tuple(n.inputs[1].shape[0] for n in convs) == widths
    assert g.inputs[0].shape[1:] == shape
    assert g.outputs[0].shape[1] == classes
    g.verify()


def test_default_widths():
    assert default_widths((3, 32, 32)) == (64, 128, 256)
    assert default_widths((3, 64, 48)) == (64, 128, 256)
    assert default_widths((1, 28, 28)) == (32, 64, 128)
    assert default_widths((1, 8, 8)) == (16, 32, 64)


def test_torch_agrees_with_shape_inference():
    torch = pytest.importorskip("torch")
    from nashir.backends.torch import to_torch

    for shape, k in (((1, 8, 8), 10), ((3, 32, 32), 10), ((3, 5, 7), 3)):
        g = start_network(shape, k, widths=(4, 6, 8), seed=1)
        mod = to_torch(g).eval()
        with torch.no_grad():
            y = mod(torch.randn(2, *shape))
        assert tuple(y.shape) == (2, k)
        # every intermediate shape: the flatten width equals C * H * W of the last map
        flat = next(n for n in g.nodes if n.op_type == "Flatten")
        c, h, w = flat.inputs[0].shape[1:]
        assert flat.outputs[0].shape[1] == c * h * w


def test_seed_controls_the_weights():
    a = start_network((1, 8, 8), 10, seed=0)
    b = start_network((1, 8, 8), 10, seed=0)
    c = start_network((1, 8, 8), 10, seed=1)
    assert str(a) == str(b)
    assert np.array_equal(a.value("conv1.weight").const, b.value("conv1.weight").const)
    assert not np.array_equal(a.value("conv1.weight").const, c.value("conv1.weight").const)


@pytest.mark.parametrize(
    "args, pattern",
    [
        (((1, 8), 10), "input shape must be"),
        (((1, 8, 0), 10), "input shape must be"),
        (((1, 8, 8), 1), "num_classes"),
    ],
)
def test_bad_arguments(args, pattern):
    with pytest.raises(SearchError, match=pattern):
        start_network(*args)
    with pytest.raises(SearchError, match="widths"):
        start_network((1, 8, 8), 10, widths=(4, 0, 3))


def test_check_model_fits_names_both_shapes():
    g = start_network((3, 32, 32), 10)
    check_model_fits(g, (3, 32, 32), 10)
    with pytest.raises(SearchError, match=r"shape \(N, 3, 32, 32\).*\(N, 1, 8, 8\)"):
        check_model_fits(g, (1, 8, 8), 10, what="--init m.onnx")
    with pytest.raises(SearchError, match=r"output 'fc' has shape \(N, 10\).*100 classes"):
        check_model_fits(g, (3, 32, 32), 100)
    b = GraphBuilder("two", (1, 8, 8))
    h = b.flatten(b.input)
    two = b.build(b.gemm(h, 10), b.gemm(h, 10))
    with pytest.raises(SearchError, match="exactly one input and one output"):
        check_model_fits(two, (1, 8, 8), 10)


def test_reinitialize():
    g = start_network((1, 8, 8), 10, seed=0)
    for name in ("scale", "bias", "mean", "var"):
        g.set_const(f"bn2.{name}", np.full(32, 3.0, np.float32))
    g.node("bn2").meta["calibrate"] = "identity"
    before = {v.name: v.const.copy() for v in g.constants()}
    r = reinitialize(g, np.random.default_rng(5))
    # the input graph is untouched
    assert all(np.array_equal(before[v.name], v.const) for v in g.constants())
    assert g.node("bn2").meta == {"calibrate": "identity"}
    r.verify()
    assert "calibrate" not in r.node("bn2").meta
    assert str(r).replace("  # calibrate=identity", "") == str(g).replace("  # calibrate=identity", "")
    assert not np.array_equal(r.value("conv2.weight").const, g.value("conv2.weight").const)
    np.testing.assert_array_equal(r.value("bn2.scale").const, 1.0)
    np.testing.assert_array_equal(r.value("bn2.bias").const, 0.0)
    np.testing.assert_array_equal(r.value("bn2.mean").const, 0.0)
    np.testing.assert_array_equal(r.value("bn2.var").const, 1.0)
    np.testing.assert_array_equal(r.value("fc.bias").const, 0.0)
    # He init: std sqrt(2 / fan_in); conv3 has 64 * 32 * 9 weights, fan_in 288
    w = r.value("conv3.weight").const
    assert w.dtype == np.float32
    assert abs(w.std() - np.sqrt(2 / 288)) < 0.1 * np.sqrt(2 / 288)
    same = reinitialize(g, np.random.default_rng(5))
    assert np.array_equal(same.value("conv3.weight").const, w)


@pytest.mark.parametrize("shape, classes, widths", [
    ((1, 8, 8), 10, (16, 32, 64)), ((3, 32, 32), 100, (64, 128, 256)), ((3, 1, 1), 7, (5, 6, 7)),
    ((3, 3, 2), 7, (5, 6, 7)), ((2, 17, 9), 3, (1, 2, 3)),
])
def test_start_network_params_is_exact(shape, classes, widths):
    from nashir.search.startnet import start_network_params

    assert start_network_params(shape, classes, widths) == start_network(shape, classes, widths).param_count()


@pytest.mark.parametrize("shape, classes, widths, gib", [
    ((1, 8, 8), 10, (100000, 100000, 100000), "670.6"),     # nashir search --widths 100000,100000,100000
    ((3, 32, 32), 10**9, (16, 32, 64), "15262.5"),           # a class count from one huge label
    ((3, 4096, 4096), 10, (64, 128, 256), "10.0"),
])
def test_oversized_start_network_is_refused_before_allocating(shape, classes, widths, gib):
    msg = rf"give [\d,]+ parameters \({gib}[\d.]* GiB of float32\), above the 2\.0 GiB a candidate may have"
    with pytest.raises(SearchError, match=msg):
        start_network(shape, classes, widths)
