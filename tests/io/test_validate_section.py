"""validate_section and the shared checks of gr2st.io._validate."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import tifffile
from anndata import AnnData
from PIL import Image

from gr2st._constants import (
    ARRAY_X,
    IMAGE_PATH,
    MICRONS_PER_PIXEL,
    PATIENT,
    SECTION,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNS,
)
from gr2st.datasets import synthetic
from gr2st.errors import GR2STDataError
from gr2st.io import validate_section
from gr2st.io._validate import as_counts, image_size, pixels_per_grid_unit


@pytest.fixture
def section(tmp_path: Path) -> AnnData:
    return synthetic(n_sections=1, n_genes=5, grid=(3, 4), image_dir=tmp_path)[0]


def test_valid_synthetic_section_passes(section: AnnData) -> None:
    validate_section(section, source="S0")


def test_every_missing_field_is_listed_in_one_message(section: AnnData) -> None:
    del section.obs[PATIENT]
    del section.obs[ARRAY_X]
    del section.obsm[SPATIAL]
    del section.uns[UNS][SPOT_DIAMETER_PX]
    message = (
        "S0.h5ad: missing obs['patient'], obs['array_x'], obsm['spatial'], "
        "uns['gr2st']['spot_diameter_px']"
    )
    with pytest.raises(GR2STDataError, match=rf"^{re.escape(message)}$"):
        validate_section(section, source="S0.h5ad")


def test_missing_uns_block(section: AnnData) -> None:
    del section.uns[UNS]
    with pytest.raises(GR2STDataError, match=r"^S0: missing uns\['gr2st'\]$"):
        validate_section(section, source="S0")


def _edit(section: AnnData, how: str) -> AnnData:
    if how == "no spots":
        return section[:0].copy()
    if how == "duplicate spot ids":
        section.obs_names = ["a", "a", *section.obs_names[2:]]
    elif how == "duplicate genes":
        section.var_names = ["G", "G", *section.var_names[2:]]
    elif how == "normalised X":
        section.X = sp.csr_matrix(np.log1p(section.X.toarray()))
    elif how == "two sections":
        section.obs[SECTION] = ["S0"] * 6 + ["S1"] * 6
    elif how == "non-finite spatial":
        section.obsm[SPATIAL][3, 0] = np.nan
    elif how == "non-numeric array_x":
        section.obs[ARRAY_X] = section.obs[ARRAY_X].astype(str)
        section.obs.iloc[0, section.obs.columns.get_loc(ARRAY_X)] = "left"
    elif how == "zero spot diameter":
        section.uns[UNS][SPOT_DIAMETER_PX] = 0.0
    elif how == "string resolution":
        section.uns[UNS][MICRONS_PER_PIXEL] = "0.5"
    elif how == "spot outside image":
        section.obsm[SPATIAL][5] = [1e5, 10.0]
    elif how == "missing image":
        section.uns[UNS][IMAGE_PATH] = "/nonexistent/slide.png"
    return section


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("no spots", r"section has 0 spots × 5 genes"),
        ("duplicate spot ids", r"1 duplicate spot id\(s\) in the section \(e\.g\. 'a'\)"),
        ("duplicate genes", r"duplicate gene name\(s\) 'G'"),
        ("normalised X", r"non-integer count\(s\)"),
        ("two sections", r"obs\['section'\] has 2 values \('S0', 'S1'\)"),
        ("non-finite spatial", r"obsm\['spatial'\] has 1 spot\(s\) without finite pixel positions"),
        ("non-numeric array_x", r"obs column 'array_x' has 1 missing or non-numeric"),
        ("zero spot diameter", r"needs a positive spot_diameter_px"),
        ("string resolution", r"positive or None microns_per_pixel; got 38\.4\d* and '0\.5'"),
        ("spot outside image", r"S0\.png: 1 spot centre\(s\) lie outside"),
        ("missing image", r"/nonexistent/slide\.png: image not found"),
    ],
)
def test_invalid_sections(section: AnnData, how: str, message: str) -> None:
    with pytest.raises(GR2STDataError, match=message) as err:
        validate_section(_edit(section, how), source="S0")
    assert "\n" not in str(err.value)


def test_as_counts_converts_integral_floats_and_keeps_values() -> None:
    dense = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 7.0]])
    out = as_counts(dense, source="x")
    assert isinstance(out, sp.csr_matrix)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out.toarray(), dense)
    np.testing.assert_array_equal(as_counts(sp.csc_matrix(dense), source="x").toarray(), dense)


def test_as_counts_rejects_non_numbers() -> None:
    with pytest.raises(GR2STDataError, match="x: counts have dtype <U1; expected numbers"):
        as_counts(np.array([["a"]]), source="x")


def test_pixels_per_grid_unit_is_rotation_invariant_and_robust() -> None:
    y, x = np.mgrid[0:5, 0:6]
    grid = np.column_stack([x.ravel(), y.ravel()]).astype(float)
    angle = np.deg2rad(3.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pixels = 1000 + 290.0 * grid @ rot.T
    pixels[7] += 60.0  # one badly placed spot
    assert pixels_per_grid_unit(grid, pixels, source="x") == pytest.approx(290.0)


def test_pixels_per_grid_unit_needs_two_positions() -> None:
    with pytest.raises(GR2STDataError, match="x: need spots at two or more array positions"):
        pixels_per_grid_unit(np.ones((3, 2)), np.ones((3, 2)), source="x")


def test_image_size_reads_tiff_and_bigtiff_headers(tmp_path: Path) -> None:
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", pixels)
    tifffile.imwrite(tmp_path / "a.btf", pixels, bigtiff=True)
    assert image_size(tmp_path / "a.tif") == (30, 20)
    assert image_size(tmp_path / "a.btf") == (30, 20)


def test_image_size_ignores_the_decompression_bomb_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    # Pretend 40 x 30 is a ~100-Mpx slide: far over Pillow's limit (which raises at 2x).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(Image.DecompressionBombError), Image.open(tmp_path / "big.png"):
        pass
    assert image_size(tmp_path / "big.png") == (40, 30)
    assert Image.MAX_IMAGE_PIXELS == 100


@pytest.mark.parametrize("name", ["bad.jpg", "bad.tif"])
def test_image_size_of_a_corrupt_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(GR2STDataError, match=rf"{name}: cannot read image"):
        image_size(tmp_path / name)


def test_validate_section_does_not_modify_the_section(section: AnnData) -> None:
    before = section.X.copy()
    validate_section(section, source="S0")
    assert (before != section.X).nnz == 0
