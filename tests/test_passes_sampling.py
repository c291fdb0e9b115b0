"""sample_morphisms (NASH's ApplyNetMorphs) and Constraints."""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass

import numpy as np
import pytest
from test_passes_nets import plain_net, residual_net

from nashir.errors import PassError
from nashir.passes import (
    SEARCH_PASSES,
    Constraints,
    Pass,
    PassResult,
    Site,
    get_pass,
    sample_morphisms,
)


def test_does_not_modify_the_graph_and_records_are_json():
    g = plain_net()
    text, params = str(g), g.param_count()
    child, morphs = sample_morphisms(g, 5, np.random.default_rng(0))
    assert str(g) == text and g.param_count() == params
    assert child is not g and len(morphs) == 5 and morphs.note is None
    child.verify()
    assert all(m["pass"] in SEARCH_PASSES for m in morphs)
    back = json.loads(json.dumps(morphs))
    assert [set(m) for m in back] == [{"pass", "site", "info"}] * 5


def test_seeded_runs_repeat():
    g = residual_net()
    c1, m1 = sample_morphisms(g, 6, 11)
    c2, m2 = sample_morphisms(g, 6, np.random.default_rng(11))
    assert str(c1) == str(c2) and list(m1) == list(m2)
    for a, b in zip(c1.constants(), c2.constants()):
        assert np.array_equal(a.const, b.const)
    c3, m3 = sample_morphisms(g, 6, 12)
    assert list(m3) != list(m1)


@dataclass(frozen=True)
class _S(Site):
    k: int

    def __str__(self):
        return f"s{self.k}"


class _Counting(Pass):
    exact = True

    def __init__(self, name, n_sites):
        self.name = name
        self.n_sites = n_sites

    def sites(self, graph):
        return [_S(k) for k in range(self.n_sites)]

    def check(self, graph, site):
        return None

    def rewrite(self, graph, site, rng):
        return PassResult(graph, False, {"k": site.k})


def test_uniform_over_passes_then_over_sites():
    g = plain_net()
    few, many = _Counting("few-test", 1), _Counting("many-test", 9)
    rng = np.random.default_rng(0)
    by_pass = collections.Counter()
    by_site = collections.Counter()
    for _ in range(1000):
        _, (m,) = sample_morphisms(g, 1, rng, passes=[few, many])
        by_pass[m["pass"]] += 1
        if m["pass"] == "many-test":
            by_site[m["site"]] += 1
    # uniform over passes (not over all 10 sites): about 500 each; sd about 16
    assert 400 < by_pass["few-test"] < 600
    assert len(by_site) == 9 and all(25 < c < 95 for c in by_site.values())  # ~55 each


def test_passes_without_sites_are_not_drawn():
    g = plain_net()
    _, morphs = sample_morphisms(g, 20, 0, passes=[_Counting("none-test", 0), _Counting("one-test", 1)])
    assert {m["pass"] for m in morphs} == {"one-test"}
    _, morphs = sample_morphisms(g, 3, 0, passes=[_Counting("none-test", 0)])
    assert len(morphs) == 0 and "no pass has an applicable site" in morphs.note


def test_constraints_skip_and_redraw_then_stop_with_a_note():
    g = plain_net()
    p = g.param_count()
    child, morphs = sample_morphisms(g, 3, 0, constraints=Constraints(max_params=p))
    assert len(morphs) == 0 and "stopped after 0 of 3 morphisms" in morphs.note
    assert "max_params" in morphs.note
    assert str(child) == str(g)
    # widen-kernel with a small MAC budget: the first fits, later ones do not
    wk = get_pass("widen-kernel", max_kernel=99)
    limit = Constraints(max_macs=g.mac_count() + 13000)  # c1: +6912, c3: +5184, c2: +13824 MACs
    child, morphs = sample_morphisms(g, 5, 0, passes=[wk], constraints=limit)
    assert 0 < len(morphs) < 5 and "max_macs" in morphs.note
    assert child.mac_count() <= limit.max_macs


def test_constraints_violation():
    g = plain_net()
    assert Constraints().violation(g) is None
    assert "parameters" in Constraints(max_params=10).violation(g)
    assert "MACs" in Constraints(max_macs=10).violation(g)


def test_bad_arguments():
    g = plain_net()
    with pytest.raises(PassError):
        sample_morphisms(g, -1, 0)
    with pytest.raises(PassError):
        sample_morphisms(g, 1, 0, passes=[])
    with pytest.raises(PassError, match="no pass named"):
        sample_morphisms(g, 1, 0, passes=["nope"])


def test_a_pass_that_breaks_the_graph_is_reported():
    class Breaks(_Counting):
        def rewrite(self, graph, site, rng):
            graph.node("c1").outputs[0].shape = (1,)
            return PassResult(graph, True, {})

    with pytest.raises(PassError, match="breaks-test at s0 left a graph that does not verify"):
        sample_morphisms(plain_net(), 2, 0, passes=[Breaks("breaks-test", 1)])


