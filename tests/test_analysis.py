"""The channel-flow and sign analyses (DESIGN.md section 5), one behaviour of the table at a time."""

from __future__ import annotations

import numpy as np
import pytest
from test_passes_nets import concat_net, plain_net, residual_net

from nashir import GraphBuilder
from nashir.passes import channel_flow, is_layer_output, is_nonneg, layer_outputs, nonneg_values


def _head(b: GraphBuilder, h):
    """conv absorber 'abs' then GAP, flatten, gemm -> output (so the flow ends in an absorber)."""
    h = b.conv(h, 3, name="abs", kernel=1)
    return b.build(b.gemm(b.flatten(b.global_avgpool(h)), 2, name="fc"))


def _src(shape=(3, 6, 6), c=4, seed=0):
    b = GraphBuilder("t", shape, seed=seed)
    return b, b.conv(b.input, c, name="src")


def _names(flow):
    return {
        "producers": [p.name for p in flow.producers],
        "carried": [(c.value.name, c.offset, c.block) for c in flow.carried],
        "absorbers": [(a.node.name, a.input, a.offset, a.block) for a in flow.absorbers],
        "per_channel": [(a.node.name, a.input, a.axis, a.offset, a.block) for a in flow.per_channel],
    }


# ---------------------------------------------------------------------------------------------- transparent


@pytest.mark.parametrize("op,attrs", [
    ("Relu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Sigmoid", {}), ("Tanh", {}), ("Identity", {}),
    ("Dropout", {}),
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}),
    ("Elu", {"alpha": 0.5}), ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {}),
    ("GlobalMaxPool", {}), ("Pad", {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "mode": "reflect"}),
    ("Slice", {"starts": [1], "ends": [5], "axes": [3], "steps": [2]}),
])
def test_transparent_ops_are_followed(op, attrs):
    b, h = _src()
    h = b.op(op, h, name="t", **attrs)
    g = _head(b, h)
    f = channel_flow(g, "src")
    assert f.ok, f.reason
    n = _names(f)
    assert n["producers"] == ["src"]
    assert n["carried"] == [("src", 0, 1), ("t", 0, 1)]
    assert n["absorbers"] == [("abs", 0, 0, 1)]
    assert n["per_channel"] == []


def test_global_average_pool_then_flatten_has_block_one():
    b, h = _src()
    h = b.flatten(b.global_avgpool(h, name="gap"), name="fl")
    g = b.build(b.gemm(h, 2, name="fc"))
    f = channel_flow(g, "src")
    assert f.ok
    assert _names(f)["absorbers"] == [("fc", 0, 0, 1)]
    assert ("fl", 0, 1) in _names(f)["carried"]


def test_clip_is_transparent_and_its_bounds_are_not_channels():
    b, h = _src()
    lo = b.graph.add_const(np.array(0.0, np.float32), "lo")
    hi = b.graph.add_const(np.array(6.0, np.float32), "hi")
    h = b.graph.add_node("Clip", [h, lo, hi], name="clip").output
    f = channel_flow(_head(b, h), "src")
    assert f.ok and _names(f)["absorbers"] == [("abs", 0, 0, 1)]


# ---------------------------------------------------------------------------------------------- per-channel


def test_batchnorm_is_per_channel_with_four_arrays():
    b, h = _src()
    h = b.bn(h, random_stats=True, name="bn")
    f = channel_flow(_head(b, h), "src")
    assert f.ok
    assert _names(f)["per_channel"] == [("bn", i, 0, 0, 1) for i in (1, 2, 3, 4)]


@pytest.mark.parametrize("op", ["Mul", "Add"])
@pytest.mark.parametrize("cshape,axis", [((4, 1, 1), 0), ((1, 4, 1, 1), 1), ((1,), None), ((), None)])
def test_per_channel_constant(op, cshape, axis):
    b, h = _src()
    c = b.graph.add_const(np.full(cshape, 0.5, np.float32), "k")
    h = b.graph.add_node(op, [h, c], name="pc").output
    f = channel_flow(_head(b, h), "src")
    assert f.ok, f.reason
    assert _names(f)["per_channel"] == [("pc", 1, axis, 0, 1)]


@pytest.mark.parametrize("cshape,axis", [((4, 1, 1), 0), ((1,), None)])
def test_prelu_slope_is_per_channel(cshape, axis):
    b, h = _src()
    c = b.graph.add_const(np.full(cshape, 0.25, np.float32), "slope")
    h = b.graph.add_node("PRelu", [h, c], name="pr").output
    f = channel_flow(_head(b, h), "src")
    assert f.ok, f.reason
    assert _names(f)["per_channel"] == [("pr", 1, axis, 0, 1)]


