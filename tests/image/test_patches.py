from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from imagefixtures import coded_image, write_image
from PIL import Image

from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.image import (
    NoNormalizer,
    ReinhardNormalizer,
    iter_patches,
    open_slide,
    patch_origins,
    patch_size_px,
)


@pytest.fixture
def coded_png(tmp_path: Path) -> tuple[Path, np.ndarray]:
    return write_image("png", tmp_path, coded_image(120, 150))


def _collect(batches: object) -> tuple[np.ndarray, np.ndarray]:
    indices, patches = zip(*batches, strict=True)  # type: ignore[call-overload]
    return np.concatenate(indices), np.concatenate(patches)


@pytest.mark.parametrize(("size", "first"), [(5, 38), (4, 38), (224, -72), (1, 40)])
def test_spot_pixel_sits_at_index_size_over_two(
    coded_png: tuple[Path, np.ndarray], size: int, first: int
) -> None:
    path, truth = coded_png
    # 40.49 rounds to 40, 30.5 rounds half up to 31.
    centre = np.array([[40.49, 30.5]])
    assert patch_origins(centre, size).tolist() == [[first, 31 - size // 2]]
    ((_, patch),) = iter_patches(path, centre, size_px=size)
    assert patch.shape == (1, size, size, 3)
    assert patch[0, size // 2, size // 2].tolist() == truth[31, 40].tolist()
    if size % 2:  # odd: as many pixels on each side of the spot pixel
        assert patch[0, 0, 0].tolist() == truth[31 - size // 2, 40 - size // 2].tolist()
        assert patch[0, -1, -1].tolist() == truth[31 + size // 2, 40 + size // 2].tolist()


def test_batches_cover_every_spot_in_order_with_bounded_size(
    coded_png: tuple[Path, np.ndarray],
) -> None:
    path, _ = coded_png
    rng = np.random.default_rng(1)
    centres = rng.uniform([0, 0], [150, 120], (10, 2))
    with open_slide(path) as slide:
        batches = list(iter_patches(slide, centres, size_px=16, batch_size=4))
        assert [b[0].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        assert [b[1].shape for b in batches] == [(4, 16, 16, 3), (4, 16, 16, 3), (2, 16, 16, 3)]
        origins = patch_origins(centres, 16)
        for indices, patches in batches:
            for i, patch in zip(indices, patches, strict=True):
                np.testing.assert_array_equal(patch, slide.read_region(*origins[i], 16, 16))


def test_prefetching_gives_the_same_batches(coded_png: tuple[Path, np.ndarray]) -> None:
    path, _ = coded_png
    centres = np.random.default_rng(2).uniform([0, 0], [150, 120], (25, 2))
    a = _collect(iter_patches(path, centres, size_px=9, batch_size=4, prefetch=True))
    b = _collect(iter_patches(path, centres, size_px=9, batch_size=4, prefetch=False))
    np.testing.assert_array_equal(a[0], np.arange(25))
    np.testing.assert_array_equal(a[1], b[1])


def test_stopping_early_ends_the_worker_thread(coded_png: tuple[Path, np.ndarray]) -> None:
    path, _ = coded_png
    centres = np.tile([[50.0, 50.0]], (200, 1))
    batches = iter_patches(path, centres, size_px=8, batch_size=2)
    next(batches)
    assert any(t.name == "gr2st-patches" for t in threading.enumerate())
    batches.close()
    assert not any(t.name == "gr2st-patches" for t in threading.enumerate())


def test_errors_in_the_worker_reach_the_caller(coded_png: tuple[Path, np.ndarray]) -> None:
    path, _ = coded_png

    class Broken(NoNormalizer):
        def transform(self, batch: np.ndarray) -> np.ndarray:
            raise RuntimeError("stain exploded")

    batches = iter_patches(path, np.array([[50.0, 50.0]] * 3), size_px=8, stain=Broken())
    with pytest.raises(RuntimeError, match="stain exploded"):
        list(batches)


def test_resize_and_stain_are_applied(coded_png: tuple[Path, np.ndarray]) -> None:
    path, truth = coded_png
    centres = np.array([[60.0, 60.0], [20.0, 100.0]])
    stain = ReinhardNormalizer(mean=np.array([50.0, 20.0, -10.0]), std=np.array([10.0, 5.0, 5.0]))
    ((_, patches),) = iter_patches(path, centres, size_px=32, out_px=12, stain=stain)
    raw = []
    for x0, y0 in patch_origins(centres, 32):
        crop = Image.fromarray(truth[y0 : y0 + 32, x0 : x0 + 32])
        raw.append(np.asarray(crop.resize((12, 12), Image.Resampling.BILINEAR)))
    np.testing.assert_array_equal(patches, stain.transform(np.stack(raw)))


def test_no_centres_yield_no_batches(coded_png: tuple[Path, np.ndarray]) -> None:
    path, _ = coded_png
    assert list(iter_patches(path, np.zeros((0, 2)))) == []


def test_bad_centres_and_options_raise(coded_png: tuple[Path, np.ndarray]) -> None:
    path, _ = coded_png
    with pytest.raises(
        GR2STDataError, match=r"spot centre 1 \(150\.0, 3\.0\) lies outside the 150x120"
    ):
        list(iter_patches(path, np.array([[3.0, 3.0], [150.0, 3.0]])))
    with pytest.raises(GR2STDataError, match=r"shape \(N, 2\), got \(3,\)"):
        list(iter_patches(path, np.array([1.0, 2.0, 3.0])))
    with pytest.raises(GR2STDataError, match="spot centre 0 is not finite"):
        list(iter_patches(path, np.array([[np.nan, 2.0]])))
    with pytest.raises(GR2STConfigError, match="batch_size must be a positive integer, got 0"):
        list(iter_patches(path, np.array([[3.0, 3.0]]), batch_size=0))


def test_patch_size_in_pixels_or_microns() -> None:
    assert patch_size_px() == 224
    assert patch_size_px(patch_px=100) == 100
    assert patch_size_px(patch_um=100.0, mpp=0.69) == 145
    with pytest.raises(GR2STConfigError, match="microns per pixel, which is unknown"):
        patch_size_px(patch_um=100.0)
    with pytest.raises(GR2STConfigError, match="not both"):
        patch_size_px(patch_px=100, patch_um=100.0, mpp=1.0)
    with pytest.raises(GR2STConfigError, match="at least 1 pixel"):
        patch_size_px(patch_px=0)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_c2_patches_are_tissue(real_root: Path) -> None:
    import pandas as pd

    spots = pd.read_csv(real_root / "ST-spotfiles" / "C2_selection.tsv", sep="\t")
    (image,) = (real_root / "ST-imgs" / "C" / "C2").glob("*.jpg")
    centres = spots[["pixel_x", "pixel_y"]].to_numpy()
    indices, patches = _collect(iter_patches(image, centres, batch_size=64))
    assert patches.shape == (len(spots), 224, 224, 3)
    np.testing.assert_array_equal(indices, np.arange(len(spots)))
    # Under-tissue spots: most of each patch darker than white glass.
    dark_share = (patches.mean(axis=-1) < 200).mean(axis=(1, 2))
    assert np.median(dark_share) > 0.5
