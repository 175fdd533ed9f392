"""Bundles: round trip against the in-memory model, contents, and every validation error."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from predictfixtures import PANEL, SIZE_PX, Trained
from safetensors.torch import save_file

from gr2st._constants import feature_key
from gr2st._utils.files import sha256_file
from gr2st.encoders import get_encoder
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.image import ReinhardNormalizer
from gr2st.models.bundle import meta_fingerprint
from gr2st.predict import SCHEMA_VERSION, load_bundle
from gr2st.predict.bundle import BANK_FILE, META_FILE, WEIGHTS_FILE, _stain_meta


@pytest.mark.slow
def test_round_trip_predicts_like_the_in_memory_model(trained: Trained) -> None:
    bundle = load_bundle(trained.path, device="cpu")
    features = trained.test.obsm[feature_key("efficientnet-lite0")]
    got = bundle.predict_features(features)
    want = trained.model.predict(trained.test)
    # One prediction code path: identical to the in-memory model, bit for bit.
    np.testing.assert_array_equal(got.mean, want.mean)
    np.testing.assert_array_equal(got.std, want.std)
    np.testing.assert_array_equal(got.provenance, want.provenance)
    np.testing.assert_allclose(got.provenance.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(bundle.embed(features), trained.model.embed_images(trained.test))


@pytest.mark.slow
def test_bundle_contents(trained: Trained) -> None:
    bundle = load_bundle(trained.path, device="cpu")
    meta = bundle.meta
    encoder = get_encoder("efficientnet-lite0", device="cpu")
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["method"] == "gr2st"
    assert meta["encoder"] == {
        "name": encoder.name,
        "dim": encoder.dim,
        "weights_hash": encoder.weights_hash,
    }
    assert meta["patch"] == {"size_px": SIZE_PX, "size_um": 2.0 * SIZE_PX, "training_mpp": 2.0}
    assert meta["stain"]["name"] == "reinhard"
    assert meta["stain"]["reference"] is None
    assert meta["command"] == ["pytest"]
    assert meta["train_sections"][0]["obs_names"] == list(trained.train[0].obs_names)
    assert bundle.panel_genes == PANEL
    assert bundle.all_genes == [f"GENE{i:03d}" for i in range(12)]
    assert bundle.train_sections == ["S0", "S1"]
    assert bundle.n_bank_spots == 72
    assert bundle.config.predict.top_k == 10
    assert bundle.patch_px(None) == SIZE_PX
    assert bundle.patch_px(0.5) == 4 * SIZE_PX
    # The bank holds exactly the training expression, for the panel and for all genes.
    panel = np.concatenate([a.X for a in trained.train])
    everything = np.concatenate([a.X for a in trained.train_all])
    np.testing.assert_array_equal(bundle.bank_values(PANEL).numpy(), panel)
    np.testing.assert_array_equal(bundle.bank_values(bundle.all_genes).numpy(), everything)
    picked = bundle.bank_values(["GENE011", "GENE002"]).numpy()
    np.testing.assert_array_equal(picked, everything[:, [11, 2]])
    assert meta["bank"]["all_nnz"] == int(np.count_nonzero(everything))


def test_resolve_genes(trained: Trained) -> None:
    bundle = load_bundle(trained.path, device="cpu", check_encoder=False)
    assert bundle.resolve_genes("panel") == PANEL
    assert len(bundle.resolve_genes("all")) == 12
    assert bundle.resolve_genes("GENE010, GENE001") == ["GENE010", "GENE001"]
    with pytest.raises(GR2STConfigError, match=r"\['NOPE'\] are not in the model"):
        bundle.resolve_genes("GENE001,NOPE")
    with pytest.raises(GR2STConfigError, match="repeated"):
        bundle.resolve_genes(["GENE001", "GENE001"])


@pytest.fixture
def copy(trained: Trained, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained.path, tmp_path / "bundle"))


def _edit(folder: Path, change: Callable[[dict[str, Any]], None], *, refresh: bool = True) -> None:
    meta = json.loads((folder / META_FILE).read_text())
    change(meta)
    if refresh:
        meta["fingerprint"] = meta_fingerprint(meta)
    (folder / META_FILE).write_text(json.dumps(meta))


def test_schema_version_and_method(copy: Path) -> None:
    _edit(copy, lambda m: m.update(schema_version=99))
    with pytest.raises(
        GR2STConfigError, match=r"schema_version 99 is not supported .*reads 1 and 2"
    ):
        load_bundle(copy)
    _edit(copy, lambda m: m.update(schema_version=SCHEMA_VERSION, method="knn"))
    with pytest.raises(GR2STConfigError, match="method 'knn' is not supported"):
        load_bundle(copy)


def test_hand_edited_metadata(copy: Path) -> None:
    _edit(copy, lambda m: m["patch"].update(size_px=64), refresh=False)
    with pytest.raises(GR2STConfigError, match="fingerprint does not match"):
        load_bundle(copy)


def test_encoder_weights_hash_mismatch(copy: Path) -> None:
    _edit(copy, lambda m: m["encoder"].update(weights_hash="f" * 64))
    with pytest.raises(GR2STConfigError, match=r"encoder.weights_hash ffffffffffff… differs"):
        load_bundle(copy, device="cpu")
    # Inspecting the bundle without the encoder still works.
    assert load_bundle(copy, device="cpu", check_encoder=False).encoder is None


def test_missing_and_corrupted_files(copy: Path, tmp_path: Path) -> None:
    with pytest.raises(GR2STConfigError, match="no such bundle folder"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GR2STConfigError, match=r"bundle\.json: missing; not a gr2st bundle"):
        load_bundle(tmp_path / "empty")
    data = bytearray((copy / BANK_FILE).read_bytes())
    data[-10] ^= 0xFF
    (copy / BANK_FILE).write_bytes(bytes(data))
    with pytest.raises(GR2STDataError, match=r"bank.safetensors: sha256 differs"):
        load_bundle(copy)
    (copy / WEIGHTS_FILE).unlink()
    with pytest.raises(GR2STDataError, match=r"weights.safetensors: missing from the bundle"):
        load_bundle(copy)


def test_weights_that_do_not_fit(copy: Path) -> None:
    save_file({"image_projection.bogus": torch.zeros(3)}, str(copy / WEIGHTS_FILE))
    digest = sha256_file(copy / WEIGHTS_FILE)
    _edit(copy, lambda m: m["files"].update({WEIGHTS_FILE: digest}))
    with pytest.raises(GR2STDataError, match="weights do not fit the network"):
        load_bundle(copy, check_encoder=False)


def test_fitted_stain_reference_round_trip(copy: Path) -> None:
    fitted = ReinhardNormalizer(mean=np.array([60.0, 20.0, -10.0]), std=np.array([12.0, 6.0, 5.0]))
    stain = _stain_meta(fitted)
    assert stain["reference"] == {"mean": [60.0, 20.0, -10.0], "std": [12.0, 6.0, 5.0]}
    _edit(copy, lambda m: m.update(stain=stain))
    rebuilt = load_bundle(copy, check_encoder=False).stain_normalizer()
    assert rebuilt is not None
    assert rebuilt.key == fitted.key
    _edit(copy, lambda m: m["stain"].update(key="reinhard-0000"))
    with pytest.raises(GR2STConfigError, match=r"stain\.key 'reinhard-0000' differs"):
        load_bundle(copy, check_encoder=False).stain_normalizer()


def test_a_schema_1_bundle_is_read_with_a_warning(copy: Path, trained: Trained, caplog) -> None:
    def as_v1(meta: dict[str, Any]) -> None:
        # What gr2st 0.1 wrote: British spelling, the reference profile, no spot names.
        meta["schema_version"] = 1
        train = meta["config"]["train"]
        train["optimiser_per_epoch"] = train.pop("optimizer_per_epoch")
        del train["precision"]
        meta["profile"] = "reference"
        del meta["image_dim"]
        for section in meta["train_sections"]:
            del section["obs_names"]

    _edit(copy, as_v1)
    with caplog.at_level("WARNING"):
        bundle = load_bundle(copy, device="cpu")
    assert "schema_version 1 bundle" in caplog.text
    assert bundle.model.profile == "paper"
    features = trained.test.obsm[feature_key("efficientnet-lite0")]
    np.testing.assert_array_equal(
        bundle.predict_features(features).mean, trained.model.predict(trained.test).mean
    )
