"""Op-table entries of issue 16 (Elu, HardSigmoid, HardSwish, PRelu, GlobalMaxPool, LogSoftmax,
InstanceNormalization, Pad, Slice): shape inference against numpy, attribute checks, channel and
sign behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from nashir import GraphBuilder
from nashir import ops as O
from nashir.errors import OpError, ShapeError
from nashir.passes import nonneg_values


def _graph(shape=(4, 6, 7)):
    b = GraphBuilder("t", shape, seed=0)
    return b, b.graph


@pytest.mark.parametrize("pads,mode", [
    ([0, 0, 1, 2, 0, 0, 3, 0], "constant"), ([0, 0, 1, 2, 0, 0, 3, 0], "reflect"),
    ([0, 0, 0, 5, 0, 0, 0, 6], "edge"), ([0, 2, 0, 0, 0, 1, 0, 0], "constant"),
])
def test_pad_shape_matches_numpy(pads, mode):
    b, g = _graph()
    y = b.op("Pad", b.input, pads=pads, mode=mode)
    x = np.zeros((2, 4, 6, 7))
    want = np.pad(x, [(pads[i], pads[i + 4]) for i in range(4)], mode=mode).shape
    assert y.shape == ("N", *want[1:])


@pytest.mark.parametrize("pads,mode,match", [
    ([0, 0, 6, 0, 0, 0, 0, 0], "reflect", "smaller than the axis"),
    ([0, 0, -1, 0, 0, 0, 0, 0], "constant", ">= 0"),
    ([1, 0, 0, 0, 0, 0, 0, 0], "constant", "symbolic"),
    ([0, 0, 1, 0, 0, 0], "constant", "2 \\* rank"),
])
def test_pad_bad_shapes(pads, mode, match):
    b, g = _graph()
    with pytest.raises(ShapeError, match=match):
        b.op("Pad", b.input, pads=pads, mode=mode)


def test_pad_mode_is_checked():
    b, g = _graph()
    with pytest.raises(OpError, match="wrap"):
        b.op("Pad", b.input, pads=[0] * 8, mode="wrap")


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([1], [5], [2], [1]), ([-3], [100], [3], [1]), ([5], [-(2**63)], [2], [-2]),
    ([1, 0], [3, 7], [1, 3], [1, 3]),
    ([6], [0], [3], [-1]), ([-100], [2], [2], [1]),
])
def test_slice_shape_matches_numpy(starts, ends, axes, steps):
    b, g = _graph()
    y = b.op("Slice", b.input, starts=starts, ends=ends, axes=axes, steps=steps)
    x = np.zeros((2, 4, 6, 7))
    sl = [slice(None)] * 4
    for a, s, e, st in zip(axes, starts, ends, steps):
        sl[a] = slice(s, None if e < -(2**62) else e, st)
    assert y.shape == ("N", *x[tuple(sl)].shape[1:])
    assert y.producer.attrs["axes"] == axes and y.producer.attrs["steps"] == steps


def test_slice_defaults_made_explicit_and_bad_slices():
    b, g = _graph()
    y = b.op("Slice", b.input, starts=[1, 2], ends=[3, 4], axes=[2, 3])
    assert y.producer.attrs["steps"] == [1, 1]
    with pytest.raises(ShapeError, match="symbolic"):
        b.op("Slice", b.input, starts=[0], ends=[1], axes=[0])
    with pytest.raises(ShapeError, match="selects no elements"):
        b.op("Slice", b.input, starts=[4], ends=[2], axes=[2])
    with pytest.raises(ShapeError, match="must not be 0"):
        b.op("Slice", b.input, starts=[0], ends=[2], axes=[2], steps=[0])
    with pytest.raises(ShapeError, match="distinct axes"):
        b.op("Slice", b.input, starts=[0, 0], ends=[2, 2], axes=[2, -2])


@pytest.mark.parametrize("op,attrs,behaviour", [
    ("Elu", {}, O.TRANSPARENT), ("HardSigmoid", {}, O.TRANSPARENT), ("HardSwish", {}, O.TRANSPARENT),
    ("GlobalMaxPool", {}, O.TRANSPARENT), ("LogSoftmax", {"axis": 1}, O.BLOCKER),
    ("Pad", {"pads": [0, 0, 1, 1, 0, 0, 1, 1]}, O.TRANSPARENT),
    ("Pad", {"pads": [0, 1, 0, 0, 0, 0, 0, 0]}, O.BLOCKER),
    ("Slice", {"starts": [1], "ends": [3], "axes": [3]}, O.TRANSPARENT),
    ("Slice", {"starts": [1], "ends": [3], "axes": [1]}, O.BLOCKER),
])
def test_channel_behaviour(op, attrs, behaviour):
    b, g = _graph()
    y = b.op(op, b.input, **attrs)
    assert O.get_op(op).channel(y.producer) == behaviour


def test_prelu_and_instance_norm_shapes_and_behaviour():
    b, g = _graph()
    per = g.add_node("PRelu", [b.input, g.add_const(np.ones((4, 1, 1), np.float32), "s1")]).output
    one = g.add_node("PRelu", [b.input, g.add_const(np.ones(1, np.float32), "s2")]).output
    full = g.add_node("PRelu", [b.input, g.add_const(np.ones((4, 6, 7), np.float32), "s3")]).output
    assert per.shape == one.shape == full.shape == ("N", 4, 6, 7)
    assert [O.get_op("PRelu").channel(v.producer) for v in (per, one, full)] == [
        O.PER_CHANNEL, O.PER_CHANNEL, O.BLOCKER]
    with pytest.raises(ShapeError, match="must broadcast"):
        g.add_node("PRelu", [b.input, g.add_const(np.ones((4, 1), np.float32), "s4")])
    sc, bi = g.add_const(np.ones(4, np.float32), "sc"), g.add_const(np.zeros(4, np.float32), "bi")
    y = g.add_node("InstanceNormalization", [b.input, sc, bi]).output
    assert y.shape == ("N", 4, 6, 7) and y.producer.attrs == {"epsilon": 1e-5}
    assert O.get_op("InstanceNormalization").channel(y.producer) == O.PER_CHANNEL
    with pytest.raises(ShapeError, match="one per channel"):
        g.add_node("InstanceNormalization", [b.input, g.add_const(np.ones(3, np.float32), "sc3"), bi])
    # parameters: the slope and the normalisation's scale and bias count
    assert O.count_params(per.producer) == 4 and O.count_params(y.producer) == 8


def test_sign_behaviour():
    b, g = _graph()
    r = b.relu(b.input, name="r")
    vals = {
        "hsig": b.op("HardSigmoid", b.input, name="hsig"),       # [0, 1] always
        "hsw_x": b.op("HardSwish", b.input, name="hsw_x"),      # negative for -3 < x < 0
        "hsw_r": b.op("HardSwish", r, name="hsw_r"),            # of a non-negative value: non-negative
        "elu_r": b.op("Elu", r, name="elu_r"),
        "elu_x": b.op("Elu", b.input, name="elu_x"),
        "gmp_r": b.op("GlobalMaxPool", r, name="gmp_r"),
        "ls": b.op("LogSoftmax", r, name="ls", axis=1),          # log of a probability: <= 0
        "pad0": b.op("Pad", r, name="pad0", pads=[0, 0, 1, 1, 0, 0, 1, 1]),
        "padneg": b.op("Pad", r, name="padneg", pads=[0, 0, 1, 1, 0, 0, 1, 1], value=-1.0),
        "padrefl": b.op("Pad", r, name="padrefl", pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"),
        "sl": b.op("Slice", r, name="sl", starts=[1], ends=[3], axes=[2]),
    }
    for v in vals.values():
        g.add_output(v)
    nn_ = nonneg_values(g)
    want = {"hsig": True, "hsw_x": False, "hsw_r": True, "elu_r": True, "elu_x": False, "gmp_r": True,
            "ls": False, "pad0": True, "padneg": False, "padrefl": True, "sl": True}
    assert {k: nn_[k] for k in want} == want
    # the claims hold numerically on random inputs (onnxruntime)
    from nashir.backends.onnx import run

    x = np.random.default_rng(0).normal(size=(3, 4, 6, 7)).astype(np.float32) * 4
    outs = dict(zip([v.name for v in g.outputs], run(g, x)))
    for k, ok in want.items():
        if ok:
            assert outs[k].min() >= 0, k
        else:
            assert outs[k].min() < 0, k
