from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gr2st._constants import IMAGE_PATH, SPATIAL, UNS
from gr2st.encoders import WithContext, encode_spots
from gr2st.encoders.nuclei import SpotNuclei, table_arrays
from gr2st.encoders.spots import PassTimes
from gr2st.image import get_stain_normalizer, iter_patches, open_slide
from gr2st.image.workers import PatchWorkers

SIZE = 40


def _reference(adata, encoder, stain):
    """Each spot's patch read alone and encoded alone."""
    patches = [
        p for _, batch in iter_patches(_path(adata), _centers(adata), size_px=SIZE) for p in batch
    ]
    return np.concatenate([encoder.encode(stain.transform(p[None])) for p in patches])


def _path(adata) -> Path:
    return Path(adata.uns[UNS][IMAGE_PATH])


def _centers(adata) -> np.ndarray:
    return np.asarray(adata.obsm[SPATIAL], dtype=np.float64)


def _same_tables(a: SpotNuclei, b: SpotNuclei) -> None:
    got, want = table_arrays(a.table()), table_arrays(b.table())
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_features_in_spot_order_from_a_path_or_an_open_slide(sections, colour_encoder):
    stain = get_stain_normalizer("reinhard")
    adata = sections[0]
    expected = _reference(adata, colour_encoder, stain)
    options = {"encoder": colour_encoder, "size_px": SIZE, "stain": stain, "batch_size": 5}
    from_path = encode_spots(_path(adata), _centers(adata), **options)
    with open_slide(_path(adata)) as slide:
        from_slide = encode_spots(slide, _centers(adata), **options)
    assert from_path is not None
    assert from_path.dtype == np.float32
    assert from_path.shape == (adata.n_obs, colour_encoder.dim)
    np.testing.assert_allclose(from_path, expected, rtol=1e-6)
    np.testing.assert_array_equal(from_slide, from_path)
    assert colour_encoder.calls == adata.n_obs + 2 * 4  # 16 spots in batches of 5


def test_transform_is_applied_to_each_batch(sections, colour_encoder):
    adata = sections[0]
    plain = encode_spots(_path(adata), _centers(adata), encoder=colour_encoder, size_px=SIZE)
    projected = encode_spots(
        _path(adata), _centers(adata), encoder=colour_encoder, size_px=SIZE, batch_size=3,
        transform=lambda f: 2 * f[:, :2], dim=2,
    )  # fmt: skip
    assert plain is not None
    assert projected is not None
    np.testing.assert_array_equal(projected, 2 * plain[:, :2])


def test_nuclei_on_the_same_patches_in_process_and_in_workers(sections, colour_encoder):
    adata = sections[1]
    stain = get_stain_normalizer("reinhard")
    options = {"size_px": SIZE, "stain": stain, "batch_size": 6}
    here, times = SpotNuclei(adata), PassTimes()
    features = encode_spots(
        _path(adata), _centers(adata), encoder=colour_encoder, nuclei=here, times=times, **options
    )
    assert times.encode_s > 0
    assert times.nuclei_s > 0
    # nuclei only: no encoder, nothing returned, the same measurements
    alone = SpotNuclei(adata)
    assert (
        encode_spots(_path(adata), _centers(adata), encoder=None, nuclei=alone, **options) is None
    )
    _same_tables(alone, here)
    assert here.table().spot.size > 0
    with PatchWorkers(2) as pool:
        source = pool.open(_path(adata))
        there = SpotNuclei(adata)
        pooled = encode_spots(
            source, _centers(adata), encoder=colour_encoder, nuclei=there, pool=pool, **options
        )
        with pytest.raises(ValueError, match="pass pool"):
            encode_spots(source, _centers(adata), encoder=colour_encoder, **options)
    np.testing.assert_array_equal(pooled, features)
    _same_tables(there, here)


def test_an_encoder_with_context_cannot_share_its_patches_with_nuclei(sections, colour_encoder):
    adata = sections[0]
    with pytest.raises(AssertionError, match="context"):
        encode_spots(
            _path(adata), _centers(adata), encoder=WithContext(colour_encoder, scale=2),
            size_px=SIZE, nuclei=SpotNuclei(adata),
        )  # fmt: skip
