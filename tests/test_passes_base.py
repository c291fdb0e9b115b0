"""The pass contract, the registry and the pass manager."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pytest
from test_passes_nets import plain_net

from nashir.errors import NotApplicable, PassError
from nashir.passes import (
    Pass,
    PassManager,
    PassResult,
    Sequential,
    Site,
    available_passes,
    get_pass,
    load_plugin,
    register_pass,
)
from nashir.passes import base as B

BUILTIN = ["add-skip", "concat-skip", "net2deeper", "net2wider", "widen-kernel"]


@pytest.fixture
def registry():
    """Restore the registry after a test that registers passes."""
    saved, src = dict(B._REGISTRY), dict(B._SOURCES)
    yield
    B._REGISTRY.clear()
    B._REGISTRY.update(saved)
    B._SOURCES.clear()
    B._SOURCES.update(src)


def test_builtin_passes_are_registered_and_exact():
    assert set(BUILTIN) <= set(available_passes())
    for name in BUILTIN:
        p = get_pass(name)
        assert isinstance(p, Pass) and p.name == name and p.exact is True and p.description


def test_get_pass_unknown_name_suggests():
    with pytest.raises(PassError, match=r"no pass named 'net2widen'.*did you mean 'net2wider'"):
        get_pass("net2widen")


def test_get_pass_bad_options():
    with pytest.raises(PassError, match="net2wider"):
        get_pass("net2wider", width=8, factor=2)
    with pytest.raises(PassError, match="bad options"):
        get_pass("widen-kernel", nonsense=1)


@dataclass(frozen=True)
class _S(Site):
    v: str

    def __str__(self):
        return self.v


class _Noop(Pass):
    name = "noop-test"
    description = "does nothing"

    def sites(self, graph):
        return [_S("x")]

    def check(self, graph, site):
        return None if site.v == "x" else f"only x, not {site.v}"

    def rewrite(self, graph, site, rng):
        return PassResult(graph, False, {"ok": True})


def test_register_pass_rules(registry):
    register_pass(_Noop)
    assert "noop-test" in available_passes()
    register_pass(_Noop)  # the same factory again is fine

    class Other(_Noop):
        pass

    with pytest.raises(PassError, match="already registered"):
        register_pass(Other)
    register_pass(Other, replace=True)

    class Bad(_Noop):
        name = "Bad_Name"

    with pytest.raises(PassError, match="kebab-case"):
        register_pass(Bad)


def test_apply_refuses_a_site_with_the_reason():
    g = plain_net()
    with pytest.raises(NotApplicable, match="only x, not y"):
        _Noop().apply(g, _S("y"))
    assert _Noop().apply(g, _S("x")).info == {"ok": True}


def test_default_parse_site_reads_str_of_sites():
    g = plain_net()
    assert _Noop().parse_site(g, "x") == _S("x")
    with pytest.raises(NotApplicable, match="no applicable site 'z'"):
        _Noop().parse_site(g, "z")


class _Breaks(Pass):
    """Modifies the graph so it no longer verifies (a wrong output shape)."""

    name = "breaks-test"

    def sites(self, graph):
        return [_S("c1")]

    def check(self, graph, site):
        return None

    def rewrite(self, graph, site, rng):
        graph.node(site.v).outputs[0].shape = (1, 2, 3)
        return PassResult(graph, True, {})


def test_manager_verifies_and_names_the_pass_and_those_before_it():
    g = plain_net()
    pm = Sequential((get_pass("net2deeper", kernel=3), "r1"), (get_pass("net2wider", width=8), "c2"),
                    (_Breaks(), "c1"))
    with pytest.raises(PassError) as ei:
        pm.run(g, rng=0)
    msg = str(ei.value)
    assert "step 3 (breaks-test)" in msg and "does not verify" in msg
    assert "passes before it: net2deeper@r1, net2wider@c2" in msg
    assert "'c1'" in msg  # the verifier's problem names the node


def test_manager_without_verify_does_not_raise():
    g = plain_net()
    res = PassManager([(_Breaks(), "c1")], verify=False).run(g)
    assert res.modified


def test_manager_not_applicable_names_the_step():
    g = plain_net()
    pm = Sequential((get_pass("net2deeper", kernel=3), "r1"), (get_pass("net2wider", width=2), "c2"))
    msg = r"step 2 \(net2wider\).*not larger.*passes before it: net2deeper@r1"
    with pytest.raises(NotApplicable, match=msg):
        pm.run(g)


def test_manager_records_steps_and_draws_sites():
    g = plain_net()
    before = g.clone()
    res = Sequential(get_pass("net2wider", factor=2), (get_pass("widen-kernel"), "c1")).run(g, rng=3)
    assert res.graph is g and res.modified
    steps = res.info["steps"]
    assert [s["pass"] for s in steps] == ["net2wider", "widen-kernel"]
    assert steps[0]["site"] in ("c1", "c2", "c3") and steps[1]["site"] == "c1"
    assert g.param_count() > before.param_count()


def test_manager_pass_without_sites_is_skipped():
    class NoSites(_Noop):
        name = "nosites-test"

        def sites(self, graph):
            return []

    res = Sequential(NoSites()).run(plain_net())
    assert res.modified is False and res.info["steps"][0]["info"]["note"] == "no applicable site"


def test_manager_wraps_a_crashing_pass():
    class Crash(_Noop):
        name = "crash-test"

        def rewrite(self, graph, site, rng):
            raise ZeroDivisionError("boom")

    with pytest.raises(PassError, match=r"step 1 \(crash-test\).*ZeroDivisionError: boom.*bug in the pass"):
        Sequential((Crash(), "x")).run(plain_net())


def test_load_plugin(tmp_path, monkeypatch, registry):
    (tmp_path / "nashir_plugin_ok.py").write_text(
        "from nashir.passes import register_pass\n"
        "from test_passes_base import _Noop\n"
        "class P(_Noop):\n    name = 'plugin-ok-test'\n"
        "register_pass(P)\n"
    )
    (tmp_path / "nashir_plugin_bad.py").write_text("import does_not_exist_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_plugin("nashir_plugin_ok") == ["plugin-ok-test"]
    assert "plugin-ok-test" in available_passes()
    msg = r"plugin module 'nashir_plugin_bad' could not be imported.*does_not_exist"
    with pytest.raises(PassError, match=msg):
        load_plugin("nashir_plugin_bad")
    with pytest.raises(PassError, match="'no_such_module_xyz'"):
        load_plugin("no_such_module_xyz")
    sys.modules.pop("nashir_plugin_ok", None)


def test_entry_points_register_passes(monkeypatch, registry):
    class EP:
        name = "ep-test"
        value = "somewhere:EPPass"

        def load(self):
            class EPPass(_Noop):
                name = "ep-pass-test"

            return EPPass

    class Broken(EP):
        name = "broken"

        def load(self):
            raise ImportError("missing dependency")

    import importlib.metadata as md

    monkeypatch.setattr(md, "entry_points", lambda group=None: [EP(), Broken()])
    monkeypatch.setattr(B, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setattr(B, "PLUGIN_ERRORS", {})
    assert "ep-pass-test" in available_passes()
    assert "missing dependency" in B.PLUGIN_ERRORS["broken"]
    assert B.pass_source("ep-pass-test") == "entry point somewhere:EPPass"


def test_as_rng():
    r = np.random.default_rng(5)
    assert B.as_rng(r) is r
    assert B.as_rng(3).integers(1000) == np.random.default_rng(3).integers(1000)
    assert B.as_rng(None).integers(1000) == np.random.default_rng(0).integers(1000)
