from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from imagefixtures import he_like_batch
from PIL import Image
from skimage.color import rgb2lab

from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.image import (
    LabMoments,
    MacenkoNormalizer,
    ReinhardNormalizer,
    get_stain_normalizer,
    load_reference,
    tissue_weight,
)
from gr2st.image import stain as stain_module

TARGET_MEAN = np.array([55.0, 18.0, -15.0])
TARGET_STD = np.array([15.0, 6.0, 7.0])


def test_reinhard_output_has_the_target_lab_statistics() -> None:
    batch = he_like_batch(6)
    assert rgb2lab(batch)[..., 0].max() < 80  # all tissue: weight 1 everywhere
    out = ReinhardNormalizer(mean=TARGET_MEAN, std=TARGET_STD).transform(batch)
    assert out.shape == batch.shape
    assert out.dtype == np.uint8
    lab = rgb2lab(out).reshape(6, -1, 3)
    np.testing.assert_allclose(lab.mean(axis=1), np.tile(TARGET_MEAN, (6, 1)), atol=0.6)
    np.testing.assert_allclose(lab.std(axis=1), np.tile(TARGET_STD, (6, 1)), rtol=0.05)


def test_reinhard_is_vectorised_patch_by_patch() -> None:
    batch = he_like_batch(4, seed=3)
    normalizer = ReinhardNormalizer(mean=TARGET_MEAN, std=TARGET_STD)
    whole = normalizer.transform(batch)
    for i in range(4):
        np.testing.assert_array_equal(whole[i], normalizer.transform(batch[i : i + 1])[0])


def test_reinhard_fitted_on_a_patch_leaves_it_nearly_unchanged() -> None:
    patch = he_like_batch(1, seed=5)
    normalizer = ReinhardNormalizer().fit(patch[0])
    out = normalizer.transform(patch)
    assert np.abs(out.astype(int) - patch).max() <= 1


def test_reinhard_keeps_background_white_and_skips_empty_patches() -> None:
    batch = he_like_batch(2)
    batch[0, :, :24] = 255  # left half of patch 0 is white glass
    batch[1] = 250
    batch[1, :3, :3] = (120, 60, 140)  # < 5 % tissue
    out = ReinhardNormalizer(mean=TARGET_MEAN, std=TARGET_STD).transform(batch)
    np.testing.assert_array_equal(out[0, :, :24], 255)
    assert np.abs(out[0, :, 24:].astype(int) - batch[0, :, 24:]).mean() > 5
    np.testing.assert_array_equal(out[1], batch[1])


def test_reinhard_statistics_ignore_background() -> None:
    batch = he_like_batch(1)
    padded = np.concatenate([batch, np.full_like(batch, 255)], axis=2)  # add white glass
    normalizer = ReinhardNormalizer(mean=TARGET_MEAN, std=TARGET_STD)
    np.testing.assert_array_equal(
        normalizer.transform(padded)[:, :, :48], normalizer.transform(batch)
    )


def test_none_is_the_identity() -> None:
    batch = he_like_batch(3)
    normalizer = get_stain_normalizer("none")
    assert normalizer.transform(batch) is batch
    assert normalizer.key == "none"
    with pytest.raises(GR2STConfigError, match="'none' takes no reference"):
        get_stain_normalizer("none", reference=batch[0])


def test_keys_are_stable_and_change_with_every_setting() -> None:
    base = ReinhardNormalizer(mean=TARGET_MEAN, std=TARGET_STD)
    assert base.key == ReinhardNormalizer(mean=TARGET_MEAN.tolist(), std=TARGET_STD.tolist()).key
    assert base.key.startswith("reinhard-")
    variants = [
        ReinhardNormalizer(mean=TARGET_MEAN + np.array([0.01, 0, 0]), std=TARGET_STD),
        ReinhardNormalizer(mean=TARGET_MEAN, std=TARGET_STD * 1.01),
        ReinhardNormalizer(mean=TARGET_MEAN, std=TARGET_STD, tissue_lightness=(75.0, 90.0)),
        ReinhardNormalizer(mean=TARGET_MEAN, std=TARGET_STD, min_tissue=0.1),
        ReinhardNormalizer(),
    ]
    keys = {base.key, *(v.key for v in variants)}
    assert len(keys) == 6
    macenko = MacenkoNormalizer()
    assert macenko.key == MacenkoNormalizer().key
    assert macenko.key != MacenkoNormalizer(beta=0.2).key
    before = macenko.key
    macenko.fit(he_like_batch(2, size=64))
    assert macenko.key != before


def test_default_reinhard_uses_the_shipped_reference() -> None:
    reference = load_reference()
    assert reference["method"] == "reinhard"
    assert reference["script"] == "scripts/compute_stain_reference.py"
    assert [image["section"] for image in reference["images"]] == [
        "B4",
        "C2",
        "C3",
        "C4",
        "C5",
        "C6",
    ]
    assert tuple(reference["tissue_lightness"]) == stain_module.DEFAULT_TISSUE_LIGHTNESS
    normalizer = get_stain_normalizer()
    np.testing.assert_array_equal(normalizer.mean, reference["mean"])
    np.testing.assert_array_equal(normalizer.std, reference["std"])
    # H&E: pink-purple (a* > 0, b* < 0), mid lightness.
    assert 40 < reference["mean"][0] < 75
    assert reference["mean"][1] > 0 > reference["mean"][2]


