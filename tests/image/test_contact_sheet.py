from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from imagefixtures import coded_image, write_image
from PIL import Image

from gr2st._constants import IMAGE_PATH, SPATIAL, UNS
from gr2st.datasets import synthetic
from gr2st.errors import GR2STDataError
from gr2st.image import contact_sheet, get_stain_normalizer, iter_patches
from gr2st.image.contact_sheet import HEADER_PX, LABEL_PX


def test_sheet_has_the_documented_size_and_the_patches(tmp_path: Path) -> None:
    path, _ = write_image("png", tmp_path, coded_image(200, 260))
    centres = np.random.default_rng(0).uniform([0, 0], [260, 200], (11, 2))
    labels = [f"spot{i}" for i in range(11)]
    out = contact_sheet(
        path, centres, labels, size_px=40, n=7, out_path=tmp_path / "s.png", tile_px=32
    )
    sheet = np.asarray(Image.open(out).convert("RGB"))
    cols, rows = 3, 3  # 7 spots
    assert sheet.shape == (HEADER_PX + rows * (32 + LABEL_PX), cols * 32, 3)
    # Spots evenly spaced through the list: 0, 2, 3, 5, 7, 8, 10.
    chosen = np.array([0, 2, 3, 5, 7, 8, 10])
    ((_, patches),) = iter_patches(path, centres[chosen], size_px=40, out_px=32)
    for k, patch in enumerate(patches):
        top, left = HEADER_PX + (k // cols) * (32 + LABEL_PX), (k % cols) * 32
        tile = sheet[top : top + 32, left : left + 32]
        # Identical except the centre cross (rows/columns 15-26 around pixel 16.5).
        np.testing.assert_array_equal(tile[:8], patch[:8])
        np.testing.assert_array_equal(tile[:, :8], patch[:, :8])
        assert tile[16, 16].tolist() == [255, 0, 0]
    assert not list(tmp_path.glob(".s.png*"))  # no temp file left behind


def test_sheet_of_synthetic_section_with_stain_and_spot_circles(tmp_path: Path) -> None:
    (section,) = synthetic(n_sections=1, grid=(4, 5), image_dir=tmp_path, seed=0)
    out = contact_sheet(
        section.uns[UNS][IMAGE_PATH],
        section.obsm[SPATIAL],
        list(section.obs_names),
        size_px=48,
        n=100,
        out_path=tmp_path / "sheet.png",
        stain=get_stain_normalizer("reinhard"),
        tile_px=48,
        spot_diameter_px=40.0,
    )
    width, height = Image.open(out).size
    assert (width, height) == (5 * 48, HEADER_PX + 4 * (48 + LABEL_PX))  # all 20 spots


def test_sheet_input_errors(tmp_path: Path) -> None:
    path, _ = write_image("png", tmp_path, coded_image(50, 50))
    with pytest.raises(GR2STDataError, match="got 1 spot labels for 2 spot centres"):
        contact_sheet(path, np.array([[5.0, 5.0], [9.0, 9.0]]), ["a"], out_path=tmp_path / "x.png")
    with pytest.raises(GR2STDataError, match="outside"):
        contact_sheet(path, np.array([[500.0, 5.0]]), ["a"], out_path=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