def test_instance_normalization_is_per_channel_with_two_arrays():
    b, h = _src()
    sc, bi = (b.graph.add_const(np.ones(4, np.float32), k) for k in ("s", "bb"))
    h = b.graph.add_node("InstanceNormalization", [h, sc, bi], name="inorm").output
    f = channel_flow(_head(b, h), "src")
    assert f.ok, f.reason
    assert _names(f)["per_channel"] == [("inorm", 1, 0, 0, 1), ("inorm", 2, 0, 0, 1)]


def test_per_channel_constant_on_the_left():
    b, h = _src()
    c = b.graph.add_const(np.full((4, 1, 1), 2.0, np.float32), "k")
    h = b.graph.add_node("Mul", [c, h], name="pc").output
    f = channel_flow(_head(b, h), "src")
    assert f.ok and _names(f)["per_channel"] == [("pc", 0, 0, 0, 1)]


def test_depthwise_conv_is_per_channel():
    b, h = _src()
    h = b.conv(h, 4, group=4, name="dw")
    f = channel_flow(_head(b, h), "src")
    assert f.ok, f.reason
    assert _names(f)["per_channel"] == [("dw", 1, 0, 0, 1), ("dw", 2, 0, 0, 1)]
    assert _names(f)["absorbers"] == [("abs", 0, 0, 1)]


# ---------------------------------------------------------------------------------------------- absorbers


def test_conv_and_gemm_absorb_every_consumer():
    b, h = _src()
    h = b.relu(h, name="r")
    x1 = b.conv(h, 2, name="k1", kernel=1)
    x2 = b.conv(h, 2, name="k2", kernel=3)
    s = b.add(x1, x2, name="sum")
    g = b.build(b.gemm(b.flatten(b.global_avgpool(s)), 2, name="fc"))
    f = channel_flow(g, "src")
    assert f.ok
    assert sorted(_names(f)["absorbers"]) == [("k1", 0, 0, 1), ("k2", 0, 0, 1)]


def test_gemm_producer_into_gemm_absorber():
    b = GraphBuilder("flat", (6,), seed=0)
    h = b.relu(b.gemm(b.input, 5, name="g1"), name="r")
    g = b.build(b.gemm(h, 3, name="g2"))
    f = channel_flow(g, "g1")
    assert f.ok and _names(f)["absorbers"] == [("g2", 0, 0, 1)]


# ------------------------------------------------------------------------------------------ flatten, concat


def test_flatten_of_a_2x2_map_gives_blocks_of_four():
    b, h = _src(shape=(3, 4, 4))
    h = b.maxpool(b.relu(h), 2)  # 4 x 2 x 2
    g = b.build(b.gemm(b.flatten(h, name="fl"), 3, name="fc"))
    f = channel_flow(g, "src")
    assert f.ok
    assert ("fl", 0, 4) in _names(f)["carried"]
    assert _names(f)["absorbers"] == [("fc", 0, 0, 4)]


def test_concat_gives_offsets():
    g = concat_net()
    f = channel_flow(g, "q")  # q: 5 channels at offset 3 in cat, offset 0 in cat2
    assert f.ok, f.reason
    n = _names(f)
    assert ("cat", 3, 1) in n["carried"] and ("cat2", 0, 1) in n["carried"]
    assert sorted(n["absorbers"]) == [("after", 0, 3, 1), ("after2", 0, 0, 1)]
    f2 = channel_flow(g, "after")  # after: 4 channels at offset 5 of cat2
    assert ("cat2", 5, 1) in _names(f2)["carried"]
    assert _names(f2)["absorbers"] == [("after2", 0, 5, 1)]


def test_concat_of_flattened_values_shifts_by_blocks():
    b, h = _src(shape=(3, 2, 2))
    other = b.flatten(b.conv(b.input, 2, name="o"), name="fo")  # 2*4 = 8 features
    mine = b.flatten(b.relu(h), name="fm")  # 4*4 = 16 features
    cat = b.concat([other, mine], name="cat")
    g = b.build(b.gemm(cat, 3, name="fc"))
    f = channel_flow(g, "src")
    assert f.ok
    assert ("cat", 8, 4) in _names(f)["carried"]
    assert _names(f)["absorbers"] == [("fc", 0, 8, 4)]


# ---------------------------------------------------------------------------------------------- couplers


