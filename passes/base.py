"""The pass contract, the registry and the pass manager (DESIGN.md section 5).

A morphism is a *pass*: it has a kebab-case :attr:`Pass.name`, says whether it is :attr:`Pass.exact`
(function-preserving), enumerates its :meth:`Pass.sites`, explains with :meth:`Pass.check` why a
site does not apply, and rewrites the graph *in place* with :meth:`Pass.apply`, which returns a
:class:`PassResult`. The habits are those of torch.fx / onnx_ir pass infrastructures and MLIR's
rewrite patterns: match (sites/check), then rewrite (apply), then verify (the pass manager).

Passes are registered by name (:func:`register_pass`), looked up with :func:`get_pass`, and come
from this package, from the entry-point group ``nashir.passes`` of installed distributions, or
from a module imported with :func:`load_plugin` (``nashir morph --plugin MODULE``).
"""

from __future__ import annotations

import difflib
import importlib
import logging
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nashir.errors import NashirError, NotApplicable, PassError, VerifyError
from nashir.ir import Graph

log = logging.getLogger("nashir.passes")

ENTRY_POINT_GROUP = "nashir.passes"


class Site:
    """Base of every site: a small frozen dataclass naming where a pass applies.

    Subclasses hold *names* (of nodes or values), never objects, so a site stays valid for a clone
    of the graph; ``str(site)`` is the readable form written into the search ledger and printed
    by ``nashir morph --list-sites``; :meth:`Pass.parse_site` reads it back.
    """


@dataclass
class PassResult:
    """What :meth:`Pass.apply` returns.

    Attributes:
        graph: the graph (the same object the pass was given; passes rewrite in place).
        modified: True when the pass changed the graph.
        info: JSON-serialisable details (new node names, widths, mapping, ...).
    """

    graph: Graph
    modified: bool
    info: dict = field(default_factory=dict)


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator, a seed, or None (seed 0, so runs repeat)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else int(rng))


class Pass:
    """Base class of a rewrite pass (a network morphism when :attr:`exact`).

    Subclasses set :attr:`name` (kebab-case, unique in the registry), :attr:`exact` and
    :attr:`description`, and implement :meth:`sites`, :meth:`check` and :meth:`rewrite`
    (or override :meth:`apply` entirely). Options (a width, a kernel size...) are constructor
    arguments, so ``get_pass("net2wider", factor=2)`` gives a configured instance.

    Attributes:
        name: registry name, kebab-case (``net2wider``).
        exact: True when the rewrite keeps the network's function (up to float rounding).
        description: one line for ``nashir passes``.
    """

    name: str = ""
    exact: bool = True
    description: str = ""

    def sites(self, graph: Graph) -> list[Site]:
        """Every site of ``graph`` where the pass applies (``check`` returns None), in a
        deterministic order. The search draws from this list uniformly."""
        raise NotImplementedError

    def draw_site(self, graph: Graph, rng: np.random.Generator) -> Site | None:
        """One site drawn uniformly from :meth:`sites`, or None when there is none (the search's
        draw, :func:`~nashir.passes.sample_morphisms`).

        The default lists :meth:`sites` and draws an index from ``rng``. A pass whose sites are
        many (pairs of layers, say) overrides it to draw with the same distribution without listing
        them all, so that a morphism costs what it changes, not the size of the site list.
        """
        sites = self.sites(graph)
        return sites[int(rng.integers(len(sites)))] if sites else None

    def check(self, graph: Graph, site: Site) -> str | None:
        """None when the pass applies at ``site``, else the reason it does not (one sentence that
        names the node or value and what blocks it)."""
        raise NotImplementedError

    def rewrite(self, graph: Graph, site: Site, rng: np.random.Generator) -> PassResult:
        """Rewrite ``graph`` in place at a site that :meth:`check` accepted."""
        raise NotImplementedError

    def apply(self, graph: Graph, site: Site, rng: np.random.Generator | int | None = None) -> PassResult:
        """Check ``site`` and rewrite ``graph`` in place.

        Args:
            graph: the graph to change (clone it first to keep the original).
            site: where to apply (from :meth:`sites` or :meth:`parse_site`).
            rng: randomness for the pass's random choices (a Generator, a seed, or None = seed 0).

        Returns:
            A :class:`PassResult` whose ``graph`` is ``graph``.

        Raises:
            NotApplicable: the site does not fit; the message is :meth:`check`'s reason. The
                graph is unchanged.
        """
        reason = self.check(graph, site)
        if reason is not None:
            raise NotApplicable(f"{self.name} does not apply at {site}: {reason}")
        return self.rewrite(graph, site, as_rng(rng))

    def parse_site(self, graph: Graph, text: str) -> Site:
        """Read a site back from its text form (``str(site)``), as given on the command line.

        The default looks ``text`` up among :meth:`sites`; passes override it to resolve node and
        value names so that a site that does not apply gets the analysis' reason.

        Raises:
            NotApplicable: no applicable site reads ``text``.
        """
        sites = self.sites(graph)
        for s in sites:
            if str(s) == text:
                return s
        close = difflib.get_close_matches(text, [str(s) for s in sites], n=5, cutoff=0.4)
        hint = f"; closest: {', '.join(repr(c) for c in close)}" if close else ""
        raise NotApplicable(
            f"{self.name}: no applicable site {text!r}{hint} (`nashir morph MODEL --list-sites` lists them)"
        )

    def __repr__(self) -> str:
        return f"<pass {self.name} exact={self.exact}>"


