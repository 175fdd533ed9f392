"""Classical nuclei detector: deconvolution, segmentation, measurements and typing rule."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2hed
from skimage.draw import ellipse
from skimage.measure import regionprops_table

from gr2st._constants import NUCLEAR_TYPES
from gr2st.image.nuclei import (
    ClassicalParams,
    NucleusFeatures,
    classify_nuclei,
    detect_nuclei,
    hed_channels,
    measure_nuclei,
    measure_patches,
    segment_nuclei,
    segment_patch,
)
from gr2st.image.nuclei.classical import ASSUMED_MPP

MPP = 0.5
STROMA = (235, 195, 215)
DARK, MID, PALE = (60, 35, 120), (95, 70, 150), (125, 100, 175)
# (centre y, centre x) in px, semi-axes (µm), rotation, colour, expected type.
DRAWN = [
    *(((cy, cx), (3.0, 3.0), 0.0, DARK, "inflam") for cy, cx in [(30, 30), (30, 100), (100, 30)]),
    ((190, 190), (3.0, 3.0), 0.0, DARK, "inflam"),
    ((40, 180), (2.0, 8.0), 0.3, MID, "connec"),
    ((110, 110), (2.0, 8.0), 1.2, MID, "connec"),
    ((180, 40), (2.0, 8.0), 2.0, MID, "connec"),
    ((100, 185), (6.5, 6.5), 0.0, PALE, "neopla"),
    ((185, 110), (6.5, 6.5), 0.0, PALE, "neopla"),
    ((150, 60), (6.5, 6.5), 0.0, PALE, "neopla"),
]


def drawn_patch(seed: int = 0, shapes: list | None = None) -> np.ndarray:
    """Pink stroma with light noise and the given dark ellipses (sizes in µm at MPP)."""
    rng = np.random.default_rng(seed)
    img = np.empty((224, 224, 3))
    img[:] = STROMA
    img += rng.normal(0, 3, img.shape)
    for (cy, cx), (ry, rx), rot, colour, _ in DRAWN if shapes is None else shapes:
        rr, cc = ellipse(cy, cx, ry / MPP, rx / MPP, shape=img.shape[:2], rotation=rot)
        img[rr, cc] = colour
    return np.clip(img, 0, 255).astype(np.uint8)


def test_hed_channels_equal_skimage_rgb2hed() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 17, 19, 3), dtype=np.uint8)
    rgb[0, 0, :3] = [[0, 0, 0], [255, 255, 255], [1, 254, 0]]  # clipping at both ends
    h, e = hed_channels(rgb)
    reference = rgb2hed(rgb)
    assert h.shape == e.shape == (3, 17, 19)
    np.testing.assert_allclose(h, reference[..., 0], atol=1e-6)
    np.testing.assert_allclose(e, reference[..., 1], atol=1e-6)


def test_hed_channels_rejects_floats() -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        hed_channels(np.zeros((4, 4, 3)))


def _label_image() -> np.ndarray:
    rng = np.random.default_rng(3)
    labels = np.zeros((160, 160), dtype=np.int32)
    k = 0
    for cy in range(16, 160, 32):
        for cx in range(16, 160, 32):
            k += 1
            rr, cc = ellipse(
                cy,
                cx,
                rng.uniform(2, 12),
                rng.uniform(2, 12),
                rotation=rng.uniform(0, np.pi),
                shape=labels.shape,
            )
            labels[rr, cc] = k
    return labels


def test_measure_matches_regionprops() -> None:
    labels = _label_image()
    h = np.random.default_rng(0).uniform(0, 0.3, labels.shape)
    e = np.random.default_rng(1).uniform(0, 0.1, labels.shape)
    ref = regionprops_table(
        labels,
        intensity_image=np.stack([h, e], axis=-1),
        properties=("area", "eccentricity", "solidity", "intensity_mean"),
    )
    feats = measure_nuclei(labels, h, e, microns_per_pixel=0.5)
    np.testing.assert_allclose(feats.area_um2, ref["area"] * 0.25)
    np.testing.assert_allclose(feats.eccentricity, ref["eccentricity"], atol=1e-9)
    np.testing.assert_allclose(feats.hematoxylin, ref["intensity_mean-0"])
    np.testing.assert_allclose(feats.eosin, ref["intensity_mean-1"])
    # Solidity uses a 32-direction hull approximation; on convex blobs it agrees closely.
    np.testing.assert_allclose(feats.solidity, ref["solidity"], atol=0.06)


def test_solidity_separates_convex_from_concave() -> None:
    labels = np.zeros((40, 80), dtype=np.int32)
    labels[5:25, 5:25] = 1  # square: convex
    labels[5:35, 40:70] = 2  # C shape: a bite out of a square
    labels[12:28, 52:70] = 0
    feats = measure_nuclei(
        labels, np.ones(labels.shape), np.ones(labels.shape), microns_per_pixel=1
    )
    assert feats.solidity[0] > 0.97
    ref = regionprops_table(labels, properties=("solidity",))["solidity"][1]
    assert feats.solidity[1] == pytest.approx(ref, abs=0.05)
    assert feats.solidity[1] < 0.75


def test_measure_requires_consecutive_labels() -> None:
    labels = np.zeros((10, 10), dtype=np.int32)
    labels[2:4, 2:4] = 2
    with pytest.raises(ValueError, match="consecutive"):
        measure_nuclei(labels, np.ones((10, 10)), np.ones((10, 10)), microns_per_pixel=1)


def test_blank_patches_have_no_nuclei() -> None:
    white = np.full((224, 224, 3), 245, np.uint8)
    flat = np.broadcast_to(np.array([200, 120, 180], np.uint8), (224, 224, 3))
    table = detect_nuclei(np.stack([white, flat]), microns_per_pixel=MPP)
    assert table.n_nuclei == 0


@pytest.mark.parametrize(("mean", "sd"), [(128, 40), (100, 60), (200, 20), (128, 80)])
def test_noise_yields_few_nuclei(mean: float, sd: float) -> None:
    rng = np.random.default_rng(0)
    noise = np.clip(rng.normal(mean, sd, (2, 224, 224, 3)), 0, 255).astype(np.uint8)
    table = detect_nuclei(noise, microns_per_pixel=0.69)
    assert table.n_nuclei <= 2


def _type_at_centres(patch: np.ndarray, shapes: list) -> tuple[np.ndarray, list[str]]:
    labels, types = segment_patch(patch, microns_per_pixel=MPP)
    found = []
    for (cy, cx), *_ in shapes:
        lab = labels[cy, cx]
        found.append(NUCLEAR_TYPES[types[lab - 1]] if lab else "missed")
    return labels, found


def test_drawn_nuclei_counted_and_typed() -> None:
    patch = drawn_patch()
    labels, found = _type_at_centres(patch, DRAWN)
    assert abs(int(labels.max()) - len(DRAWN)) <= 1
    assert found == [expected for *_, expected in DRAWN]


def test_touching_nuclei_are_split() -> None:
    pair = [
        ((112, 100), (3.0, 3.0), 0.0, DARK, "inflam"),
        ((112, 112), (3.0, 3.0), 0.0, DARK, "inflam"),  # 6 µm apart: touching
        ((60, 60), (6.5, 6.5), 0.0, PALE, "neopla"),
    ]
    labels, found = _type_at_centres(drawn_patch(shapes=pair), pair)
    assert labels.max() == 3
    assert labels[112, 100] != labels[112, 112]
    assert found == ["inflam", "inflam", "neopla"]


def test_detect_batch_assigns_patch_indices_and_threads_agree() -> None:
    batch = np.stack([np.full((224, 224, 3), 245, np.uint8), drawn_patch(), drawn_patch(1)])
    one = detect_nuclei(batch, microns_per_pixel=MPP)
    two = detect_nuclei(batch, microns_per_pixel=MPP, n_jobs=2)
    assert set(one.spot.tolist()) == {1, 2}
    assert np.bincount(one.spot, minlength=3)[0] == 0
    for name in ("spot", "type_id", "area_um2", "eccentricity", "solidity", "hematoxylin"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name))


def test_unknown_mpp_warns_and_assumes_default() -> None:
    batch = drawn_patch()[None]
    with pytest.warns(UserWarning, match="microns per pixel unknown"):
        _spot, feats = measure_patches(batch, microns_per_pixel=None)
    _, explicit = measure_patches(batch, microns_per_pixel=ASSUMED_MPP)
    np.testing.assert_array_equal(feats.area_um2, explicit.area_um2)


def test_sizes_follow_microns_per_pixel() -> None:
    # The same drawn nuclei imaged at half the resolution keep their size in µm.
    patch = drawn_patch()
    coarse = patch.reshape(112, 2, 112, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
    _, fine = measure_patches(patch[None], microns_per_pixel=MPP)
    _, half = measure_patches(coarse[None], microns_per_pixel=2 * MPP)
    assert np.median(half.area_um2) == pytest.approx(np.median(fine.area_um2), rel=0.25)


def _features(**columns: list[float]) -> NucleusFeatures:
    n = len(columns["area_um2"])
    defaults = {"eccentricity": [0.3] * n, "solidity": [0.95] * n, "hematoxylin": [0.2] * n}
    merged = {**defaults, **columns}
    return NucleusFeatures(
        area_um2=np.array(merged["area_um2"]),
        eccentricity=np.array(merged["eccentricity"]),
        solidity=np.array(merged["solidity"]),
        hematoxylin=np.array(merged["hematoxylin"]),
        eosin=np.zeros(n),
    )


def test_classify_rule_lines() -> None:
    feats = _features(
        area_um2=[500, 12, 30, 60, 30, 30, 120, 55, 55, 30, 12],
        eccentricity=[0.3, 0.3, 0.5, 0.95, 0.88, 0.5, 0.5, 0.5, 0.5, 0.5, 0.3],
        solidity=[0.95, 0.95, 0.6, 0.95, 0.95, 0.95, 0.95, 0.75, 0.95, 0.95, 0.95],
        hematoxylin=[0.2, 0.3, 0.2, 0.2, 0.2, 0.2, 0.1, 0.2, 0.2, 0.1, 0.1],
    )
    types = classify_nuclei(feats, params=ClassicalParams(), reference_hematoxylin=0.2)
    assert [NUCLEAR_TYPES[t] for t in types] == [
        "nolabe",  # clump
        "necros",  # tiny and very dark (pyknotic)
        "necros",  # fragmented
        "connec",  # spindle
        "connec",  # small and fairly elongated
        "inflam",  # small, round, dark
        "neopla",  # large
        "neopla",  # medium but irregular
        "no-neo",  # medium, regular
        "connec",  # small and pale
        "nolabe",  # tiny and faint
    ]


def test_classify_darkness_is_relative() -> None:
    feats = _features(area_um2=[30.0, 30.0], hematoxylin=[0.1, 0.2])
    default = classify_nuclei(feats, params=ClassicalParams())  # median 0.15
    assert [NUCLEAR_TYPES[t] for t in default] == ["connec", "inflam"]
    pale_slide = classify_nuclei(feats, params=ClassicalParams(), reference_hematoxylin=0.1)
    assert [NUCLEAR_TYPES[t] for t in pale_slide] == ["inflam", "inflam"]
    assert classify_nuclei(_features(area_um2=[]), params=ClassicalParams()).shape == (0,)


def _rod_with_neck(neck: float) -> tuple[np.ndarray, np.ndarray]:
    """H of a 40x8 px rod at 0.2 whose middle columns are ``neck``, seeded twice (one
    seed per half, as a noisy plateau would be)."""
    h = np.zeros((64, 96))
    h[28:36, 28:68] = 0.2
    h[28:36, 47:49] = neck
    seeds = np.zeros(h.shape, dtype=bool)
    seeds[32, 36] = seeds[32, 60] = True
    return h, seeds


def test_halves_without_a_dip_are_merged() -> None:
    params = ClassicalParams()
    h, blob = _rod_with_neck(neck=0.2)  # one uniform rod cut by two markers
    assert segment_nuclei(h, blob, microns_per_pixel=MPP, params=params).max() == 1
    no_merge = ClassicalParams(min_dip=0.0)
    assert segment_nuclei(h, blob, microns_per_pixel=MPP, params=no_merge).max() == 2
    h, blob = _rod_with_neck(neck=0.12)  # a pale line: two touching nuclei
    assert segment_nuclei(h, blob, microns_per_pixel=MPP, params=params).max() == 2
