"""Geometry inferred on real HER2ST pixels, as given and re-laid out (skipped without data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gr2st._constants import GEOMETRY, MICRONS_PER_PIXEL, SPATIAL, SPOT_DIAMETER_PX, UNS
from gr2st.image.patches import patch_size_px
from gr2st.io import read_her2st, read_st_legacy
from gr2st.io.geometry import Geometry

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

# µm/px and spot diameter (px) of the six imaged sections as read before the geometry
# model existed: `make run`'s numbers rest on them, so they must not move.
BEFORE = {
    "B4": (0.6857694680135439, 145.82159845883515),
    "C2": (0.6873282215850853, 145.4908977393428),
    "C3": (0.6926027776592676, 144.38290348468098),
    "C4": (0.6852907030716225, 145.92347386558458),
    "C5": (0.6897795748387268, 144.97384910734766),
    "C6": (0.690220769646754, 144.88118062743706),
}
#: The published patch: 224 px at HER2ST's resolution.
PATCH_UM = 224 * 0.6857694680135439


@pytest.mark.parametrize("section", sorted(BEFORE))
def test_her2st_geometry_is_unchanged(her2st_root: Path, section: str) -> None:
    meta = read_her2st(her2st_root, section).uns[UNS]
    mpp, diameter = BEFORE[section]
    assert meta[MICRONS_PER_PIXEL] == pytest.approx(mpp, rel=1e-12)
    assert meta[SPOT_DIAMETER_PX] == pytest.approx(diameter, rel=1e-12)
    geometry = Geometry.from_dict(meta[GEOMETRY])
    assert (geometry.platform, geometry.lattice, geometry.pitch_um) == ("st-1k", "square", 200.0)
    assert geometry.anisotropy < 0.01


@pytest.fixture(scope="module")
def b4(her2st_root: Path) -> tuple[Path, Path, Path]:
    """B4's count table, spot table and image."""
    image = next((her2st_root / "ST-imgs" / "B" / "B4").glob("*.jpg"))
    spots = her2st_root / "ST-spotfiles" / "B4_selection.tsv"
    return her2st_root / "ST-cnts" / "B4.tsv.gz", spots, image


def test_downscaled_image_is_measured_without_overrides(
    b4: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts, spot_file, image = b4
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # a 92-Mpx H&E scan
    spots = pd.read_csv(spot_file, sep="\t")
    factor = 5
    with Image.open(image) as img:
        small = img.resize((img.width // factor, img.height // factor), Image.Resampling.LANCZOS)
        small.save(tmp_path / "small.png")
    table = spots.assign(pixel_x=spots["pixel_x"] / factor, pixel_y=spots["pixel_y"] / factor)
    table.to_csv(tmp_path / "spots.tsv", sep="\t", index=False)
    full = read_st_legacy(counts, spot_file, image=image)
    down = read_st_legacy(counts, tmp_path / "spots.tsv", image=tmp_path / "small.png")
    true_mpp = full.uns[UNS][MICRONS_PER_PIXEL] * factor
    assert down.uns[UNS][MICRONS_PER_PIXEL] == pytest.approx(true_mpp, rel=0.02)
    assert down.uns[UNS][SPOT_DIAMETER_PX] == pytest.approx(145.8 / factor, rel=0.02)
    np.testing.assert_allclose(down.obsm[SPATIAL] * factor, full.obsm[SPATIAL])
    # patches of the same µm: 224 px on the original, ≈ 45 px here
    sides = [
        patch_size_px(patch_um=PATCH_UM, mpp=a.uns[UNS][MICRONS_PER_PIXEL]) for a in (full, down)
    ]
    assert sides[0] == 224
    assert sides[1] * down.uns[UNS][MICRONS_PER_PIXEL] == pytest.approx(PATCH_UM, rel=0.02)


def test_2k_convention_layout_is_inferred(b4: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """B4 re-indexed so that array neighbours are diagonal steps (the 2k convention): one
    array step is then 200 µm / √2, stated as the pitch; the platform is inferred."""
    counts, spot_file, image = b4
    spots = pd.read_csv(spot_file, sep="\t")
    x, y = spots["x"].to_numpy(), spots["y"].to_numpy()
    relabel = {f"{a}x{b}": f"{a - b}x{a + b}" for a, b in zip(x, y, strict=True)}
    table = spots.assign(x=x - y, y=x + y)
    table.to_csv(tmp_path / "spots.tsv", sep="\t", index=False)
    raw = pd.read_csv(counts, sep="\t", index_col=0)
    ids = ["{}x{}".format(*(round(float(v)) for v in str(i).split("x"))) for i in raw.index]
    raw.index = [relabel.get(i, f"{i}_unplaced") for i in ids]
    raw = raw[~raw.index.str.endswith("_unplaced")]
    raw.to_csv(tmp_path / "counts.tsv", sep="\t")
    adata = read_st_legacy(
        tmp_path / "counts.tsv", tmp_path / "spots.tsv", image=image, pitch_um=200 / np.sqrt(2)
    )
    geometry = Geometry.from_dict(adata.uns[UNS][GEOMETRY])
    assert (geometry.platform, geometry.lattice) == ("st-2k", "staggered")
    assert adata.uns[UNS][MICRONS_PER_PIXEL] == pytest.approx(BEFORE["B4"][0], rel=0.02)
    assert adata.uns[UNS][SPOT_DIAMETER_PX] == pytest.approx(BEFORE["B4"][1], rel=0.02)
    assert geometry.anisotropy < 0.01
    side = patch_size_px(patch_um=PATCH_UM, mpp=adata.uns[UNS][MICRONS_PER_PIXEL])
    assert side == pytest.approx(224, abs=4)
