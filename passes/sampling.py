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


def _sites(p: Pass, graph: Graph) -> list:
    """``p.sites(graph)``; a pass whose ``sites()`` raises is a PassError naming it."""
    try:
        return list(p.sites(graph))
    except NashirError:
        raise
    except Exception as e:
        raise PassError(f"sample_morphisms: pass {getattr(p, 'name', p)!r}: sites() raised "
                        f"{type(e).__name__}: {e} (a bug in the pass)") from e


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
    site drawn uniformly among that pass's :meth:`~nashir.passes.Pass.sites`, then the pass's own
    random choices (widening factor, kernel size, ...) from ``rng``. A draw whose result exceeds
    ``constraints`` is undone and drawn again; after ``max_tries`` failed draws for one morphism
    the function stops early and says so in ``note`` of the returned list (and logs it).

    Args:
        graph: the parent network (unchanged).
        n: number of morphisms (NASH's ``n_nm``), >= 0.
        rng: a Generator or a seed; all randomness flows from it.
        passes: passes or pass names; default :data:`SEARCH_PASSES`.
        constraints: :class:`Constraints` on the child.
        max_tries: draws per morphism before giving up.

    Returns:
        ``(child, morphisms)``; each morphism is ``{"pass": name, "site": str(site), "info": {...}}``
        (JSON-serialisable).

    Raises:
        PassError: bad arguments, or a pass that misbehaves (a bug): its ``sites()`` or ``apply()``
            raises something other than :class:`NotApplicable`, its info is not JSON-serialisable, or
            it left a graph that does not verify. The message names the pass.
    """
    if int(n) != n or n < 0:
        raise PassError(f"sample_morphisms: n must be a non-negative integer, got {n!r}")
    rng = as_rng(rng)
    pool = _resolve(passes)
    child = graph.clone()
    done = Morphisms()
    if max_tries < 1:
        raise PassError(f"sample_morphisms: max_tries must be >= 1, got {max_tries!r}")
    for k in range(int(n)):
        cands = [(p, s) for p in pool for s in [_sites(p, child)] if s]
        if not cands:
            done.note = f"stopped after {k} of {n} morphisms: no pass has an applicable site"
            log.info("sample_morphisms: %s", done.note)
            break
        last = ""
        for _ in range(max_tries):
            p, sites = cands[int(rng.integers(len(cands)))]
            site = sites[int(rng.integers(len(sites)))]
            trial = child.clone()
            try:
                res = p.apply(trial, site, rng)
            except NotApplicable as e:  # a stale site list would be a bug; skip the draw
                last = str(e)
                log.warning("sample_morphisms: %s", e)
                continue
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
            try:
                trial.verify()
            except VerifyError as e:
                before = [d["pass"] + "@" + d["site"] for d in done]
                raise PassError(f"sample_morphisms: {p.name} at {site} left a graph that does not verify "
                                f"(morphisms before it: {before}):\n{e}") from e
            why = constraints.violation(trial) if constraints is not None else None
            if why is not None:
                last = f"{p.name} at {site} gives {why}"
                continue
            child = trial
            done.append({"pass": p.name, "site": str(site), "info": res.info})
            break
        else:
            done.note = f"stopped after {k} of {n} morphisms: {max_tries} draws failed, the last: {last}"
            log.info("sample_morphisms: %s", done.note)
            break
    return child, done


__all__ = ["sample_morphisms", "Constraints", "Morphisms", "SEARCH_PASSES"]