# ---------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., Pass]] = {}
_SOURCES: dict[str, str] = {}
_ENTRY_POINTS_LOADED = False
PLUGIN_ERRORS: dict[str, str] = {}


def register_pass(factory: Callable[..., Pass] | None = None, *, name: str | None = None,
                  replace: bool = False, source: str | None = None):
    """Register a pass class (or a factory returning a :class:`Pass`) under its name.

    Usable as a decorator (``@register_pass``) or called (``register_pass(MyPass)``).

    Args:
        factory: a :class:`Pass` subclass, or a callable ``(**options) -> Pass``.
        name: the registry name; default ``factory.name``.
        replace: allow replacing a pass of the same name (else PassError).
        source: where it comes from (shown by ``nashir passes``); default the factory's module.

    Returns:
        ``factory`` (so the decorator leaves the class as it is).

    Raises:
        PassError: no name, a name that is not kebab-case, or a name already registered by
            another factory.
    """

    def _do(f):
        nm = name or getattr(f, "name", "")
        if not nm or nm != nm.lower() or " " in nm or "_" in nm:
            raise PassError(
                f"register_pass: pass {getattr(f, '__name__', f)!r} needs a kebab-case name "
                f"(lower case, words joined by '-'), got {nm!r}; set the class attribute `name`"
            )
        old = _REGISTRY.get(nm)
        if old is not None and old is not f and not replace:
            raise PassError(
                f"register_pass: a pass named {nm!r} is already registered (from {_SOURCES.get(nm)}); "
                "pick another name or pass replace=True"
            )
        _REGISTRY[nm] = f
        _SOURCES[nm] = source or getattr(f, "__module__", "?")
        return f

    if factory is None:
        return _do
    return _do(factory)


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    try:
        eps = entry_points(group=ENTRY_POINT_GROUP)
    except Exception as e:  # noqa: BLE001 - a broken environment must not break the registry
        PLUGIN_ERRORS["<entry points>"] = str(e)
        return
    for ep in eps:
        try:
            obj = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin is reported, not fatal
            PLUGIN_ERRORS[ep.name] = f"{type(e).__name__}: {e}"
            log.warning("nashir.passes entry point %r failed to load: %s", ep.name, e)
            continue
        if isinstance(obj, type) and issubclass(obj, Pass):
            try:
                register_pass(obj, source=f"entry point {ep.value}")
            except PassError as e:
                PLUGIN_ERRORS[ep.name] = str(e)


def available_passes() -> list[str]:
    """Names of every registered pass (built-in, entry points, loaded plugins), sorted."""
    _load_entry_points()
    return sorted(_REGISTRY)


def pass_source(name: str) -> str:
    """Where the pass ``name`` was registered from (a module or an entry point)."""
    return _SOURCES.get(name, "?")


def get_pass(name: str, **options: Any) -> Pass:
    """An instance of the registered pass ``name``, configured with ``options``.

    Raises:
        PassError: no such pass (the message suggests the closest names), or options the pass
            does not take.
    """
    _load_entry_points()
    try:
        f = _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise PassError(
            f"no pass named {name!r}{hint} (registered: {', '.join(sorted(_REGISTRY))}; "
            "`nashir passes` lists them, `--plugin MODULE` loads more)"
        ) from None
    try:
        p = f(**options)
    except TypeError as e:
        raise PassError(f"pass {name!r}: bad options {sorted(options)}: {e}") from None
    if not isinstance(p, Pass):
        raise PassError(f"pass {name!r}: its factory returned {type(p).__name__}, not a nashir.passes.Pass")
    return p


def load_plugin(module_name: str) -> list[str]:
    """Import ``module_name`` so that its :func:`register_pass` calls run.

    Args:
        module_name: a dotted module name importable from ``sys.path`` (the current folder is
            tried too, as ``python -m`` would).

    Returns:
        The names of the passes the import registered (empty when it was imported before).

    Raises:
        PassError: the module cannot be imported (names the module and the underlying error).
    """
    before = set(_REGISTRY)
    added_cwd = False
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
        added_cwd = True
    try:
        importlib.import_module(module_name)
    except NashirError as e:
        raise PassError(f"plugin module {module_name!r} failed while registering its passes: {e}") from None
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - any import failure (SystemExit too) is bad input
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        raise PassError(
            f"plugin module {module_name!r} could not be imported ({last}); check the module name and that "
            "it is on PYTHONPATH (or in the current folder)"
        ) from None
    finally:
        if added_cwd:
            try:
                sys.path.remove("")
            except ValueError:
                pass
    return sorted(set(_REGISTRY) - before)


