"""The spot geometry model: platform inference, x/y scales and cross-checks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from gr2st._constants import GEOMETRY, MICRONS_PER_PIXEL, SPOT_DIAMETER_PX, UNS
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.io import read_st_legacy
from gr2st.io.geometry import Geometry, infer_geometry, infer_lattice, platform_spec


def _square(n: int = 8) -> np.ndarray:
    return np.array([[x, y] for y in range(n) for x in range(n)], dtype=float)


def _checker(n: int = 10) -> np.ndarray:
    grid = _square(n)
    return grid[grid.sum(axis=1) % 2 == 0]


def _rotation(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def test_square_array_is_st_1k() -> None:
    grid = _square()
    pixels = grid @ (290.0 * _rotation(2)).T + [400, 300]
    g = infer_geometry(grid, pixels, source="s")
    assert (g.platform, g.lattice, g.pitch_um) == ("st-1k", "square", 200.0)
    assert g.microns_per_pixel == pytest.approx(200 / 290)
    assert g.spot_diameter_px == pytest.approx(145.0)
    assert g.microns_per_pixel_x == pytest.approx(200 / 290)
    assert g.microns_per_pixel_y == pytest.approx(200 / 290)
    assert g.sources == ("spot pitch",)
    a, b, c, d, e, f = g.array_to_pixel  # type: ignore[misc]
    np.testing.assert_allclose([[a, b], [d, e]], 290.0 * _rotation(2), atol=1e-9)
    np.testing.assert_allclose([c, f], [400, 300], atol=1e-6)


def test_diagonal_neighbours_are_st_2k() -> None:
    # The 2k array: every 100 µm array step indexed, half of the positions occupied.
    grid = _checker()
    pixels = grid * 100 / 4.37
    g = infer_geometry(grid, pixels, source="s")
    assert (g.platform, g.lattice, g.pitch_um) == ("st-2k", "staggered", 100.0)
    assert g.microns_per_pixel == pytest.approx(4.37)
    assert g.spot_diameter_px == pytest.approx(100 / 4.37)
    assert infer_lattice(grid) == "checker"


def test_visium_numbering_is_hexagonal() -> None:
    rows, cols = np.divmod(np.arange(64), 8)
    grid = np.column_stack([2 * cols + rows % 2, rows]).astype(float)
    pixels = np.column_stack([grid[:, 0] * 100, grid[:, 1] * 100 * np.sqrt(3)])  # 0.5 µm/px
    g = infer_geometry(grid, pixels, source="s")
    assert (g.platform, g.lattice) == ("visium", "hex")
    assert g.microns_per_pixel == pytest.approx(0.5)
    assert g.microns_per_pixel_y == pytest.approx(0.5)
    assert g.spot_diameter_px == pytest.approx(110.0)


def test_anisotropic_scales_are_measured_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    grid = _checker()
    pixels = grid * [100 / 4.2, 100 / 4.66]  # y 11 % coarser than x
    with caplog.at_level(logging.WARNING, logger="gr2st.io.geometry"):
        g = infer_geometry(grid, pixels, source="s.tsv")
    assert g.microns_per_pixel_x == pytest.approx(4.2)
    assert g.microns_per_pixel_y == pytest.approx(4.66)
    assert g.anisotropy == pytest.approx(1 - 4.2 / 4.66)
    assert "s.tsv: the image's x and y scales differ by 10 % (4.2 vs 4.66 µm/px" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gr2st.io.geometry"):
        infer_geometry(grid, grid * 23.0, source="s.tsv")
    assert caplog.text == ""


def test_overrides_are_cross_checked() -> None:
    grid = _square()
    pixels = grid * 290.0
    # an agreeing --mpp is used and recorded
    g = infer_geometry(grid, pixels, mpp=0.7, source="s")
    assert (g.microns_per_pixel, g.sources) == (0.7, ("--mpp", "spot pitch"))
    # 10× off either way is an error naming both values and the overrides
    for wrong in (6.9, 0.069):
        with pytest.raises(
            GR2STDataError,
            match=rf"^s: --mpp gives {wrong:.4g} µm/px but the st-1k pitch \(200 µm per array "
            r"step\) gives 0\.6897 µm/px .*override with --mpp, --platform or --pitch-um$",
        ):
            infer_geometry(grid, pixels, mpp=wrong, source="s")
    with pytest.raises(GR2STDataError, match=r"^s: spot_diameter_fullres gives 2 µm/px but"):
        infer_geometry(grid, pixels, evidence={"spot_diameter_fullres": 2.0}, source="s")
    # the pitch override changes the resolution
    assert infer_geometry(grid, pixels, pitch_um=100.0, source="s").microns_per_pixel == (
        pytest.approx(100 / 290)
    )
    with pytest.raises(GR2STDataError, match=r"^s: platform visium has a hex array, but the "):
        infer_geometry(grid, pixels, platform="visium", source="s")
    with pytest.raises(GR2STConfigError, match=r"^platform 'xenium': expected one of st-1k, "):
        infer_geometry(grid, pixels, platform="xenium", source="s")
    with pytest.raises(GR2STConfigError, match=r"^pitch_um must be positive, got -1"):
        infer_geometry(grid, pixels, pitch_um=-1.0, source="s")


def test_positions_in_microns_are_implausible() -> None:
    grid = _square()
    with pytest.raises(GR2STDataError, match=r"^s: spot pitch gives 40 µm/px, outside the "):
        infer_geometry(grid, grid * 5.0, source="s")


def test_free_spots_need_a_resolution() -> None:
    pixels = np.random.default_rng(0).uniform(0, 1000, (30, 2))
    with pytest.raises(GR2STDataError, match=r"^s: the spots have no array coordinates"):
        infer_geometry(None, pixels, source="s")
    g = infer_geometry(None, pixels, mpp=0.5, spot_diameter_um=55.0, source="s")
    assert (g.platform, g.lattice, g.microns_per_pixel, g.array_to_pixel) == (
        "free",
        "free",
        0.5,
        None,
    )
    assert g.spot_diameter_px == pytest.approx(110.0)


def test_round_trip_through_h5ad(tmp_path: Path) -> None:
    grid = _checker()
    g = infer_geometry(grid, grid * 23.0, source="s")
    a = anndata.AnnData(np.zeros((1, 1)), uns={UNS: {GEOMETRY: g.to_dict()}})
    a.write_h5ad(tmp_path / "a.h5ad")
    back = anndata.read_h5ad(tmp_path / "a.h5ad").uns[UNS][GEOMETRY]
    assert Geometry.from_dict(back) == g
    assert platform_spec("2k") == platform_spec("ST-2K")


def _write_2k(tmp: Path, write_tsv: Callable[..., Path], *, selected: bool = False) -> Path:
    """A 2k section: 60 checkerboard spots, 100 µm steps, 4.2 × 4.66 µm/px (x × y)."""
    grid = _checker(11)[:60]
    spots = pd.DataFrame(
        {
            "x": grid[:, 0],
            "y": grid[:, 1],
            "pixel_x": 100 + grid[:, 0] * 100 / 4.2,
            "pixel_y": 100 + grid[:, 1] * 100 / 4.66,
            "selected": 1,
        }
    )
    ids = [f"{int(x)}x{int(y)}" for x, y in grid]
    counts = pd.DataFrame(np.ones((len(ids), 2), dtype=int), index=ids, columns=["A", "B"])
    if selected:
        spots.loc[:39, "selected"] = 0  # 40 off tissue
        extra = pd.DataFrame([[1, 1]] * 3, index=["90x90", "91x91", "92x92"], columns=["A", "B"])
        counts = pd.concat([counts, extra])  # 3 without any row
    write_tsv(spots, tmp / "spots.tsv", index=False)
    return write_tsv(counts, tmp / "counts.tsv", index=True)


def test_read_st_legacy_infers_the_2k_array(
    tmp_path: Path, write_tsv: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    counts = _write_2k(tmp_path, write_tsv)
    with caplog.at_level(logging.WARNING):
        adata = read_st_legacy(counts, tmp_path / "spots.tsv")
    meta = adata.uns[UNS]
    # the old reader took 200 µm per array step: 8.7 µm/px and an 11.5 px spot
    assert meta[MICRONS_PER_PIXEL] == pytest.approx(np.sqrt(4.2 * 4.66), rel=0.02)
    assert meta[SPOT_DIAMETER_PX] == pytest.approx(100 / np.sqrt(4.2 * 4.66), rel=0.02)
    geometry = Geometry.from_dict(meta[GEOMETRY])
    assert (geometry.platform, geometry.microns_per_pixel_x, geometry.microns_per_pixel_y) == (
        "st-2k",
        pytest.approx(4.2),
        pytest.approx(4.66),
    )
    assert "x and y scales differ by 10 %" in caplog.text
    with pytest.raises(GR2STDataError, match=r"spots\.tsv: platform st-1k has a square array"):
        read_st_legacy(counts, tmp_path / "spots.tsv", platform="st-1k")
    forced = read_st_legacy(counts, tmp_path / "spots.tsv", pitch_um=200.0)
    assert forced.uns[UNS][MICRONS_PER_PIXEL] == pytest.approx(2 * meta[MICRONS_PER_PIXEL])
    with pytest.raises(GR2STDataError, match=r"--mpp gives 8\.7 µm/px but the st-2k pitch"):
        read_st_legacy(counts, tmp_path / "spots.tsv", mpp=8.7)


def test_drop_warning_tells_off_tissue_from_missing_rows(
    tmp_path: Path, write_tsv: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    counts = _write_2k(tmp_path, write_tsv, selected=True)
    with caplog.at_level(logging.WARNING):
        adata = read_st_legacy(counts, tmp_path / "spots.tsv", section="S")
    assert adata.n_obs == 20
    assert (
        "S: 43 of 63 spots (68 %) dropped: 40 are off tissue (selected = 0 in spots.tsv) "
        "and 3 have no row in spots.tsv" in caplog.text
    )
