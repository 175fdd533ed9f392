from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wilcoxon

from gr2st.benchmark import FoldRecord, build_results, render_table, table_text
from gr2st.evaluation import leave_one_section_out
from gr2st.methods import METHODS

SECTIONS = ["A1", "A2", "A3", "A4", "A5", "A6"]


def _records(scores: list[float]) -> dict[str, FoldRecord]:
    out = {}
    for section, score in zip(SECTIONS, scores, strict=True):
        metrics = {
            "mean_pcc": score,
            "strict_mean_pcc": score / 2,
            "n_spots": 10,
            "nan_genes": 1,
            "mse": 1.0,
            "mae": 0.5,
            "heg50_pcc": score,
            "hvg50_pcc": score,
        }
        meta = {"seed": 1, "seconds": 2.0, "config": {}, "sections": {section: metrics}}
        out[section] = FoldRecord(meta=meta, predictions={}, pcc={section: np.zeros(3)})
    return out


def _results() -> dict:
    scores = {
        "gr2st": [0.30, 0.32, 0.25, 0.28, 0.31, 0.29],
        "knn": [0.20, 0.21, 0.22, 0.19, 0.18, 0.30],
        "oracle": [0.40, 0.41, 0.42, 0.39, 0.38, 0.45],
    }
    return build_results(
        {name: _records(s) for name, s in scores.items()},
        classes={name: METHODS.get(name) for name in scores},
        profiles={"gr2st": "default", "knn": "default", "oracle": "default"},
        folds=leave_one_section_out(SECTIONS),
        sections=SECTIONS,
        dataset="toy",
        split="section",
        genes=["g1", "g2", "g3"],
        genes_label=None,
        feature_key="X_toy",
        seed=0,
    )


def test_wilcoxon_against_gr2st_and_ceilings() -> None:
    res = _results()
    assert res["ranking"] == ["gr2st", "knn"]
    assert res["ceilings"] == ["oracle"]
    knn = res["methods"]["knn"]
    expected = wilcoxon(
        [0.20, 0.21, 0.22, 0.19, 0.18, 0.30], [0.30, 0.32, 0.25, 0.28, 0.31, 0.29]
    ).pvalue
    assert knn["wilcoxon_vs_gr2st_p"] == pytest.approx(expected)
    assert knn["wilcoxon_vs_gr2st_n"] == 6
    assert "wilcoxon_vs_gr2st_p" not in res["methods"]["gr2st"]
    assert knn["seconds"] == 12.0
    assert knn["nan_genes"] == 6
    assert knn["strict_mean_pcc"] == pytest.approx(
        np.mean([0.20, 0.21, 0.22, 0.19, 0.18, 0.30]) / 2
    )
    assert res["genes"] == "3 genes"


def test_table_ranks_methods_and_lists_ceilings_last() -> None:
    res = _results()
    table = render_table(res)
    assert table.row_count == 3
    assert [c.header for c in table.columns][-1] == "p vs gr2st"
    text = table_text(res)
    lines = [line for line in text.splitlines() if "│" in line]
    assert [line.split("│")[2].strip() for line in lines] == ["gr2st", "knn", "oracle"]
    assert lines[2].split("│")[1].strip() == "ceiling"
    assert lines[0].split("│")[-2].strip() == "—"
