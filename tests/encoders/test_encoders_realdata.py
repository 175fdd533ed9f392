from __future__ import annotations

import numpy as np
import pytest

from gr2st._constants import CELL_TYPE, IMAGE_PATH, NUCLEI_COUNTS, SPATIAL, UNS, feature_key
from gr2st.encoders import get_encoder, prepare_image_inputs
from gr2st.image import get_stain_normalizer, iter_patches
from gr2st.io import read_her2st

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def c2_subset(her2st_root):
    """The first 24 spots of section C2 (the real image and coordinates)."""
    return read_her2st(her2st_root, "C2")[:24].copy()


def test_onnx_matches_torch_on_he_patches(c2_subset):
    stain = get_stain_normalizer("reinhard")
    (_, patches), *_ = iter_patches(
        c2_subset.uns[UNS][IMAGE_PATH], c2_subset.obsm[SPATIAL], batch_size=8, stain=stain
    )
    torch_feats = get_encoder("efficientnet-lite0", backend="torch").encode(patches)
    onnx_feats = get_encoder("efficientnet-lite0", backend="onnx").encode(patches)
    np.testing.assert_allclose(onnx_feats, torch_feats, atol=1e-4, rtol=0)
    # H&E patches activate the ImageNet features: far from a constant vector.
    assert torch_feats.std(axis=0).mean() > 0.05


def test_pipeline_cold_then_warm(c2_subset, tmp_path):
    cold = c2_subset.copy()
    (report,) = prepare_image_inputs([cold], cache_dir=tmp_path, progress=False)
    assert not report.features_cached
    feats = cold.obsm[feature_key("efficientnet-lite0")]
    assert feats.shape == (24, 1280)
    assert np.isfinite(feats).all()
    assert set(np.unique(cold.obs[CELL_TYPE])) <= set(range(6))
    assert cold.obsm[NUCLEI_COUNTS].sum(axis=1).min() > 0  # every tissue spot has nuclei
    warm = c2_subset.copy()
    (report,) = prepare_image_inputs([warm], cache_dir=tmp_path, progress=False)
    assert report.features_cached
    assert report.nuclei_cached
    np.testing.assert_array_equal(warm.obsm[feature_key("efficientnet-lite0")], feats)
    np.testing.assert_array_equal(warm.obs[CELL_TYPE].to_numpy(), cold.obs[CELL_TYPE].to_numpy())
