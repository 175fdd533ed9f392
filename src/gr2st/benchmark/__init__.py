"""One cross-validation loop for every method: fit, predict, score, resume, report.

The fold loop and the report are loaded on first use, so that methods and models can
import the light helpers of this package (``gr2st.benchmark.data``,
``gr2st.benchmark.overrides``) without importing every method in turn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gr2st.benchmark.report import build_results, render_table, table_text
    from gr2st.benchmark.runner import fold_seed, run_benchmark
    from gr2st.benchmark.store import FoldRecord, FoldStore

_EXPORTS = {
    "FoldRecord": "gr2st.benchmark.store",
    "FoldStore": "gr2st.benchmark.store",
    "build_results": "gr2st.benchmark.report",
    "fold_seed": "gr2st.benchmark.runner",
    "render_table": "gr2st.benchmark.report",
    "run_benchmark": "gr2st.benchmark.runner",
    "table_text": "gr2st.benchmark.report",
}

__all__ = [
    "FoldRecord",
    "FoldStore",
    "build_results",
    "fold_seed",
    "render_table",
    "run_benchmark",
    "table_text",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gr2st.benchmark' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
