"""Synthetic sections with image-like features for the simple baselines' tests."""

from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData

from gr2st._constants import feature_key
from gr2st.datasets import synthetic
from gr2st.genes import prepare_section
from learning_seed import LEARNING_SEED

FEATURES = feature_key("toy")


def add_toy_features(sections: list[AnnData], *, noise: float = 0.3, seed: int = 0) -> None:
    """``obsm["X_toy"]``: a noisy one-hot of the hidden state plus pure-noise columns.

    Stands in for frozen image features: informative about the state that drives
    expression, like an encoder on the synthetic images, without running one.
    """
    rng = np.random.default_rng(seed)
    for adata in sections:
        onehot = 2.0 * np.eye(5)[adata.obs["latent_state"].to_numpy()]
        informative = onehot + rng.normal(scale=noise, size=onehot.shape)
        adata.obsm[FEATURES] = np.hstack([informative, rng.normal(size=(adata.n_obs, 3))]).astype(
            np.float32
        )


@pytest.fixture(scope="module")
def raw_sections() -> list[AnnData]:
    sections = synthetic(n_sections=4, n_genes=30, grid=(8, 8), signal=2.5, seed=3 + LEARNING_SEED)
    add_toy_features(sections, seed=LEARNING_SEED)
    return sections


@pytest.fixture(scope="module")
def prepared(raw_sections: list[AnnData]) -> list[AnnData]:
    genes = list(raw_sections[0].var_names)
    return [prepare_section(a, genes=genes) for a in raw_sections]
