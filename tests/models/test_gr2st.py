from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData

from gr2st._constants import CELL_TYPE
from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.models import GR2ST
from learning_seed import LEARNING_SEED

pytestmark = pytest.mark.usefixtures("one_thread")

FEATURE_KEY = "X_test"
# Small widths keep each training run to a fraction of a second on CPU.
SMALL = (
    "model.proj_dim=16",
    "model.heads=2",
    "model.n_positions=64",
    "model.k_dynamic=6",
    "model.k_spatial=6",
    "train.lr=3e-3",
    "predict.top_k=20",
)

Sections = Callable[..., list[AnnData]]


def _prepare(sections: list[AnnData], *, dim: int = 16, noise: float = 0.3) -> list[AnnData]:
    """Log-normalise counts; give each spot image-like features driven by its latent state."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(5, dim))
    out = []
    for adata in sections:
        counts = adata.X.toarray()
        keep = counts.sum(1) > 0
        adata = adata[keep].copy()
        counts = counts[keep]
        adata.X = np.log10(1 + 1e4 * counts / counts.sum(1, keepdims=True)).astype(np.float32)
        state = adata.obs["latent_state"].to_numpy()
        features = mix[state] + noise * rng.normal(size=(adata.n_obs, dim))
        adata.obsm[FEATURE_KEY] = features.astype(np.float32)
        out.append(adata)
    return out


@pytest.fixture(scope="module")
def make_sections() -> Sections:
    """``make_sections()`` → three prepared 10×10 sections (fresh copies each call)."""
    raw = synthetic(
        n_sections=3, n_genes=40, grid=(10, 10), state_scale=1.0, depth=200, seed=LEARNING_SEED
    )
    sections = _prepare(raw)
    return lambda: [a.copy() for a in sections]


def _model(train: list[AnnData], *extra: str, seed: int = 0) -> GR2ST:
    return GR2ST(
        train, feature_key=FEATURE_KEY, overrides=[*SMALL, *extra], seed=seed, device="cpu"
    )


def _weights(model: GR2ST) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _assert_same_weights(a: GR2ST, b: GR2ST) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def _pearson_per_gene(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    p, t = pred - pred.mean(0), truth - truth.mean(0)
    return (p * t).sum(0) / np.sqrt((p**2).sum(0) * (t**2).sum(0))


@pytest.mark.learning
def test_training_reduces_the_loss_and_predicts_better_than_the_mean(
    make_sections: Sections,
) -> None:
    *train, test = make_sections()
    model = _model(train, "train.epochs=10")
    history = model.train(progress=False)
    assert len(history) == 10
    assert history[-1] < 0.8 * history[0]
    pred = model.predict(test)
    truth = np.asarray(test.X)
    assert pred.mean.shape == pred.std.shape == truth.shape
    assert pred.mean.dtype == np.float32
    assert pred.var_names == list(test.var_names)
    assert pred.obs_names == list(test.obs_names)
    train_mean = np.concatenate([np.asarray(a.X) for a in train]).mean(0)
    mse_model = float(((pred.mean - truth) ** 2).mean())
    mse_mean = float(((train_mean - truth) ** 2).mean())
    # Predicting each spot by the mean of its latent state (the ceiling) reaches 0.73 and
    # r = 0.43 here; the training mean has r = NaN (constant).
    assert mse_model < 0.85 * mse_mean
    assert np.nanmean(_pearson_per_gene(pred.mean, truth)) > 0.3
    # Provenance: a weight share per training section, summing to one per spot.
    assert pred.provenance.shape == (test.n_obs, 2)
    assert pred.train_sections == ["S0", "S1"]
    np.testing.assert_allclose(pred.provenance.sum(1), 1.0, rtol=1e-5)
    assert (pred.std >= 0).all()


def test_untrained_model_does_not_predict(make_sections: Sections) -> None:
    *train, test = make_sections()
    with pytest.raises(GR2STConfigError, match="not trained"):
        _model(train).predict(test)


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("train.optimizer_per_epoch=false", "train.average_last=2", "train.feature_noise=0.5"),
        ("train.mixup=0.4",),
    ],
)
def test_interrupted_training_resumes_to_identical_weights(
    make_sections: Sections, tmp_path: Path, extra: tuple[str, ...]
) -> None:
    train = make_sections()[:2]
    straight = _model(train, "train.epochs=4", *extra)
    straight.train(progress=False)

    def kill_after_two(epochs_done: int, loss: float) -> None:
        if epochs_done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _model(train, "train.epochs=4", *extra).train(
            progress=False, checkpoint_dir=tmp_path, checkpoint_every=0, on_epoch_end=kill_after_two
        )
    seen: list[int] = []
    resumed = _model(train, "train.epochs=4", *extra)
    history = resumed.train(
        progress=False, checkpoint_dir=tmp_path, on_epoch_end=lambda e, _: seen.append(e)
    )
    assert seen == [3, 4]
    assert history == straight.history
    _assert_same_weights(straight, resumed)


def test_checkpoint_of_another_run_is_not_resumed(make_sections: Sections, tmp_path: Path) -> None:
    train = make_sections()[:2]
    _model(train, "train.epochs=2").train(progress=False, checkpoint_dir=tmp_path)
    fresh = _model(train, "train.epochs=2", "train.lr=1e-3")
    seen: list[int] = []
    fresh.train(progress=False, checkpoint_dir=tmp_path, on_epoch_end=lambda e, _: seen.append(e))
    assert seen == [1, 2]


def test_save_load_round_trip(make_sections: Sections, tmp_path: Path) -> None:
    *train, test = make_sections()
    model = _model(train, "train.epochs=2")
    model.train(progress=False)
    model.save(tmp_path / "model")
    # The one saved-model format: a bundle (here without image settings).
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "bank.safetensors",
        "bundle.json",
        "weights.safetensors",
    ]
    loaded = GR2ST.load(tmp_path / "model", device="cpu")
    assert loaded.config == model.config
    assert loaded.history == model.history
    assert loaded.image_settings is None
    assert loaded.train_section_names == model.train_section_names
    np.testing.assert_array_equal(
        loaded.predict_features(test.obsm[FEATURE_KEY]).mean, model.predict(test).mean
    )
    np.testing.assert_array_equal(loaded.embed_images(test), model.embed_images(test))
    np.testing.assert_array_equal(loaded.embed_spots(test), model.embed_spots(test))
    a, b = model.predict(test), loaded.predict(test)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    np.testing.assert_array_equal(a.provenance, b.provenance)
    with pytest.raises(GR2STConfigError, match="without its training sections"):
        loaded.train(progress=False)


def test_load_rejects_a_folder_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(GR2STConfigError, match=r"bundle\.json: missing; not a gr2st bundle"):
        GR2ST.load(tmp_path)
    (tmp_path / "bundle.json").write_text('{"format": "other"}')
    with pytest.raises(GR2STConfigError, match="format is not 'gr2st-bundle'"):
        GR2ST.load(tmp_path)


def test_predict_other_values_and_top_k(make_sections: Sections) -> None:
    *train, test = make_sections()
    # One bank, so that top_k=1 returns one training spot (the default mixes two banks).
    model = _model(train, "train.epochs=2", "predict.bank=spots")
    model.train(progress=False)
    # Values with other genes: here twice the panel, in reverse order.
    doubled = []
    for a in train:
        b = a[:, ::-1].copy()
        b.X = 2 * np.asarray(b.X)
        doubled.append(b)
    base, other = model.predict(test), model.predict(test, values=doubled)
    assert other.var_names == list(train[0].var_names[::-1])
    np.testing.assert_allclose(other.mean, 2 * base.mean[:, ::-1], rtol=1e-5, atol=1e-6)
    single = model.predict(test, top_k=1)
    # One neighbour: every prediction is some training spot's expression, with no spread.
    bank = np.concatenate([np.asarray(a.X) for a in train])
    assert (np.abs(single.mean[:, None, :] - bank[None]).max(-1).min(1) < 1e-6).all()
    assert (single.std == 0).all()
    with pytest.raises(GR2STDataError, match="obs_names must equal"):
        model.predict(test, values=[doubled[0][::-1].copy(), doubled[1]])


def test_predict_needs_only_image_features(make_sections: Sections) -> None:
    *train, test = make_sections()
    model = _model(train, "train.epochs=1")
    model.train(progress=False)
    bare = AnnData(obs=pd.DataFrame(index=test.obs_names))
    bare.obsm[FEATURE_KEY] = test.obsm[FEATURE_KEY]
    np.testing.assert_array_equal(model.predict(bare).mean, model.predict(test).mean)


def test_embed_spots_reorders_genes_and_checks_inputs(make_sections: Sections) -> None:
    *train, test = make_sections()
    model = _model(train)
    np.testing.assert_array_equal(model.embed_spots(test[:, ::-1].copy()), model.embed_spots(test))
    with pytest.raises(GR2STDataError, match="3 model genes are missing"):
        model.embed_spots(test[:, 3:].copy())
    wrong = test.copy()
    wrong.obsm[FEATURE_KEY] = wrong.obsm[FEATURE_KEY][:, :5]
    with pytest.raises(GR2STDataError, match=r"shape \(100, 5\); the model expects \(n, 16\)"):
        model.embed_images(wrong)
    emb = model.embed_images(test)
    assert emb.shape == (test.n_obs, 16)
    assert emb.dtype == np.float32


def test_training_input_validation(make_sections: Sections) -> None:
    a, b, _ = make_sections()
    with pytest.raises(GR2STDataError, match="at least one training section"):
        _model([])
    with pytest.raises(GR2STDataError, match="var_names differ from section 'S0'"):
        _model([a, b[:, ::-1].copy()])
    with pytest.raises(GR2STDataError, match=r"obsm\['X_none'\] is missing"):
        GR2ST([a], feature_key="X_none", overrides=SMALL, device="cpu")
    far = a.copy()
    far.obs["array_x"] = 100.0
    with pytest.raises(GR2STDataError, match=r"must be in \[0, 64\) \(model.n_positions\)"):
        _model([far])
    bad_type = a.copy()
    bad_type.obs[CELL_TYPE] = 7
    with pytest.raises(GR2STDataError, match=r"integer type ids in 0\.\.5"):
        _model([bad_type])
    nan = a.copy()
    nan.X[0, 0] = np.nan
    with pytest.raises(GR2STDataError, match="X: contains NaN or infinite values"):
        _model([nan])
    with pytest.raises(GR2STDataError, match="section names must be unique"):
        _model([a, a.copy()])


def test_missing_cell_type_is_type_zero_with_a_warning(make_sections: Sections) -> None:
    a = make_sections()[0]
    del a.obs[CELL_TYPE]
    with pytest.warns(UserWarning, match=r"obs\['cell_type'\] is missing; every spot gets type 0"):
        model = _model([a])
    assert (model._train_data[0].types == 0).all()


def test_training_steps_with_fused_adam_equal_to_the_per_parameter_update(
    make_sections: Sections, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gr2st.models.task import ContrastiveTask

    fused_flags: list[bool] = []
    make = ContrastiveTask.make_optimizer

    def spy(task: ContrastiveTask, net: torch.nn.Module) -> torch.optim.Optimizer:
        optimizer = make(task, net)
        fused_flags.append(bool(optimizer.defaults["fused"]))
        return optimizer

    monkeypatch.setattr(ContrastiveTask, "make_optimizer", spy)
    fused = _model(make_sections(), "train.epochs=3")
    fused.train(progress=False)
    assert fused_flags
    assert all(fused_flags)

    def per_parameter(task: ContrastiveTask, net: torch.nn.Module) -> torch.optim.Optimizer:
        cfg = task.model.config.train
        return torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    monkeypatch.setattr(ContrastiveTask, "make_optimizer", per_parameter)
    plain = _model(make_sections(), "train.epochs=3")
    plain.train(progress=False)
    wf, wp, start = _weights(fused), _weights(plain), _weights(_model(make_sections()))
    assert wf.keys() == wp.keys()
    for key in wf:
        assert not torch.equal(wf[key], start[key]) or key.startswith("dynamic_tail_proj"), key
        if key.endswith("att_dst"):
            # Softmax over a node's in-edges ignores the destination's own score: this
            # gradient is zero but for rounding, which Adam scales up to ±lr per step.
            continue
        torch.testing.assert_close(wf[key], wp[key], rtol=1e-4, atol=1e-6)


def test_mixup_mixes_both_sides_of_a_spot_with_one_weight(make_sections: Sections) -> None:
    from gr2st.models.task import ContrastiveTask

    train = make_sections()[:2]
    task = ContrastiveTask(_model(train, "train.mixup=0.4"), [])
    torch.manual_seed(0)
    feats = torch.randn(64, 5)
    expression = torch.randn(64, 3)
    state = torch.get_rng_state()
    mixed_feats, mixed_expr = task._mix(feats, expression)
    # Replay the draws: the mix is own·λ + partner·(1-λ), λ ≥ 0.5, for both sides.
    torch.set_rng_state(state)
    draw = task.mixing.sample((64, 1))  # type: ignore[union-attr]
    lam = torch.maximum(draw, 1 - draw)
    partner = torch.randperm(64)
    assert (lam >= 0.5).all()
    assert (lam < 1).all()
    torch.testing.assert_close(mixed_feats, lam * feats + (1 - lam) * feats[partner])
    torch.testing.assert_close(mixed_expr, lam * expression + (1 - lam) * expression[partner])
    # Not a no-op, and no mixing without the option.
    assert (mixed_feats - feats).abs().max() > 0.1
    assert ContrastiveTask(_model(train), []).mixing is None


def test_bank_of_image_embeddings_and_the_mixture_of_both(
    make_sections: Sections, tmp_path: Path
) -> None:
    from dataclasses import replace

    from gr2st.retrieval import retrieve

    *train, test = make_sections()
    model = _model(train, "train.epochs=2")
    model.train(progress=False)
    values = np.concatenate([np.asarray(a.X) for a in train])
    groups = np.repeat([0, 1], [a.n_obs for a in train])
    query = model.embed_images(test)

    def expected(keys: np.ndarray):  # type: ignore[no-untyped-def]
        return retrieve(query, keys, values, top_k=20, key_groups=groups, n_groups=2)

    def with_bank(bank: str) -> GR2ST:
        model.config = replace(model.config, predict=replace(model.config.predict, bank=bank))
        return model

    spots = expected(np.concatenate([model.embed_spots(a) for a in train]))
    images = expected(np.concatenate([model.embed_images(a) for a in train]))
    np.testing.assert_allclose(with_bank("spots").predict(test).mean, spots.mean, rtol=1e-5)
    got = with_bank("images").predict(test)
    np.testing.assert_allclose(got.mean, images.mean, rtol=1e-5)
    np.testing.assert_allclose(got.provenance, images.provenance, rtol=1e-5)
    both = with_bank("both").predict(test)
    np.testing.assert_allclose(both.mean, (spots.mean + images.mean) / 2, rtol=1e-5, atol=1e-6)
    # An equal mixture's variance: mean of the variances plus the spread of the means.
    variance = (spots.std**2 + images.std**2) / 2 + ((spots.mean - images.mean) / 2) ** 2
    np.testing.assert_allclose(both.std, np.sqrt(variance), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(both.provenance.sum(1), 1.0, rtol=1e-5)
    assert np.abs(both.mean - spots.mean).max() > 1e-4  # the banks differ

    model.save(tmp_path / "model")
    loaded = GR2ST.load(tmp_path / "model", device="cpu")
    assert loaded.config.predict.bank == "both"
    np.testing.assert_array_equal(loaded.predict(test).mean, both.mean)
    # A bundle from before the image keys were saved predicts from the spot bank only.
    assert loaded._bank is not None
    loaded._bank = replace(loaded._bank, image_keys=None)
    with pytest.raises(
        GR2STConfigError, match=r"predict\.bank='both' needs the training spots' image"
    ):
        loaded.predict(test)
