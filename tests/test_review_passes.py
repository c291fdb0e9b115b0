"""Review of the morphism passes and ``nashir morph``: regression tests for what the review broke.

Each test names the input that misbehaved before the fix; expected values come from the pass
contract (``sites`` lists only sites ``check`` accepts; a refused site names the blocking node),
from onnxruntime/torch runs of both graphs, and from the CLI rules (bad input exits 2 without a
traceback, the input is untouched, nothing is written).
"""

from __future__ import annotations

import hashlib
import math
import os
import sys

import numpy as np
import pytest

import nashir
from nashir import GraphBuilder
from nashir.cli import main
from nashir.passes import (
    NodeSite,
    NotApplicable,
    PassError,
    SkipSite,
    channel_flow,
    check_preservation,
    get_pass,
    sample_morphisms,
)
from nashir.passes.net2wider import MAX_WIDTH


def broadcast_net(seed: int = 4):
    """``c1`` has ONE output channel; ``badd`` adds a (3, 1, 1) constant, which broadcasts it to three
    channels (not a per-channel op on c1's channels: each output channel is c1 + a different bias)."""
    b = GraphBuilder("bc", (3, 6, 6), seed=seed)
    g = b.graph
    h = b.conv(b.input, 1, name="c1")
    bias = g.add_const(np.random.default_rng(1).normal(0, 1, (3, 1, 1)).astype(np.float32), "bias3")
    h = b.op("Add", h, bias, name="badd")
    h = b.relu(b.conv(h, 2, name="c2"), name="r2")
    return b.build(b.gemm(b.flatten(h), 3, name="fc"))


