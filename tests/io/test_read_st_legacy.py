"""read_st_legacy: the generic legacy-ST layout (counts + spot-detector table + image)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gr2st._constants import (
    ARRAY_X,
    IMAGE_PATH,
    MICRONS_PER_PIXEL,
    PATIENT,
    SECTION,
    SOURCE_FORMAT,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNS,
)
from gr2st.errors import GR2STDataError
from gr2st.io import read_her2st, read_st_legacy


@pytest.fixture
def layout(
    tmp_path: Path,
    st_counts: pd.DataFrame,
    st_spots: pd.DataFrame,
    write_tsv: Callable[..., Path],
    write_image: Callable[..., Path],
) -> tuple[Path, Path, Path]:
    counts = write_tsv(st_counts, tmp_path / "Rep1_counts.tsv", index=True)
    spots = write_tsv(st_spots, tmp_path / "Rep1_alignment.tsv", index=False)
    return counts, spots, write_image(tmp_path / "Rep1_HE.jpg")


def test_generic_layout(layout: tuple[Path, Path, Path], st_counts: pd.DataFrame) -> None:
    counts, spots, image = layout
    adata = read_st_legacy(counts, spots, image=image)
    assert adata.obs[SECTION].iloc[0] == "Rep1_counts"  # the file name up to its first dot
    assert adata.obs[PATIENT].iloc[0] == "Rep1_counts"
    np.testing.assert_array_equal(adata.X.toarray(), st_counts.to_numpy())
    assert list(adata.obs_names) == list(st_counts.index)
    meta = adata.uns[UNS]
    # 100 px per 200 µm pitch (tests/io/conftest.py): 2 µm/px, a 100 µm spot is 50 px.
    assert meta[MICRONS_PER_PIXEL] == pytest.approx(2.0)
    assert meta[SPOT_DIAMETER_PX] == pytest.approx(50.0)
    assert meta[SOURCE_FORMAT] == "st"
    assert meta[IMAGE_PATH] == str(image)


def test_her2st_is_a_case_of_it(her2st_layout: Callable[..., Path]) -> None:
    root = her2st_layout("B4")
    her2st = read_her2st(root, "B4")
    legacy = read_st_legacy(
        root / "ST-cnts" / "B4.tsv.gz",
        root / "ST-spotfiles" / "B4_selection.tsv",
        image=her2st.uns[UNS][IMAGE_PATH],
        section="B4",
        patient="B",
        source_format="her2st",
    )
    np.testing.assert_array_equal(legacy.X.toarray(), her2st.X.toarray())
    np.testing.assert_array_equal(legacy.obsm[SPATIAL], her2st.obsm[SPATIAL])
    assert legacy.uns[UNS] == her2st.uns[UNS]


def test_fractional_and_transposed_count_tables(
    tmp_path: Path,
    st_counts: pd.DataFrame,
    st_spots: pd.DataFrame,
    write_tsv: Callable[..., Path],
) -> None:
    spots = write_tsv(st_spots, tmp_path / "spots.tsv", index=False)
    # The original ST pipeline names spots by their fractional array position.
    xy = st_counts.index.str.split("x", expand=True).to_frame().astype(float).to_numpy()
    fractional = st_counts.set_axis([f"{x + 0.08}x{y - 0.11}" for x, y in xy])
    adata = read_st_legacy(write_tsv(fractional, tmp_path / "frac.tsv", index=True), spots)
    assert list(adata.obs_names) == list(st_counts.index)
    np.testing.assert_array_equal(adata.X.toarray(), st_counts.to_numpy())
    # Genes × spots is read transposed.
    genes_by_spots = write_tsv(st_counts.T, tmp_path / "t.tsv.gz", index=True)
    adata = read_st_legacy(genes_by_spots, spots, section="T")
    np.testing.assert_array_equal(adata.X.toarray(), st_counts.to_numpy())
    assert list(adata.var_names) == list(st_counts.columns)


def test_unselected_spots_are_dropped(
    tmp_path: Path,
    st_counts: pd.DataFrame,
    st_spots: pd.DataFrame,
    write_tsv: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    st_spots.loc[[0, 4], "selected"] = 0
    counts = write_tsv(st_counts, tmp_path / "c.tsv", index=True)
    spots = write_tsv(st_spots, tmp_path / "s.tsv", index=False)
    with caplog.at_level(logging.INFO, logger="gr2st.io.st"):
        adata = read_st_legacy(counts, spots)
    assert adata.n_obs == 7
    assert "1x1" not in adata.obs_names
    assert "2x2" not in adata.obs_names
    assert "2 spot-table rows not selected; dropped" in caplog.text
    # The pitch is still measured on the whole array.
    assert adata.uns[UNS][MICRONS_PER_PIXEL] == pytest.approx(2.0)
    assert adata.obs[ARRAY_X].min() == 1.0


def test_one_line_errors(
    layout: tuple[Path, Path, Path],
    tmp_path: Path,
    st_counts: pd.DataFrame,
    write_tsv: Callable[..., Path],
) -> None:
    counts, spots, _ = layout
    with pytest.raises(GR2STDataError, match=r"nope\.tsv: count table not found$"):
        read_st_legacy(tmp_path / "nope.tsv", spots)
    with pytest.raises(GR2STDataError, match=r"nope\.tsv: spot table not found$"):
        read_st_legacy(counts, tmp_path / "nope.tsv")
    with pytest.raises(GR2STDataError, match=r"nope\.jpg: image not found$"):
        read_st_legacy(counts, spots, image=tmp_path / "nope.jpg")
    named = write_tsv(st_counts.set_axis([f"spot{i}" for i in range(9)]), tmp_path / "n.tsv",
                      index=True)  # fmt: skip
    with pytest.raises(GR2STDataError, match=r"n\.tsv: 9 row name\(s\) are not ST spot ids"):
        read_st_legacy(named, spots)