def test_reference_image_from_a_path(tmp_path: Path) -> None:
    image = he_like_batch(1, size=64, seed=9)[0]
    Image.fromarray(image).save(tmp_path / "ref.png")
    from_path = get_stain_normalizer("reinhard", reference=tmp_path / "ref.png")
    from_array = ReinhardNormalizer().fit(image)
    np.testing.assert_allclose(from_path.mean, from_array.mean)
    lab = rgb2lab(image).reshape(-1, 3)
    np.testing.assert_allclose(from_path.mean, lab.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(from_path.std, lab.std(axis=0), atol=1e-4)
    macenko = get_stain_normalizer("macenko", reference=tmp_path / "ref.png")
    assert macenko.key != MacenkoNormalizer().key


def test_lab_moments_stream_in_chunks_and_weight_by_tissue(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 41, 3), dtype=np.uint8)
    lab = rgb2lab(image).reshape(-1, 3)
    w = tissue_weight(lab[:, 0])
    mean = w @ lab / w.sum()
    std = np.sqrt(w @ (lab - mean) ** 2 / w.sum())
    monkeypatch.setattr(stain_module, "_FIT_CHUNK_PIXELS", 100)
    moments = LabMoments()
    moments.add(image)
    np.testing.assert_allclose(moments.mean, mean, rtol=1e-5)
    np.testing.assert_allclose(moments.std, std, rtol=1e-5)
    assert moments.pixels == 37 * 41
    glass = LabMoments()
    glass.add(np.full((4, 4, 3), 255, np.uint8))
    assert glass.pixels == 16
    with pytest.raises(GR2STDataError, match="no tissue"):
        _ = glass.mean


def test_merged_moments_equal_moments_of_all_pixels() -> None:
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 256, (n, 3), dtype=np.uint8) for n in (50, 1, 300)]
    merged = LabMoments()
    for part in parts:
        one = LabMoments()
        one.add(part)
        merged.merge(one)
    whole = LabMoments()
    whole.add(np.concatenate(parts))
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-10)
    np.testing.assert_allclose(merged.std, whole.std, rtol=1e-10)
    assert (merged.pixels, merged.weight) == (whole.pixels, pytest.approx(whole.weight))
    with pytest.raises(GR2STConfigError, match="cannot merge moments"):
        merged.merge(LabMoments(tissue_lightness=(70.0, 90.0)))


def test_tissue_weight_ramp() -> None:
    assert tissue_weight(np.array([0.0, 80.0, 82.5, 90.0, 100.0])).tolist() == [1, 1, 0.75, 0, 0]
    with pytest.raises(GR2STConfigError, match="lo < hi"):
        tissue_weight(np.zeros(1), tissue_lightness=(90.0, 80.0))


def test_macenko_changes_tissue_and_passes_white_and_degenerate_patches() -> None:
    batch = he_like_batch(3, size=64)
    batch[1] = 250  # glass: almost no optical density
    batch[2] = (150, 80, 160)  # one flat colour: no stain vectors to find
    out = MacenkoNormalizer().transform(batch)
    assert out.shape == batch.shape
    assert out.dtype == np.uint8
    assert np.abs(out[0].astype(int) - batch[0]).mean() > 3
    np.testing.assert_array_equal(out[1:], batch[1:])


def _beer_lambert(stains: np.ndarray, concentrations: np.ndarray) -> np.ndarray:
    """RGB image of two stains (unit OD vectors, columns) at given concentrations."""
    density = concentrations @ (stains / np.linalg.norm(stains, axis=0)).T
    return np.clip(np.rint(240 * np.exp(-density)), 0, 255).astype(np.uint8)


def test_macenko_maps_one_stain_pair_onto_the_reference_pair() -> None:
    rng = np.random.default_rng(0)
    # Same tissue (concentrations) stained two ways: reference A and a bluer B.
    concentrations = np.stack(
        [rng.gamma(1.0, 0.4, (2, 64, 64)), rng.gamma(2.0, 0.3, (2, 64, 64))], axis=-1
    )
    stains_a = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    stains_b = np.array([[0.55, 0.20], [0.80, 0.85], [0.25, 0.50]])
    image_a = _beer_lambert(stains_a, concentrations)
    image_b = _beer_lambert(stains_b, concentrations)
    normalizer = MacenkoNormalizer().fit(image_a[0])
    before = np.abs(image_b.astype(int) - image_a).mean()
    after = np.abs(normalizer.transform(image_b).astype(int) - image_a).mean()
    assert before > 15
    assert after < 3
    assert np.abs(normalizer.transform(image_a).astype(int) - image_a).mean() < 2


def test_bad_inputs_raise() -> None:
    with pytest.raises(
        GR2STConfigError,
        match="unknown stain normaliser 'vahadane'; known: macenko, none, reinhard",
    ):
        get_stain_normalizer("vahadane")
    with pytest.raises(GR2STDataError, match=r"must be a uint8 RGB array .* float64"):
        ReinhardNormalizer().transform(np.zeros((1, 4, 4, 3)))
    with pytest.raises(GR2STDataError, match=r"must be \(B, H, W, 3\)"):
        ReinhardNormalizer().transform(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(GR2STConfigError, match="both the reference mean and std"):
        ReinhardNormalizer(mean=TARGET_MEAN)


@pytest.mark.realdata
@pytest.mark.slow
def test_reference_json_matches_its_recorded_images(real_root: Path) -> None:
    reference = json.loads(
        (Path(stain_module.__file__).parent / "data" / stain_module.REFERENCE_FILE).read_text()
    )
    from gr2st.image import open_slide

    record = reference["images"][1]
    with open_slide(real_root / record["file"]) as slide:
        assert slide.content_hash() == record["sha256"]
