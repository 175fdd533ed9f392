"""Readers on damaged copies of a section: a warning with counts, or one clear error."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gr2st._constants import SECTION, SPATIAL
from gr2st.datasets import synthetic, write_her2st_layout
from gr2st.errors import GR2STDataError
from gr2st.io import read_h5ad
from gr2st.io._spatial import PLATFORMS, grid_units, resolve_mpp


@pytest.fixture
def her2st(tmp_path: Path) -> Path:
    """One 4 × 12-spot section ``A1`` in the HER2ST layout, and a panel of its genes."""
    sec = synthetic(n_sections=1, n_genes=12, grid=(4, 12), seed=3)[0]
    sec.obs[SECTION] = "A1"
    (tmp_path / "panel.txt").write_text("\n".join(sec.var_names[:6]) + "\n")
    return write_her2st_layout([sec], tmp_path / "her2st")


def _edit_spots(root: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    path = root / "ST-spotfiles" / "A1_selection.tsv"
    edit(pd.read_csv(path, sep="\t")).to_csv(path, sep="\t", index=False)
    return path


def _check(cli, root: Path):
    return cli("data", "check", "--data", root, "--panel", root.parent / "panel.txt")


def test_swapped_x_y_columns_are_an_error_naming_them(cli, her2st: Path) -> None:
    def swap(table: pd.DataFrame) -> pd.DataFrame:
        table[["x", "y"]] = table[["y", "x"]].to_numpy()
        return table

    path = _edit_spots(her2st, swap)
    outcome = _check(cli, her2st)
    # Two thirds of the spots would be dropped: not one section's two tables as they are.
    assert outcome.code == 2
    assert outcome.one_error() == (
        f"error: {her2st / 'ST-cnts' / 'A1.tsv.gz'}: 16 of its 48 spots have a row in "
        f"{path.name}; 16 of the 48 spots selected in {path.name} have counts (at least "
        "50 % expected); its x and y columns look swapped (48 ids match that way)"
    )


def test_few_unmatched_spots_are_not_a_warning(cli, her2st: Path) -> None:
    _edit_spots(her2st, lambda table: table.iloc[3:])
    outcome = _check(cli, her2st)
    assert outcome.code == 0
    assert outcome.warnings == []
    assert "A1: 45 spots" in outcome.out


def test_huge_array_coordinate_is_one_error(cli, her2st: Path) -> None:
    def far(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[5, "x"] = 1e20
        return table

    path = _edit_spots(her2st, far)
    outcome = _check(cli, her2st)
    assert outcome.code == 2
    assert outcome.one_error() == (
        f"error: {path}: 1 array coordinate(s) are not grid positions (e.g. (1e+20, 1)); "
        "expected finite values below 1e+07"
    )


def test_nan_pixel_positions_are_named(tmp_path: Path) -> None:
    sec = synthetic(n_sections=1, n_genes=5, grid=(3, 3), seed=0)[0]
    sec.obsm[SPATIAL] = np.asarray(sec.obsm[SPATIAL], dtype=float)
    sec.obsm[SPATIAL][4] = np.nan
    sec.write_h5ad(tmp_path / "s.h5ad")
    with pytest.raises(GR2STDataError) as err:
        read_h5ad(tmp_path / "s.h5ad")
    message = str(err.value)
    assert "1 spot(s) without finite pixel positions" in message
    assert "(nan, nan)" in message
    assert "np.float64" not in message


def test_two_files_with_one_section_name_are_an_error(cli, h5ad_dir: Path, bench_args) -> None:
    (h5ad_dir / "copy.h5ad").write_bytes((h5ad_dir / "S0.h5ad").read_bytes())
    out = h5ad_dir.parent / "bench"
    outcome = cli(*bench_args(h5ad_dir, out))
    assert outcome.code == 2
    assert outcome.one_error() == (
        f"error: {h5ad_dir / 'copy.h5ad'}: section 'S0' again (also in S0.h5ad); give each "
        "file its own obs['section'] (or uns['spatial'] library id)"
    )
    assert not out.exists()


def test_repeated_section_option_is_an_error(cli, h5ad_dir: Path, bench_args) -> None:
    outcome = cli(*bench_args(h5ad_dir, h5ad_dir.parent / "b"), "--sections", "S0,S1,S0")
    assert outcome.code == 2
    assert outcome.one_error() == "error: --sections: S0 given more than once"


def _hex_grid(n: int = 6) -> np.ndarray:
    rows, cols = np.divmod(np.arange(n * n), n)
    return np.column_stack([2 * cols + rows % 2, rows]).astype(float)


@pytest.mark.parametrize(
    ("px_per_um", "given", "expected"),
    [
        (1.0, None, "spot positions look like microns, not pixels"),
        (2.0, None, None),
        (2.0, 0.5, None),
    ],
)
def test_spot_pitch_plausibility(
    caplog: pytest.LogCaptureFixture, px_per_um: float, given: float | None, expected: str | None
) -> None:
    visium = PLATFORMS["visium"]
    grid = _hex_grid()
    spatial = grid_units(grid, visium) * visium.pitch_um * px_per_um
    with caplog.at_level(logging.WARNING, logger="gr2st.io._spatial"):
        mpp, _ = resolve_mpp(
            given=given,
            platform=visium,
            grid=grid,
            spatial=spatial,
            spot_diameter_fullres=None,
            source="s.h5ad",
        )
    assert mpp == pytest.approx(given or 1 / px_per_um)
    if expected is None:
        assert caplog.text == ""
    else:
        assert expected in caplog.text


@pytest.mark.parametrize("given", [0.25, 5.0, 0.05])
def test_a_given_resolution_off_the_spot_pitch_is_an_error(given: float) -> None:
    visium = PLATFORMS["visium"]
    grid = _hex_grid()
    spatial = grid_units(grid, visium) * visium.pitch_um * 2.0
    pitch_um = 200 * given
    with pytest.raises(
        GR2STDataError,
        match=rf"^s\.h5ad: the spot pitch is 200\.0 px × {given:.4g} µm/px \(given\) = "
        rf"{pitch_um:.0f} µm, but visium spots are 100 µm apart; fix the resolution \(--mpp\)",
    ):
        resolve_mpp(
            given=given,
            platform=visium,
            grid=grid,
            spatial=spatial,
            spot_diameter_fullres=None,
            source="s.h5ad",
        )