# ------------------------------------------------------------------ misbehaving (plugin) passes


class _Bad(get_pass("widen-kernel").__class__):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.name = f"bad-{how}"

    def sites(self, graph):
        if self.how == "sites":
            raise ZeroDivisionError("sites broke")
        return super().sites(graph)

    def apply(self, graph, site, rng):
        if self.how == "apply":
            raise KeyError("apply broke")
        if self.how == "memory":
            raise MemoryError
        res = super().apply(graph, site, rng)
        if self.how == "info":
            res.info["array"] = object()
        if self.how == "info-keys":
            res.info[(1, 2)] = "tuple key"
        return res


@pytest.mark.parametrize("how, message", [
    ("sites", r"pass 'bad-sites': sites\(\) raised ZeroDivisionError: sites broke \(a bug in the pass\)"),
    ("apply", r"pass 'bad-apply' at \S+ raised KeyError: 'apply broke' \(a bug in the pass\)"),
    ("memory", r"pass 'bad-memory' at \S+ raised MemoryError"),
    ("info", r"pass 'bad-info' at \S+ returned info that is not JSON-serialisable \(TypeError"),
    ("info-keys", r"pass 'bad-info-keys' at \S+ returned info that is not JSON-serialisable"),
])
def test_a_misbehaving_pass_is_a_pass_error_naming_it(how, message):
    g = plain_net()
    text = str(g)
    with pytest.raises(PassError, match=message):
        sample_morphisms(g, 3, np.random.default_rng(0), passes=[_Bad(how)])
    assert str(g) == text


# ------------------------------------------------------------------ cost (issue 13)


def test_one_verify_per_child_and_no_listing_of_skip_sites(monkeypatch):
    from nashir.ir import Graph
    from nashir.passes.skip import _Skip

    calls = collections.Counter()
    verify, listing = Graph.verify, _Skip._list

    def counted_verify(self):
        calls["verify"] += 1
        return verify(self)

    def counted_list(self, graph, ctx):
        calls["skip-list"] += 1
        return listing(self, graph, ctx)

    g = residual_net()
    monkeypatch.setattr(Graph, "verify", counted_verify)
    monkeypatch.setattr(_Skip, "_list", counted_list)
    child, morphs = sample_morphisms(g, 6, 3, passes=["add-skip", "concat-skip", "net2wider"])
    assert len(morphs) == 6 and calls["verify"] == 1
    assert calls["skip-list"] == 0   # drawn lazily


def test_constraints_that_never_bind_give_the_unconstrained_child():
    g = residual_net()
    c1, m1 = sample_morphisms(g, 6, 5)
    c2, m2 = sample_morphisms(g, 6, 5, constraints=Constraints(max_params=10**9, max_macs=10**12))
    assert str(c1) == str(c2) and list(m1) == list(m2)
    for a, b in zip(c1.constants(), c2.constants()):
        assert np.array_equal(a.const, b.const)


def _reference(graph, n, seed, passes, constraints, max_tries):
    """sample_morphisms the slow way: a copy of the child for every draw."""
    rng = np.random.default_rng(seed)
    child, done = graph.clone(), []
    for _ in range(n):
        avail, tries = list(passes), 0
        while tries < max_tries and avail:
            p = avail[int(rng.integers(len(avail)))]
            site = p.draw_site(child, rng)
            if site is None:
                avail.remove(p)
                continue
            tries += 1
            trial = child.clone()
            res = p.apply(trial, site, rng)
            if constraints.violation(trial) is None:
                child = trial
                done.append({"pass": p.name, "site": str(site), "info": res.info})
                break
        else:
            break
    return child, done


def test_a_draw_over_the_limits_is_undone_exactly(monkeypatch):
    # with a budget of a few morphisms some draws go over it; the child, changed in place until
    # then and made again from the parent after the first such draw, is the slow way's child
    import nashir.passes.sampling as S

    replays, replay = [], S._replay
    monkeypatch.setattr(S, "_replay", lambda *a: replays.append(1) or replay(*a))
    g = residual_net()
    passes = [get_pass("net2wider", factor=2), get_pass("concat-skip"), get_pass("net2deeper")]
    for seed in range(4):
        limit = Constraints(max_params=int(g.param_count() * 2.5))
        child, morphs = sample_morphisms(g, 6, seed, passes=passes, constraints=limit, max_tries=5)
        ref, ref_m = _reference(g, 6, seed, passes, limit, 5)
        assert list(morphs) == ref_m and str(child) == str(ref)
        for a, b in zip(child.constants(), ref.constants()):
            assert np.array_equal(a.const, b.const)
        assert child.param_count() <= limit.max_params
    assert len(replays) >= 2   # the in-place path was undone (seeds 0, 2, 3)
