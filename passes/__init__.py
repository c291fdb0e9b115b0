"""Network morphisms as rewrite passes (installed as ``nashir.passes``; DESIGN.md section 5).

* The contract: :class:`Pass` (``name``, ``exact``, ``sites``, ``check``, ``apply``),
  :class:`PassResult`, :class:`PassManager` / :class:`Sequential` (verify after every modifying
  pass), the registry (:func:`register_pass`, :func:`get_pass`, :func:`available_passes`, the
  entry-point group ``nashir.passes``, :func:`load_plugin`).
* The analyses: :func:`channel_flow` and the sign analysis (:func:`nonneg_values`,
  :func:`is_nonneg`), in :mod:`nashir.passes.analysis`.
* The exact morphisms: ``net2wider``, ``net2deeper``, ``add-skip``, ``concat-skip``,
  ``widen-kernel``; their weight transforms are plain numpy functions in
  :mod:`nashir.passes.transforms`.
* The approximate morphisms (``exact = False``; LEMONADE, arXiv 1804.09081): ``remove-layer``,
  ``remove-skip``, ``prune-filters``, ``separable-conv`` (:mod:`nashir.passes.approximate`).
* :func:`sample_morphisms` (NASH's ApplyNetMorphs) with :class:`Constraints`, and
  :func:`check_preservation`.

Importing this package imports neither torch nor onnxruntime.
"""

from __future__ import annotations

from nashir.errors import NotApplicable, PassError

from .analysis import (
    Absorber,
    Carried,
    ChannelFlow,
    PerChannelArray,
    channel_flow,
    is_layer_output,
    is_nonneg,
    layer_outputs,
    nonneg_values,
)
from .approximate import (
    APPROX_PASSES,
    ApproximatePass,
    PruneFilters,
    RemoveLayer,
    RemoveSkip,
    SeparableConv,
    measure_error,
)
from .base import (
    ENTRY_POINT_GROUP,
    Pass,
    PassManager,
    PassResult,
    Sequential,
    Site,
    as_rng,
    available_passes,
    get_pass,
    load_plugin,
    pass_source,
    register_pass,
)
from .net2deeper import Net2Deeper, ValueSite
from .net2wider import Net2Wider, NodeSite, remap_channels
from .preservation import PreservationReport, check_preservation
from .sampling import SEARCH_PASSES, Constraints, Morphisms, sample_morphisms
from .skip import AddSkip, ConcatSkip, SkipSite
from .widen_kernel import WidenKernel

__all__ = [
    "Pass", "PassResult", "PassManager", "Sequential", "Site", "register_pass", "get_pass",
    "available_passes", "load_plugin", "pass_source", "as_rng", "ENTRY_POINT_GROUP",
    "PassError", "NotApplicable",
    "channel_flow", "ChannelFlow", "Carried", "Absorber", "PerChannelArray", "nonneg_values", "is_nonneg",
    "is_layer_output", "layer_outputs",
    "Net2Wider", "Net2Deeper", "AddSkip", "ConcatSkip", "WidenKernel", "NodeSite", "ValueSite", "SkipSite",
    "remap_channels", "sample_morphisms", "Constraints", "Morphisms", "SEARCH_PASSES",
    "check_preservation", "PreservationReport",
    "ApproximatePass", "RemoveLayer", "RemoveSkip", "PruneFilters", "SeparableConv", "APPROX_PASSES",
    "measure_error",
]
