"""Bundles: the version that wrote them is checked; outputs are never replaced silently."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from gr2st import __version__
from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError
from gr2st.models import GR2ST
from gr2st.models.bundle import META_FILE, meta_fingerprint

SMALL = ["model.proj_dim=16", "model.heads=2", "model.n_positions=64", "train.epochs=1"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch GR2ST saved as a bundle (stand-in features, no image settings)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    sections = []
    for adata in synthetic(n_sections=2, n_genes=10, grid=(5, 5), seed=0):
        counts = adata.X.toarray()
        adata = adata[counts.sum(1) > 0].copy()
        counts = adata.X.toarray()
        adata.X = np.log1p(1e4 * counts / counts.sum(1, keepdims=True)).astype(np.float32)
        adata.obsm["X_test"] = rng.normal(size=(adata.n_obs, 8)).astype(np.float32)
        sections.append(adata)
    model = GR2ST(sections, feature_key="X_test", overrides=SMALL, seed=0, device="cpu")
    model.train(progress=False)
    folder = tmp_path_factory.mktemp("bundle") / "model"
    model.save(folder)
    return folder


def _written_by(folder: Path, version: str) -> None:
    meta_path = folder / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["gr2st_version"] = version
    meta["fingerprint"] = meta_fingerprint(meta)
    meta_path.write_text(json.dumps(meta))


def _copy(bundle: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for file in bundle.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    return folder


def test_bundle_of_a_newer_major_version_is_refused(bundle: Path, tmp_path: Path) -> None:
    folder = _copy(bundle, tmp_path)
    _written_by(folder, "7.0.0")
    with pytest.raises(GR2STConfigError) as err:
        GR2ST.load(folder, device="cpu")
    assert str(err.value) == (
        f"{folder / META_FILE}: written by gr2st 7.0.0, a newer major version than this "
        f"gr2st {__version__}; upgrade gr2st (pip install -U gr2st) to read it"
    )


def test_bundle_of_an_older_version_loads_with_a_warning(
    bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _copy(bundle, tmp_path)
    _written_by(folder, "0.0.1")
    with caplog.at_level(logging.WARNING, logger="gr2st.models.bundle"):
        loaded = GR2ST.load(folder, device="cpu")
    assert loaded.train_section_names
    assert f"written by gr2st 0.0.1, older than this gr2st {__version__}" in caplog.text


def test_bundle_of_this_version_loads_quietly(
    bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gr2st.models.bundle"):
        GR2ST.load(bundle, device="cpu")
    assert caplog.text == ""


def test_edited_version_without_fingerprint_is_refused(bundle: Path, tmp_path: Path) -> None:
    folder = _copy(bundle, tmp_path)
    meta = json.loads((folder / META_FILE).read_text())
    meta["gr2st_version"] = "7.0.0"
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(GR2STConfigError, match="fingerprint does not match"):
        GR2ST.load(folder, device="cpu")


def test_existing_outputs_need_overwrite(cli, bundle: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred.h5ad"
    pred.write_bytes(b"previous")
    image = tmp_path / "slide.png"
    outcome = cli("predict", "--model", bundle, "--image", image, "--out", pred)
    assert outcome.code == 2
    assert outcome.one_error() == (
        f"error: --out {pred}: already exists; pass --overwrite to replace it"
    )
    assert pred.read_bytes() == b"previous"
    outcome = cli("train", "--data", tmp_path, "--out", bundle)
    assert outcome.code == 2
    assert outcome.one_error() == (
        f"error: --out {bundle}: already exists; pass --overwrite to replace it"
    )
