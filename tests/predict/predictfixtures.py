"""A tiny trained bundle on synthetic sections, shared by the predict tests (and CLI tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from anndata import AnnData

from gr2st._constants import feature_key
from gr2st.datasets import synthetic
from gr2st.encoders import get_encoder, prepare_image_inputs
from gr2st.genes import common_genes, prepare_sections
from gr2st.image import get_stain_normalizer
from gr2st.models import GR2ST
from gr2st.predict import BundleSettings, save_bundle

PANEL = [f"GENE{i:03d}" for i in range(6)]
SIZE_PX = 48
OVERRIDES = ["train.epochs=2", "model.proj_dim=32", "model.heads=2", "predict.top_k=10"]


@dataclass(frozen=True)
class Trained:
    """The in-memory model, its inputs, and the bundle written from it."""

    model: GR2ST
    train: list[AnnData]
    train_all: list[AnnData]
    test: AnnData
    raw: list[AnnData]
    path: Path
    image_dir: Path


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    folder = tmp_path_factory.mktemp("predict")
    raw = synthetic(n_sections=3, n_genes=12, grid=(6, 6), signal=2.0, image_dir=folder, seed=1)
    encoder = get_encoder("efficientnet-lite0", device="cpu")
    stain = get_stain_normalizer("reinhard")
    prepare_image_inputs(
        raw, encoder=encoder, nuclei="none", size_px=SIZE_PX, stain=stain, progress=False
    )
    train = prepare_sections(raw[:2], genes=PANEL, progress=False)
    train_all = prepare_sections(
        raw[:2], genes=common_genes(raw[:2]), library_genes=PANEL, progress=False
    )
    model = GR2ST(
        train, feature_key=feature_key(encoder.name), overrides=OVERRIDES, seed=0, device="cpu"
    )
    model.train(progress=False)
    settings = BundleSettings(encoder=encoder, size_px=SIZE_PX, stain=stain, nuclei="none")
    path = save_bundle(
        model,
        folder / "bundle",
        sections=train,
        all_genes=train_all,
        settings=settings,
        command=["pytest"],
    )
    return Trained(model, train, train_all, raw[2], raw, path, folder)
