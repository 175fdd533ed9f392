"""Multi-layer EfficientNet-Lite features: ``<model>@<layer>[.<layer>…][-gem]``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gr2st._constants import feature_key
from gr2st.datasets import synthetic
from gr2st.encoders import ArrayCache, extract_features, get_encoder
from gr2st.encoders.compose import encoder_name
from gr2st.encoders.efficientnet import layer_dims, parse_layers, pretrained_network
from gr2st.errors import GR2STConfigError


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    rng = np.random.default_rng(3)
    batch = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    batch[1] = batch[1] // 3 + 140  # a paler, low-contrast patch
    return batch


def _hooked(model: str, blocks: list[int], patches: np.ndarray) -> dict[int, torch.Tensor]:
    """Reference: block outputs captured by forward hooks on the package's own network,
    run through its ``extract_features`` on ``(x - 127) / 128`` (-1: the head's output)."""
    net = pretrained_network(model).eval()
    seen: dict[int, torch.Tensor] = {}
    for b in blocks:
        if b >= 0:
            net._blocks[b].register_forward_hook(lambda m, i, o, b=b: seen.__setitem__(b, o))
    x = (torch.from_numpy(patches).permute(0, 3, 1, 2).float() - 127.0) / 128.0
    with torch.no_grad():
        seen[-1] = net.extract_features(x)
    return seen


def test_parse_layers_maps_stages_and_blocks() -> None:
    spec = parse_layers("efficientnet-lite0@s1.s4.b11.s7.head")
    assert spec.blocks == (0, 7, 11, 15, -1)
    assert spec.name == "efficientnet-lite0@s1.s4.b11.s7.head"
    assert layer_dims(spec) == [16, 80, 192, 320, 1280]
    assert not spec.gem
    # Lite1/Lite2 are deeper (21 blocks) and Lite2 wider.
    lite1 = parse_layers("efficientnet-lite1@s2.s6-gem")
    assert (lite1.blocks, lite1.gem, lite1.name) == ((3, 19), True, "efficientnet-lite1@s2.s6-gem")
    assert layer_dims(parse_layers("efficientnet-lite2@s4.s7")) == [88, 352]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("efficientnet-lite0@s8", r"unknown layer 's8' of efficientnet-lite0; expected s1…s7, "
         r"b0…b15 or head, joined by '\.'$"),
        ("efficientnet-lite0@b16", r"unknown layer 'b16'"),
        ("efficientnet-lite0@s4..s5", r"unknown layer ''"),
        ("efficientnet-lite0@", r"unknown layer ''"),
        ("efficientnet-lite0@s4-mean", r"unknown layer 's4-mean'"),
        ("efficientnet-lite0@s4.b7", r"'efficientnet-lite0@s4\.b7': a layer is named twice"),
        ("efficientnet-lite9@s4", r"layers can be chosen for efficientnet-lite0, "
         r"efficientnet-lite1, efficientnet-lite2 only \(expected <model>@<layer>"),
    ],
)  # fmt: skip
def test_bad_layer_names_fail_in_one_line(name: str, message: str) -> None:
    with pytest.raises(GR2STConfigError, match=message) as err:
        get_encoder(name, backend="torch", device="cpu")
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("gem", [False, True])
def test_features_equal_hooked_block_outputs(patches: np.ndarray, gem: bool) -> None:
    name = "efficientnet-lite0@s4.b11.head" + ("-gem" if gem else "")
    enc = get_encoder(name, backend="torch", device="cpu")
    assert (enc.name, enc.dim, enc.input_size) == (name, 80 + 192 + 1280, 224)
    feats = enc.encode(patches)
    assert feats.shape == (2, 1552)
    assert feats.dtype == np.float32
    seen = _hooked("efficientnet-lite0", [7, 11], patches)
    parts = []
    for b in (7, 11, -1):
        act = seen[b].double()
        if gem:
            act = act.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
        else:
            act = act.mean(dim=(2, 3))
        parts.append(act.numpy())
    expected = np.concatenate(parts, axis=1)
    np.testing.assert_allclose(feats, expected, atol=1e-4, rtol=1e-4)
    # The two patches differ in every layer's part.
    for lo, hi in ((0, 80), (80, 272), (272, 1552)):
        assert np.abs(feats[0, lo:hi] - feats[1, lo:hi]).max() > 0.05
    if not gem:
        # The block outputs are signed (linear bottleneck), the head's are ReLU6'd.
        assert feats[:, :272].min() < 0
        head = get_encoder("efficientnet-lite0", backend="torch", device="cpu")
        np.testing.assert_allclose(feats[:, 272:], head.encode(patches), atol=1e-5)


