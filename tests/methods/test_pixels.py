"""The shared loop of the pixel methods, exercised with a tiny method defined here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from anndata import AnnData
from torch import Tensor, nn

from gr2st._constants import PATCHES
from gr2st.config import PositiveInt
from gr2st.datasets import synthetic
from gr2st.encoders import extract_patches
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.evaluation.metrics import pearson_per_gene
from gr2st.genes import get_panel, prepare_section
from gr2st.io import read_her2st
from gr2st.methods import METHODS
from gr2st.methods.pixels import PixelConfig, PixelMethod, PixelNet, _SectionTask, patch_tensor
from learning_seed import LEARNING_SEED


@dataclass(frozen=True)
class TinyConfig(PixelConfig):
    width: PositiveInt = 8


class TinyNet(PixelNet):
    """Mean colour of the patch → linear layer (enough to learn the synthetic signal)."""

    def __init__(self, n_genes: int, config: TinyConfig) -> None:
        super().__init__(config.augmentation)
        self.layers = nn.Sequential(
            nn.Linear(6, config.width), nn.ReLU(), nn.Linear(config.width, n_genes)
        )

    def forward(self, patches: Tensor, positions: Tensor) -> Tensor:
        # Colour differences between states are a few hundredths: scale them up.
        features = 20 * torch.cat([patches.mean((2, 3)) - 0.7, patches.std((2, 3))], 1)
        out: Tensor = self.layers(features)
        return out


class Tiny(PixelMethod[TinyConfig]):
    """:class:`TinyNet` as a pixel method."""

    name = "tiny"
    profiles: ClassVar[dict[str, TinyConfig]] = {
        "default": TinyConfig(epochs=30, lr=3e-2, aug_hflip=0.5)
    }
    patch_px = 8

    def network(self, n_genes: int) -> PixelNet:
        return TinyNet(n_genes, self.config)


@pytest.fixture(scope="module")
def sections() -> list[AnnData]:
    """Sections whose 16-px patches are a flat colour of the latent state plus noise."""
    raw = synthetic(
        n_sections=4, n_genes=12, grid=(8, 8), signal=2.5, state_scale=1.0, depth=200,
        seed=2 + LEARNING_SEED,
    )  # fmt: skip
    rng = np.random.default_rng(LEARNING_SEED)
    colours = np.array([[230, 120, 160], [120, 60, 170], [250, 220, 230]])
    for adata in raw:
        state = adata.obs["latent_state"].to_numpy()
        noisy = colours[state][:, None, None, :] + rng.normal(0, 12, (adata.n_obs, 16, 16, 3))
        adata.obsm[PATCHES] = np.clip(noisy, 0, 255).astype(np.uint8)
    return [prepare_section(a, genes=list(a.var_names)) for a in raw]


def _tiny(*overrides: str, seed: int = 0) -> Tiny:
    return Tiny(feature_key="X_unused", overrides=list(overrides), seed=seed, progress=False)


@pytest.mark.learning
def test_the_loop_fits_the_training_sections(sections):
    # Generalisation is each method's own test; this checks that the shared loop trains.
    method = _tiny()
    method.fit(sections[:3])
    assert len(method.history_) == 30
    assert method.history_[-1] < 0.5 * method.history_[0]
    seen = method.predict(sections[0])
    truth = np.asarray(sections[0].X)
    assert seen.shape == truth.shape
    assert seen.dtype == np.float32
    assert np.nanmean(pearson_per_gene(seen, truth)) > 0.3
    mean = np.vstack([np.asarray(s.X) for s in sections[:3]]).mean(0)
    assert ((seen - truth) ** 2).mean() < 0.85 * ((mean - truth) ** 2).mean()
    assert method.predict(sections[3]).shape == sections[3].shape


def test_patches_are_read_as_unit_floats_and_resized(sections):
    x = patch_tensor(sections[0], side=8, owner="tiny")
    assert x.shape == (sections[0].n_obs, 3, 8, 8)
    assert float(x.min()) >= 0
    assert float(x.max()) <= 1
    full = patch_tensor(sections[0], side=16, owner="tiny")
    expected = torch.from_numpy(sections[0].obsm[PATCHES]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(full, expected)


def test_step_schedule_and_section_order(sections):
    method = _tiny("lr=1.0", "lr_step_epochs=2", "lr_gamma=0.5")
    task = _SectionTask(
        method.config,
        [method.section(a, device=torch.device("cpu"), train=True) for a in sections[:3]],
    )
    assert [task.learning_rate(e, 0) for e in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    rng = np.random.default_rng(0)
    order = [b.data.name for b in task.batches(0, rng)]
    assert sorted(order) == ["S0", "S1", "S2"]  # every section once per epoch


def test_errors(sections):
    with pytest.raises(GR2STConfigError, match="tiny: no profile 'paper'; it has: default"):
        Tiny(feature_key="X", profile="paper")
    with pytest.raises(
        GR2STConfigError, match="tiny: optimizer='sgd': expected one of adam, adamw"
    ):
        _tiny("optimizer=sgd")
    with pytest.raises(GR2STConfigError, match=r"tiny: aug_hflip must be in \[0, 1\], got 2.0"):
        _tiny("aug_hflip=2")
    with pytest.raises(GR2STConfigError, match="predict\\(\\) called before fit"):
        _tiny().predict(sections[0])
    bare = sections[0].copy()
    del bare.obsm[PATCHES]
    with pytest.raises(GR2STDataError, match="obsm\\['patches'\\] is missing"):
        _tiny("epochs=1").fit([bare])
    bad = sections[0].copy()
    bad.obsm[PATCHES] = bad.obsm[PATCHES].astype(np.float32)
    with pytest.raises(GR2STDataError, match="must be uint8"):
        _tiny("epochs=1").fit([bad])
    with pytest.raises(GR2STDataError, match="n_positions=4"):
        _tiny("n_positions=4").fit(sections[:1])


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("name", ["histogene", "hist2st", "thitogene", "hggep"])
def test_default_profiles_train_on_her2st_patches(name: str, her2st_root: Path, tmp_path: Path):
    genes = get_panel("her2st-785")
    cls = METHODS.get(name)
    raw = [read_her2st(her2st_root, section)[:48].copy() for section in ("C2", "C3")]
    extract_patches(raw, out_px=cls.patch_px, cache_dir=tmp_path, progress=False)
    train, test = (prepare_section(a, genes=genes) for a in raw)
    method = cls(feature_key="X_unused", profile="default", overrides=["epochs=2"], progress=False)
    method.fit([train], workdir=tmp_path / "fold")
    pred = method.predict(test)
    assert pred.shape == (test.n_obs, len(genes))
    assert np.isfinite(pred).all()
    assert method.history_[1] < method.history_[0]
    assert (tmp_path / "fold" / "checkpoint.pt").is_file()
