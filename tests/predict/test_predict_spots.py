"""Query spots: CSV reading, tissue detection and the hexagonal grid."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy.spatial import cKDTree

from gr2st._constants import ARRAY_X, ARRAY_Y
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.image import open_slide
from gr2st.predict import (
    check_tissue,
    detect_tissue,
    grid_spots,
    hex_lattice,
    load_query,
    read_spots_csv,
)

GLASS = (246, 244, 247)
TISSUE = (205, 120, 175)


def _disc_image(size: int = 400, radius: int = 120) -> np.ndarray:
    """Glass with one disc of stained tissue (with mild texture) in the middle."""
    rng = np.random.default_rng(0)
    img = np.empty((size, size, 3), np.float64)
    img[:] = GLASS
    yy, xx = np.mgrid[:size, :size]
    inside = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < radius**2
    img[inside] = TISSUE
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_read_spots_csv(tmp_path: Path) -> None:
    path = tmp_path / "spots.csv"
    path.write_text("id,x,y,label\nA,10,20,tumour\nB,30.5,40,stroma\n")
    q = read_spots_csv(path)
    assert q.centers.tolist() == [[10.0, 20.0], [30.5, 40.0]]
    assert list(q.obs.index) == ["A", "B"]
    assert q.obs["label"].tolist() == ["tumour", "stroma"]
    assert q.source == "spots"
    assert q.mpp is None
    path.write_text("y,x\n1,2\n")
    assert read_spots_csv(path).centers.tolist() == [[2.0, 1.0]]
    assert list(read_spots_csv(path).obs.index) == ["spot0"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("col,row\n1,2\n", r"column\(s\) \[.x., .y.\] \(found \[.col., .row.\]\); expected"),
        ("x,y\n", "no spots"),
        ("x,y\n1,2\n3,oops\n", "row 3 has a non-numeric or missing x/y"),
        ("id,x,y\na,1,2\na,3,4\n", r"column 'id' repeats ids \['a'\]"),
    ],
)  # fmt: skip
def test_read_spots_csv_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "spots.csv"
    path.write_text(text)
    with pytest.raises(GR2STDataError, match=match):
        read_spots_csv(path)
    with pytest.raises(GR2STDataError, match="no such spots file"):
        read_spots_csv(tmp_path / "missing.csv")


def test_detect_tissue() -> None:
    img = _disc_image()
    mask = detect_tissue(img)
    yy, xx = np.mgrid[:400, :400]
    disc = (xx - 200) ** 2 + (yy - 200) ** 2 < 120**2
    assert (mask == disc).mean() > 0.99
    # All tissue stays whole and all glass stays empty (Otsu alone would split them).
    assert detect_tissue(np.full((50, 50, 3), TISSUE, np.uint8)).all()
    assert not detect_tissue(np.full((50, 50, 3), GLASS, np.uint8)).any()
    with pytest.raises(GR2STDataError, match="expected a uint8 RGB image"):
        detect_tissue(np.zeros((5, 5)))


def test_hex_lattice_geometry() -> None:
    centers, array = hex_lattice(1000.0, 800.0, 50.0)
    assert centers.min() >= 25.0 - 1e-9
    assert (centers[:, 0] < 1000).all()
    assert (centers[:, 1] < 800).all()
    distance, _ = cKDTree(centers).query(centers, k=7)
    inner = (centers[:, 0] > 100) & (centers[:, 0] < 900)
    inner &= (centers[:, 1] > 100) & (centers[:, 1] < 700)
    # Six equidistant neighbours at the pitch: a hexagonal lattice.
    np.testing.assert_allclose(distance[inner, 1:], 50.0, rtol=1e-9)
    assert ((array[:, 0] + array[:, 1]) % 2 == 0).all()  # Visium's column parity
    with pytest.raises(GR2STConfigError, match="pitch must be positive"):
        hex_lattice(10.0, 10.0, 0.0)


def test_grid_spots_on_tissue(tmp_path: Path) -> None:
    png = tmp_path / "slide.png"
    Image.fromarray(_disc_image()).save(png)
    with open_slide(png) as slide, pytest.raises(GR2STConfigError, match="pass --mpp"):
        grid_spots(slide, pitch_um=40.0)
    with open_slide(png) as slide:
        spots = grid_spots(slide, pitch_um=40.0, mpp=2.0)
    assert spots.source == "grid"
    assert spots.spot_diameter_px == 20.0
    r = np.hypot(spots.centers[:, 0] - 200, spots.centers[:, 1] - 200)
    assert r.max() < 122
    # The disc's area over the area of one hexagonal cell (pitch² · √3/2).
    expected = np.pi * 120**2 / (20**2 * np.sqrt(3) / 2)
    assert abs(spots.n_spots - expected) < 0.05 * expected
    assert list(spots.obs.columns) == [ARRAY_X, ARRAY_Y]
    assert spots.obs.index.is_unique
    # A tiled TIFF with a resolution tag gives the microns per pixel itself.
    tif = tmp_path / "slide.tif"
    tifffile.imwrite(
        tif,
        _disc_image(),
        tile=(128, 128),
        resolution=(5000.0, 5000.0),
        resolutionunit="CENTIMETER",
    )
    with open_slide(tif) as slide:
        from_tags = grid_spots(slide, pitch_um=40.0)
    assert from_tags.mpp == pytest.approx(2.0)
    np.testing.assert_allclose(from_tags.centers, spots.centers)
    with open_slide(png) as slide, pytest.raises(GR2STDataError, match="no tissue detected"):
        grid_spots(slide, mpp=2.0, thumbnail=(np.full((40, 40, 3), GLASS, np.uint8), 0.1))


def test_check_tissue(caplog: pytest.LogCaptureFixture) -> None:
    img = _disc_image()  # tissue: the disc of radius 120 around (200, 200)
    centres = np.array([[200.0, 200.0], [200.0, 90.0], [200.0, 60.0], [20.0, 20.0]])
    # (200, 60) is 20 px off the disc: on tissue with a 50 px spot, off with a 20 px one.
    with caplog.at_level(logging.WARNING, logger="gr2st"):
        on = check_tissue(img, 1.0, centres, spot_diameter_px=50.0, image="disc.png")
    assert on.tolist() == [True, True, True, False]
    assert "disc.png: 1 of 4 spots lie off the detected tissue" in caplog.text
    on = check_tissue(img, 1.0, centres, spot_diameter_px=20.0, image="disc.png")
    assert on.tolist() == [True, True, False, False]
    # The thumbnail scale maps full-resolution centres onto it.
    on = check_tissue(img[::2, ::2], 0.5, centres, spot_diameter_px=20.0, image="disc.png")
    assert on.tolist() == [True, True, False, False]
    with pytest.raises(GR2STDataError, match=r"^disc\.png: none of the 2 spots lies on the"):
        check_tissue(img, 1.0, centres[[3, 3]] + [[0, 0], [5, 0]], spot_diameter_px=10.0,
                     image="disc.png")  # fmt: skip
    glass = np.full((50, 50, 3), GLASS, np.uint8)
    with pytest.raises(GR2STDataError, match=r"^blank\.png: no tissue detected \(the image is"):
        check_tissue(glass, 1.0, centres, spot_diameter_px=10.0, image="blank.png")


def test_load_query_needs_exactly_one_input(tmp_path: Path) -> None:
    with pytest.raises(GR2STConfigError, match=r"give exactly one of .* \(got none\)"):
        load_query()
    with pytest.raises(GR2STConfigError, match=r"\(got \['--spots', '--grid'\]\)"):
        load_query(spots=tmp_path / "s.csv", grid=True)
    with pytest.raises(GR2STConfigError, match="--grid needs --image SLIDE"):
        load_query(grid=True)
    (tmp_path / "s.csv").write_text("x,y\n1,2\n")
    with pytest.raises(GR2STDataError, match="spots: no image; pass --image SLIDE"):
        load_query(spots=tmp_path / "s.csv")
