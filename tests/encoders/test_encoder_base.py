from __future__ import annotations

import numpy as np
import pytest
import torch

from gr2st.encoders import ENCODERS, get_encoder, list_encoders
from gr2st.encoders.base import to_float_nchw
from gr2st.errors import GR2STConfigError, GR2STDataError


def test_registry_names():
    assert list_encoders() == [
        "efficientnet-lite0",
        "efficientnet-lite1",
        "efficientnet-lite2",
        "hf",
    ]
    assert "efficientnet-lite0" in ENCODERS


def test_unknown_encoder_lists_known_names():
    with pytest.raises(
        GR2STConfigError, match=r"unknown encoder 'resnet50'; known: efficientnet-lite0"
    ):
        get_encoder("resnet50")
    with pytest.raises(GR2STConfigError, match="unknown encoder 'timm'"):
        get_encoder("timm:resnet50")
    with pytest.raises(GR2STConfigError, match="non-empty string"):
        get_encoder("")


def test_encode_validates_batch(colour_encoder):
    with pytest.raises(
        GR2STDataError, match=r"colour.*uint8 batch of shape \(B, H, W, 3\).*float32"
    ):
        colour_encoder.encode(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(GR2STDataError, match=r"\(8, 8, 3\)"):
        colour_encoder.encode(np.zeros((8, 8, 3), np.uint8))
    empty = colour_encoder.encode(np.zeros((0, 8, 8, 3), np.uint8))
    assert empty.shape == (0, 6)
    assert empty.dtype == np.float32
    assert colour_encoder.calls == 0


def test_to_float_nchw_keeps_pixels_and_resizes():
    batch = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    same = to_float_nchw(batch, 8)
    assert same.shape == (2, 3, 8, 8)
    assert same.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(same.permute(0, 2, 3, 1).numpy(), batch.astype(np.float32))
    # A constant image stays constant under any resize; a 2x upsample of a ramp is monotone.
    const = np.full((1, 8, 8, 3), 77, np.uint8)
    np.testing.assert_allclose(to_float_nchw(const, 20).numpy(), 77.0, atol=1e-4)
    ramp = np.repeat(np.arange(0, 240, 30, dtype=np.uint8)[None, None, :, None], 8, axis=1)
    up = to_float_nchw(np.repeat(ramp, 3, axis=3), 16)[0, 0, 0].numpy()
    assert up.shape == (16,)
    assert (np.diff(up) >= 0).all()
    assert up.min() >= 0
    assert up.max() <= 255
