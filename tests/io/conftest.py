"""Tiny legacy-ST tables shared by the reader tests."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

# A 3 x 3 array at a 100-px pitch: spot (x, y) sits at pixel (50 + 100 (x-1), 50 + 100 (y-1)).
PITCH_PX = 100.0
GENES = ["KRT5", "ERBB2", "MT-CO1"]


def _st_spots() -> pd.DataFrame:
    y, x = np.mgrid[1:4, 1:4]
    x, y = x.ravel().astype(float), y.ravel().astype(float)
    return pd.DataFrame(
        {
            "x": x,
            "y": y,
            "new_x": x + 0.1,
            "new_y": y - 0.1,
            "pixel_x": 50 + (x - 1) * PITCH_PX,
            "pixel_y": 50 + (y - 1) * PITCH_PX,
            "selected": 1,
        }
    )


def _st_counts() -> pd.DataFrame:
    spots = _st_spots()
    ids = [f"{int(a)}x{int(b)}" for a, b in zip(spots["x"], spots["y"], strict=True)]
    values = np.arange(27, dtype=np.int64).reshape(9, 3) % 7
    return pd.DataFrame(values, index=ids, columns=GENES)


def _write_tsv(table: pd.DataFrame, path: Path, *, index: bool) -> Path:
    """Write ``table`` tab-separated, gzipped when ``path`` ends in ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            table.to_csv(fh, sep="\t", index=index)
    else:
        table.to_csv(path, sep="\t", index=index)
    return path


def _write_image(path: Path, size: tuple[int, int] = (300, 300)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (230, 170, 200)).save(path)
    return path


@pytest.fixture
def st_spots() -> pd.DataFrame:
    """Spot-detector table of the 3 x 3 array (x, y integers; new_x/new_y refined)."""
    return _st_spots()


@pytest.fixture
def st_counts() -> pd.DataFrame:
    """Counts of the 9 spots (row i = spot i of ``st_spots``), ids ``"<x>x<y>"``."""
    return _st_counts()


@pytest.fixture
def write_tsv() -> Callable[..., Path]:
    """``write_tsv(table, path, index=...)``: tab-separated, gzipped for ``.gz``."""
    return _write_tsv


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """``write_image(path, size=(300, 300))``: a plain pink RGB image."""
    return _write_image


@pytest.fixture
def her2st_layout(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing one section in the HER2ST layout; returns the root."""

    def make(
        section: str = "B4",
        *,
        counts: pd.DataFrame | None = None,
        spots: pd.DataFrame | None = None,
        image: bool = True,
    ) -> Path:
        root = tmp_path / "her2st"
        _write_tsv(
            _st_counts() if counts is None else counts,
            root / "ST-cnts" / f"{section}.tsv.gz",
            index=True,
        )
        _write_tsv(
            _st_spots() if spots is None else spots,
            root / "ST-spotfiles" / f"{section}_selection.tsv",
            index=False,
        )
        if image:
            _write_image(root / "ST-imgs" / section[0] / section / f"{section}_HE.jpg")
        return root

    return make
