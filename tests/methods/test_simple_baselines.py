from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData

from gr2st._constants import feature_key
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.evaluation import pearson_per_gene, section_metrics
from gr2st.methods import METHODS
from gr2st.methods.knn import KNNBaseline
from gr2st.methods.mean import MeanBaseline
from gr2st.methods.oracle import ExpressionOracle
from gr2st.methods.ridge import RidgeBaseline
from gr2st.retrieval import retrieve

FEATURES = feature_key("toy")  # filled by the raw_sections fixture (conftest.py)


def _blind(adata: AnnData) -> AnnData:
    return AnnData(obs=adata.obs.copy(), var=adata.var.copy(), obsm=dict(adata.obsm))


def _fit_predict(name: str, prepared: list[AnnData], **options: object) -> np.ndarray:
    method = METHODS.get(name)(feature_key=FEATURES, device="cpu", **options)
    method.fit(prepared[1:])
    test = prepared[0] if method.is_ceiling else _blind(prepared[0])
    return method.predict(test)


def test_registered() -> None:
    assert {"mean", "ridge", "knn", "oracle"} <= set(METHODS.names())
    assert METHODS.get("oracle").is_ceiling
    assert not any(METHODS.get(n).is_ceiling for n in ("mean", "ridge", "knn"))


def test_mean_is_training_mean_and_all_pcc_undefined(prepared: list[AnnData]) -> None:
    pred = _fit_predict("mean", prepared)
    train = np.vstack([a.X for a in prepared[1:]])
    np.testing.assert_allclose(pred, np.tile(train.mean(0), (prepared[0].n_obs, 1)), rtol=1e-6)
    assert np.isnan(pearson_per_gene(pred, prepared[0].X)).all()


def test_knn_equals_direct_retrieval(prepared: list[AnnData]) -> None:
    pred = _fit_predict("knn", prepared, overrides=["top_k=7"])
    keys = np.vstack([a.obsm[FEATURES] for a in prepared[1:]])
    values = np.vstack([a.X for a in prepared[1:]])
    ref = retrieve(prepared[0].obsm[FEATURES], keys, values, top_k=7, device="cpu").mean
    np.testing.assert_allclose(pred, ref, rtol=1e-6)


def test_oracle_retrieves_in_expression_space(prepared: list[AnnData]) -> None:
    pred = _fit_predict("oracle", prepared)
    bank = np.vstack([a.X for a in prepared[1:]])
    ref = retrieve(prepared[0].X, bank, bank, top_k=50, device="cpu").mean
    np.testing.assert_allclose(pred, ref, rtol=1e-6)


def test_ridge_alpha_from_training_sections_only(prepared: list[AnnData]) -> None:
    m = RidgeBaseline(feature_key=FEATURES, overrides=["alphas=0.1,1000,100000"])
    m.fit(prepared[1:])
    assert m.alpha_ in (0.1, 1000.0, 100000.0)
    assert set(m.cv_scores_) == {0.1, 1000.0, 100000.0}
    # The chosen α is the inner-CV winner; changing the test section cannot change it.
    assert m.cv_scores_[m.alpha_] == max(m.cv_scores_.values())
    first = m.predict(_blind(prepared[0]))
    other = RidgeBaseline(feature_key=FEATURES, overrides=["alphas=0.1,1000,100000"])
    other.fit(prepared[1:])
    np.testing.assert_array_equal(first, other.predict(_blind(prepared[0])))
    described = m.describe()
    assert described["alpha"] == m.alpha_
    assert described["n_components"] == 256


def test_ridge_inner_cv_matches_manual_leave_one_section_out(prepared: list[AnnData]) -> None:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = prepared[1:]
    m = RidgeBaseline(feature_key=FEATURES, overrides=["alphas=10"])
    m.fit(train)
    scores = []
    for i in range(len(train)):
        inner = [a for j, a in enumerate(train) if j != i]
        x = np.vstack([a.obsm[FEATURES] for a in inner])
        y = np.vstack([a.X for a in inner])
        model = make_pipeline(StandardScaler(), PCA(n_components=8, svd_solver="full"), Ridge(10.0))
        pred = model.fit(x, y).predict(train[i].obsm[FEATURES])
        r = pearson_per_gene(pred, train[i].X)
        scores.append(np.nanmean(r))
    assert m.cv_scores_[10.0] == pytest.approx(np.mean(scores), rel=1e-5)


