from __future__ import annotations

import logging

import numpy as np
import pytest

import gr2st.encoders.extract as extract_mod
import gr2st.encoders.keys as keys_mod
from gr2st._constants import IMAGE_PATH, SPATIAL, UNS, feature_key
from gr2st.encoders import ArrayCache, extract_features
from gr2st.encoders.options import parse_nuclei, resolve_stain
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.image import get_stain_normalizer, iter_patches

SIZE = 32


def _reference(adata, encoder, size=SIZE, stain=None):
    """Features computed directly from iter_patches, batch by batch."""
    out = np.zeros((adata.n_obs, encoder.dim), np.float32)
    for idx, batch in iter_patches(adata.uns[UNS][IMAGE_PATH], adata.obsm[SPATIAL], size_px=size):
        out[idx] = encoder.encode(batch if stain is None else stain.transform(batch))
    return out


def test_features_match_a_direct_computation(sections, colour_encoder):
    adata = sections[0]
    feats = extract_features(
        adata, encoder=colour_encoder, size_px=SIZE, stain=None, batch_size=5, progress=False
    )
    assert feats.shape == (16, 6)
    assert feats.dtype == np.float32
    assert adata.obsm[feature_key("colour")] is feats
    assert colour_encoder.calls == 4  # ceil(16 / 5) batches
    np.testing.assert_array_equal(feats, _reference(adata, colour_encoder))
    # Spots differ in colour, so their features do too.
    assert len(np.unique(feats.round(4), axis=0)) > 1


def test_deterministic(sections, colour_encoder):
    a = extract_features(
        sections[0], encoder=colour_encoder, size_px=SIZE, stain="reinhard", progress=False
    )
    b = extract_features(
        sections[0], encoder=colour_encoder, size_px=SIZE, stain="reinhard", progress=False
    )
    np.testing.assert_array_equal(a, b)
    # Same spot centre twice in one section → identical rows.
    dup = sections[0][[3, 5]].copy()
    dup.obsm[SPATIAL][1] = dup.obsm[SPATIAL][0]
    f = extract_features(
        dup, encoder=colour_encoder, size_px=SIZE, stain="reinhard", progress=False
    )
    np.testing.assert_array_equal(f[0], f[1])
    np.testing.assert_array_equal(f[0], a[3])


