"""BundleMeta: the bundle.json schema round-trips and every field is validated on load."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gr2st._utils.files import sha256_file
from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.genes import prepare_section
from gr2st.models import GR2ST
from gr2st.models.bundle import (
    META_FILE,
    WEIGHTS_FILE,
    BundleMeta,
    ImageSettings,
    meta_fingerprint,
)

KEY = "X_demo"
DIM = 6


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = synthetic(n_sections=2, n_genes=8, grid=(4, 4), seed=0)
    sections = [prepare_section(s, genes=list(s.var_names)) for s in raw]
    rng = np.random.default_rng(0)
    for s in sections:
        s.obsm[KEY] = rng.normal(size=(s.n_obs, DIM)).astype(np.float32)
    model = GR2ST(
        sections,
        feature_key=KEY,
        device="cpu",
        overrides=["model.proj_dim=8", "model.heads=2", "model.n_positions=64", "train.epochs=2"],
    )
    model.train(progress=False)
    image = ImageSettings(
        encoder="efficientnet-lite0",
        encoder_dim=DIM,
        encoder_weights_hash="0" * 64,
        size_px=224,
        training_mpp=0.5,
        stain={"name": "none", "key": "none", "reference": None},
        nuclei="none",
    )
    return model.save(tmp_path_factory.mktemp("bundle") / "model", image=image, command=["t"])


def _edited(saved: Path, tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the bundle with ``change`` applied to its metadata, fingerprint recomputed."""
    folder = tmp_path / "edited"
    folder.mkdir(parents=True)
    for file in saved.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    meta = json.loads((folder / META_FILE).read_text())
    change(meta)
    meta["fingerprint"] = meta_fingerprint(meta)
    (folder / META_FILE).write_text(json.dumps(meta))
    return folder


def test_the_schema_round_trips(saved: Path) -> None:
    raw = json.loads((saved / META_FILE).read_text())
    meta = BundleMeta.from_dict(raw)
    assert meta.image is not None
    assert (meta.image.size_px, meta.image.encoder_dim, meta.image_dim) == (224, DIM, DIM)
    assert meta.n_spots == sum(len(o) for _, o in meta.train_sections) > 0
    assert meta.command == ["t"]
    written = meta.to_dict()
    assert {k: raw[k] for k in written} == written
    loaded = GR2ST.load(saved, device="cpu")
    assert loaded.image_settings == meta.image
    assert loaded.train_section_names == [name for name, _ in meta.train_sections]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(meta: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = meta
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value

    return change


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("patch.size_px", 0, r"patch\.size_px is 0; expected a positive integer"),
        ("patch.size_px", "224", r"patch\.size_px is '224'; expected a positive integer"),
        ("patch.training_mpp", -0.5, r"patch\.training_mpp is -0\.5; expected a positive"),
        ("encoder.dim", DIM + 1, rf"encoder\.dim is {DIM + 1}; expected {DIM} \(image_dim"),
        ("encoder.name", "", r"encoder\.name is ''; expected an encoder name"),
        ("image_dim", 0, r"image_dim is 0; expected a positive integer"),
        ("seed", 1.5, r"seed is 1\.5; expected an integer"),
        ("feature_key", "", r"feature_key is ''; expected a name"),
        ("genes.panel", [], r"genes\.panel is \[\]; expected a non-empty list of distinct"),
        ("train_sections.0.n_spots", 0, r"train_sections\.0\.n_spots is 0; expected a positive"),
        ("train_sections.0.obs_names", ["a"], r"train_sections\.0\.obs_names is \['a'\]; expect"),
        ("bank.n_spots", 3, r"bank\.n_spots is 3; expected \d+ \(the sections' spots\)"),
        ("bank.embedding_dim", -1, r"bank\.embedding_dim is -1; expected a positive integer"),
        ("bank.all_nnz", None, r"bank\.all_nnz is None; expected an integer"),
        ("stain", "none", r"stain is 'none'; expected an object"),
        ("nuclei", 3, r"nuclei is 3; expected a nuclei source"),
        ("history", ["x"], r"history is \['x'\]; expected a list of numbers"),
    ],
)
def test_every_field_is_validated_with_one_line(
    saved: Path, tmp_path: Path, path: str, value: Any, message: str
) -> None:
    folder = _edited(saved, tmp_path, _set(path, value))
    with pytest.raises(GR2STConfigError, match=message) as caught:
        GR2ST.load(folder, device="cpu")
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"{folder}/{META_FILE}: ")


def test_weights_of_another_feature_width_are_a_one_line_error(saved: Path, tmp_path: Path) -> None:
    # The metadata (fingerprint and sha256 recomputed) says image_dim 5 and encoder.dim 5,
    # while the weights take DIM features: a gr2st error, not torch's "size mismatch".
    folder = _edited(saved, tmp_path, lambda m: (m.update(image_dim=5), m["encoder"].update(dim=5)))
    with pytest.raises(GR2STDataError) as caught:
        GR2ST.load(folder, device="cpu")
    text = str(caught.value)
    assert text == (
        f"{folder / WEIGHTS_FILE}: the network takes {DIM} image features, {META_FILE} says "
        "image_dim=5 (the bundle's encoder and weights disagree)"
    )
    assert "size mismatch" not in text


def test_weights_with_missing_or_reshaped_tensors_are_listed(saved: Path, tmp_path: Path) -> None:
    folder = _edited(saved, tmp_path, lambda m: None)
    weights = load_file(str(folder / WEIGHTS_FILE))
    name = next(k for k in weights if k.startswith("spot_projection") and k.endswith("weight"))
    weights[name] = torch.zeros(2, 2)
    del weights["image_projection.fc.bias"]
    save_file(weights, str(folder / WEIGHTS_FILE))
    digest = sha256_file(folder / WEIGHTS_FILE)
    folder2 = _edited(
        folder, tmp_path / "again", lambda m: m["files"].update({WEIGHTS_FILE: digest})
    )
    with pytest.raises(GR2STDataError, match="weights do not fit the network") as caught:
        GR2ST.load(folder2, device="cpu")
    text = str(caught.value)
    assert "missing image_projection.fc.bias" in text
    assert f"{name} (2, 2) instead of" in text
    assert "\n" not in text
