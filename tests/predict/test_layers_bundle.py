"""A bundle trained on multi-layer features rebuilds them to predict a new slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gr2st._constants import feature_key
from gr2st.datasets import synthetic
from gr2st.encoders import get_encoder, prepare_image_inputs
from gr2st.predict import load_bundle, train_bundle

LAYERS = "efficientnet-lite0@s3.s5-tta2"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:section .* obs\\['cell_type'\\] is missing:UserWarning")
def test_multi_layer_bundle_round_trip(tmp_path: Path) -> None:
    raw = synthetic(n_sections=3, n_genes=8, grid=(5, 5), signal=2.0, image_dir=tmp_path, seed=2)
    panel = [f"GENE{i:03d}" for i in range(5)]
    folder = train_bundle(
        raw[:2], tmp_path / "bundle", encoder=LAYERS, panel=panel, nuclei="none",
        size_px=48, device="cpu", cache_dir=tmp_path / "cache", progress=False,
        overrides=["train.epochs=2", "model.proj_dim=16", "model.heads=2"],
    )  # fmt: skip
    bundle = load_bundle(folder, device="cpu")
    assert bundle.encoder is not None
    assert (bundle.encoder.name, bundle.encoder.dim) == (LAYERS, 40 + 112)
    assert bundle.meta["encoder"]["name"] == LAYERS

    test = raw[2]
    pred = bundle.predict(test, progress=False)
    # The same spec, rebuilt independently, on the same patches: the same prediction.
    encoder = get_encoder(LAYERS, device="cpu")
    prepare_image_inputs(
        [test], encoder=encoder, nuclei="none", size_px=48,
        stain=bundle.stain_normalizer(), progress=False,
    )  # fmt: skip
    features = test.obsm[feature_key(LAYERS)]
    assert features.shape == (25, 152)
    want = bundle.predict_features(features)
    np.testing.assert_allclose(pred.X, want.mean, rtol=1e-4, atol=1e-5)
    assert list(pred.var_names) == panel
    assert np.ptp(pred.X, axis=0).max() > 0
