"""Every rule of ``Graph.verify()`` broken on purpose, bypassing the mutators.

Each case starts from a graph that verifies, breaks exactly one invariant by editing the graph's
lists and attributes directly (as a buggy pass would), and checks that ``verify()`` raises a
:class:`VerifyError` whose message names the node or value at fault and what was expected.
"""

from __future__ import annotations

import numpy as np
import pytest

from nashir import Graph, GraphBuilder, NashirError, Node, Value, VerifyError


def _net() -> Graph:
    """input -> conv -> bn -> relu -> flat -> fc, all named."""
    b = GraphBuilder("v", input_shape=(3, 6, 6), seed=0)
    h = b.conv(b.input, 4, name="conv")
    h = b.bn(h, name="bn")
    h = b.relu(h, name="relu")
    h = b.flatten(h, name="flat")
    h = b.gemm(h, 5, name="fc")
    return b.build(h)


def _chain() -> Graph:
    """input -> a (Relu) -> b (Relu) -> out: shape-preserving, for a clean cycle."""
    g = Graph("chain")
    x = g.add_input("x", ("N", 2, 3, 3))
    a = g.add_node("Relu", [x], name="a")
    b = g.add_node("Relu", [a.output], name="b")
    g.add_output(b.output)
    return g


def _ghost(g: Graph, name: str = "ghost") -> Node:
    """A node object that is not part of ``g``."""
    return Node(name, "Relu", [g.inputs[0]], [Value(name, g.inputs[0].shape)], {})


# --- the breakers: each edits one thing directly -------------------------------------------------


def dup_node_name(g):
    g.node("relu").name = "bn"


def unregistered_node(g):
    nd = g.node("relu")
    nd.name = "relu_renamed"


def value_under_other_name(g):
    g.value("bn").name = "bn_moved"


def const_with_producer(g):
    g.value("conv.weight").producer = g.node("relu")


def const_shape_mismatch(g):
    g.value("conv.weight").shape = (4, 3, 3, 2)


def const_dtype_mismatch(g):
    g.value("conv.weight").dtype = "float16"


def producer_not_in_graph(g):
    g.value("bn").producer = _ghost(g)


def stale_use(g):
    g.value("relu").uses.append((_ghost(g), 0))


def use_at_wrong_input(g):
    g.value("conv").uses.append((g.node("relu"), 0))


def input_not_owned(g):
    g.inputs.append(Value("stray", ("N", 3, 6, 6)))


def input_is_const(g):
    g.inputs.append(g.value("conv.weight"))


def input_is_produced(g):
    g.inputs.append(g.value("relu"))


def output_not_owned(g):
    g.outputs.append(Value("stray_out", ("N", 5)))


def node_input_not_owned(g):
    g.node("conv").inputs[1] = Value("conv.weight", (4, 3, 3, 3), const=np.zeros((4, 3, 3, 3), np.float32))


def use_list_lacks_use(g):
    g.value("bn").uses.clear()


def used_before_defined(g):
    i, j = g.nodes.index(g.node("bn")), g.nodes.index(g.node("relu"))
    g.nodes[i], g.nodes[j] = g.nodes[j], g.nodes[i]


def output_names_other_producer(g):
    g.value("relu").producer = g.node("bn")


def output_not_owned_by_graph(g):
    g.node("relu").outputs[0] = Value("relu_x", ("N", 4, 6, 6))
    g.node("relu").outputs[0].producer = g.node("relu")


def op_not_in_table(g):
    g.node("relu").op_type = "Swish"


def wrong_arity(g):
    relu = g.node("relu")
    relu.inputs.append(g.value("conv"))
    g.value("conv").uses.append((relu, 1))


def unknown_attribute(g):
    g.node("conv").attrs["bogus"] = 1


def bad_attribute_kind(g):
    g.node("conv").attrs["strides"] = ["a", "b"]


def weight_shape_does_not_fit(g):
    w = g.value("conv.weight")
    w.const = np.zeros((4, 2, 3, 3), np.float32)
    w.shape = (4, 2, 3, 3)


def param_not_constant(g):
    w = g.value("conv.weight")
    w.const = None


def attribute_not_explicit(g):
    del g.node("conv").attrs["strides"]


def too_many_outputs(g):
    relu = g.node("relu")
    extra = Value("relu_mask", ("N", 4, 6, 6))
    extra.producer = relu
    g.values["relu_mask"] = extra
    relu.outputs.append(extra)


def stale_output_shape(g):
    g.value("relu").shape = ("N", 4, 6, 7)


