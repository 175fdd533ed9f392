"""Counts sanity on the real B4 (``mini_b4``): duplicate genes, overlap, shared positions."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.io import read_her2st


def test_duplicate_panel_gene_is_an_error_naming_it(mini_b4, tmp_path) -> None:
    counts = mini_b4.counts.copy()
    # A second ERBB2 column (another gene's counts) before the real one: main kept it
    # as ERBB2 and renamed the real one ERBB2.1.
    assert "ERBB2" in counts.columns
    counts.insert(0, "ERBB2", counts.iloc[:, 10].to_numpy(), allow_duplicates=True)
    folder = mini_b4.write(tmp_path, counts=counts)
    with pytest.raises(
        GR2STDataError,
        match=r"B4.tsv.gz: 1 gene name\(s\) appear in more than "
        r"one column \('ERBB2 ×2'\).*--duplicate-genes sum",
    ):
        read_her2st(folder, "B4")


def test_duplicate_genes_summed_when_asked(mini_b4, tmp_path, caplog) -> None:
    counts = mini_b4.counts.copy()
    first, other, third = (str(g) for g in counts.columns[[10, 20, 30]])
    counts.insert(3, "ERBB2", counts[other].to_numpy(), allow_duplicates=True)
    counts.insert(5, first, counts[third].to_numpy(), allow_duplicates=True)
    folder = mini_b4.write(tmp_path, counts=counts)
    with caplog.at_level(logging.WARNING, logger="gr2st"):
        adata = read_her2st(folder, "B4", duplicate_genes="sum")
    assert adata.var_names.is_unique
    assert adata.n_vars == mini_b4.counts.shape[1]
    assert "ERBB2.1" not in adata.var_names
    original = mini_b4.counts.loc[adata.obs_names]
    got = adata[:, ["ERBB2", first, other]].X.toarray()
    np.testing.assert_array_equal(got[:, 0], original["ERBB2"] + original[other])
    np.testing.assert_array_equal(got[:, 1], original[first] + original[third])
    np.testing.assert_array_equal(got[:, 2], original[other])
    assert any("summed the counts of 2 gene name(s)" in r.getMessage() for r in caplog.records)


def test_duplicate_genes_mode_is_checked(mini_b4, tmp_path) -> None:
    folder = mini_b4.write(tmp_path)
    with pytest.raises(GR2STConfigError, match="--duplicate-genes: expected error or sum"):
        read_her2st(folder, "B4", duplicate_genes="first")


def test_counts_of_one_spot_against_the_spot_table_is_an_error(mini_b4, tmp_path) -> None:
    folder = mini_b4.write(tmp_path, counts=mini_b4.counts.iloc[:1])
    with pytest.raises(
        GR2STDataError,
        match=r"1 of the 284 spots selected in B4_selection.tsv "
        r"have counts \(at least 50 % expected\)",
    ):
        read_her2st(folder, "B4")


def test_counts_of_another_array_is_an_error(mini_b4, tmp_path) -> None:
    counts = mini_b4.counts.copy()
    counts.index = [f"{i}x{i + 100}" for i in range(len(counts) - 10)] + list(counts.index[-10:])
    folder = mini_b4.write(tmp_path, counts=counts)
    with pytest.raises(GR2STDataError, match=r"10 of its 283 spots have a row in B4_selection"):
        read_her2st(folder, "B4")


def test_off_tissue_count_rows_are_not_an_overlap_error(mini_b4, tmp_path) -> None:
    # Counts of every array spot, most of them not selected: legacy ST output.
    spots = mini_b4.spots.copy()
    spots["selected"] = 0
    spots.loc[spots.index[:150], "selected"] = 1
    adata = read_her2st(mini_b4.write(tmp_path, spots=spots), "B4")
    selected = {f"{x}x{y}" for x, y in spots.loc[spots.selected == 1, ["x", "y"]].to_numpy()}
    assert adata.n_obs == len(selected & set(mini_b4.counts.index)) >= 145


def test_two_spots_at_one_pixel_position_is_an_error(mini_b4, tmp_path) -> None:
    spots = mini_b4.spots.copy()
    spots.loc[1, ["pixel_x", "pixel_y"]] = spots.loc[0, ["pixel_x", "pixel_y"]].to_numpy()
    folder = mini_b4.write(tmp_path, spots=spots)
    with pytest.raises(
        GR2STDataError,
        match=r"1 pair\(s\) of spots share one pixel position "
        r"\(e.g. '8x13' and '9x13'",
    ):
        read_her2st(folder, "B4")
