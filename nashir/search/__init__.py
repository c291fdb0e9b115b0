"""NASH architecture search (Elsken, Metzen & Hutter 2018, arXiv 1711.04528; DESIGN.md section 7).

Hill climbing over network morphisms: :func:`nash` runs Algorithm 1 with the paper's settings
(:class:`SearchConfig`, presets ``paper`` and ``demo``), trains candidates through an
:class:`Executor`, and records everything in a resumable run folder (:class:`Ledger`).
:func:`write_report` turns a run folder into plots and a markdown report.

Importing this package imports neither torch nor onnxruntime; the backends are loaded when a
search runs.

Example::

    from nashir.search import nash, preset
    result = nash(None, None, preset("demo", dataset="digits"), run_dir="runs/demo", progress=True)
    print(result.summary_table())
"""

from __future__ import annotations

from nashir.search.config import PRESETS, SearchConfig, config_diff, preset
from nashir.search.executor import (
    STATUS_DIVERGED,
    STATUS_FAILED,
    STATUS_OK,
    DataSpec,
    Executor,
    InProcessExecutor,
    Job,
    Result,
    make_executor,
    run_job,
)
from nashir.search.ledger import Ledger, is_run
from nashir.search.nash import SearchFailed, SearchResult, candidate_seed, nash, prepare_run_dir
from nashir.search.report import format_summary, load_run, write_report
from nashir.search.startnet import check_model_fits, default_widths, reinitialize, start_network

#: The preset names (``paper``, ``demo``).
presets = tuple(sorted(PRESETS))

__all__ = [
    "nash",
    "SearchConfig",
    "SearchResult",
    "SearchFailed",
    "preset",
    "presets",
    "PRESETS",
    "config_diff",
    "Executor",
    "InProcessExecutor",
    "Job",
    "Result",
    "DataSpec",
    "run_job",
    "make_executor",
    "STATUS_OK",
    "STATUS_DIVERGED",
    "STATUS_FAILED",
    "Ledger",
    "is_run",
    "prepare_run_dir",
    "candidate_seed",
    "start_network",
    "default_widths",
    "check_model_fits",
    "reinitialize",
    "write_report",
    "load_run",
    "format_summary",
]
