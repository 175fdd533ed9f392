"""read_her2st / read_st_legacy / list_her2st on tiny tables in the HER2ST folder layout."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from gr2st._constants import (
    ARRAY_X,
    ARRAY_Y,
    IMAGE_PATH,
    MICRONS_PER_PIXEL,
    PATHOLOGY,
    PATIENT,
    SECTION,
    SOURCE_FORMAT,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNS,
)
from gr2st.datasets import synthetic, write_her2st_layout
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.io import list_her2st, read_her2st, read_st_legacy


def test_reads_section_in_common_shape(
    her2st_layout: Callable[..., Path], st_counts: pd.DataFrame, st_spots: pd.DataFrame
) -> None:
    root = her2st_layout("B4")
    adata = read_her2st(root, "B4")

    assert adata.shape == (9, 3)
    assert list(adata.obs_names) == list(st_counts.index)
    assert list(adata.var_names) == list(st_counts.columns)
    assert isinstance(adata.X, sp.csr_matrix)
    assert adata.X.dtype == np.int32
    np.testing.assert_array_equal(adata.X.toarray(), st_counts.to_numpy())
    np.testing.assert_array_equal(adata.obs[ARRAY_X], st_spots["x"])
    np.testing.assert_array_equal(adata.obs[ARRAY_Y], st_spots["y"])
    np.testing.assert_allclose(adata.obsm[SPATIAL], st_spots[["pixel_x", "pixel_y"]])
    assert set(adata.obs[SECTION]) == {"B4"}
    assert set(adata.obs[PATIENT]) == {"B"}
    meta = adata.uns[UNS]
    assert meta[IMAGE_PATH] == str(root / "ST-imgs" / "B" / "B4" / "B4_HE.jpg")
    # 100 px between array neighbours = 200 µm → 2 µm/px; a 100 µm spot is 50 px wide.
    assert meta[MICRONS_PER_PIXEL] == pytest.approx(2.0)
    assert meta[SPOT_DIAMETER_PX] == pytest.approx(50.0)
    assert meta[SOURCE_FORMAT] == "her2st"
    assert PATHOLOGY not in adata.obs


def test_round_trips_the_synthetic_her2st_layout(tmp_path: Path) -> None:
    section = synthetic(n_sections=1, n_genes=6, grid=(4, 5), image_dir=tmp_path / "img")[0]
    section.obs[SECTION] = "C2"
    root = write_her2st_layout([section], tmp_path / "her2st")

    adata = read_her2st(root, "C2")

    assert list(adata.obs_names) == list(section.obs_names)
    np.testing.assert_array_equal(adata.X.toarray(), section.X.toarray())
    np.testing.assert_allclose(adata.obsm[SPATIAL], section.obsm[SPATIAL], atol=1e-6)
    # The synthetic pitch is 48 px (jittered by ~0.5 px): 200 µm / 48 px.
    assert adata.uns[UNS][MICRONS_PER_PIXEL] == pytest.approx(200 / 48, rel=0.02)


def test_inner_join_on_rounded_ids_keeps_count_order(
    her2st_layout: Callable[..., Path], st_counts: pd.DataFrame, st_spots: pd.DataFrame
) -> None:
    spots = st_spots.drop(index=4)  # spot 2x2 loses its position
    spots["x"] += 0.3  # fractional array coordinates round back to the count ids
    extra = pd.DataFrame([[1, 1, 1]], index=["9x9"], columns=st_counts.columns)
    counts = pd.concat([st_counts.iloc[::-1], extra])  # reversed, plus a spot without position
    root = her2st_layout(counts=counts, spots=spots)

    adata = read_her2st(root, "B4")

    expected = [i for i in st_counts.index[::-1] if i != "2x2"]
    assert list(adata.obs_names) == expected
    assert adata.obs.loc["3x1", ARRAY_X] == pytest.approx(3.3)
    np.testing.assert_array_equal(adata["3x1"].X.toarray(), st_counts.loc[["3x1"]].to_numpy())


def test_pathology_labels_join_on_rounded_coordinates(
    her2st_layout: Callable[..., Path], write_tsv: Callable[..., Path]
) -> None:
    root = her2st_layout("A1")
    labels = pd.DataFrame(
        {
            "Row.names": ["25x25", "75x75", "NAxNA"],
            "x": [1.02, 2.98, np.nan],
            "y": [0.99, 3.01, np.nan],
            "pixel_x": [25.0, 75.0, np.nan],
            "pixel_y": [25.0, 75.0, np.nan],
            "label": ["invasive cancer", "adipose tissue", "undetermined"],
        }
    )
    write_tsv(labels, root / "ST-pat" / "lbl" / "A1_labeled_coordinates.tsv", index=False)

    adata = read_her2st(root, "A1")

    assert isinstance(adata.obs[PATHOLOGY].dtype, pd.CategoricalDtype)
    assert adata.obs.loc["1x1", PATHOLOGY] == "invasive cancer"
    assert adata.obs.loc["3x3", PATHOLOGY] == "adipose tissue"
    assert adata.obs[PATHOLOGY].isna().sum() == 7


def test_section_without_image_has_no_image_path(her2st_layout: Callable[..., Path]) -> None:
    adata = read_her2st(her2st_layout("C3", image=False), "C3")
    assert adata.uns[UNS][IMAGE_PATH] is None
    assert adata.n_obs == 9


def test_list_her2st(her2st_layout: Callable[..., Path], write_tsv: Callable[..., Path]) -> None:
    her2st_layout("C3", image=False)
    root = her2st_layout("B4")
    write_tsv(
        pd.DataFrame({"x": [1.0], "y": [1.0], "label": ["x"]}),
        root / "ST-pat" / "lbl" / "C3_labeled_coordinates.tsv",
        index=False,
    )

    table = list_her2st(root)

    assert table.to_dict("list") == {
        "section": ["B4", "C3"],
        "patient": ["B", "C"],
        "has_image": [True, False],
        "has_labels": [False, True],
    }


def test_read_st_uses_the_given_array_geometry(her2st_layout: Callable[..., Path]) -> None:
    root = her2st_layout("B4", image=False)
    adata = read_st_legacy(
        root / "ST-cnts" / "B4.tsv.gz",
        root / "ST-spotfiles" / "B4_selection.tsv",
        section="s",
        patient="p",
        pitch_um=150.0,
        spot_diameter_um=110.0,
    )
    assert adata.uns[UNS][MICRONS_PER_PIXEL] == pytest.approx(1.5)
    assert adata.uns[UNS][SPOT_DIAMETER_PX] == pytest.approx(110 / 1.5)
    assert adata.uns[UNS][SOURCE_FORMAT] == "st"
    with pytest.raises(GR2STConfigError, match=r"pitch_um must be positive, got 0\.0"):
        read_st_legacy(
            root / "ST-cnts" / "B4.tsv.gz",
            root / "ST-spotfiles" / "B4_selection.tsv",
            section="s",
            patient="p",
            pitch_um=0.0,
        )


def _set(table: pd.DataFrame, row: int, col: str, value: object) -> pd.DataFrame:
    table = table.astype(object) if isinstance(value, str) else table.copy()
    table.iloc[row, table.columns.get_loc(col)] = value
    return table


# Each case edits (counts, spots) and names the message expected.
_TABLE_ERRORS: dict[str, tuple[Callable[[pd.DataFrame, pd.DataFrame], tuple], str]] = {
    "spot table lacks a column": (
        lambda c, s: (c, s.drop(columns="pixel_y")),
        r"B4_selection\.tsv: spot table lacks column\(s\) 'pixel_y'; found 'x'",
    ),
    "non-numeric pixel": (
        lambda c, s: (c, _set(s, 2, "pixel_x", "abc")),
        r"spot table column 'pixel_x' has 1 missing or non-numeric value\(s\) \(e\.g\. 'abc'\)",
    ),
    "duplicate count ids": (
        lambda c, s: (c.set_axis(["1x1", *c.index[1:-1], "1x1"]), s),
        r"B4\.tsv\.gz: 1 duplicate spot id\(s\) in the count table \(e\.g\. '1x1'\)",
    ),
    "two spots round to one id": (
        lambda c, s: (c, _set(s, 1, "x", 1.4)),
        r"B4_selection\.tsv: 1 duplicate spot id\(s\) in the spot table \(e\.g\. '1x1'\)",
    ),
    "non-numeric count": (
        lambda c, s: (_set(c, 3, "ERBB2", "abc"), s),
        r"B4\.tsv\.gz: 1 gene column\(s\) hold non-numeric values \(e\.g\. 'abc' in column "
        r"'ERBB2'\)",
    ),
    "missing count": (
        lambda c, s: (_set(c, 3, "ERBB2", np.nan), s),
        r"B4\.tsv\.gz: 1 non-finite count\(s\)",
    ),
    "negative count": (
        lambda c, s: (_set(c, 0, "KRT5", -2), s),
        r"B4\.tsv\.gz: 1 negative count\(s\) \(e\.g\. -2\); expected raw integer counts",
    ),
    "fractional count": (
        lambda c, s: (_set(c.astype(float), 0, "KRT5", 1.5), s),
        r"1 non-integer count\(s\) \(e\.g\. 1\.5\)",
    ),
    "no spot matches": (
        lambda c, s: (c.set_axis([f"{i}x99" for i in range(9)]), s),
        r"B4\.tsv\.gz: none of its 9 spot ids matches the spot table",
    ),
    "header only": (
        lambda c, s: (c.iloc[:0], s),
        r"B4\.tsv\.gz: count table has 0 spots × 3 genes",
    ),
    "spot outside the image": (
        lambda c, s: (c, _set(s, 2, "pixel_x", 350.0)),
        r"B4_HE\.jpg: 1 spot centre\(s\) lie outside the 300x300 image "
        r"\(e\.g\. '3x1' at \(350\.0, 50\.0\)\)",
    ),
    "spot at a negative pixel": (
        lambda c, s: (c, _set(s, 0, "pixel_y", -1.0)),
        r"outside the 300x300 image \(e\.g\. '1x1' at \(50\.0, -1\.0\)\)",
    ),
}


@pytest.mark.parametrize("case", list(_TABLE_ERRORS))
def test_bad_tables_raise_one_line_errors(
    case: str,
    her2st_layout: Callable[..., Path],
    st_counts: pd.DataFrame,
    st_spots: pd.DataFrame,
) -> None:
    edit, message = _TABLE_ERRORS[case]
    counts, spots = edit(st_counts, st_spots)
    root = her2st_layout(counts=counts, spots=spots)
    with pytest.raises(GR2STDataError, match=message) as err:
        read_her2st(root, "B4")
    assert "\n" not in str(err.value)


def test_unknown_section_lists_the_known_ones(her2st_layout: Callable[..., Path]) -> None:
    root = her2st_layout("B4")
    with pytest.raises(GR2STDataError, match=r"Z9\.tsv\.gz: count table not found; .*'B4'"):
        read_her2st(root, "Z9")


def test_not_a_her2st_folder(tmp_path: Path) -> None:
    with pytest.raises(GR2STDataError, match="none \\(is this the HER2ST folder\\?\\)"):
        read_her2st(tmp_path, "B4")
    with pytest.raises(GR2STDataError, match="no ST-cnts/ folder"):
        list_her2st(tmp_path)


def test_bad_section_name(her2st_layout: Callable[..., Path]) -> None:
    with pytest.raises(GR2STDataError, match=r"'\.\./B4' is not a HER2ST section name"):
        read_her2st(her2st_layout(), "../B4")


def test_missing_spot_table(her2st_layout: Callable[..., Path]) -> None:
    root = her2st_layout()
    (root / "ST-spotfiles" / "B4_selection.tsv").unlink()
    with pytest.raises(GR2STDataError, match=r"B4_selection\.tsv: spot table not found"):
        read_her2st(root, "B4")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "count table is empty"),
        (b"not a gzip stream", "cannot parse count table"),
    ],
)
def test_unreadable_count_table(
    her2st_layout: Callable[..., Path], content: bytes, message: str
) -> None:
    root = her2st_layout()
    path = root / "ST-cnts" / "B4.tsv.gz"
    if content:
        path.write_bytes(content)
    else:
        with gzip.open(path, "wb") as fh:
            fh.write(content)
    with pytest.raises(GR2STDataError, match=message) as err:
        read_her2st(root, "B4")
    assert "\n" not in str(err.value)


def test_two_images_are_ambiguous(her2st_layout: Callable[..., Path], write_image) -> None:
    root = her2st_layout()
    write_image(root / "ST-imgs" / "B" / "B4" / "other.jpg")
    with pytest.raises(GR2STDataError, match=r"2 images \('B4_HE\.jpg', 'other\.jpg'\)"):
        read_her2st(root, "B4")


def test_unreadable_image(her2st_layout: Callable[..., Path]) -> None:
    root = her2st_layout()
    (root / "ST-imgs" / "B" / "B4" / "B4_HE.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(GR2STDataError, match=r"B4_HE\.jpg: cannot read image"):
        read_her2st(root, "B4")
