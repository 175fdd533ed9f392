"""GR2ST training levers: position decay, early stopping on a training section, ensembles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from anndata import AnnData

from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError
from gr2st.evaluation.metrics import pearson_per_gene
from gr2st.methods.gr2st import GR2STMethod, member_seed
from gr2st.models import GR2ST
from gr2st.training import TrainingStats

pytestmark = pytest.mark.usefixtures("one_thread")

FEATURE_KEY = "X_test"
SMALL = [
    "model.proj_dim=8",
    "model.heads=2",
    "model.n_positions=32",
    "model.k_dynamic=4",
    "model.k_spatial=4",
    "train.lr=3e-3",
    "predict.top_k=10",
]


@pytest.fixture(scope="module")
def sections() -> list[AnnData]:
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(5, 6))
    out = []
    for adata in synthetic(n_sections=4, n_genes=12, grid=(6, 6), seed=0):
        counts = adata.X.toarray()
        adata.X = np.log10(1 + 1e4 * counts / counts.sum(1, keepdims=True)).astype(np.float32)
        state = adata.obs["latent_state"].to_numpy()
        adata.obsm[FEATURE_KEY] = (mix[state] + 0.3 * rng.normal(size=(adata.n_obs, 6))).astype(
            np.float32
        )
        out.append(adata)
    return out


def _model(train: list[AnnData], *extra: str, seed: int = 0) -> GR2ST:
    return GR2ST(
        train, feature_key=FEATURE_KEY, overrides=[*SMALL, *extra], seed=seed, device="cpu"
    )


def test_position_scale_weighs_the_position_embeddings(sections: list[AnnData]) -> None:
    section = sections[0]
    arrays = {}
    for scale in (1.0, 0.25, 0.0):
        model = _model(sections[:1], f"model.position_scale={scale}")
        expr = torch.from_numpy(np.asarray(section.X, dtype=np.float32))
        pos = torch.from_numpy(section.obs[["array_x", "array_y"]].to_numpy(np.float32))
        types = torch.zeros(section.n_obs, dtype=torch.long)
        m = model.module
        with torch.no_grad():
            idx = m.position_index(pos)
            position = m.x_embed(idx[:, 0]) + m.y_embed(idx[:, 1])
            rest = m.spot_input(expr, pos, types) - scale * position
        arrays[scale] = (rest, position)
    # Same seed, same weights: only the position term's weight differs.
    for scale in (0.25, 0.0):
        torch.testing.assert_close(arrays[scale][1], arrays[1.0][1])
        torch.testing.assert_close(arrays[scale][0], arrays[1.0][0], rtol=1e-5, atol=1e-5)


def test_early_stopping_trains_for_the_best_validation_epochs(
    sections: list[AnnData], tmp_path: Path
) -> None:
    train = sections[:3]
    extra = ("train.epochs=12", "train.early_stopping=true", "train.validate_every=4")
    model = _model(train, *extra)
    history = model.train(progress=False, checkpoint_dir=tmp_path / "run")
    val = model.validation
    assert val is not None
    assert val.section in {"S0", "S1", "S2"}
    assert sorted(val.scores) == [4, 8, 12]
    assert val.scores[val.best_epochs] == max(val.scores.values())
    assert len(history) == val.best_epochs

    # The scores are those of a model trained without the validation section.
    held = val.section
    inner = _model([a for a in train if a.obs["section"].iloc[0] != held], "train.epochs=4")
    inner.train(progress=False)
    truth = next(a for a in train if a.obs["section"].iloc[0] == held)
    r = pearson_per_gene(inner.predict(truth).mean, np.asarray(truth.X))
    assert val.scores[4] == pytest.approx(float(np.nanmean(r)), abs=1e-5)

    # Resuming from the saved run gives the same choice and weights.
    again = _model(train, *extra)
    again.train(progress=False, checkpoint_dir=tmp_path / "run")
    assert again.validation == val
    for a, b in zip(model.module.parameters(), again.module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_early_stopping_needs_two_training_sections(sections: list[AnnData]) -> None:
    model = _model(sections[:1], "train.epochs=2", "train.early_stopping=true")
    with pytest.raises(GR2STConfigError, match="at least two training sections"):
        model.train(progress=False)


def test_ensemble_averages_models_of_derived_seeds(sections: list[AnnData]) -> None:
    *train, test = sections
    method = GR2STMethod(
        feature_key=FEATURE_KEY,
        overrides=[*SMALL, "train.epochs=3", "train.ensemble=2"],
        seed=5,
        device="cpu",
        progress=False,
    )
    method.fit(train)
    members = []
    for i in range(2):
        model = _model(train, "train.epochs=3", "train.ensemble=2", seed=member_seed(5, i))
        model.train(progress=False)
        members.append(model.predict(test))
    means = np.array([m.mean for m in members], dtype=np.float64)
    np.testing.assert_allclose(method.predict(test), means.mean(axis=0), rtol=1e-5)
    full = method.predict_full(test)
    assert full.std.shape == full.mean.shape
    # The spread of all members' neighbours together: mean variance plus that of the means.
    stds = np.array([m.std for m in members], dtype=np.float64)
    expected = np.sqrt((stds**2).mean(axis=0) + means.var(axis=0))
    np.testing.assert_allclose(full.std, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(full.provenance.sum(axis=1), 1.0, rtol=1e-5)
    assert method.training_stats is not None
    assert method.training_stats.epochs_run == 6


def test_training_stats_add_up() -> None:
    a = TrainingStats(epochs_run=2, steps=4, seconds=1.0, train_seconds=0.5, peak_gpu_bytes=7)
    b = TrainingStats(epochs_run=3, steps=6, seconds=2.0, train_seconds=1.5, peak_gpu_bytes=3)
    total = a + b
    assert (total.epochs_run, total.steps, total.seconds, total.peak_gpu_bytes) == (5, 10, 3.0, 7)
    assert total.seconds_per_step == pytest.approx(0.2)
