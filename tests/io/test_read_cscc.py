"""read_cscc / list_cscc on tiny files in the GEO GSE144240 layout."""

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
    UNS,
)
from gr2st.errors import GR2STDataError
from gr2st.io import list_cscc, read_cscc


@pytest.fixture
def geo(
    tmp_path: Path,
    st_counts: pd.DataFrame,
    st_spots: pd.DataFrame,
    write_tsv: Callable[..., Path],
    write_image: Callable[..., Path],
) -> Callable[..., Path]:
    """Factory writing one section's GEO files into ``tmp_path / "GSE144240"``."""

    def make(
        section: str = "P2_ST_rep1",
        *,
        gsm: str = "GSM4284316_",
        suffix: str = ".tsv.gz",
        image: bool = True,
        counts: pd.DataFrame | None = None,
    ) -> Path:
        root = tmp_path / "GSE144240"
        write_tsv(
            st_counts if counts is None else counts,
            root / f"{gsm}{section}_stdata{suffix}",
            index=True,
        )
        write_tsv(st_spots, root / f"{gsm}spot_data-selection-{section}{suffix}", index=False)
        if image:
            write_image(root / f"{gsm}{section}.jpg")
        return root

    return make


def test_reads_geo_layout(
    geo: Callable[..., Path], st_counts: pd.DataFrame, st_spots: pd.DataFrame
) -> None:
    root = geo()
    adata = read_cscc(root, "P2_ST_rep1")

    assert adata.shape == (9, 3)
    np.testing.assert_array_equal(adata.X.toarray(), st_counts.to_numpy())
    np.testing.assert_array_equal(adata.obs[ARRAY_X], st_spots["x"])
    np.testing.assert_allclose(adata.obsm[SPATIAL], st_spots[["pixel_x", "pixel_y"]])
    assert set(adata.obs[SECTION]) == {"P2_ST_rep1"}
    assert set(adata.obs[PATIENT]) == {"P2"}
    assert adata.uns[UNS][IMAGE_PATH] == str(root / "GSM4284316_P2_ST_rep1.jpg")
    assert adata.uns[UNS][MICRONS_PER_PIXEL] == pytest.approx(2.0)
    assert adata.uns[UNS][SOURCE_FORMAT] == "cscc"


def test_unprefixed_decompressed_files_without_image(geo: Callable[..., Path]) -> None:
    root = geo("P10_ST_rep3", gsm="", suffix=".tsv", image=False)
    adata = read_cscc(root, "P10_ST_rep3")
    assert set(adata.obs[PATIENT]) == {"P10"}
    assert adata.uns[UNS][IMAGE_PATH] is None


def test_similar_names_do_not_match(geo: Callable[..., Path]) -> None:
    # P12_ST_rep1 and P2_ST_rep10 share substrings with P2_ST_rep1 but are other sections.
    geo("P12_ST_rep1", gsm="GSM1_")
    root = geo("P2_ST_rep10", gsm="GSM2_")
    with pytest.raises(GR2STDataError, match=r"no count table for section 'P2_ST_rep1'"):
        read_cscc(root, "P2_ST_rep1")


def test_list_cscc_sorts_by_patient_number_and_replicate(geo: Callable[..., Path]) -> None:
    for section in ["P10_ST_rep1", "P2_ST_rep2", "P9_ST_rep1"]:
        geo(section, image=section != "P9_ST_rep1")
    root = geo("P2_ST_rep1", gsm="")
    table = list_cscc(root)
    assert table.to_dict("list") == {
        "section": ["P2_ST_rep1", "P2_ST_rep2", "P9_ST_rep1", "P10_ST_rep1"],
        "patient": ["P2", "P2", "P9", "P10"],
        "has_image": [True, True, False, True],
    }


def test_missing_spot_table_names_known_sections(geo: Callable[..., Path]) -> None:
    root = geo()
    (root / "GSM4284316_spot_data-selection-P2_ST_rep1.tsv.gz").unlink()
    with pytest.raises(
        GR2STDataError,
        match=r"no spot table for section 'P2_ST_rep1'; sections found: 'P2_ST_rep1'",
    ):
        read_cscc(root, "P2_ST_rep1")


def test_compressed_and_plain_copies_are_ambiguous(geo: Callable[..., Path]) -> None:
    geo(suffix=".tsv")
    root = geo(suffix=".tsv.gz")
    with pytest.raises(GR2STDataError, match=r"2 files could be the count table"):
        read_cscc(root, "P2_ST_rep1")


@pytest.mark.parametrize("name", ["P2", "B4", "P2_ST_rep1*"])
def test_bad_section_name(geo: Callable[..., Path], name: str) -> None:
    with pytest.raises(GR2STDataError, match="is not a cSCC section name"):
        read_cscc(geo(), name)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(GR2STDataError, match="folder not found"):
        read_cscc(tmp_path / "nope", "P2_ST_rep1")
    with pytest.raises(GR2STDataError, match="folder not found"):
        list_cscc(tmp_path / "nope")


def test_ensembl_gene_columns_load_with_a_warning(
    geo: Callable[..., Path], st_counts: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    ids = ["ENSG00000186081", "ENSG00000141736", "ENSG00000198804"]
    root = geo(counts=st_counts.set_axis(ids, axis=1))
    with caplog.at_level(logging.WARNING, logger="gr2st.io.cscc"):
        adata = read_cscc(root, "P2_ST_rep1")
    assert list(adata.var_names) == ids
    assert "3 of 3 gene columns are Ensembl ids" in caplog.text


def test_count_problems_name_the_geo_file(geo: Callable[..., Path], st_counts) -> None:
    counts = st_counts.astype(object)
    counts.iloc[0, 0] = "x"
    root = geo(counts=counts)
    with pytest.raises(
        GR2STDataError, match=r"GSM4284316_P2_ST_rep1_stdata\.tsv\.gz: 1 gene column\(s\)"
    ):
        read_cscc(root, "P2_ST_rep1")
