"""The fast colour conversions equal scikit-image's bit for bit (feature caches rely on it)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from skimage.color import lab2rgb, rgb2hsv, rgb2lab

from gr2st.image.color import hsv_saturation, lab_to_rgb, rgb_to_lab


def _pixels(seed: int) -> np.ndarray:
    """Random colours plus every grey level and the corners of the RGB cube."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (5, 97, 131, 3), dtype=np.uint8)
    grey = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    image[0, :2, :128] = grey.reshape(2, 128, 3)
    corners = np.array(np.meshgrid([0, 255], [0, 255], [0, 255])).T.reshape(-1, 3)
    image[1, 0, :8] = corners
    return image


@pytest.mark.parametrize("seed", [0, 1])
def test_rgb_to_lab_equals_skimage(seed: int) -> None:
    image = _pixels(seed)
    ours = rgb_to_lab(image)
    assert ours.dtype == np.float32
    assert ours.shape == image.shape
    np.testing.assert_array_equal(ours, rgb2lab(image.astype(np.float32) / 255))


@pytest.mark.parametrize("seed", [0, 1])
def test_lab_to_rgb_equals_skimage(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lab = rgb_to_lab(_pixels(seed)) + rng.normal(0, 4, (5, 97, 131, 3)).astype(np.float32)
    lab[..., 0] = np.clip(lab[..., 0], 0, 100)
    lab[0, 0, :10, 2] = 150.0  # Z < 0: clipped at 0 by both
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-image warns about the clipped Z
        expected = lab2rgb(lab)
    ours = lab_to_rgb(lab)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, expected)
    assert ours.min() >= 0
    assert ours.max() <= 1


def test_hsv_saturation_equals_skimage() -> None:
    image = _pixels(2)
    np.testing.assert_array_equal(hsv_saturation(image), rgb2hsv(image)[..., 1])


def test_round_trip_recovers_the_bytes() -> None:
    image = _pixels(3)
    back = np.rint(lab_to_rgb(rgb_to_lab(image)) * 255).astype(np.uint8)
    assert np.abs(back.astype(int) - image).max() <= 1


@pytest.mark.parametrize(
    ("call", "bad", "message"),
    [
        (rgb_to_lab, np.zeros((4, 4, 3), np.float32), "rgb_to_lab: expected uint8 RGB"),
        (hsv_saturation, np.zeros((4, 4, 4), np.uint8), "hsv_saturation: expected uint8 RGB"),
        (lab_to_rgb, np.zeros((4, 4, 3), np.float64), "lab_to_rgb: expected float32 LAB"),
    ],
)
def test_wrong_input_names_what_was_expected(call, bad, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call(bad)
