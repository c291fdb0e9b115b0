"""Property test: random networks under random sequences of exact morphisms keep their function.

Networks: depth 2 to 8, widths 1 to 64, kernels 1, 3, 5 and 1x3, strides 1 and 2, BatchNorm with
random non-trivial statistics, residual Adds (block sums, longer skips, and sums of two stream
values, so one value feeds several sums) and channel Concats, convs with and without bias, and a
head that flattens a map with H*W > 1 into a Gemm (or pools it first). Each gets 1 to 10 morphisms
from every exact pass (``sample_morphisms``); the child must verify, export to ONNX that passes
``onnx.checker.check_model(full_check=True)``, and compute the parent's function in onnxruntime.
A second property checks that a coupled producer group is the same from each of its members.
"""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nashir import GraphBuilder
from nashir.backends.onnx import to_onnx
from nashir.passes import Constraints, check_preservation, get_pass, sample_morphisms


def _pads(k):
    kh, kw = (k, k) if isinstance(k, int) else k
    return [(kh - 1) // 2, (kw - 1) // 2] * 2


@st.composite
def net_specs(draw):
    layers = []
    for _ in range(draw(st.integers(2, 8))):
        layers.append({
            "kind": draw(st.sampled_from(["conv", "conv", "add", "merge", "concat"])),
            "width": draw(st.integers(1, 64)),
            "kernel": draw(st.sampled_from([1, 3, 5, (1, 3)])),
            "stride": draw(st.sampled_from([1, 1, 2])),
            "bias": draw(st.booleans()),
            "bn": draw(st.booleans()),
            "relu": draw(st.booleans()),
            "back": draw(st.integers(0, 7)),  # which earlier stream value of the same shape a sum adds
        })
    return {"hw": draw(st.sampled_from([4, 5, 6])), "layers": layers,
            "head": draw(st.sampled_from(["flatten", "flatten", "gap"])), "seed": draw(st.integers(0, 2**16))}


def build(spec):
    b = GraphBuilder("prop", (3, spec["hw"], spec["hw"]), seed=spec["seed"])
    h = b.input
    stream = []
    for i, L in enumerate(spec["layers"]):
        k = L["kernel"]
        if L["kind"] == "conv":
            stride = L["stride"] if min(h.shape[2:]) >= 3 else 1
            x = b.conv(h, L["width"], kernel=k, stride=stride, pads=_pads(k), bias=L["bias"], name=f"conv{i}")
            if L["bn"]:
                x = b.bn(x, random_stats=True)
            h = b.relu(x) if L["relu"] else x
        elif L["kind"] == "add":  # a residual block: couples the producers of both operands
            x = b.conv(h, h.shape[1], kernel=k, pads=_pads(k), bias=L["bias"], name=f"res{i}")
            if L["bn"]:
                x = b.bn(x, random_stats=True)
            same = [v for v in stream if v.shape == h.shape] or [h]
            h = b.add(x, same[-1 - L["back"] % len(same)])  # the block input or a longer skip
            h = b.relu(h) if L["relu"] else h
        elif L["kind"] == "merge":  # sum the stream with an earlier stream value (no conv): a value
            same = [v for v in stream[:-1] if v.shape == h.shape] or [h]  # feeding several sums
            h = b.add(h, same[-1 - L["back"] % len(same)])
        else:  # dense-style concat of the stream and a new branch
            x = b.conv(h, L["width"], kernel=k, pads=_pads(k), bias=L["bias"], name=f"cat{i}")
            h = b.concat([h, b.relu(x) if L["relu"] else x])
        stream.append(h)
    if spec["head"] == "gap":
        h = b.global_avgpool(h)
    return b.build(b.gemm(b.flatten(h), 3, name="head"))


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=net_specs(), n_morph=st.integers(1, 10), seed=st.integers(0, 2**16),
       split=st.sampled_from(["equal", "random"]))
def test_random_morphisms_keep_the_function(spec, n_morph, seed, split):
    g = build(spec)
    text = str(g)
    passes = [get_pass("net2wider", split=split), get_pass("net2deeper"), get_pass("add-skip"),
              get_pass("concat-skip"), get_pass("widen-kernel")]
    limit = Constraints(max_params=4 * g.param_count() + 20_000, max_macs=4 * g.mac_count() + 200_000)
    rng = np.random.default_rng(seed)
    child, morphs = sample_morphisms(g, n_morph, rng, passes=passes, constraints=limit)
    assert str(g) == text  # the parent is untouched
    assert len(morphs) == n_morph or morphs.note
    child.verify()
    assert child.param_count() <= limit.max_params and child.mac_count() <= limit.max_macs
    onnx.checker.check_model(to_onnx(child), full_check=True)
    rep = check_preservation(g, child, n=2, seed=seed, runtimes=["onnxruntime"])
    assert rep.ok, f"{rep}\nmorphisms: {list(morphs)}\n{g}\n{child}"


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=net_specs())
def test_coupled_groups_are_the_same_from_every_member(spec):
    """The producer group does not depend on where the flow starts: from any member of an
    applicable group, the flow is applicable with the same group (and the internal "cannot be made
    to carry" refusal never shows)."""
    from nashir.passes import channel_flow

    g = build(spec)
    for nd in g.nodes:
        if nd.op_type not in ("Conv", "Gemm"):
            continue
        f = channel_flow(g, nd)
        assert f.ok or "cannot be made to carry" not in f.reason, f.reason
        if f.ok:
            group = sorted(p.name for p in f.producers)
            for other in f.producers[1:]:
                f2 = channel_flow(g, other)
                assert f2.ok, f2.reason
                assert sorted(p.name for p in f2.producers) == group