def test_two_convs_coupled_by_an_add():
    b = GraphBuilder("cpl", (3, 5, 5), seed=0)
    x = b.conv(b.input, 4, name="x")
    y = b.conv(b.input, 4, name="y")
    s = b.relu(b.add(x, y, name="sum"), name="r")
    g = _head(b, s)
    for start in ("x", "y"):
        f = channel_flow(g, start)
        assert f.ok
        assert [p.name for p in f.producers] == [start, "y" if start == "x" else "x"]
        assert _names(f)["absorbers"] == [("abs", 0, 0, 1)]


def test_residual_stream_couples_stem_and_block_output():
    g = residual_net()
    f = channel_flow(g, "b")
    assert f.ok, f.reason
    assert [p.name for p in f.producers] == ["b", "s"]
    n = _names(f)
    assert sorted(a[0] for a in n["absorbers"]) == ["a", "fc"]
    assert {a[0] for a in n["per_channel"]} == {"bn_s", "bn_b"}
    # conv a is inside the block: not coupled, its output feeds b only
    fa = channel_flow(g, "a")
    assert [p.name for p in fa.producers] == ["a"] and _names(fa)["absorbers"] == [("b", 0, 0, 1)]


def test_a_producer_coupled_twice_is_found_in_one_group():
    """b feeds two sums on the same stream: the second sum must not be refused while b is only
    pending (found at the first sum, not yet swept)."""
    b = GraphBuilder("twice", (3, 5, 5), seed=0)
    a = b.conv(b.input, 4, name="a")
    c = b.conv(b.input, 4, name="b")
    s2 = b.add(b.relu(b.add(a, c, name="s1")), c, name="s2")
    g = _head(b, s2)
    for start in ("a", "b"):
        f = channel_flow(g, start)
        assert f.ok, f.reason
        assert sorted(p.name for p in f.producers) == ["a", "b"]


def test_coupling_with_a_graph_input_is_not_applicable():
    b = GraphBuilder("inp", (4, 5, 5), seed=0)
    x = b.conv(b.input, 4, name="x")
    s = b.add(x, b.input, name="sum")
    f = channel_flow(_head(b, s), "x")
    assert not f.ok and "graph input" in f.reason and "'input'" in f.reason


def test_value_flow_without_coupling_stops_at_a_residual_sum():
    g = residual_net()
    f = channel_flow(g, g.value("r0"), couple=False)
    assert not f.ok and "'sum'" in f.reason and "residual" in f.reason


# ---------------------------------------------------------------------------------------------- blockers


def _blocked(build):
    b, h = _src()
    g = build(b, h)
    f = channel_flow(g, "src")
    assert not f.ok
    return f.reason


def test_reshape_blocks():
    def build(b, h):
        shp = b.graph.add_const(np.array([0, -1], np.int64), "shp")
        r = b.graph.add_node("Reshape", [h, shp], name="rs").output
        return b.build(b.gemm(r, 2))
    assert "'rs' (Reshape)" in _blocked(build)


def test_transpose_blocks():
    def build(b, h):
        t = b.op("Transpose", h, name="tp", perm=[0, 1, 3, 2])
        return _head(b, t)
    assert "'tp' (Transpose)" in _blocked(build)


def test_softmax_blocks():
    def build(b, h):
        return _head(b, b.op("Softmax", h, name="sm", axis=1))
    assert "'sm' (Softmax)" in _blocked(build)


def test_lrn_blocks():
    def build(b, h):
        return _head(b, b.op("LRN", h, name="lrn", size=3))
    assert "'lrn' (LRN)" in _blocked(build)


def test_grouped_conv_is_an_absorber_that_sets_the_groups():
    b, h = _src(c=4)
    g = _head(b, b.conv(h, 6, group=2, name="gc"))
    f = channel_flow(g, "src")
    assert f.ok, f.reason
    assert _names(f)["absorbers"] == [("gc", 0, 0, 1)] and f.groups == 2
    # as a producer, its own groups count
    f = channel_flow(g, "gc")
    assert f.ok and f.groups == 2 and _names(f)["absorbers"] == [("abs", 0, 0, 1)]


def test_grouped_conv_reading_part_of_a_concat_blocks():
    def build(b, h):
        other = b.conv(b.input, 2, name="o")
        return _head(b, b.conv(b.concat([other, h], name="cat"), 6, group=3, name="gc"))
    r = _blocked(build)
    assert "'gc'" in r and "group=3" in r and "exactly the widened channels" in r


