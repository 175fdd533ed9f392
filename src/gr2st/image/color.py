"""Colour conversions of uint8 RGB batches, bit-identical to scikit-image's, and faster.

The stain normaliser and the tissue detector run on every patch and thumbnail, and
scikit-image's :func:`~skimage.color.rgb2lab` / :func:`~skimage.color.lab2rgb` spent most
of their time on boolean-mask copies and stacking rather than arithmetic. These functions
do the same float32 (and, where scikit-image does, float64) operations in the same
order, so their outputs are equal bit for bit (the tests compare them), which keeps
feature caches valid:

- :func:`rgb_to_lab` looks the sRGB gamma expansion of each of the 256 byte values up
  in a table built by scikit-image's own formula, then applies the same matrix product
  and cube root;
- :func:`lab_to_rgb` evaluates the nonlinear branches on the whole array and patches
  the few pixels of the other branch, in blocks of rows that stay in the CPU cache;
- :func:`hsv_saturation` computes only the saturation channel of
  :func:`~skimage.color.rgb2hsv`.
"""

from __future__ import annotations

import numpy as np
from skimage.color.colorconv import rgb_from_xyz, xyz_from_rgb, xyz_tristimulus_values
from skimage.util import img_as_float64

# CIE D65, 2° observer: scikit-image's default white point for LAB.
_WHITE32 = xyz_tristimulus_values(illuminant="D65", observer="2", dtype=np.float32)
_WHITE64 = xyz_tristimulus_values(illuminant="D65", observer="2")
_XYZ_FROM_RGB = xyz_from_rgb.T.astype(np.float32)
_RGB_FROM_XYZ = rgb_from_xyz.T.astype(np.float32)
# Rows (of the last-but-one axis) per block: a block's float32 temporaries stay in cache.
_BLOCK_ROWS = 64


def _linear_table() -> np.ndarray:
    """sRGB → linear RGB of the byte values, as scikit-image computes it on ``x / 255``."""
    value = np.arange(256, dtype=np.float32) / 255
    out = value.copy()
    high = value > 0.04045
    out[high] = np.power((value[high] + 0.055) / 1.055, 2.4)
    out[~high] /= 12.92
    return out


_LINEAR = _linear_table()
# Byte values as rgb2hsv sees them (img_as_float64 multiplies by 1/255).
_SCALED = img_as_float64(np.arange(256, dtype=np.uint8))


def _check_pixels(array: np.ndarray, dtype: type, name: str, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != dtype or array.ndim < 2 or array.shape[-1] != 3:
        raise ValueError(f"{name}: expected {what} (..., 3), got {array.dtype} {array.shape}")
    return array


def _row_blocks(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[slice]]:
    """``pixels`` as rows ``(R, W, 3)``, a float32 output of that shape, and row blocks."""
    rows = pixels.reshape(-1, *pixels.shape[-2:])
    blocks = [slice(s, s + _BLOCK_ROWS) for s in range(0, len(rows), _BLOCK_ROWS)]
    return rows, np.empty(rows.shape, np.float32), blocks


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65, 2°) of uint8 RGB pixels, as float32.

    Equal bit for bit to ``skimage.color.rgb2lab(rgb.astype(np.float32) / 255)``.

    Parameters
    ----------
    rgb
        ``uint8`` array ``(..., W, 3)``.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of the same shape: ``L*`` in 0..100, ``a*``, ``b*``.

    Examples
    --------
    >>> rgb_to_lab(np.array([[[255, 255, 255], [0, 0, 0]]], np.uint8)).round(2).tolist()
    [[[100.0, -0.0, 0.0], [0.0, 0.0, 0.0]]]
    """
    rgb = _check_pixels(rgb, np.uint8, "rgb_to_lab", "uint8 RGB")
    rows, out, blocks = _row_blocks(rgb)
    for block in blocks:
        xyz = _LINEAR[rows[block]] @ _XYZ_FROM_RGB
        xyz /= _WHITE32
        low = xyz <= 0.008856
        f = np.cbrt(xyz)
        f[low] = 7.787 * xyz[low] + 16.0 / 116.0
        lab = out[block]
        np.multiply(f[..., 1], 116.0, out=lab[..., 0])
        lab[..., 0] -= 16.0
        np.subtract(f[..., 0], f[..., 1], out=lab[..., 1])
        lab[..., 1] *= 500.0
        np.subtract(f[..., 1], f[..., 2], out=lab[..., 2])
        lab[..., 2] *= 200.0
    return out.reshape(rgb.shape)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """sRGB in ``[0, 1]`` of float32 CIELAB (D65, 2°) pixels.

    Equal bit for bit to ``skimage.color.lab2rgb(lab)`` on float32 input whose ``b*``
    leaves ``Z`` non-negative (scikit-image clips ``Z`` at 0 with a warning; here it is
    clipped silently).

    Parameters
    ----------
    lab
        ``float32`` array ``(..., W, 3)``.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of the same shape.

    Examples
    --------
    >>> lab_to_rgb(np.array([[[100.0, 0.0, 0.0]]], np.float32)).round(3).tolist()
    [[[1.0, 1.0, 1.0]]]
    """
    lab = _check_pixels(lab, np.float32, "lab_to_rgb", "float32 LAB")
    rows, out, blocks = _row_blocks(lab)
    for block in blocks:
        values = rows[block]
        f = np.empty(values.shape, np.float32)
        y = (values[..., 0] + 16.0) / 116.0
        np.add(values[..., 1] / 500.0, y, out=f[..., 0])
        f[..., 1] = y
        np.subtract(y, values[..., 2] / 200.0, out=f[..., 2])
        np.maximum(f[..., 2], 0, out=f[..., 2], where=f[..., 2] < 0)
        low = f <= 0.2068966
        xyz = np.power(f, 3.0)
        xyz[low] = (f[low] - 16.0 / 116.0) / 7.787
        # float64 white point times float32 values, cast back: scikit-image's ``out *=``.
        np.multiply(xyz, _WHITE64, out=xyz, casting="same_kind")
        linear = xyz @ _RGB_FROM_XYZ
        low = linear <= 0.0031308
        with np.errstate(invalid="ignore"):  # negatives: overwritten below
            srgb = np.power(linear, 1 / 2.4)
        srgb *= 1.055
        srgb -= 0.055
        srgb[low] = linear[low] * 12.92
        np.clip(srgb, 0, 1, out=out[block])
    return out.reshape(lab.shape)


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of uint8 RGB pixels, as float64.

    Equal bit for bit to ``skimage.color.rgb2hsv(rgb)[..., 1]``.

    Examples
    --------
    >>> hsv_saturation(np.array([[[200, 100, 100], [0, 0, 0]]], np.uint8)).tolist()
    [[0.5, 0.0]]
    """
    rgb = _check_pixels(rgb, np.uint8, "hsv_saturation", "uint8 RGB")
    value = _SCALED[rgb.max(axis=-1)]
    delta = value - _SCALED[rgb.min(axis=-1)]
    saturation = np.zeros(delta.shape, np.float64)
    np.divide(delta, value, out=saturation, where=delta != 0)
    return saturation
