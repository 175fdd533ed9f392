from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from anndata import AnnData

from gr2st.datasets import synthetic
from gr2st.encoders import Encoder


@pytest.fixture(autouse=True, scope="session")
def _private_user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep exported ONNX graphs out of the user's real cache folder."""
    folder = tmp_path_factory.mktemp("user-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GR2ST_CACHE_DIR", str(folder))
        yield folder


class ColourEncoder(Encoder):
    """A cheap deterministic encoder (per-channel mean and std) that counts its calls."""

    name = "colour"
    dim = 6
    input_size = 16

    def __init__(self) -> None:
        self.calls = 0
        self.patches = 0

    @property
    def weights_hash(self) -> str:
        return "0" * 64

    def _encode(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.patches += len(batch)
        x = batch.astype(np.float32) / 255.0
        return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)


@pytest.fixture
def sections(tmp_path: Path) -> list[AnnData]:
    """Two small synthetic sections with their H&E images."""
    return synthetic(n_sections=2, n_genes=5, grid=(4, 4), image_dir=tmp_path / "img", seed=0)


@pytest.fixture
def colour_encoder() -> ColourEncoder:
    return ColourEncoder()