def test_mul_gate_couples_the_gate_producer():
    """Squeeze-and-excitation: x * sigmoid(conv(gap(x))): the gate's producer joins the group."""
    b, h = _src()
    gate = b.op("Sigmoid", b.conv(b.global_avgpool(h), 4, kernel=1, name="exc"), name="sg")
    g = _head(b, b.graph.add_node("Mul", [h, gate], name="m").output)
    f = channel_flow(g, "src")
    assert f.ok, f.reason
    n = _names(f)
    assert n["producers"] == ["src", "exc"]
    assert ("m", 0, 1) in n["carried"] and ("sg", 0, 1) in n["carried"]


def test_mul_of_two_data_tensors_that_broadcast_over_channels_blocks():
    def build(b, h):
        other = b.conv(b.input, 1, name="o")
        return _head(b, b.graph.add_node("Mul", [h, other], name="m").output)
    assert "'m' (Mul)" in _blocked(build)


def test_silu_without_coupling_is_followed():
    """x * sigmoid(x): both operands carry the same channels, also with couple=False."""
    b, h = _src()
    m = b.graph.add_node("Mul", [h, b.op("Sigmoid", h, name="sg")], name="m").output
    g = _head(b, m)
    f = channel_flow(g, g.value("src"), couple=False)
    assert f.ok, f.reason and ("m", 0, 1) in _names(f)["carried"]


@pytest.mark.parametrize("op,attrs", [
    ("Pad", {"pads": [0, 1, 0, 0, 0, 0, 0, 0]}), ("Slice", {"starts": [0], "ends": [2], "axes": [1]}),
])
def test_pad_or_slice_of_the_channel_axis_blocks(op, attrs):
    def build(b, h):
        return _head(b, b.op(op, h, name="ps", **attrs))
    assert f"'ps' ({op})" in _blocked(build)


def test_concat_on_another_axis_blocks():
    def build(b, h):
        return _head(b, b.concat([h, h], axis=2, name="c2"))
    assert "axis 2" in _blocked(build)


def test_path_to_a_graph_output_is_not_applicable():
    b, h = _src()
    g = b.build(b.relu(h, name="out"))
    f = channel_flow(g, "src")
    assert not f.ok and "'out' is a graph output" in f.reason


def test_non_producers_are_not_applicable():
    g = plain_net()
    assert "Relu" in channel_flow(g, "r1").reason
    b = GraphBuilder("g", (4, 5, 5), seed=0)
    h = b.conv(b.input, 4, group=4, name="dw")
    f = channel_flow(_head(b, h), "dw")   # a depthwise conv as producer: widened within its groups
    assert f.ok and f.groups == 4


def test_summary_is_json_serialisable():
    import json

    f = channel_flow(residual_net(), "b")
    d = json.loads(json.dumps(f.summary()))
    assert d["producers"] == ["b", "s"] and d["reason"] is None


# ---------------------------------------------------------------------------------------------- sign


def test_sign_analysis():
    b = GraphBuilder("s", (3, 4, 4), seed=0)
    c = b.conv(b.input, 4, name="c")
    r = b.relu(c, name="r")
    mp = b.maxpool(r, 2, name="mp")
    bn = b.bn(r, name="bn")
    sg = b.op("Sigmoid", c, name="sg")
    lk = b.op("LeakyRelu", r, name="lk")
    cat_ok = b.concat([r, b.relu(c, name="r2")], name="cat_ok")
    cat_bad = b.concat([r, c], name="cat_bad")
    add_ok = b.add(r, sg, name="add_ok")
    add_bad = b.add(r, c, name="add_bad")
    lo = b.graph.add_const(np.array(0.0, np.float32), "lo")
    cl = b.graph.add_node("Clip", [c, lo], name="cl").output
    for v in (mp, bn, lk, cat_ok, cat_bad, add_ok, add_bad, cl):
        b.graph.add_output(v)
    g = b.build()
    nn = nonneg_values(g)
    assert nn["input"] is False and nn["c"] is False and nn["r"] is True and nn["mp"] is True
    assert nn["bn"] is False and nn["sg"] is True and nn["lk"] is False
    assert nn["cat_ok"] is True and nn["cat_bad"] is False
    assert nn["add_ok"] is True and nn["add_bad"] is False and nn["cl"] is True
    assert is_nonneg(g, "r") and not is_nonneg(g, "bn")


def test_layer_outputs():
    g = plain_net()
    assert [v.name for v in layer_outputs(g)] == ["r1", "r2", "r3", "flat"]
    assert not is_layer_output(g.value("c1")) and not is_layer_output(g.value("bn1"))
    r = residual_net()
    names = [v.name for v in layer_outputs(r)]
    # bn_b feeds the residual sum (not an element-wise op of its layer); sum only feeds its relu
    assert names == ["r0", "ra", "bn_b", "r2", "gap", "flat"]
