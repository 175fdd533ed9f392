from __future__ import annotations

import numpy as np
import pytest

from gr2st._constants import IMAGE_PATH, PATCHES, SPATIAL, UNS
from gr2st.encoders import ArrayCache, extract_patches
from gr2st.errors import GR2STConfigError
from gr2st.image import get_stain_normalizer, iter_patches


def test_patches_equal_the_image_pipeline_crops(sections):
    stain = get_stain_normalizer("reinhard")
    extract_patches(sections, out_px=16, size_px=32, stain=stain, batch_size=5, progress=False)
    for adata in sections:
        expected = np.concatenate(
            [
                b
                for _, b in iter_patches(
                    adata.uns[UNS][IMAGE_PATH],
                    adata.obsm[SPATIAL],
                    size_px=32,
                    out_px=16,
                    stain=stain,
                )
            ]
        )
        got = adata.obsm[PATCHES]
        assert got.dtype == np.uint8
        assert got.shape == (16, 16, 16, 3)
        np.testing.assert_array_equal(got, expected)


def test_patches_are_cached_and_keyed_by_size(sections, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    extract_patches(sections, out_px=8, size_px=32, stain=None, cache_dir=cache, progress=False)
    first = [a.obsm[PATCHES].copy() for a in sections]
    files = sorted(p.name for p in (cache / "S0").iterdir())
    assert len(files) == 1
    assert files[0].startswith("patches-")

    # A warm run reads no image at all.
    import gr2st.encoders.extract as extract_mod

    def fail(*args, **kwargs):
        raise AssertionError("image read on a warm cache")

    monkeypatch.setattr(extract_mod, "iter_patches", fail)
    for a in sections:
        del a.obsm[PATCHES]
    extract_patches(sections, out_px=8, size_px=32, stain=None, cache_dir=cache, progress=False)
    for a, before in zip(sections, first, strict=True):
        np.testing.assert_array_equal(a.obsm[PATCHES], before)
    # Another output side is another cache entry, so it must read the image.
    with pytest.raises(AssertionError, match="warm cache"):
        extract_patches(sections, out_px=4, size_px=32, stain=None, cache_dir=cache, progress=False)
    assert ArrayCache(cache).root == cache


def test_patches_bad_side(sections):
    with pytest.raises(GR2STConfigError, match="out_px must be a positive integer"):
        extract_patches(sections, out_px=0, size_px=32, stain=None, progress=False)