# ---------------------------------------------------------------------------------------------- manager


def _describe(step: tuple[Pass, Site | None]) -> str:
    p, s = step
    return p.name if s is None else f"{p.name}@{s}"


class PassManager:
    """Runs passes in order on a graph, in place, verifying after every pass that modified it.

    Args:
        steps: each a :class:`Pass` (applied at a site drawn from its :meth:`Pass.sites` with the
            run's rng; skipped with ``modified=False`` when it has none) or a ``(pass, site)`` pair
            (the site may also be its text form, read with :meth:`Pass.parse_site`).
        verify: run :meth:`Graph.verify` after each modifying pass.

    Example::

        pm = Sequential((get_pass("net2wider", factor=2), "conv1"), get_pass("net2deeper"))
        result = pm.run(graph, rng=0)
    """

    def __init__(self, steps: Iterable[Pass | tuple[Pass, Site | str | None]] = (), verify: bool = True):
        self.steps: list[tuple[Pass, Site | str | None]] = []
        for s in steps:
            self.add(s)
        self.verify = verify

    def add(self, step: Pass | tuple[Pass, Site | str | None]) -> PassManager:
        """Append a step (a pass, or a ``(pass, site)`` pair); returns self."""
        if isinstance(step, Pass):
            step = (step, None)
        p, s = step
        if not isinstance(p, Pass):
            raise PassError(f"PassManager: a step must be a Pass or (Pass, site), got {type(p).__name__}")
        self.steps.append((p, s))
        return self

    def run(self, graph: Graph, rng: np.random.Generator | int | None = None) -> PassResult:
        """Apply every step to ``graph`` in place.

        Returns:
            ``PassResult(graph, modified, info)`` with ``info = {"steps": [{"pass", "site",
            "modified", "info"}, ...]}``.

        Raises:
            NotApplicable: a step's site does not apply (names the step and those before it); the
                graph keeps the steps before it.
            PassError: a pass failed or left a graph that does not verify; the message names the
                pass and those that ran before it.
        """
        rng = as_rng(rng)
        done: list[tuple[Pass, Site | None]] = []
        records: list[dict] = []
        modified_any = False
        for i, (p, s) in enumerate(self.steps):
            before = ", ".join(_describe(d) for d in done) or "none"
            where = f"step {i + 1} ({p.name})"
            try:
                if isinstance(s, str):
                    s = p.parse_site(graph, s)
                if s is None:
                    cands = p.sites(graph)
                    if not cands:
                        records.append({"pass": p.name, "site": None, "modified": False,
                                        "info": {"note": "no applicable site"}})
                        done.append((p, None))
                        continue
                    s = cands[int(rng.integers(len(cands)))]
                res = p.apply(graph, s, rng)
            except NotApplicable as e:
                raise NotApplicable(f"{where}: {e} (passes before it: {before})") from None
            except NashirError as e:
                raise PassError(f"{where} at {s} failed: {e} (passes before it: {before})") from e
            except Exception as e:  # noqa: BLE001 - a bug in a pass is reported with context
                raise PassError(
                    f"{where} at {s} raised {type(e).__name__}: {e} (passes before it: {before}); "
                    "this is a bug in the pass"
                ) from e
            if res.graph is not graph:
                raise PassError(f"{where} at {s} returned another graph; passes rewrite in place")
            if res.modified and self.verify:
                try:
                    graph.verify()
                except VerifyError as e:
                    raise PassError(
                        f"{where} at {s} left a graph that does not verify (passes before it: {before}):\n{e}"
                    ) from e
            modified_any |= res.modified
            records.append({"pass": p.name, "site": str(s), "modified": res.modified, "info": res.info})
            done.append((p, s))
        return PassResult(graph, modified_any, {"steps": records})

    __call__ = run

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(_describe(s) for s in self.steps)})"


class Sequential(PassManager):
    """``Sequential(step, step, ...)``: a :class:`PassManager` built from positional steps."""

    def __init__(self, *steps: Pass | tuple[Pass, Site | str | None], verify: bool = True):
        super().__init__(steps, verify=verify)


__all__ = [
    "Site", "Pass", "PassResult", "PassManager", "Sequential", "register_pass", "get_pass",
    "available_passes", "load_plugin", "pass_source", "as_rng", "ENTRY_POINT_GROUP", "PLUGIN_ERRORS",
]