@pytest.mark.slow
def test_onnx_matches_torch_with_its_own_graph(patches: np.ndarray) -> None:
    name = "efficientnet-lite0@s5.s6-gem"
    onnx = get_encoder(name, backend="onnx")
    torch_enc = get_encoder(name, backend="torch", device="cpu")
    assert onnx.onnx_path().name.startswith(f"{name}-")
    assert onnx.onnx_path() != get_encoder("efficientnet-lite0", backend="onnx").onnx_path()
    assert onnx.onnx_path().is_file()
    np.testing.assert_allclose(onnx.encode(patches), torch_enc.encode(patches), atol=1e-4, rtol=0)
    assert onnx.describe()["layers"] == {"blocks": [10, 14], "gem": True}


@pytest.mark.slow
def test_composes_with_tta_and_context(patches: np.ndarray) -> None:
    name = encoder_name("efficientnet-lite0@s3.s4", tta=2, context_px=448, size_px=224)
    assert name == "efficientnet-lite0@s3.s4-tta2-ctx2x"
    enc = get_encoder(name, backend="torch", device="cpu")
    assert (enc.name, enc.dim, enc.context) == (name, 2 * (40 + 80), 2.0)
    base = get_encoder("efficientnet-lite0@s3.s4", backend="torch", device="cpu")
    got = enc.encode(patches)
    # The spot's own half: the centre of the larger patch, averaged with its mirror image.
    centre = np.ascontiguousarray(patches[:, 56:168, 56:168])
    mirrored = np.ascontiguousarray(centre[:, :, ::-1])
    np.testing.assert_allclose(
        got[:, :120], (base.encode(centre) + base.encode(mirrored)) / 2, atol=1e-4
    )
    whole = (base.encode(patches) + base.encode(np.ascontiguousarray(patches[:, :, ::-1]))) / 2
    np.testing.assert_allclose(got[:, 120:], whole, atol=1e-4)
    concatenated = get_encoder(
        "efficientnet-lite0@s4+efficientnet-lite0", backend="torch", device="cpu"
    )
    assert concatenated.dim == 80 + 1280


@pytest.mark.slow
def test_each_spec_has_its_own_cache_entry(tmp_path: Path) -> None:
    section = synthetic(n_sections=1, n_genes=4, grid=(3, 3), image_dir=tmp_path / "img")[0]
    cache = tmp_path / "cache"
    names = ["efficientnet-lite0@s5.s6", "efficientnet-lite0@s5.s6-gem", "efficientnet-lite0@s6"]
    feats = {}
    encoders = {name: get_encoder(name, backend="torch", device="cpu") for name in names}
    for name, enc in encoders.items():
        feats[name] = extract_features(
            section, encoder=enc, size_px=32, cache_dir=cache, progress=False
        ).copy()
        assert section.obsm[feature_key(name)].shape == (9, enc.dim)
    assert len(list(ArrayCache(cache).root.rglob("*.npz"))) == 3
    # The same layer, pooled alike, gives the same columns in both specs.
    np.testing.assert_allclose(feats[names[0]][:, 112:], feats[names[2]], atol=1e-5)
    assert not np.allclose(feats[names[0]], feats[names[1]], atol=1e-3)
    # A second run reads the cache: no new file, the same values.
    again = extract_features(
        section.copy(), encoder=encoders[names[0]], size_px=32, cache_dir=cache, progress=False
    )
    np.testing.assert_array_equal(again, feats[names[0]])
    assert len(list(ArrayCache(cache).root.rglob("*.npz"))) == 3
