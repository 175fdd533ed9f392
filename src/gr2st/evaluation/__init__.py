"""Scores, summaries, significance tests and cross-validation splits."""

from __future__ import annotations

from gr2st.evaluation.metrics import pearson_per_gene, section_metrics, summarize
from gr2st.evaluation.splits import (
    SPLITS,
    Fold,
    leave_one_patient_out,
    leave_one_section_out,
    make_folds,
)
from gr2st.evaluation.stats import WilcoxonResult, paired_wilcoxon

__all__ = [
    "SPLITS",
    "Fold",
    "WilcoxonResult",
    "leave_one_patient_out",
    "leave_one_section_out",
    "make_folds",
    "paired_wilcoxon",
    "pearson_per_gene",
    "section_metrics",
    "summarize",
]