def asymmetric(shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return x + np.linspace(-1.0, 2.0, shape[-1], dtype=np.float32)


# ------------------------------------------------------------------- channel flow: broadcasting Add


def test_a_constant_that_broadcasts_one_channel_to_several_blocks_the_flow():
    # before: c1 was a net2wider site and apply raised PassError ("shapes that do not infer"), which
    # sample_morphisms does not catch, so a search on such a model crashed
    g = broadcast_net()
    flow = channel_flow(g, "c1")
    assert not flow.ok and "'badd'" in flow.reason and "broadcasts" in flow.reason
    wider = get_pass("net2wider", factor=2)
    assert "c1" not in [str(s) for s in wider.sites(g)]
    assert "c2" in [str(s) for s in wider.sites(g)]
    text = str(g)
    with pytest.raises(NotApplicable, match="broadcasts"):
        wider.apply(g, NodeSite("c1"), 0)
    assert str(g) == text
    for seed in range(4):
        child, morphs = sample_morphisms(g, 3, seed, passes=["net2wider", "net2deeper", "add-skip"])
        assert len(morphs) == 3
        assert check_preservation(g, child, inputs=asymmetric((7, 3, 6, 6), seed)).ok


def test_concat_skip_into_a_value_that_a_constant_broadcasts_is_refused():
    g = broadcast_net()
    p = get_pass("concat-skip")
    reason = p.check(g, SkipSite("input", "c1"))
    assert reason is not None and "broadcasts" in reason
    with pytest.raises(NotApplicable, match="broadcasts"):
        p.apply(g, SkipSite("input", "c1"), 0)
    assert all(s.dst != "c1" for s in p.sites(g))


def test_a_residual_sum_with_a_broadcast_operand_names_the_broadcast():
    b = GraphBuilder("bcres", (3, 5, 5), seed=2)
    g = b.graph
    z = b.conv(b.input, 3, name="c3")
    one = b.conv(b.input, 1, name="c1")
    bc = b.op("Add", one, g.add_const(np.arange(3, dtype=np.float32).reshape(3, 1, 1), "b3"), name="badd")
    h = b.add(z, bc, name="sum")
    g = b.build(b.gemm(b.flatten(b.conv(h, 2, name="c4")), 2, name="fc"))
    flow = channel_flow(g, "c3")
    assert not flow.ok and "broadcasts" in flow.reason and "'badd'" in flow.reason


# ------------------------------------------------------------------- net2wider options


@pytest.mark.parametrize("opts", [
    {"factor": math.inf}, {"factor": math.nan}, {"factors": (2, math.inf)}, {"width": MAX_WIDTH + 1},
    {"width": math.inf}, {"width": math.nan}, {"width": 2.5},
])
def test_net2wider_refuses_non_finite_or_huge_options(opts):
    # before: factor=inf raised OverflowError from math.ceil inside apply (a traceback on the CLI)
    with pytest.raises(PassError, match="net2wider"):
        get_pass("net2wider", **opts)


def test_a_factor_that_overflows_the_width_is_not_applicable_and_not_a_site():
    # before: factor=1e300 reached numpy (ValueError: Maximum allowed dimension exceeded)
    b = GraphBuilder("w", (3, 4, 4), seed=0)
    g = b.build(b.gemm(b.flatten(b.relu(b.conv(b.input, 4, name="c1"))), 2, name="fc"))
    p = get_pass("net2wider", factor=1e300)
    assert p.sites(g) == []
    reason = p.check(g, NodeSite("c1"))
    assert reason is not None and "more channels than a layer may have" in reason
    assert get_pass("net2wider", factor=2).check(g, NodeSite("c1")) is None


# ------------------------------------------------------------------- the CLI


@pytest.fixture
def model(tmp_path):
    b = GraphBuilder("m", (3, 8, 8), seed=1)
    h = b.relu(b.bn(b.conv(b.input, 4, name="c1"), random_stats=True), name="r1")
    h = b.relu(b.conv(h, 6, stride=2, name="c2"), name="r2")
    p = tmp_path / "m.onnx"
    nashir.save(b.build(b.gemm(b.flatten(h), 3, name="fc")), p)
    return p


def digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_bad_input(model, args, capsys, match):
    folder = model.parent
    before, files = digest(model), sorted(os.listdir(folder))
    code, out, err = run_cli(["morph", model, *args], capsys)
    assert code == 2, (out, err)
    assert "Traceback" not in err and match in err, err
    assert digest(model) == before
    assert sorted(os.listdir(folder)) == files  # nothing written (no default output, no temp file)
    return out, err


@pytest.mark.parametrize("args, match", [
    (["--widen", "c2", "--factor", "inf"], "finite"),
    (["--widen", "c2", "--factor", "1e300"], "more channels than a layer may have"),
    (["--widen", "c2", "--width", str(MAX_WIDTH + 1)], "most channels"),
    (["--seed", "-1", "--widen", "c2"], "--seed"),
])
def test_bad_numbers_exit_2_without_a_traceback(model, capsys, args, match):
    assert_bad_input(model, args, capsys, match)


def test_output_that_is_a_folder_is_refused_before_any_morph(model, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    out, _ = assert_bad_input(model, ["--widen", "c2", "-o", tmp_path / "out"], capsys, "is a folder")
    assert "net2wider at" not in out  # refused up front, not after the work


PLUGIN = '''
from nashir.passes import Pass, PassResult, ValueSite, register_pass


@register_pass
class Crash(Pass):
    name = "{name}"
    exact = True
    description = "raises from rewrite"

    def sites(self, graph):
        return [ValueSite("r1")]

    def check(self, graph, site):
        return None

    def parse_site(self, graph, text):
        return ValueSite(text)

    def rewrite(self, graph, site, rng):
        raise {exc}
'''


@pytest.mark.parametrize("exc, match", [
    ("KeyError('oops')", "raised KeyError: 'oops'"),
    ("MemoryError()", "needs more memory than there is"),
])
def test_a_crashing_plugin_pass_exits_2_and_writes_nothing(model, tmp_path, monkeypatch, capsys, exc, match):
    # before: the exception escaped `nashir morph` as a traceback
    name = "crash-" + exc[:3].lower()
    mod = f"review_crash_{exc[:3].lower()}"
    (tmp_path / f"{mod}.py").write_text(PLUGIN.format(name=name, exc=exc))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ next to the model
    from nashir.passes import base as B

    monkeypatch.setattr(B, "_REGISTRY", dict(B._REGISTRY))
    monkeypatch.setattr(B, "_SOURCES", dict(B._SOURCES))
    args = ["--plugin", mod, "--widen", "c1", "--apply", f"{name}:r1", "-o", tmp_path / "o.onnx"]
    assert_bad_input(model, args, capsys, match)


NEEDS_OPTIONS = '''
from nashir.passes import Pass, register_pass


@register_pass
class NeedsK(Pass):
    name = "review-needs-k"
    exact = False
    description = "a pass whose constructor needs k"

    def __init__(self, k):
        self.k = k

    def sites(self, graph):
        return []

    def check(self, graph, site):
        return "never"
'''


def test_a_plugin_pass_that_needs_options_does_not_break_the_listings(model, tmp_path, monkeypatch, capsys):
    # before: `nashir passes` and `--list-sites` stopped with exit 2 at such a pass, listing nothing after it
    (tmp_path / "review_needs_k.py").write_text(NEEDS_OPTIONS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    from nashir.passes import base as B

    monkeypatch.setattr(B, "_REGISTRY", dict(B._REGISTRY))
    monkeypatch.setattr(B, "_SOURCES", dict(B._SOURCES))
    code, out, err = run_cli(["passes", "--plugin", "review_needs_k"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert any(ln.startswith("review-needs-k") and "approx" in ln and "needs k" in ln for ln in lines)
    assert any(ln.startswith("widen-kernel") for ln in lines)  # sorted after it, still listed
    assert "review-needs-k" in err and "without options" in err
    before = digest(model)
    code, out, err = run_cli(["morph", model, "--plugin", "review_needs_k", "--list-sites"], capsys)
    assert code == 0, err
    assert "widen-kernel\tc1" in out and "review-needs-k" not in out
    assert "review-needs-k" in err
    assert digest(model) == before
