"""Random morphisms for the search: NASH's ApplyNetMorphs.

Source: Elsken, Metzen & Hutter 2017 (arXiv 1711.04528), Algorithm 1 and section 5.1: each child
is the current network after ``n_nm`` network morphisms, each drawn uniformly among the morphism
types and then uniformly among the places where it applies.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nashir.errors import NashirError, NotApplicable, PassError, VerifyError
from nashir.ir import Graph

from .base import Pass, as_rng, get_pass

log = logging.getLogger("nashir.passes")

#: The morphisms the search draws from by default (NASH section 5.1: deepen, widen, skip by
#: addition or by concatenation). ``widen-kernel`` and plugin passes are opt-in.
SEARCH_PASSES = ("net2deeper", "net2wider", "add-skip", "concat-skip")


@dataclass(frozen=True)
class Constraints:
    """Limits a sampled child must respect (None: no limit).

    Attributes:
        max_params: parameter scalars (:meth:`Graph.param_count`).
        max_macs: multiply-accumulates per sample (:meth:`Graph.mac_count`).
    """

    max_params: int | None = None
    max_macs: int | None = None

    def violation(self, graph: Graph) -> str | None:
        """Which limit ``graph`` exceeds, or None."""
        if self.max_params is not None:
            p = graph.param_count()
            if p > self.max_params:
                return f"{p} parameters > max_params={self.max_params}"
        if self.max_macs is not None:
            m = graph.mac_count()
            if m > self.max_macs:
                return f"{m} MACs > max_macs={self.max_macs}"
        return None


class Morphisms(list):
    """The list of applied morphisms (each ``{"pass", "site", "info"}``); ``note`` says why it is
    shorter than asked (None when complete). JSON-serialises as a plain list."""

    note: str | None = None


def _draw(p: Pass, graph: Graph, rng: np.random.Generator):
    """``p.draw_site(graph, rng)``; a pass whose draw (or ``sites()``) raises is a PassError naming it."""
    try:
        return p.draw_site(graph, rng)
    except NashirError:
        raise
    except Exception as e:
        raise PassError(f"sample_morphisms: pass {getattr(p, 'name', p)!r}: sites() raised "
                        f"{type(e).__name__}: {e} (a bug in the pass)") from e


def _apply(p: Pass, graph: Graph, site, rng: np.random.Generator):
    """``p.apply``; NotApplicable is returned as its message, a bug in the pass is a PassError."""
    try:
        res = p.apply(graph, site, rng)
    except NotApplicable as e:  # a stale site would be a bug; the draw is skipped
        log.warning("sample_morphisms: %s", e)
        return str(e)
    except NashirError:
        raise
    except Exception as e:   # a bug in a (plugin) pass: named, never a bare traceback
        raise PassError(f"sample_morphisms: pass {p.name!r} at {site} raised {type(e).__name__}: {e} "
                        "(a bug in the pass)") from e
    try:
        json.dumps(res.info, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise PassError(f"sample_morphisms: pass {p.name!r} at {site} returned info that is not "
                        f"JSON-serialisable ({type(e).__name__}: {e}); a bug in the pass") from None
    return res


def _replay(graph: Graph, steps: list) -> Graph:
    """A copy of ``graph`` with the morphisms ``steps`` ((pass, site, rng state) each) applied again:
    the same child, since a pass is deterministic for a graph, a site and an rng state."""
    g = graph.clone()
    for p, site, state in steps:
        rng = np.random.default_rng()
        rng.bit_generator.state = state
        p.apply(g, site, rng)
    return g


def _name_the_breaker(graph: Graph, steps: list) -> PassError | None:
    """Replay the morphisms ``steps`` on a copy of the parent ``graph``, verifying after each, and
    name the first that leaves a broken graph (the passes are deterministic for a graph, a site and
    an rng state); None when each verifies."""
    g = graph.clone()
    for k, (p, site, state) in enumerate(steps):
        rng = np.random.default_rng()
        rng.bit_generator.state = state
        p.apply(g, site, rng)
        try:
            g.verify()
        except VerifyError as e:
            before = [f"{q.name}@{s}" for q, s, _ in steps[:k]]
            return PassError(f"sample_morphisms: {p.name} at {site} left a graph that does not verify "
                             f"(morphisms before it: {before}):\n{e}")
    return None


def _resolve(passes: Sequence[Pass | str] | None) -> list[Pass]:
    names = SEARCH_PASSES if passes is None else passes
    out = [get_pass(p) if isinstance(p, str) else p for p in names]
    for p in out:
        if not isinstance(p, Pass):
            raise PassError(f"sample_morphisms: {p!r} is not a pass or a pass name")
    if not out:
        raise PassError("sample_morphisms: the list of passes is empty")
    return out


def sample_morphisms(graph: Graph, n: int, rng: np.random.Generator | int | None,
                     passes: Sequence[Pass | str] | None = None,
                     constraints: Constraints | None = None,
                     max_tries: int = 20) -> tuple[Graph, Morphisms]:
    """Apply ``n`` random morphisms to a copy of ``graph`` (the graph itself is not modified).

    Each morphism: a pass drawn uniformly among ``passes`` that have an applicable site, then a
    site drawn uniformly among that pass's :meth:`~nashir.passes.Pass.sites` (by the pass's
    :meth:`~nashir.passes.Pass.draw_site`, which need not list them), then the pass's own random
    choices (widening factor, kernel size, ...) from ``rng``. A draw whose result exceeds
    ``constraints`` is undone and drawn again; after ``max_tries`` failed draws for one morphism
    the function stops early and says so in ``note`` of the returned list (and logs it).

    Cost: one copy of ``graph``, the draws, the rewrites, one :meth:`Graph.verify` of the child
    and, with ``constraints``, one size count per draw; after the first draw over the limits the
    child is made again from ``graph`` (replaying the morphisms kept so far) and each later draw
    works on a copy. Linear in the size of the graph, not quadratic: a pass with many sites draws
    lazily (:meth:`~nashir.passes.Pass.draw_site`).

    Args:
        graph: the parent network (unchanged).
        n: number of morphisms (NASH's ``n_nm``), >= 0.
        rng: a Generator or a seed; all randomness flows from it.
        passes: passes or pass names; default :data:`SEARCH_PASSES`.
        constraints: :class:`Constraints` on the child.
        max_tries: draws per morphism before giving up.

    Returns:
        ``(child, morphisms)``; each morphism is ``{"pass": name, "site": str(site), "info": {...}}``
        (JSON-serialisable). The child verifies.

    Raises:
        PassError: bad arguments, or a pass that misbehaves (a bug): its ``sites()``, ``draw_site()``
            or ``apply()`` raises something other than :class:`NotApplicable`, its info is not
            JSON-serialisable, or it left a graph that does not verify (the morphisms are then
            replayed to name the first that broke it). The message names the pass.
    """
    if int(n) != n or n < 0:
        raise PassError(f"sample_morphisms: n must be a non-negative integer, got {n!r}")
    rng = as_rng(rng)
    pool = _resolve(passes)
    if max_tries < 1:
        raise PassError(f"sample_morphisms: max_tries must be >= 1, got {max_tries!r}")
    bounded = constraints is not None and (constraints.max_params, constraints.max_macs) != (None, None)
    child = graph.clone()
    copying = False
    done = Morphisms()
    steps: list = []   # (pass, site, rng state before its apply): to name a pass that broke the graph
    for k in range(int(n)):
        avail = list(pool)   # passes not yet found without a site for this morphism
        last = ""
        tries = 0
        while tries < max_tries and avail:
            p = avail[int(rng.integers(len(avail)))]
            site = _draw(p, child, rng)
            if site is None:
                avail.remove(p)
                continue
            tries += 1
            state = rng.bit_generator.state
            # in place (NotApplicable leaves the graph unchanged) until a draw goes over the limits;
            # from then on each draw gets a copy, so that one over the limits is simply dropped
            trial = child.clone() if copying else child
            try:
                res = _apply(p, trial, site, rng)
            except PassError:   # a bug; but was the graph it got broken already? Then name that pass
                broke = _name_the_breaker(graph, steps) if steps else None
                if broke is not None:
                    raise broke from None
                raise
            if isinstance(res, str):
                last = res
                continue
            why = constraints.violation(trial) if bounded else None
            if why is not None:
                last = f"{p.name} at {site} gives {why}"
                if not copying:   # the child itself was changed: make it again from the parent
                    child = _replay(graph, steps)
                    copying = True
                continue
            child = trial
            steps.append((p, site, state))
            done.append({"pass": p.name, "site": str(site), "info": res.info})
            break
        else:
            if tries == 0:
                done.note = f"stopped after {k} of {n} morphisms: no pass has an applicable site"
            else:
                done.note = f"stopped after {k} of {n} morphisms: {max_tries} draws failed, the last: {last}"
            log.info("sample_morphisms: %s", done.note)
            break
    if steps:
        try:
            child.verify()
        except VerifyError as e:
            broke = _name_the_breaker(graph, steps)
            if broke is None:   # pragma: no cover - a pass that is not deterministic
                broke = PassError(f"sample_morphisms: the child of {[f'{q.name}@{s}' for q, s, _ in steps]} "
                                  f"does not verify:\n{e}")
            raise broke from e
    return child, done


__all__ = ["sample_morphisms", "Constraints", "Morphisms", "SEARCH_PASSES"]
