from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import pearsonr

from gr2st.errors import GR2STDataError
from gr2st.evaluation import pearson_per_gene, section_metrics, summarize


def test_pearson_matches_scipy_per_column() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(30, 6))
    pred = truth * rng.normal(size=6) + rng.normal(size=(30, 6))
    r = pearson_per_gene(pred, truth)
    expected = [pearsonr(pred[:, j], truth[:, j]).statistic for j in range(6)]
    np.testing.assert_allclose(r, expected, rtol=1e-12)
    assert r.shape == (6,)
    assert r.dtype == np.float64


def test_pearson_nan_for_constant_columns_without_warnings() -> None:
    truth = np.array([[1.0, 0.1, 2.0], [2.0, 0.1, 3.0], [4.0, 0.1, 1.0]])
    # Column 0: constant prediction 0.1 (whose float mean is not exactly 0.1).
    pred = np.array([[0.1, 1.0, 1.0], [0.1, 2.0, 2.0], [0.1, 3.0, 3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = pearson_per_gene(pred, truth)
    assert math.isnan(r[0])  # constant prediction
    assert math.isnan(r[1])  # constant truth
    assert r[2] == pytest.approx(pearsonr(pred[:, 2], truth[:, 2]).statistic)


def test_pearson_accepts_sparse_and_float32_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import gr2st.evaluation.metrics as metrics

    rng = np.random.default_rng(1)
    truth = rng.poisson(2.0, size=(20, 7)).astype(np.float32)
    pred = (truth + rng.normal(size=truth.shape)).astype(np.float32)
    full = pearson_per_gene(pred, truth)
    monkeypatch.setattr(metrics, "_GENE_CHUNK", 3)
    np.testing.assert_allclose(pearson_per_gene(pred, sp.csr_matrix(truth)), full, rtol=1e-12)


def test_pearson_rejects_bad_input() -> None:
    with pytest.raises(GR2STDataError, match="expected equal"):
        pearson_per_gene(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(GR2STDataError, match="pred: contains NaN"):
        pearson_per_gene(np.full((3, 2), np.nan), np.zeros((3, 2)))
    with pytest.raises(GR2STDataError, match="2-d"):
        pearson_per_gene(np.zeros(3), np.zeros(3))


def test_pearson_single_spot_is_all_nan() -> None:
    assert np.isnan(pearson_per_gene(np.ones((1, 3)), np.ones((1, 3)))).all()


def test_section_metrics_against_hand_computation() -> None:
    rng = np.random.default_rng(2)
    n_genes = 60
    truth = rng.gamma(2.0, np.linspace(0.2, 3.0, n_genes), size=(25, n_genes))
    pred = truth + rng.normal(scale=1.0, size=truth.shape)
    pred[:, 5] = 1.0  # one undefined gene
    genes = [f"g{i}" for i in range(n_genes)]
    m = section_metrics(pred, truth, genes)

    r = np.array(
        [pearsonr(pred[:, j], truth[:, j]).statistic if j != 5 else np.nan for j in range(n_genes)]
    )
    defined = r[~np.isnan(r)]
    assert m["mean_pcc"] == pytest.approx(defined.mean())
    assert m["strict_mean_pcc"] == pytest.approx(defined.sum() / n_genes)
    assert m["nan_genes"] == 1
    assert m["mse"] == pytest.approx(((pred - truth) ** 2).mean())
    assert m["mae"] == pytest.approx(np.abs(pred - truth).mean())
    assert m["n_spots"] == 25
    heg = np.argsort(truth.mean(0))[::-1][:50]
    hvg = np.argsort(truth.var(0))[::-1][:50]
    assert m["heg50_pcc"] == pytest.approx(np.nanmean(r[heg]))
    assert m["hvg50_pcc"] == pytest.approx(np.nanmean(r[hvg]))
    assert isinstance(m["pcc"], pd.Series)
    assert list(m["pcc"].index[:2]) == ["g0", "g1"]
    np.testing.assert_allclose(m["pcc"].to_numpy(), r, rtol=1e-10)


def test_section_metrics_fewer_genes_than_top_n_uses_all() -> None:
    truth = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 5.0]])
    pred = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    m = section_metrics(pred, truth, ["a", "b"])
    assert m["heg50_pcc"] == pytest.approx(m["mean_pcc"])
    assert m["hvg50_pcc"] == pytest.approx(m["mean_pcc"])


def test_section_metrics_all_undefined_policy() -> None:
    truth = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 5.0]])
    pred = np.tile([2.0, 3.0], (3, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = section_metrics(pred, truth, ["a", "b"])
    assert math.isnan(m["mean_pcc"])
    assert m["strict_mean_pcc"] == 0.0
    assert m["nan_genes"] == 2
    assert math.isnan(m["heg50_pcc"])


def test_section_metrics_gene_count_mismatch() -> None:
    with pytest.raises(GR2STDataError, match="got 1 names for 2"):
        section_metrics(np.zeros((3, 2)), np.zeros((3, 2)), ["a"])


def test_summarize_hand_values() -> None:
    s = summarize([0.1, 0.2, 0.6, float("nan")])
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(0.3)
    assert s["sd"] == pytest.approx(np.std([0.1, 0.2, 0.6], ddof=1))
    assert s["median"] == pytest.approx(0.2)
    one = summarize([0.4])
    assert one["mean"] == 0.4
    assert math.isnan(one["sd"])
    empty = summarize([float("nan")])
    assert empty["n"] == 0
    assert math.isnan(empty["mean"])
