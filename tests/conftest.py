"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ../shared/data/her2st relative to the repository root.
_DEFAULT_HER2ST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "her2st"


@pytest.fixture(scope="session")
def her2st_root() -> Path:
    """The real HER2ST folder (``$GR2ST_DATA`` or ``../shared/data/her2st``), else skip.

    ``GR2ST_DATA`` may name the HER2ST folder itself or a data folder holding ``her2st/``.
    """
    env = os.environ.get("GR2ST_DATA")
    root = Path(env) if env else _DEFAULT_HER2ST
    if not (root / "ST-cnts").is_dir() and (root / "her2st" / "ST-cnts").is_dir():
        root = root / "her2st"
    if not (root / "ST-cnts").is_dir():
        pytest.skip(f"HER2ST data not found at {root}; set GR2ST_DATA")
    return root


def squidpy_visium(
    image: Path,
    folder: Path,
    *,
    upscale: int = 4,
    image_mpp: float = 2.0,
    genes: list[str] | None = None,
    counts: bool = False,
    seed: int = 0,
) -> tuple[Path, Path]:
    """A Visium AnnData as ``sc.read_visium``/squidpy give it, over ``image``; written.

    ``image`` (``image_mpp`` µm/px) is the ``hires`` image; the full-resolution image is
    it upscaled ``upscale`` times (written too). Spots: Visium's hexagonal grid (100 µm
    pitch) in full-resolution pixels, 10x barcodes, ``array_row``/``array_col``,
    ``in_tissue``; scale factors as Space Ranger writes them (``spot_diameter_fullres``
    = 65 µm); ``X`` z-scored log counts (negative values, no counts) unless ``counts``.

    Returns
    -------
    h5ad, fullres
        The ``.h5ad`` file and the full-resolution PNG.
    """
    import numpy as np
    import pandas as pd
    from anndata import AnnData
    from PIL import Image

    rng = np.random.default_rng(seed)
    hires = np.asarray(Image.open(image).convert("RGB"))
    full_mpp = image_mpp / upscale
    height, width = hires.shape[0] * upscale, hires.shape[1] * upscale
    fullres = folder / "fullres.png"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(hires).resize((width, height), Image.Resampling.NEAREST).save(fullres)
    pitch = 100.0 / full_mpp
    xs, ys, cols, rows = [], [], [], []
    for r in range(int((height - pitch) // (pitch * np.sqrt(3) / 2)) + 1):
        y = pitch / 2 + r * pitch * np.sqrt(3) / 2
        for k in range(int((width - pitch / 2 * (1 + r % 2)) // pitch) + 1):
            x = pitch / 2 * (1 + r % 2) + k * pitch
            if x < width - 1 and y < height - 1:
                xs.append(x)
                ys.append(y)
                cols.append(2 * k + r % 2)
                rows.append(r)
    n = len(xs)
    genes = genes or [f"GENE{i:03d}" for i in range(10)]
    raw = rng.poisson(3.0, (n, len(genes))).astype(np.float32)
    logged = np.log1p(raw)
    z = (logged - logged.mean(axis=0)) / (logged.std(axis=0) + 1e-6)
    barcodes = ["".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in range(n)]
    adata = AnnData(
        X=(raw if counts else z).astype(np.float32),
        obs=pd.DataFrame({"in_tissue": 1, "array_row": rows, "array_col": cols}, index=barcodes),
        var=pd.DataFrame(index=genes),
    )
    adata.obsm["spatial"] = np.column_stack([xs, ys])
    adata.uns["spatial"] = {
        "V1": {
            "images": {
                "hires": hires.astype(np.float32) / 255.0,
                "lowres": hires[::4, ::4].astype(np.float32) / 255.0,
            },
            "scalefactors": {
                "tissue_hires_scalef": 1.0 / upscale,
                "tissue_lowres_scalef": 0.25 / upscale,
                "spot_diameter_fullres": 65.0 / full_mpp,
                "fiducial_diameter_fullres": 105.0 / full_mpp,
            },
            "metadata": {
                "chemistry_description": "Spatial 3' v1",
                "software_version": "spaceranger-1.3.1",
            },
        }
    }
    path = folder / "visium.h5ad"
    adata.write_h5ad(path)
    return path, fullres


@pytest.fixture
def make_squidpy_visium():
    """``make_squidpy_visium(image, folder, **options)``: see :func:`squidpy_visium`."""
    return squidpy_visium