CASES = [
    # (breaker, substrings the message must contain: the node/value named, and what was expected)
    (dup_node_name, ["'bn'", "used by two nodes"]),
    (unregistered_node, ["'relu_renamed'", "not registered"]),
    (value_under_other_name, ["'bn_moved'", "stored under the name 'bn'"]),
    (const_with_producer, ["'conv.weight'", "producer node 'relu'", "a constant has none"]),
    (const_shape_mismatch, ["'conv.weight'", "differs from its array", "set_const"]),
    (const_dtype_mismatch, ["'conv.weight'", "dtype float16 differs"]),
    (producer_not_in_graph, ["value 'bn'", "producer 'ghost' is not in the graph"]),
    (stale_use, ["value 'relu'", "node 'ghost', which is not in the graph"]),
    (use_at_wrong_input, ["value 'conv'", "node 'relu' at input 0", "another value"]),
    (input_not_owned, ["graph input 'stray'", "not owned"]),
    (input_is_const, ["graph input 'conv.weight'", "is a constant"]),
    (input_is_produced, ["graph input 'relu'", "produced by node 'relu'"]),
    (output_not_owned, ["graph output 'stray_out'", "not owned"]),
    (node_input_not_owned, ["node 'conv'", "'conv.weight' does not belong to the graph"]),
    (use_list_lacks_use, ["node 'relu'", "reads 'bn' at input 0", "use list lacks it"]),
    (used_before_defined, ["node 'relu'", "'bn' is used before it is defined", "toposort"]),
    (output_names_other_producer, ["node 'relu'", "output 'relu' names another producer"]),
    (output_not_owned_by_graph, ["node 'relu'", "output 'relu_x' does not belong to the graph"]),
    (op_not_in_table, ["node 'relu'", "'Swish' is not in the op table", "supported"]),
    (wrong_arity, ["node 'relu'", "expects 1 inputs, got 2"]),
    (unknown_attribute, ["node 'conv'", "unknown attribute 'bogus'", "Conv takes"]),
    (bad_attribute_kind, ["node 'conv'", "strides", "must be of kind ints"]),
    (weight_shape_does_not_fit,
     ["node 'conv'", "weight OIHW [4,2,3,3]", "expects 2 input channels, the input has 3"]),
    (param_not_constant, ["node 'conv'", "must be a constant"]),
    (attribute_not_explicit, ["node 'conv'", "['strides']", "explicit"]),
    (too_many_outputs, ["node 'relu'", "has 2 outputs, Relu gives 1"]),
    (stale_output_shape,
     ["node 'relu'", "output 'relu'", "[N,4,6,7]", "gives [N,4,6,6]", "infer_shapes"]),
]


@pytest.mark.parametrize("breaker, expected", CASES, ids=[c[0].__name__ for c in CASES])
def test_each_verifier_rule_is_enforced(breaker, expected):
    g = _net()
    g.verify()  # the control: intact, it verifies
    breaker(g)
    with pytest.raises(VerifyError) as ei:
        g.verify()
    err = ei.value
    assert isinstance(err, NashirError)
    # one problem line carries every expected piece (node/value named, expectation stated)
    assert any(all(s in p for s in expected) for p in err.problems), (expected, err.problems)
    assert str(len(err.problems)) in str(err).splitlines()[0]


def test_cycle_is_reported_with_its_nodes():
    g = _chain()
    g.verify()
    a, b = g.node("a"), g.node("b")
    x = g.inputs[0]
    # a now reads b's output: a -> b -> a, with use lists kept consistent so only the cycle is wrong
    x.uses.remove((a, 0))
    a.inputs[0] = b.output
    b.output.uses.append((a, 0))
    with pytest.raises(VerifyError) as ei:
        g.verify()
    problems = ei.value.problems
    assert any("cycle through nodes ['a', 'b']" in p and "rewire" in p for p in problems), problems


def test_every_problem_is_listed_not_just_the_first():
    g = _net()
    unknown_attribute(g)
    stale_output_shape(g)
    input_not_owned(g)
    with pytest.raises(VerifyError) as ei:
        g.verify()
    text = "\n".join(ei.value.problems)
    assert "'bogus'" in text and "[N,4,6,7]" in text and "'stray'" in text
    assert len(ei.value.problems) >= 3


def test_verify_passes_on_builder_networks_with_branches():
    b = GraphBuilder("branches", input_shape=(3, 8, 8), seed=1)
    h = b.conv_bn_relu(b.input, 4)
    a = b.conv(h, 4, kernel=1)
    c = b.conv(h, 4, kernel=3)
    s = b.add(a, c)
    m = b.concat([s, h])
    g = b.build(b.gemm(b.flatten(b.global_avgpool(m)), 3))
    g.verify()
    g.clone().verify()
