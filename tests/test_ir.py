"""The graph IR: mutators, use lists, failure atomicity, clone, naming, order, queries, counts, text form.

Failing mutators are checked for two things: the error is a :class:`NashirError` subclass whose
message names the node and the expected form, and the graph is exactly as before (its text form,
its lists and every use list, compared object by object).
"""

from __future__ import annotations

import os
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nashir import Graph, GraphBuilder, GraphError, NashirError, Node, OpError, ShapeError, Value
from nashir import ops as O

GOLDEN = Path(__file__).parent / "golden"
SETTINGS = dict(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------------
# helpers


def check_sync(g: Graph) -> None:
    """Use lists recomputed from scratch equal the stored ones (independent of ``verify``)."""
    expected: dict[int, list] = {id(v): [] for v in g.values.values()}
    for n in g.nodes:
        for i, v in enumerate(n.inputs):
            if v is not None:
                assert g.values[v.name] is v, f"{n.name} reads a foreign value {v.name}"
                expected[id(v)].append((n.name, i))
        for o in n.outputs:
            assert o.producer is n
            assert g.values[o.name] is o
    for v in g.values.values():
        assert sorted((u.name, i) for u, i in v.uses) == sorted(expected[id(v)]), v.name
        if v.producer is not None:
            assert any(o is v for o in v.producer.outputs)
    pos = {id(n): k for k, n in enumerate(g.nodes)}
    for n in g.nodes:  # topological
        for v in n.inputs:
            if v is not None and v.producer is not None:
                assert pos[id(v.producer)] < pos[id(n)], f"{v.producer.name} after {n.name}"
    g.verify()


def snapshot(g: Graph):
    """Everything a mutator could touch, by object identity."""
    return (
        str(g),
        [id(n) for n in g.nodes],
        [id(v) for v in g.inputs],
        [id(v) for v in g.outputs],
        {k: (id(v), v.shape, v.dtype, id(v.const), [(id(u), i) for u, i in v.uses], id(v.producer))
         for k, v in g.values.items()},
        {n.name: (id(n), dict(n.attrs), [id(v) for v in n.inputs], [id(o) for o in n.outputs])
         for n in g.nodes},
        {k: id(n) for k, n in g._node_names.items()},
    )


def small_net(seed: int = 0) -> Graph:
    b = GraphBuilder("small", input_shape=(3, 8, 8), seed=seed)
    h = b.conv(b.input, 4, name="conv1")
    h = b.bn(h, name="bn1")
    h = b.relu(h, name="relu1")
    h = b.conv(h, 4, name="conv2")
    h = b.relu(h, name="relu2")
    h = b.maxpool(h, 2, name="pool")
    h = b.flatten(h, name="flat")
    h = b.gemm(h, 5, name="fc")
    return b.build(h)


def residual_net(seed: int = 0) -> Graph:
    b = GraphBuilder("res", input_shape=(3, 8, 8), seed=seed)
    h = b.conv_bn_relu(b.input, 4)
    a = b.conv(h, 4, kernel=1)
    c = b.conv(h, 4, kernel=3)
    s = b.add(a, c)
    m = b.concat([s, h])
    return b.build(b.gemm(b.flatten(b.global_avgpool(m)), 3))


def expect_unchanged(g, exc_type, fn, *names):
    """Run a failing mutator: it raises ``exc_type`` naming each of ``names``; the graph is intact."""
    before = snapshot(g)
    with pytest.raises(exc_type) as ei:
        fn()
    assert isinstance(ei.value, NashirError)
    for nm in names:
        assert nm in str(ei.value), (nm, str(ei.value))
    assert snapshot(g) == before
    check_sync(g)
    return ei.value


# --------------------------------------------------------------------------------------------------
# successful mutators keep use lists in sync


def test_builder_graph_is_in_sync():
    check_sync(small_net())
    check_sync(residual_net())


def test_add_node_appends_uses_and_places_at_the_end_or_index():
    g = small_net()
    conv1 = g.value("conv1")
    n = g.add_node("Relu", [conv1], name="side")
    assert g.nodes[-1] is n
    assert (n, 0) in conv1.uses and n.output.producer is n and n.output.name == "side"
    m = g.add_node("Identity", [conv1], name="early", index=1)  # right after conv1
    assert g.nodes[1] is m
    check_sync(g)


def test_add_node_same_value_twice():
    g = Graph("twice")
    x = g.add_input("x", (1, 2))
    n = g.add_node("Add", [x, x], name="dbl")
    assert x.uses == [(n, 0), (n, 1)]
    g.add_output(n.output)
    check_sync(g)
    g.remove_node(g.add_node("Relu", [n.output]))
    assert x.uses == [(n, 0), (n, 1)] and len(n.output.uses) == 0
    check_sync(g)


def test_insert_after_rewires_consumers_and_outputs():
    g = small_net()
    relu1 = g.value("relu1")
    consumers = relu1.consumers()
    n = g.insert_after(relu1, "Identity", name="ident")
    assert relu1.consumers() == [n]
    assert [u for u, _ in n.output.uses] == consumers
    check_sync(g)
    out = g.outputs[0]
    m = g.insert_after(out, "Relu", name="final_relu")
    assert g.outputs == [m.output]
    check_sync(g)


def test_insert_after_with_extra_input_reorders_topologically():
    # x -> a -> b -> out; y (independent) is computed after b; insert Add(a, y) after a
    g = Graph("order")
    x = g.add_input("x", ("N", 2))
    a = g.add_node("Relu", [x], name="a")
    b = g.add_node("Relu", [a.output], name="b")
    y = g.add_node("Sigmoid", [x], name="y")
    g.add_output(b.output)
    g.add_output(y.output)
    add = g.insert_after(a.output, "Add", [y.output], name="mix")
    assert b.inputs[0] is add.output
    check_sync(g)
    names = [n.name for n in g.nodes]
    assert names.index("y") < names.index("mix") < names.index("b")


def test_set_input_rewires_one_use():
    g = residual_net()
    add = g.find_node("add_0")
    a, c = add.inputs
    g.set_input(add, 1, a)
    assert add.inputs == [a, a] and (add, 1) in a.uses and all(u is not add for u, _ in c.uses)
    check_sync(g)


def test_replace_all_uses_with_exclude_and_outputs():
    g = Graph("rauw")
    x = g.add_input("x", ("N", 3))
    a = g.add_node("Relu", [x], name="a")
    b = g.add_node("Sigmoid", [a.output], name="b")
    c = g.add_node("Tanh", [a.output], name="c")
    g.add_output(a.output)
    new = g.add_node("Identity", [x], name="new")
    g.replace_all_uses_with(a.output, new.output, exclude=[c])
    assert b.inputs[0] is new.output and c.inputs[0] is a.output
    assert g.outputs == [new.output]
    check_sync(g)
    g.replace_all_uses_with(new.output, a.output, outputs=False)
    assert g.outputs == [new.output] and b.inputs[0] is a.output
    check_sync(g)


def test_remove_node_with_replacement_and_constant_cleanup():
    g = small_net()
    g.remove_node("bn1", replacement="conv1")
    assert "bn1" not in [n.name for n in g.nodes]
    assert not any(k.startswith("bn1.") for k in g.values)  # its now-unused constants went too
    assert g.node("relu1").inputs[0] is g.value("conv1")
    check_sync(g)
    g.remove_node(g.node("relu2"), replacement=g.value("conv2"))
    assert g.node("pool").inputs == [g.value("conv2")] and "relu2" not in g.values
    g.add_node("Identity", ["fc"], name="last")
    g.remove_node("last")
    fc2 = g.add_node("Gemm", ["flat", g.add_const(_w(5, 64), "fc2.w")], {"transB": 1}, name="fc2")
    g.remove_node("fc", replacement=fc2.output)  # a graph output: the replacement takes its place
    assert g.outputs == [fc2.output] and "fc.weight" not in g.values and "fc.bias" not in g.values
    check_sync(g)


def test_remove_unused_node_and_prune():
    g = small_net()
    side = g.add_node("Relu", ["conv1"], name="side")
    g.add_node("Sigmoid", [side.output], name="side2")
    g.remove_node("side2")
    assert "side2" not in g.values
    g.add_node("Gemm", ["flat", g.add_const(np.zeros((2, 64), np.float32), "dead.w")], {"transB": 1},
               name="dead")
    g.prune()
    assert [n.name for n in g.nodes] == ["conv1", "bn1", "relu1", "conv2", "relu2", "pool", "flat", "fc"]
    assert "dead.w" not in g.values and "side" not in g.values
    check_sync(g)


def test_set_const_then_infer_shapes_widens():
    g = small_net()
    # widen conv2 from 4 to 6 output channels: weight, bias, then the Gemm that absorbs them
    g.set_const("conv2.weight", np.zeros((6, 4, 3, 3), np.float32))
    g.set_const("conv2.bias", np.zeros(6, np.float32))
    g.set_const("fc.weight", np.zeros((5, 6 * 4 * 4), np.float32))
    g.infer_shapes()
    assert g.value("conv2").shape == ("N", 6, 8, 8)
    assert g.value("flat").shape == ("N", 96)
    check_sync(g)


def test_set_attr_validated_and_infer_shapes():
    g = small_net()
    pool = g.node("pool")
    g.set_attr(pool, "strides", [1, 1])
    assert pool.attrs["strides"] == [1, 1]
    g.set_const("fc.weight", np.zeros((5, 4 * 7 * 7), np.float32))
    g.infer_shapes()
    assert g.value("pool").shape == ("N", 4, 7, 7)
    check_sync(g)
    g.set_attr(pool, "ceil_mode", None)  # back to the default
    assert pool.attrs["ceil_mode"] == 0


def test_infer_shapes_is_all_or_nothing():
    g = small_net()
    g.set_const("conv2.weight", np.zeros((6, 4, 3, 3), np.float32))  # bias and fc no longer fit
    shapes = {k: v.shape for k, v in g.values.items() if not v.is_const}
    with pytest.raises(ShapeError, match="'conv2'.*bias"):
        g.infer_shapes()
    assert {k: v.shape for k, v in g.values.items() if not v.is_const} == shapes


# --------------------------------------------------------------------------------------------------
# failing mutators: a NashirError naming the node and the expected form; the graph unchanged


def _w(*shape):
    return np.zeros(shape, np.float32)


def test_add_node_wrong_arity():
    g = small_net()
    x = g.value("relu1")
    expect_unchanged(g, OpError, lambda: g.add_node("Relu", [x, x], name="r"), "'r'", "Relu",
                     "expects 1 inputs, got 2")
    expect_unchanged(g, OpError, lambda: g.add_node("Conv", [x], name="c"), "'c'", "expects 2 to 3 inputs")
    expect_unchanged(g, OpError, lambda: g.add_node("BatchNormalization", [x], name="bn"), "'bn'",
                     "expects 5 inputs, got 1")


@pytest.mark.parametrize(
    "op, attrs, exc, pieces",
    [
        ("MaxPool", {"kernel_shape": [2, 2], "bogus": 1}, OpError,
         ["unknown attribute 'bogus'", "MaxPool takes"]),
        ("MaxPool", {}, OpError, ["required attribute 'kernel_shape'"]),
        ("MaxPool", {"kernel_shape": "2"}, OpError, ["kernel_shape='2'", "kind ints"]),
        ("MaxPool", {"kernel_shape": [2.5, 2]}, OpError, ["kind ints"]),
        ("MaxPool", {"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER"}, OpError, ["explicit pads"]),
        ("MaxPool", {"kernel_shape": [2, 2], "strides": [0, 1]}, ShapeError, ["must be >= 1"]),
        ("MaxPool", {"kernel_shape": [2, 2], "pads": [1, 1]}, ShapeError, ["pads needs 4 values"]),
        ("Flatten", {"axis": 1.5}, OpError, ["axis=1.5", "kind int"]),
        ("LeakyRelu", {"alpha": "x"}, OpError, ["alpha='x'", "kind float"]),
        ("Concat", {}, OpError, ["required attribute 'axis'"]),
    ],
)
def test_add_node_bad_attribute(op, attrs, exc, pieces):
    g = small_net()
    x = g.value("relu1")
    expect_unchanged(g, exc, lambda: g.add_node(op, [x], attrs, name="bad"), "'bad'", *pieces)


def test_gemm_attributes_must_be_normal_form():
    g = small_net()
    f = g.value("flat")
    w = g.add_const(_w(3, 64), "w")
    expect_unchanged(g, OpError, lambda: g.add_node("Gemm", [f, w], name="g1"), "'g1'", "transB=1",
                     "W [out, in]")
    expect_unchanged(g, OpError, lambda: g.add_node("Gemm", [f, w], {"transB": 1, "alpha": 2.0}, name="g2"),
                     "'g2'", "alpha=1")


@pytest.mark.parametrize(
    "op, make, pieces",
    [
        ("Conv", lambda g, x: [x, g.add_const(_w(6, 3, 3, 3), "w")],
         ["weight OIHW [6,3,3,3]", "expects 3 input channels, the input has 4"]),
        ("Conv", lambda g, x: [x, g.add_const(_w(6, 4, 3), "w")], ["expected rank 4"]),
        ("Conv", lambda g, x: [x, g.add_const(_w(6, 4, 3, 3), "w"), g.add_const(_w(5), "b")],
         ["bias shape [5] must be [6]"]),
        ("Conv", lambda g, x: [x, g.add_const(_w(6, 4, 9, 9), "w")], ["does not fit an input of 8"]),
        ("BatchNormalization", lambda g, x: [x] + [g.add_const(_w(3), f"p{i}") for i in range(4)],
         ["scale has shape [3], expected [4]"]),
        ("Gemm", lambda g, x: [g.value("flat"), g.add_const(_w(5, 63), "w")], ["expects 63"]),
    ],
)
def test_add_node_weight_shape_does_not_fit(op, make, pieces):
    g = small_net()
    x = g.value("relu1")  # [N,4,8,8]
    ins = make(g, x)  # constants are created first; the failing add_node must not touch them
    attrs = {"transB": 1} if op == "Gemm" else {}
    expect_unchanged(g, ShapeError, lambda: g.add_node(op, ins, attrs, name="bad"), "'bad'", *pieces)


def test_add_node_parameter_must_be_constant():
    g = small_net()
    x = g.value("relu1")
    expect_unchanged(g, OpError, lambda: g.add_node("Conv", [x, g.value("relu2")], name="bad"), "'bad'",
                     "input 1 ('relu2') is a parameter", "add_const")


def test_add_node_unknown_op_names_the_node():
    g = small_net()
    expect_unchanged(g, OpError, lambda: g.add_node("Swish", ["relu1"], name="sw"), "'sw'", "'Swish'",
                     "supported:")


def test_add_node_foreign_and_unknown_values():
    g, other = small_net(), small_net()
    expect_unchanged(g, GraphError, lambda: g.add_node("Relu", [other.value("relu1")], name="r"),
                     "'relu1'", "does not belong to this graph", "node 'r'")
    expect_unchanged(g, GraphError, lambda: g.add_node("Relu", ["relu_1"], name="r"), "'relu_1'",
                     "did you mean", "'relu1'")
    expect_unchanged(g, GraphError, lambda: g.add_node("Relu", [42], name="r"), "node 'r'",
                     "expected a Value")


def test_add_node_taken_names_and_bad_index():
    g = small_net()
    expect_unchanged(g, GraphError, lambda: g.add_node("Relu", ["relu1"], name="conv1"), "'conv1'",
                     "already used")
    expect_unchanged(g, GraphError, lambda: g.add_node("Relu", ["relu1"], name="r", outputs=["conv2"]),
                     "'r'", "output name 'conv2' is already used")
    expect_unchanged(g, GraphError, lambda: g.add_node("Relu", ["relu1"], name="r", outputs=["a", "b"]),
                     "'r'", "1 output(s), 2 names given")
    expect_unchanged(g, GraphError, lambda: g.add_node("Relu", ["relu1"], name="r", index=0), "'r'",
                     "index 0", "must be in 3..")


def test_insert_after_shape_change_leaves_constants():
    g = small_net()
    w = g.add_const(_w(8, 4, 1, 1), "widen.w")  # would change [N,4,8,8] to [N,8,8,8]
    expect_unchanged(g, ShapeError, lambda: g.insert_after("relu1", "Conv", [w], name="widen"), "'widen'",
                     "'relu1'", "[N,4,8,8]", "[N,8,8,8]")
    assert g.values["widen.w"] is w


def test_insert_after_refuses_a_cycle():
    g = Graph("cyc")
    x = g.add_input("x", ("N", 2))
    a = g.add_node("Relu", [x], name="a")
    b = g.add_node("Sigmoid", [a.output], name="b")
    g.add_output(b.output)
    # Add(a, b) after a: b would read the new node, which reads b
    expect_unchanged(g, GraphError, lambda: g.insert_after(a.output, "Add", [b.output], name="mix"),
                     "'mix'", "'b'", "cycle")


def test_set_input_failures():
    g = small_net()
    relu1, conv2 = g.node("relu1"), g.node("conv2")
    expect_unchanged(g, GraphError, lambda: g.set_input(relu1, 0, "relu2"), "'relu1'", "'relu2'", "cycle")
    expect_unchanged(g, GraphError, lambda: g.set_input(relu1, 0, "relu1"), "'relu1'", "cycle")
    expect_unchanged(g, ShapeError, lambda: g.set_input(g.node("fc"), 0, "relu2"), "'fc'", "expected rank 2")
    expect_unchanged(g, ShapeError, lambda: g.set_input(g.node("relu2"), 0, "input"), "'relu2'", "[N,4,8,8]",
                     "[N,3,8,8]", "infer_shapes")
    expect_unchanged(g, OpError, lambda: g.set_input(conv2, 1, "relu1"), "'conv2'", "must be a constant")
    expect_unchanged(g, OpError, lambda: g.set_input(relu1, 3, "bn1"), "'relu1'", "expects 1 inputs")
    expect_unchanged(g, GraphError, lambda: g.set_input(relu1, -1, "bn1"), "'relu1'", "out of range")
    other = small_net()
    expect_unchanged(g, GraphError, lambda: g.set_input(other.node("relu1"), 0, "bn1"), "'relu1'",
                     "does not belong")


def test_replace_all_uses_with_failures():
    g = small_net()
    expect_unchanged(g, GraphError, lambda: g.replace_all_uses_with("relu1", "pool"), "'relu1'", "'pool'",
                     "different shapes")
    expect_unchanged(g, GraphError, lambda: g.replace_all_uses_with("relu1", "relu2"), "'conv2'", "'relu2'",
                     "cycle")
    expect_unchanged(g, GraphError, lambda: g.replace_all_uses_with("relu1", small_net().value("relu2")),
                     "'relu2'", "does not belong")


def test_remove_node_failures():
    g = small_net()
    expect_unchanged(g, GraphError, lambda: g.remove_node("relu1"), "'relu1'", "still used by conv2",
                     "replacement=")
    expect_unchanged(g, GraphError, lambda: g.remove_node("fc"), "'fc'", "graph output")
    expect_unchanged(g, GraphError, lambda: g.remove_node("relu9"), "'relu9'", "did you mean")
    expect_unchanged(g, GraphError, lambda: g.remove_node("relu1", replacement="relu1"), "'relu1'",
                     "own output")
    expect_unchanged(g, GraphError, lambda: g.remove_node("relu1", replacement="pool"), "different shapes")
    expect_unchanged(g, GraphError, lambda: g.remove_node("relu1", replacement="relu2"), "cycle")
    expect_unchanged(g, GraphError, lambda: g.remove_node(small_net().node("relu1")), "'relu1'",
                     "does not belong")


def test_set_const_and_set_attr_failures():
    g = small_net()
    expect_unchanged(g, GraphError, lambda: g.set_const("relu1", _w(1)), "'relu1'", "not a constant")
    expect_unchanged(g, GraphError, lambda: g.set_const("conv1.weight", np.array(["a"])), "'conv1.weight'",
                     "not supported")
    pool = g.node("pool")
    expect_unchanged(g, OpError, lambda: g.set_attr(pool, "bogus", 1), "'pool'", "unknown attribute")
    expect_unchanged(g, ShapeError, lambda: g.set_attr(pool, "kernel_shape", [9, 9]), "'pool'",
                     "does not fit")
    expect_unchanged(g, OpError, lambda: g.set_attr(g.node("conv1"), "auto_pad", "SAME_UPPER"), "'conv1'",
                     "explicit pads")


def test_add_input_output_const_failures():
    g = small_net()
    expect_unchanged(g, GraphError, lambda: g.add_input("input", (1, 3, 8, 8)), "'input'", "already used")
    expect_unchanged(g, GraphError, lambda: g.add_input("x2", (1, 3), dtype="complex64"), "'x2'",
                     "complex64")
    expect_unchanged(g, GraphError, lambda: g.add_output("nope"), "'nope'")
    expect_unchanged(g, GraphError, lambda: g.add_output(None), "None")
    expect_unchanged(g, GraphError, lambda: g.add_const(np.array([1 + 2j]), "cplx"), "'cplx'", "complex128")


# --------------------------------------------------------------------------------------------------
# random sequences of mutators: every step leaves a verified, in-sync graph or changes nothing


@settings(max_examples=40, **SETTINGS)
@given(st.data())
def test_random_mutation_sequences_stay_in_sync(data):
    g = residual_net(seed=data.draw(st.integers(0, 3), label="seed"))
    for _ in range(data.draw(st.integers(1, 12), label="steps")):
        data_vals = [v for v in g.values.values() if not v.is_const and v.shape is not None]
        nodes = list(g.nodes)
        kind = data.draw(st.sampled_from(["insert", "add", "set_input", "rauw", "remove", "bad_add"]))
        before = snapshot(g)
        try:
            if kind == "insert":
                v = data.draw(st.sampled_from(data_vals))
                g.insert_after(v, data.draw(st.sampled_from(["Relu", "Identity", "Sigmoid", "Dropout"])))
            elif kind == "add":
                a, b = data.draw(st.sampled_from(data_vals)), data.draw(st.sampled_from(data_vals))
                g.add_node("Add", [a, b])
            elif kind == "set_input":
                n = data.draw(st.sampled_from(nodes))
                g.set_input(n, 0, data.draw(st.sampled_from(data_vals)))
            elif kind == "rauw":
                a, b = data.draw(st.sampled_from(data_vals)), data.draw(st.sampled_from(data_vals))
                g.replace_all_uses_with(a, b)
            elif kind == "remove":
                n = data.draw(st.sampled_from(nodes))
                repl = data.draw(st.sampled_from([None, *n.inputs[:1]]))
                g.remove_node(n, replacement=repl)
            else:
                g.add_node("Conv", [data.draw(st.sampled_from(data_vals)), g.value(g.constants()[0].name)])
        except NashirError:
            assert snapshot(g) == before
        check_sync(g)


# --------------------------------------------------------------------------------------------------
# clone


def test_clone_is_deep():
    g = residual_net()
    g.meta["opset"] = 17
    g.nodes[1].meta["calibrate"] = "identity"
    c = g.clone()
    assert str(c) == str(g) and c.name == g.name and c.meta == g.meta
    check_sync(c)
    gids = {id(x) for x in [*g.nodes, *g.values.values()]}
    assert not gids & {id(x) for x in [*c.nodes, *c.values.values()]}
    for k, v in g.values.items():
        cv = c.values[k]
        if v.is_const:
            assert np.array_equal(cv.const, v.const) and not np.shares_memory(cv.const, v.const)
    for n, cn in zip(g.nodes, c.nodes):
        assert cn.attrs == n.attrs and cn.attrs is not n.attrs and cn.meta is not n.meta
        for key, val in n.attrs.items():
            if isinstance(val, list):
                assert cn.attrs[key] is not val
        assert all(x is not y for x, y in zip(cn.inputs, n.inputs))
    assert c.meta is not g.meta and c.nodes[1].meta == {"calibrate": "identity"}
    assert [id(v) for v in c.inputs] == [id(c.values[v.name]) for v in g.inputs]
    assert [id(v) for v in c.outputs] == [id(c.values[v.name]) for v in g.outputs]
    # editing the clone leaves the original alone
    text, w = str(g), g.constants()[0]
    saved = w.const.copy()
    c.values[w.name].const[...] = 7.0
    c.nodes[0].attrs["strides"][0] = 9
    c.insert_after(c.outputs[0], "Relu")
    c.nodes[1].meta["calibrate"] = "other"
    assert str(g) == text and np.array_equal(w.const, saved) and g.nodes[1].meta["calibrate"] == "identity"
    check_sync(g)


# --------------------------------------------------------------------------------------------------
# naming


def test_deterministic_naming():
    a, b = residual_net(seed=0), residual_net(seed=5)
    assert [n.name for n in a.nodes] == [n.name for n in b.nodes]
    assert [n.name for n in a.nodes][:5] == ["conv_0", "bn_0", "relu_0", "conv_1", "conv_2"]
    assert sorted(a.values) == sorted(b.values)
    g = Graph("names")
    x = g.add_input("x", (1, 2))
    assert g.auto_node_name("GlobalAveragePool") == "gap_0"
    assert g.auto_node_name("LeakyRelu") == "leaky_relu_0"
    assert g.auto_node_name("LRN") == "lrn_0"
    r0 = g.add_node("Relu", [x])
    r1 = g.add_node("Relu", [x])
    assert (r0.name, r1.name) == ("relu_0", "relu_1")
    g.remove_node(r0)
    assert g.add_node("Relu", [x]).name == "relu_0"  # first free index
    assert g.unique_value_name("x") == "x_1"
    assert g.unique_value_name("relu_1") == "relu_2"
    assert g.unique_value_name("fresh") == "fresh"
    c0 = g.add_const(_w(2), "k")
    c1 = g.add_const(_w(2), "k")
    assert (c0.name, c1.name) == ("k", "k_1")


def test_source_names_kept_and_targets_resolved():
    g = small_net()
    n = g.add_node("Relu", ["conv1"], name="my.relu", outputs=["my_out"])
    assert g.find_node("my.relu") is n and g.find_node("my_out") is n
    assert g.find_value("my.relu") is n.output and g.find_value("my_out") is n.output
    with pytest.raises(GraphError, match="did you mean.*'my.relu'"):
        g.find_node("my.rel")
    with pytest.raises(GraphError, match="no value or node named 'zzz'"):
        g.find_value("zzz")


# --------------------------------------------------------------------------------------------------
# order and graph queries


def test_toposort_is_stable():
    g = residual_net()
    order = [n.name for n in g.nodes]
    g.toposort()
    assert [n.name for n in g.nodes] == order  # already topological: unchanged
    g.nodes.reverse()
    g.toposort()
    check_sync(g)  # topological again
    # independent siblings keep their current (reversed) relative order
    names = [n.name for n in g.nodes]
    assert names.index("conv_2") < names.index("conv_1")
    assert names[:3] == ["conv_0", "bn_0", "relu_0"]


def test_set_input_keeps_topological_order():
    g = small_net()
    late = g.add_node("Identity", ["conv1"], name="late")  # appended at the end
    assert g.nodes[-1] is late
    g.set_input(g.node("relu1"), 0, late.output)  # relu1 now reads a node listed after it
    check_sync(g)


def test_toposort_reports_cycle():
    g = Graph("c")
    x = g.add_input("x", (1, 2))
    a = g.add_node("Relu", [x], name="a")
    b = g.add_node("Relu", [a.output], name="b")
    x.uses.remove((a, 0))
    a.inputs[0] = b.output
    b.output.uses.append((a, 0))
    with pytest.raises(GraphError, match=r"cycle through nodes \['a', 'b'\]"):
        g.toposort()


def test_networkx_view_and_is_ancestor():
    g = residual_net()
    dg = g.to_networkx()
    assert set(dg.nodes) == {n.name for n in g.nodes}
    assert nx.is_directed_acyclic_graph(dg)
    assert dg.nodes["conv_0"]["op_type"] == "Conv"
    assert dg.edges["conv_0", "bn_0"]["value"] == "conv_0"
    assert nx.ancestors(dg, "add_0") == {"conv_0", "bn_0", "relu_0", "conv_1", "conv_2"}
    assert list(nx.topological_sort(dg))[0] == "conv_0"
    paths = sorted(nx.all_simple_paths(dg, "relu_0", "concat_0"))
    assert paths == [["relu_0", "concat_0"], ["relu_0", "conv_1", "add_0", "concat_0"],
                     ["relu_0", "conv_2", "add_0", "concat_0"]]
    # is_ancestor agrees with reachability in the networkx view, for every pair of node outputs
    for a in g.nodes:
        for b in g.nodes:
            want = a is b or nx.has_path(dg, a.name, b.name)
            assert g.is_ancestor(a.output, b.output) == want, (a.name, b.name)
    assert g.is_ancestor("input", "add_0") and not g.is_ancestor("add_0", "input")
    assert g.is_ancestor("conv_1", "conv_1")
    assert not g.is_ancestor("conv_1", "conv_2")


# --------------------------------------------------------------------------------------------------
# parameter and MAC counts


def test_counts_by_hand():
    b = GraphBuilder("count", input_shape=(4, 10, 10), seed=0)
    h = b.conv(b.input, 6, kernel=3, stride=2, pads=[1, 0, 0, 0], group=2, name="c")  # -> [6,5,4]
    h = b.bn(h, name="bn")
    h = b.relu(h)
    h = b.maxpool(h, 2, stride=1, name="mp")  # -> [6,4,3]
    h = b.op("Mul", h, b.graph.add_const(np.ones((6, 1, 1), np.float32), "scale"), name="mul")
    s = b.op("Softmax", h, axis=1, name="sm")
    h = b.op("LRN", s, size=3, name="lrn")
    h = b.gemm(b.flatten(h), 7, name="fc")  # 72 -> 7
    g = b.build(h)
    per_node = {n.name: (O.count_params(n), O.count_macs(n)) for n in g.nodes}
    # Conv: weight 6*(4/2)*3*3 = 108, bias 6; MACs = out elems 6*5*4=120 times (4/2)*3*3=18 -> 2160
    assert per_node["c"] == (114, 2160)
    assert per_node["bn"] == (24, 120)  # scale, bias, mean, var: 4*6; one multiply per element
    assert per_node["mp"] == (0, 6 * 4 * 3 * 4)
    assert per_node["mul"] == (0, 72)  # Mul/Add constant operands are not parameters in the op table
    assert per_node["sm"] == (0, 3 * 72)
    assert per_node["lrn"] == (0, 72 * 3)
    assert per_node["fc"] == (7 * 72 + 7, 7 * 72)
    assert g.param_count() == 114 + 24 + 511
    assert g.mac_count() == 2160 + 120 + 288 + 72 + 216 + 216 + 504


def test_shared_constant_counts_once():
    g = Graph("share")
    x = g.add_input("x", (1, 4))
    w = g.add_const(_w(4, 4), "w")
    a = g.add_node("Gemm", [x, w], {"transB": 1})
    b = g.add_node("Gemm", [a.output, w], {"transB": 1})
    g.add_output(b.output)
    assert O.count_params(a) == O.count_params(b) == 16
    assert g.param_count() == 16
    assert g.mac_count() == 32


def test_counts_against_torch():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    b = GraphBuilder("t", input_shape=(3, 12, 12), seed=0, batch=2)
    h = b.conv(b.input, 8, kernel=3, stride=1, name="c1")
    h = b.bn(h)
    h = b.relu(h)
    h = b.conv(h, 8, kernel=3, stride=2, group=4, bias=False, name="c2")
    h = b.conv(h, 6, kernel=5, dilation=2, pads=[4, 4, 4, 4], name="c3")
    h = b.maxpool(h, 3, stride=2, ceil_mode=True)
    h = b.gemm(b.flatten(h), 10)
    g = b.build(h)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4, bias=False),
        nn.Conv2d(8, 6, 5, padding=4, dilation=2),
        nn.MaxPool2d(3, 2, ceil_mode=True), nn.Flatten(), nn.LazyLinear(10),
    )
    macs = []

    def hook(mod, inp, out):
        per_sample = out[0].numel()
        if isinstance(mod, nn.Conv2d):
            macs.append(per_sample * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1])
        elif isinstance(mod, nn.Linear):
            macs.append(mod.in_features * mod.out_features)
        elif isinstance(mod, nn.BatchNorm2d):
            macs.append(per_sample)
        elif isinstance(mod, nn.MaxPool2d):
            macs.append(per_sample * mod.kernel_size * mod.kernel_size)

    with torch.no_grad():
        model(torch.zeros(2, 3, 12, 12))  # materialise LazyLinear
        for m in model:
            m.register_forward_hook(hook)
        y = model(torch.zeros(2, 3, 12, 12))
    assert tuple(y.shape) == g.outputs[0].shape
    n_torch = sum(p.numel() for p in model.parameters())
    n_torch += sum(buf.numel() for name, buf in model.named_buffers() if "running" in name)
    assert g.param_count() == n_torch
    assert g.mac_count() == sum(macs)
    for n, m in zip([n for n in g.nodes if n.op_type in ("Conv", "Gemm")],
                    [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]):
        assert O.count_params(n) == sum(p.numel() for p in m.parameters()), n.name