def test_ridge_single_training_section_uses_spot_blocks(prepared: list[AnnData]) -> None:
    m = RidgeBaseline(feature_key=FEATURES, overrides=["inner_folds=3"])
    m.fit(prepared[1:2])
    assert m.alpha_ in m.config.alphas
    assert m.predict(_blind(prepared[0])).shape == prepared[0].shape


@pytest.mark.learning
def test_signal_ranking_on_strong_synthetic_data(prepared: list[AnnData]) -> None:
    truth = prepared[0].X
    genes = list(prepared[0].var_names)
    scores = {
        name: section_metrics(_fit_predict(name, prepared), truth, genes)
        for name in ("mean", "ridge", "knn", "oracle")
    }
    # mean: every gene undefined (strict score 0); ridge and knn learn the image signal.
    assert scores["mean"]["nan_genes"] == len(genes)
    assert scores["mean"]["strict_mean_pcc"] == 0.0
    for name in ("ridge", "knn"):
        assert scores[name]["strict_mean_pcc"] > 0.3, name
        assert scores[name]["mse"] < scores["mean"]["mse"], name
    for name in ("ridge", "knn"):
        assert scores["oracle"]["mean_pcc"] > scores[name]["mean_pcc"], name


@pytest.mark.parametrize("name", ["mean", "ridge", "knn", "oracle"])
def test_predict_values_on_fitted_genes_equals_predict(name: str, prepared: list[AnnData]) -> None:
    method = METHODS.get(name)(feature_key=FEATURES, device="cpu")
    method.fit(prepared[1:])
    test = prepared[0] if method.is_ceiling else _blind(prepared[0])
    expected = method.predict(test)
    # Predicting a subset of genes through the hook gives the same columns.
    values = [a[:, ::3].copy() for a in prepared[1:]]
    got = method.predict_values(test, values)  # type: ignore[attr-defined]
    np.testing.assert_allclose(got, expected[:, ::3], rtol=1e-4, atol=1e-5)


def test_predict_values_rejects_misaligned_values(prepared: list[AnnData]) -> None:
    m = KNNBaseline(feature_key=FEATURES, device="cpu")
    m.fit(prepared[1:])
    with pytest.raises(GR2STDataError, match="value rows"):
        m.predict_values(_blind(prepared[0]), prepared[1:2])


def test_bad_overrides_and_missing_features(prepared: list[AnnData]) -> None:
    with pytest.raises(GR2STConfigError, match="knn: unknown override 'k'"):
        KNNBaseline(feature_key=FEATURES, overrides=["k=3"])
    with pytest.raises(GR2STConfigError, match="mean: unknown override"):
        MeanBaseline(feature_key=FEATURES, overrides=["top_k=3"])
    with pytest.raises(GR2STConfigError, match=r"knn: top_k=.many.: expected an integer"):
        KNNBaseline(feature_key=FEATURES, overrides=["top_k=many"])
    with pytest.raises(GR2STConfigError, match="top_k must be > 0"):
        ExpressionOracle(feature_key=FEATURES, overrides=["top_k=0"])
    with pytest.raises(GR2STConfigError, match="alphas must be > 0"):
        RidgeBaseline(feature_key=FEATURES, overrides=["alphas=-1"])
    with pytest.raises(GR2STDataError, match=r"obsm\['X_missing'\] is missing"):
        KNNBaseline(feature_key="X_missing").fit(prepared[1:])
    with pytest.raises(GR2STConfigError, match="before fit"):
        RidgeBaseline(feature_key=FEATURES).predict(prepared[0])
