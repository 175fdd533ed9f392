"""Composed encoders: view averaging, concatenation, a context scale, rebuilt from names."""

from __future__ import annotations

import numpy as np
import pytest

from gr2st._constants import CELL_TYPE, SPATIAL, feature_key
from gr2st.datasets import synthetic
from gr2st.encoders import (
    Concatenated,
    ViewAveraged,
    WithContext,
    encoder_name,
    get_encoder,
    prepare_image_inputs,
)
from gr2st.encoders.compose import dihedral_views
from gr2st.errors import GR2STConfigError
from gr2st.image import iter_patches

SIZE = 24


def test_view_average_equals_the_mean_over_the_eight_symmetries(colour_encoder) -> None:
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 255, size=(3, 10, 10, 3), dtype=np.uint8)
    views = [np.rot90(batch, k, axes=(1, 2))[:, :, ::f] for k in range(4) for f in (1, -1)]
    expected = np.mean([colour_encoder.encode(np.ascontiguousarray(v)) for v in views], axis=0)
    enc = ViewAveraged(colour_encoder, views=8)
    np.testing.assert_allclose(enc.encode(batch), expected, rtol=1e-6)
    assert len({v.tobytes() for v in dihedral_views(batch, 8)}) == 8
    assert enc.describe()["views"] == 8
    assert enc.describe()["encoder"] == "colour-tta8"
    with pytest.raises(GR2STConfigError, match="square patches"):
        enc.encode(np.zeros((1, 4, 6, 3), np.uint8))
    with pytest.raises(GR2STConfigError, match="views"):
        ViewAveraged(colour_encoder, views=3)


def test_context_encodes_the_centre_and_the_whole_patch(colour_encoder) -> None:
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 255, size=(2, 20, 20, 3), dtype=np.uint8)
    enc = WithContext(colour_encoder, scale=2)
    out = enc.encode(batch)
    np.testing.assert_allclose(out[:, :6], colour_encoder.encode(batch[:, 5:15, 5:15]))
    np.testing.assert_allclose(out[:, 6:], colour_encoder.encode(batch))
    assert (enc.read_px(24), colour_encoder.read_px(24)) == (48, 24)
    with pytest.raises(GR2STConfigError, match="their own context"):
        Concatenated([colour_encoder, enc])


def test_names_round_trip_through_get_encoder() -> None:
    name = encoder_name("efficientnet-lite0+efficientnet-lite1", tta=2, context_px=336, size_px=224)
    assert name == "efficientnet-lite0-tta2+efficientnet-lite1-tta2-ctx1.5x"
    enc = get_encoder(name, backend="torch", device="cpu")
    assert enc.name == name
    assert isinstance(enc, WithContext)
    assert enc.context == 1.5
    assert enc.dim == 2 * (1280 + 1280)
    with pytest.raises(GR2STConfigError, match="larger than the patch"):
        encoder_name("efficientnet-lite0", context_px=224, size_px=224)
    with pytest.raises(GR2STConfigError, match="--tta"):
        encoder_name("efficientnet-lite0", tta=3, size_px=224)
    with pytest.raises(GR2STConfigError, match="NAME\\+NAME"):
        encoder_name("efficientnet-lite0+", size_px=224)


def test_context_features_read_the_larger_patch_and_keep_the_nuclei(
    colour_encoder, tmp_path
) -> None:
    sections = synthetic(n_sections=1, n_genes=5, grid=(3, 4), image_dir=tmp_path / "img")
    plain = [s.copy() for s in sections]
    prepare_image_inputs(plain, encoder=colour_encoder, size_px=SIZE, stain=None, progress=False)
    enc = WithContext(colour_encoder, scale=2)
    prepare_image_inputs(sections, encoder=enc, size_px=SIZE, stain=None, progress=False)
    (section,) = sections
    got = section.obsm[feature_key(enc.name)]
    ((_, big),) = iter_patches(
        section.uns["gr2st"]["image_path"],
        section.obsm[SPATIAL],
        size_px=2 * SIZE,
        batch_size=section.n_obs,
    )
    np.testing.assert_allclose(got[:, 6:], colour_encoder.encode(big), rtol=1e-6)
    # Without stain normalisation the centre of the context patch is the spot's patch.
    np.testing.assert_allclose(got[:, :6], plain[0].obsm[feature_key("colour")], rtol=1e-6)
    np.testing.assert_array_equal(section.obs[CELL_TYPE], plain[0].obs[CELL_TYPE])