def test_graph_repr_and_constants():
    g = small_net()
    assert repr(g) == f"<Graph small: {len(g.nodes)} nodes, {g.param_count()} params>"
    names = [v.name for v in g.constants()]
    assert names == sorted(names) and "conv1.weight" in names
    assert repr(g.value("conv1")) == "<value conv1: float32[N,4,8,8]>"
    assert repr(g.value("fc.weight")) == "<const fc.weight: float32[5,64]>"
    assert isinstance(g.node("fc"), Node) and isinstance(g.value("fc"), Value)


# --------------------------------------------------------------------------------------------------
# golden text forms


def golden_misc() -> Graph:
    b = GraphBuilder("misc", input_shape=(2, 6, 6), seed=0, batch=1)
    g = b.graph
    h = b.op("LeakyRelu", b.input, alpha=0.2)
    lo, hi = g.add_const(np.array(0.0, np.float32), "lo"), g.add_const(np.array(6.0, np.float32), "hi")
    h = b.op("Clip", h, lo, hi)
    h = b.avgpool(h, 3, stride=2, pads=1)
    h = b.op("Dropout", h)
    h = b.op("Mul", h, g.add_const(np.full((2, 1, 1), 0.5, np.float32), "gain"))
    t = b.op("Transpose", h, perm=[0, 2, 3, 1])
    r = b.op("Reshape", t, g.add_const(np.array([1, -1], np.int64), "shape"))
    h = b.op("Softmax", r)
    h = b.op("Sigmoid", h)
    h = b.op("Tanh", h)
    h = b.op("Identity", h)
    h = b.op("LRN", b.op("Relu", b.input), size=3)
    out = b.build(b.op("Identity", r), h)
    out.node("identity_0").meta["calibrate"] = "identity"
    return out


GOLDEN_NETS = {
    "small": small_net,
    "residual": residual_net,
    "misc": golden_misc,
}


@pytest.mark.parametrize("name", sorted(GOLDEN_NETS))
def test_golden_text_form(name):
    text = str(GOLDEN_NETS[name]()) + "\n"
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("NASHIR_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.read_text() == text, "str(graph) changed; if on purpose, rerun with NASHIR_UPDATE_GOLDEN=1"
    assert str(GOLDEN_NETS[name]().clone()) + "\n" == text
