from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from anndata import AnnData

from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError
from gr2st.methods.base import METHODS
from gr2st.methods.gr2st import GR2STMethod

pytestmark = pytest.mark.usefixtures("one_thread")

FEATURE_KEY = "X_test"
SMALL = [
    "model.proj_dim=8",
    "model.heads=2",
    "model.n_positions=32",
    "k_dynamic=4",
    "k_spatial=4",
    "train.epochs=3",
    "top_k=10",
]


@pytest.fixture(scope="module")
def sections() -> list[AnnData]:
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(5, 6))
    out = []
    for adata in synthetic(n_sections=3, n_genes=12, grid=(6, 6), seed=0):
        counts = adata.X.toarray()
        adata.X = np.log10(1 + 1e4 * counts / counts.sum(1, keepdims=True)).astype(np.float32)
        adata.obsm[FEATURE_KEY] = mix[adata.obs["latent_state"].to_numpy()].astype(np.float32)
        out.append(adata)
    return out


def _method(profile: str = "default", **kwargs: object) -> GR2STMethod:
    return GR2STMethod(
        feature_key=FEATURE_KEY,
        profile=profile,
        overrides=SMALL,
        device="cpu",
        progress=False,
        **kwargs,
    )


def test_registered_with_both_profiles() -> None:
    assert METHODS.get("gr2st") is GR2STMethod
    assert list(GR2STMethod.profiles) == ["paper", "paper-cscc", "default"]
    assert GR2STMethod(feature_key=FEATURE_KEY, profile="reference").profile == "paper"
    with pytest.raises(GR2STConfigError, match="'cpu'; it has: paper, paper-cscc, default"):
        GR2STMethod(feature_key=FEATURE_KEY, profile="cpu")
    with pytest.raises(GR2STConfigError, match=r"gr2st: unknown override .model\.colour."):
        GR2STMethod(feature_key=FEATURE_KEY, overrides=["model.colour=red"])


def test_fit_predict_and_describe(sections: list[AnnData], tmp_path: Path) -> None:
    *train, test = sections
    method = _method("reference")
    with pytest.raises(GR2STConfigError, match="before fit"):
        method.predict(test)
    method.fit(train, workdir=tmp_path)
    assert (tmp_path / "checkpoint.pt").is_file()  # the end of training is always saved
    pred = method.predict(test)
    assert pred.shape == (test.n_obs, test.n_vars)
    assert pred.dtype == np.float32
    full = method.predict_full(test)
    np.testing.assert_array_equal(full.mean, pred)
    assert full.provenance.shape == (test.n_obs, 2)
    assert full.std.shape == pred.shape
    info = method.describe()
    assert info["profile"] == "paper"
    assert info["train"]["epochs"] == 3
    assert info["model"]["position_rounding"] == "floor"


def test_predict_values_retrieves_other_genes_with_the_same_weights(
    sections: list[AnnData],
) -> None:
    method = _method()
    method.fit(sections[:2])
    test = sections[2]
    # Values = the panel itself doubled: retrieval is linear in the values.
    doubled = [AnnData(X=2 * s.X, obs=s.obs, var=s.var) for s in sections[:2]]
    np.testing.assert_allclose(
        method.predict_values(test, doubled), 2 * method.predict(test), rtol=1e-5, atol=1e-6
    )
    # A subset of genes gives the matching columns.
    subset = [s[:, ["GENE003", "GENE001"]].copy() for s in sections[:2]]
    np.testing.assert_allclose(
        method.predict_values(test, subset), method.predict(test)[:, [3, 1]], rtol=1e-5, atol=1e-6
    )
    with pytest.raises(GR2STConfigError, match="before fit"):
        _method().predict_values(test, subset)
