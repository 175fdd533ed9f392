from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet

from gr2st._utils.files import sha256_file
from gr2st.encoders import EfficientNetLite, get_encoder
from gr2st.encoders.efficientnet import user_cache_dir, weights_file
from gr2st.errors import GR2STConfigError


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    base[1] = base[1] // 4 + 150  # a paler, low-contrast patch
    return base


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite:
    return EfficientNetLite("efficientnet-lite0", backend="torch", device="cpu")


@pytest.fixture(scope="module")
def lite0_features(lite0, patches) -> np.ndarray:
    return lite0.encode(patches)


@pytest.mark.slow
def test_shapes_and_sizes(lite0, lite0_features):
    assert (lite0.name, lite0.dim, lite0.input_size, lite0.backend) == (
        "efficientnet-lite0",
        1280,
        224,
        "torch",
    )
    feats = lite0_features
    assert feats.shape == (2, 1280)
    assert feats.dtype == np.float32
    assert np.isfinite(feats).all()
    # ReLU6 before the pooling bounds every feature to [0, 6].
    assert feats.min() >= 0
    assert feats.max() <= 6
    assert np.abs(feats[0] - feats[1]).max() > 0.1


@pytest.mark.slow
def test_deterministic_and_batch_independent(lite0, patches, lite0_features):
    np.testing.assert_array_equal(lite0.encode(patches), lite0_features)
    np.testing.assert_allclose(lite0.encode(patches[1:2])[0], lite0_features[1], atol=1e-5)


@pytest.mark.slow
def test_matches_the_package_network_with_tf_normalisation(lite0_features, patches):
    """Reference: the package's own network on (x - 127) / 128, pooled before the classifier."""
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(torch.load(weights_file("efficientnet-lite0"), weights_only=True))
    net.eval()
    x = (torch.from_numpy(patches).permute(0, 3, 1, 2).float() - 127.0) / 128.0
    with torch.no_grad():
        expected = net.extract_features(x).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(lite0_features, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_input_sizes_and_weights_hashes():
    lite1 = get_encoder("efficientnet-lite1", backend="torch", device="cpu")
    lite0 = get_encoder("efficientnet-lite0", backend="torch", device="cpu")
    assert lite1.input_size == 240
    assert lite0.weights_hash == sha256_file(weights_file("efficientnet-lite0"))
    assert lite1.weights_hash == sha256_file(weights_file("efficientnet-lite1"))
    assert lite0.weights_hash != lite1.weights_hash
    # The released files are named after the first hex digits of their sha256.
    assert weights_file("efficientnet-lite1").stem.endswith(lite1.weights_hash[:8])
    assert lite0.describe() == {
        "encoder": "efficientnet-lite0",
        "dim": 1280,
        "input_size": 224,
        "weights": lite0.weights_hash,
        "backend": "torch",
    }
    # Patches of any size are resized to the encoder's input.
    small = np.random.default_rng(1).integers(0, 256, (1, 100, 100, 3), dtype=np.uint8)
    assert lite1.encode(small).shape == (1, 1280)


@pytest.mark.slow
def test_onnx_matches_torch_and_reuses_its_export(lite0, lite0_features, patches):
    onnx = get_encoder("efficientnet-lite0", backend="onnx")
    path = onnx.onnx_path()
    assert path.is_file()
    assert path.is_relative_to(user_cache_dir())
    np.testing.assert_allclose(onnx.encode(patches), lite0_features, atol=1e-4, rtol=0)
    mtime = path.stat().st_mtime_ns
    again = get_encoder("efficientnet-lite0", backend="onnx")
    assert path.stat().st_mtime_ns == mtime
    assert again.describe()["backend"] == "onnx"
    assert again.weights_hash == lite0.weights_hash


@pytest.mark.slow
def test_damaged_onnx_export_is_rebuilt(lite0_features, patches, caplog):
    path = get_encoder("efficientnet-lite0", backend="onnx").onnx_path()
    path.write_bytes(path.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="gr2st.encoders.efficientnet"):
        onnx = get_encoder("efficientnet-lite0", backend="onnx")
    assert "does not match its checksum" in caplog.text
    np.testing.assert_allclose(onnx.encode(patches[:1]), lite0_features[:1], atol=1e-4)


@pytest.mark.slow
def test_onnx_export_with_flipped_bytes_is_not_used(lite0_features, patches, caplog):
    # A graph that still loads but computes other features (bytes flipped inside its
    # weights, same size) is caught by its checksum, not by onnxruntime.
    path = get_encoder("efficientnet-lite0", backend="onnx").onnx_path()
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 4000] = bytes(b ^ 0x5A for b in raw[middle : middle + 4000])
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="gr2st.encoders.efficientnet"):
        onnx = get_encoder("efficientnet-lite0", backend="onnx")
    assert "does not match its checksum" in caplog.text
    assert path.read_bytes() != bytes(raw)
    np.testing.assert_allclose(onnx.encode(patches), lite0_features, atol=1e-4, rtol=0)


def test_auto_backend_prefers_onnx_on_cpu():
    assert get_encoder("efficientnet-lite0", device="cpu").backend == "onnx"


def test_bad_options():
    with pytest.raises(
        GR2STConfigError, match="backend must be 'auto', 'torch' or 'onnx', got 'tf'"
    ):
        get_encoder("efficientnet-lite0", backend="tf")
    with pytest.raises(GR2STConfigError, match="unknown EfficientNet-Lite 'efficientnet-lite4'"):
        EfficientNetLite("efficientnet-lite4")
    with pytest.raises(TypeError, match="pooling"):
        get_encoder("efficientnet-lite0", pooling="mean")


def test_torch_module_computes_the_features(lite0, patches, lite0_features):
    module = lite0.torch_module()
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        out = module(x).numpy()
    np.testing.assert_allclose(out, lite0_features, atol=1e-5)
    assert not module.training
