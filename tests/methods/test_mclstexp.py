from __future__ import annotations

import numpy as np
import pytest
import torch
from anndata import AnnData

from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.genes.normalize import prepare_section
from gr2st.methods.base import METHODS
from gr2st.methods.mclstexp import AUGMENTATION, PROFILES, MclSTExp
from gr2st.models.layers import augment_patches

KEY = "X_latent"


def _prepared(n_sections: int, *, grid: tuple[int, int] = (8, 8), seed: int = 0) -> list[AnnData]:
    """Strong-signal sections whose features carry the latent state (one-hot + noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for raw in synthetic(n_sections=n_sections, n_genes=16, grid=grid, signal=2.0, seed=seed):
        section = prepare_section(raw, genes=list(raw.var_names))
        onehot = 2.0 * np.eye(8)[section.obs["latent_state"].to_numpy()]
        section.obsm[KEY] = (onehot + rng.normal(0, 0.3, onehot.shape)).astype(np.float32)
        out.append(section)
    return out


@pytest.fixture(scope="module")
def sections() -> list[AnnData]:
    return _prepared(4)


def _method(*overrides: str, seed: int = 0) -> MclSTExp:
    return MclSTExp(
        feature_key=KEY, profile="default", overrides=list(overrides), seed=seed, progress=False
    )


def test_registered_with_both_profiles():
    assert METHODS.get("mclstexp") is MclSTExp
    assert list(MclSTExp.profiles) == ["paper", "default"]
    assert PROFILES["paper"].image_input == "pixels"
    assert PROFILES["paper"].epochs == 90
    assert PROFILES["default"].image_input == "features"


def test_describe_records_profile_and_deviation(sections):
    method = _method("epochs=1")
    assert method.describe()["n_positions"] == 0
    method.fit(sections[:1])
    info = method.describe()
    assert info["profile"] == "default"
    assert info["epochs"] == 1
    assert info["n_positions"] == 9  # largest training coordinate (8) + 1
    assert "frozen" in info["deviations"]
    assert (
        "EfficientNet-Lite0" in MclSTExp(feature_key=KEY, profile="paper").describe()["deviations"]
    )


def test_bad_options_and_inputs_are_rejected(sections):
    with pytest.raises(GR2STConfigError, match="no profile 'gpu'; it has: paper, default"):
        MclSTExp(feature_key=KEY, profile="gpu")
    with pytest.raises(GR2STConfigError, match="unknown override 'epoch'"):
        _method("epoch=3")
    with pytest.raises(GR2STConfigError, match="epochs must be > 0"):
        _method("epochs=0")
    with pytest.raises(GR2STConfigError, match="before fit"):
        _method().predict(sections[0])
    with pytest.raises(GR2STDataError, match=r"obsm\['X_other'\] is missing"):
        MclSTExp(feature_key="X_other", profile="default", progress=False).fit(sections[:1])
    with pytest.raises(GR2STDataError, match="exceed n_positions=5"):
        _method("n_positions=5").fit(sections[:1])


def test_augmentation_keeps_range_and_is_seeded_by_its_generator():
    x = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    a = augment_patches(x, AUGMENTATION, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)  # the global generator plays no part
    b = augment_patches(x, AUGMENTATION, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, augment_patches(x, AUGMENTATION, generator=torch.Generator()))
    assert a.shape == x.shape
    assert float(a.min()) >= 0
    assert float(a.max()) <= 1
    # A uniform grey patch stays uniform (flips, rotations and jitter act per patch).
    grey = torch.full((5, 3, 4, 4), 120 / 255)
    out = augment_patches(grey, AUGMENTATION, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(out, out[:, :1, :1, :1].expand_as(out), atol=1e-6)


@pytest.mark.slow
def test_paper_profile_fine_tunes_the_cnn_on_patches(tmp_path):
    raw = synthetic(n_sections=2, n_genes=6, grid=(3, 3), image_dir=tmp_path, seed=0)
    train, test = (prepare_section(s, genes=list(s.var_names)) for s in raw)
    method = MclSTExp(
        feature_key=KEY,
        profile="paper",
        overrides=["epochs=1", "batch_size=9", "patch_px=32", "top_k=5"],
        device="cpu",
        progress=False,
    )
    method.fit([train])
    assert method.network_ is not None
    assert method.network_.image_encoder is not None
    from gr2st.encoders import get_encoder

    frozen = get_encoder("efficientnet-lite0", device="cpu", backend="torch").torch_module()
    tuned = method.network_.image_encoder.state_dict()
    changed = [
        name
        for name, value in frozen.state_dict().items()
        if value.is_floating_point() and not torch.equal(value, tuned[name])
    ]
    assert changed  # the encoder was trained, not frozen
    pred = method.predict(test)
    assert pred.shape == (9, 6)
    assert np.isfinite(pred).all()
