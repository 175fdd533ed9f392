from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTImageProcessor, ViTModel

from gr2st._utils.files import sha256_file
from gr2st.encoders import HFEncoder, get_encoder
from gr2st.encoders.hf import hub_offline, parse_source
from gr2st.errors import GR2STConfigError


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer ViT (hidden 32, 32 px, 8 px patches) and its processor."""
    folder = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)


def _direct(folder: Path, patches: np.ndarray) -> torch.Tensor:
    """Reference: resize/normalise by hand, then call the model itself."""
    model = ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
    images = [np.asarray(_pil(p).resize((32, 32), 2)) for p in patches]  # 2 = bilinear
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return model(pixel_values=(x - 0.5) / 0.5).last_hidden_state


def _pil(a: np.ndarray):
    from PIL import Image

    return Image.fromarray(a)


def test_cls_and_mean_pooling_match_the_model(tiny_vit, patches):
    cls = get_encoder(f"hf:{tiny_vit}", device="cpu")
    mean = get_encoder(f"hf:{tiny_vit}?pooling=mean", device="cpu")
    hidden = _direct(tiny_vit, patches)
    assert hidden.shape == (3, 1 + 16, 32)
    assert (cls.dim, cls.input_size, cls.pooling) == (32, 32, "cls")
    f_cls, f_mean = cls.encode(patches), mean.encode(patches)
    assert f_cls.shape == f_mean.shape == (3, 32)
    assert f_cls.dtype == np.float32
    np.testing.assert_allclose(f_cls, hidden[:, 0].numpy(), atol=1e-4)
    np.testing.assert_allclose(f_mean, hidden[:, 1:].mean(dim=1).numpy(), atol=1e-4)
    assert np.abs(f_cls - f_mean).max() > 1e-2


def test_names_hash_and_keyword_pooling(tiny_vit):
    enc = HFEncoder(str(tiny_vit), pooling="mean", device="cpu")
    assert enc.name == f"hf-{tiny_vit.name}-mean"
    assert get_encoder(f"hf:{tiny_vit}", device="cpu").name == f"hf-{tiny_vit.name}"
    expected = sha256_file(tiny_vit / "model.safetensors")
    assert enc.weights_hash != expected  # a hash over (file name, content hash) pairs
    other = tiny_vit.parent / "copy"
    other.mkdir()
    for f in tiny_vit.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    assert HFEncoder(str(other), device="cpu").weights_hash == enc.weights_hash
    assert enc.describe()["pooling"] == "mean"


def test_parse_source():
    assert parse_source("/models/phikon?pooling=cls") == ("/models/phikon", {"pooling": "cls"})
    assert parse_source("owkin/phikon-v2") == ("owkin/phikon-v2", {})


def test_bad_pooling_options(tiny_vit):
    with pytest.raises(GR2STConfigError, match="pooling must be 'cls' or 'mean', got 'max'"):
        get_encoder(f"hf:{tiny_vit}?pooling=max")
    with pytest.raises(GR2STConfigError, match="contradicts"):
        get_encoder(f"hf:{tiny_vit}?pooling=cls", pooling="mean")
    with pytest.raises(GR2STConfigError, match=r"unknown option\(s\) \['layer'\]"):
        get_encoder(f"hf:{tiny_vit}?layer=3")
    with pytest.raises(GR2STConfigError, match="after 'hf:'"):
        get_encoder("hf:")


def test_missing_local_dir_is_a_clear_error(tmp_path):
    with pytest.raises(GR2STConfigError, match=r"model directory .*nope does not exist"):
        get_encoder(f"hf:{tmp_path / 'nope'}")


def test_dir_without_checkpoint(tmp_path):
    with pytest.raises(GR2STConfigError, match="is not a transformers checkpoint"):
        get_encoder(f"hf:{tmp_path}")


def test_missing_hub_weights_offline_fail_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(
        GR2STConfigError,
        match=r"'owkin/not-a-model': no such local directory, and the hub is offline",
    ):
        get_encoder("hf:owkin/not-a-model")
    assert time.perf_counter() - start < 10


def test_unreachable_hub_counts_as_offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    assert hub_offline()
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    monkeypatch.setenv("HF_ENDPOINT", "https://huggingface.co")
    assert hub_offline()
