"""One cross-validation loop for every method: fit, predict, score, resume, report."""

from __future__ import annotations

from gr2st.benchmark.report import build_results, render_table, table_text
from gr2st.benchmark.runner import fold_seed, run_benchmark
from gr2st.benchmark.store import FoldRecord, FoldStore

__all__ = [
    "FoldRecord",
    "FoldStore",
    "build_results",
    "fold_seed",
    "render_table",
    "run_benchmark",
    "table_text",
]