def test_cache_hit_skips_decoding_and_encoding(sections, colour_encoder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = extract_features(
        sections[0],
        encoder=colour_encoder,
        size_px=SIZE,
        stain=None,
        cache_dir=cache,
        progress=False,
    )
    calls = colour_encoder.calls
    assert calls > 0

    def no_open(path):
        raise AssertionError("the image was opened on a cache hit")

    monkeypatch.setattr(extract_mod, "open_slide", no_open)
    del sections[0].obsm[feature_key("colour")]
    again = extract_features(
        sections[0],
        encoder=colour_encoder,
        size_px=SIZE,
        stain=None,
        cache_dir=cache,
        progress=False,
    )
    assert colour_encoder.calls == calls
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(sections[0].obsm[feature_key("colour")], first)
    assert len(list(cache.rglob("*.npz"))) == 1


@pytest.mark.parametrize(
    "change",
    [{"size_px": 24}, {"stain": "reinhard"}, {"patch_um": 80.0}],
    ids=["size", "stain", "microns"],
)
def test_cache_invalidates_on_setting_change(sections, colour_encoder, tmp_path, change):
    cache = tmp_path / "cache"
    base = {"size_px": SIZE, "stain": None}
    first = extract_features(
        sections[0], encoder=colour_encoder, cache_dir=cache, progress=False, **base
    )
    calls = colour_encoder.calls
    options = {**base, **change}
    if "patch_um" in change:
        options.pop("size_px")  # 80 µm at 2 µm/px = 40 px
    changed = extract_features(
        sections[0], encoder=colour_encoder, cache_dir=cache, progress=False, **options
    )
    assert colour_encoder.calls > calls
    assert not np.array_equal(changed, first)
    assert len(list(cache.rglob("*.npz"))) == 2


def test_cache_invalidates_when_spots_move(sections, colour_encoder, tmp_path):
    cache = tmp_path / "cache"
    extract_features(
        sections[0],
        encoder=colour_encoder,
        size_px=SIZE,
        stain=None,
        cache_dir=cache,
        progress=False,
    )
    calls = colour_encoder.calls
    moved = sections[0].copy()
    moved.obsm[SPATIAL] = moved.obsm[SPATIAL] + 3.0
    extract_features(
        moved, encoder=colour_encoder, size_px=SIZE, stain=None, cache_dir=cache, progress=False
    )
    assert colour_encoder.calls > calls


def test_truncated_cache_file_is_recomputed(sections, colour_encoder, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = extract_features(
        sections[0],
        encoder=colour_encoder,
        size_px=SIZE,
        stain=None,
        cache_dir=cache,
        progress=False,
    )
    (path,) = cache.rglob("*.npz")
    path.write_bytes(path.read_bytes()[:-200])
    calls = colour_encoder.calls
    with caplog.at_level(logging.WARNING):
        again = extract_features(
            sections[0],
            encoder=colour_encoder,
            size_px=SIZE,
            stain=None,
            cache_dir=cache,
            progress=False,
        )
    assert "ignoring cache file" in caplog.text
    assert colour_encoder.calls > calls
    np.testing.assert_array_equal(again, first)
    # The rewritten file is whole again.
    assert ArrayCache(cache).load(path.parent.name, "features", _only_key(path)) is not None


def _only_key(path):
    import json

    with np.load(path) as npz:
        return json.loads(npz["__meta__"].tobytes())["key"]


def test_bad_inputs(sections, colour_encoder):
    adata = sections[0].copy()
    adata.uns[UNS][IMAGE_PATH] = None
    with pytest.raises(
        GR2STDataError, match=r"section S0: uns\['gr2st'\]\['image_path'\] is empty"
    ):
        extract_features(adata, encoder=colour_encoder, progress=False)
    adata.uns[UNS][IMAGE_PATH] = "/nonexistent/he.jpg"
    with pytest.raises(GR2STDataError, match=r"image file /nonexistent/he\.jpg does not exist"):
        extract_features(adata, encoder=colour_encoder, progress=False)
    with pytest.raises(GR2STConfigError, match="batch_size must be a positive integer"):
        extract_features(sections[0], encoder=colour_encoder, batch_size=0, progress=False)
    with pytest.raises(GR2STConfigError, match="not both"):
        extract_features(
            sections[0], encoder=colour_encoder, size_px=32, patch_um=40.0, progress=False
        )
    with pytest.raises(GR2STConfigError, match="StainNormalizer"):
        extract_features(sections[0], encoder=colour_encoder, stain=42, progress=False)  # type: ignore[arg-type]


def test_resolve_stain_and_parse_nuclei(tmp_path):
    assert resolve_stain(None) is None
    assert resolve_stain("none") is None
    reinhard = get_stain_normalizer("reinhard")
    assert resolve_stain(reinhard) is reinhard
    assert resolve_stain("macenko").key.startswith("macenko-")
    assert parse_nuclei("classical") == ("classical", None)
    assert parse_nuclei("none") == ("none", None)
    assert parse_nuclei(f"hovernet:{tmp_path}") == ("hovernet", tmp_path)
    with pytest.raises(GR2STConfigError, match=r"HoVer-Net results .*missing do not exist"):
        parse_nuclei(f"hovernet:{tmp_path / 'missing'}")
    with pytest.raises(GR2STConfigError, match="needs the HoVer-Net results"):
        parse_nuclei("hovernet")
    with pytest.raises(GR2STConfigError, match="got 'cellpose'"):
        parse_nuclei("cellpose")


def test_cache_invalidates_when_image_code_changes(sections, colour_encoder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    options = {"encoder": colour_encoder, "size_px": SIZE, "stain": None, "cache_dir": cache}
    extract_features(sections[0], progress=False, **options)
    extract_features(sections[0], progress=False, **options)
    calls = colour_encoder.calls
    monkeypatch.setattr(keys_mod, "PIXEL_CODE", "edited")
    extract_features(sections[0], progress=False, **options)
    assert colour_encoder.calls > calls


def test_key_added_names_the_obsm_entry(sections, colour_encoder, tmp_path):
    options = {"encoder": colour_encoder, "size_px": SIZE, "stain": None, "progress": False}
    default = extract_features(sections[0].copy(), **options)
    adata = sections[0]
    out = extract_features(adata, key_added="X_mine", cache_dir=tmp_path, **options)
    assert "X_mine" in adata.obsm
    assert feature_key("colour") not in adata.obsm
    np.testing.assert_array_equal(adata.obsm["X_mine"], default)
    np.testing.assert_array_equal(out, default)
    # the key names the output only: the cached result is found under another one
    calls = colour_encoder.calls
    extract_features(adata, key_added="X_other", cache_dir=tmp_path, **options)
    assert colour_encoder.calls == calls
    np.testing.assert_array_equal(adata.obsm["X_other"], default)
    with pytest.raises(GR2STConfigError, match="key_added must be a non-empty string"):
        extract_features(adata, key_added="", **options)
