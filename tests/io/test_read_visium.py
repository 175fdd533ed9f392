"""read_visium on tiny Space Ranger folders (HDF5 and MEX matrices, both position files)."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
import tifffile

from gr2st._constants import (
    ARRAY_X,
    ARRAY_Y,
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
from gr2st.io import read_visium

PITCH_PX = 40.0  # 100 µm → 2.5 µm/px
# Features: two share a symbol (made unique) and one is an antibody (dropped).
FEATURES = pd.DataFrame(
    {
        "id": ["ENSG01", "ENSG02", "ENSG03", "ENSG04", "AB01"],
        "name": ["KRT5", "ERBB2", "KRT5", "ACTB", "CD3"],
        "type": ["Gene Expression"] * 4 + ["Antibody Capture"],
    }
)


def _positions() -> pd.DataFrame:
    """A 4-row hexagonal patch: 16 spots, the last 4 outside the tissue."""
    rows, cols = [], []
    for r in range(4):
        for k in range(4):
            rows.append(r)
            cols.append(2 * k + r % 2)
    row, col = np.array(rows), np.array(cols)
    return pd.DataFrame(
        {
            "barcode": [f"BC{i:02d}-1" for i in range(16)],
            "in_tissue": [1] * 12 + [0] * 4,
            "array_row": row,
            "array_col": col,
            "pxl_row_in_fullres": 20 + row * PITCH_PX * np.sqrt(3) / 2,
            "pxl_col_in_fullres": 20 + col * PITCH_PX / 2,
        }
    )


# The filtered matrix holds 12 in-tissue spots (shuffled) plus BC13 outside the tissue.
MATRIX_BARCODES = [f"BC{i:02d}-1" for i in [3, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 13]]
COUNTS = np.arange(len(MATRIX_BARCODES) * len(FEATURES)).reshape(-1, len(FEATURES)) % 5


def _write_h5(path: Path) -> None:
    m = sp.csr_matrix(COUNTS.astype(np.int32))  # spots × features = CSC of features × spots
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(MATRIX_BARCODES, dtype="S")
        g["data"], g["indices"], g["indptr"] = m.data, m.indices, m.indptr
        g["shape"] = np.array([len(FEATURES), len(MATRIX_BARCODES)])
        feats = g.create_group("features")
        feats["id"] = FEATURES["id"].to_numpy(dtype="S")
        feats["name"] = FEATURES["name"].to_numpy(dtype="S")
        feats["feature_type"] = FEATURES["type"].to_numpy(dtype="S")
        feats["genome"] = np.array([b"GRCh38"] * len(FEATURES))


def _write_mex(folder: Path) -> None:
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", sp.coo_matrix(COUNTS.T))
    with open(folder / "matrix.mtx", "rb") as src, gzip.open(folder / "matrix.mtx.gz", "wb") as d:
        shutil.copyfileobj(src, d)
    (folder / "matrix.mtx").unlink()
    with gzip.open(folder / "features.tsv.gz", "wt") as fh:
        FEATURES.to_csv(fh, sep="\t", header=False, index=False)
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as fh:
        fh.write("\n".join(MATRIX_BARCODES) + "\n")


@pytest.fixture
def spaceranger(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a Space Ranger folder ``tmp_path / "run" / name``."""

    def make(name: str = "V1_A1", *, matrix: str = "h5", positions: str = "header") -> Path:
        outs = tmp_path / "run" / name
        (outs / "spatial").mkdir(parents=True)
        if matrix == "h5":
            _write_h5(outs / "filtered_feature_bc_matrix.h5")
        else:
            _write_mex(outs / "filtered_feature_bc_matrix")
        table = _positions()
        if positions == "header":
            table.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
        else:
            table.to_csv(outs / "spatial" / "tissue_positions_list.csv", index=False, header=False)
        scale = {"spot_diameter_fullres": 26.0, "tissue_hires_scalef": 0.5}
        (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(scale))
        return outs

    return make


@pytest.mark.parametrize("matrix", ["h5", "mex"])
@pytest.mark.parametrize("positions", ["header", "no header"])
def test_reads_in_tissue_spots(
    spaceranger: Callable[..., Path], matrix: str, positions: str
) -> None:
    outs = spaceranger(matrix=matrix, positions=positions)
    adata = read_visium(outs)

    in_tissue = MATRIX_BARCODES[:-1]
    assert list(adata.obs_names) == in_tissue
    assert list(adata.var_names) == ["KRT5", "ERBB2", "KRT5-1", "ACTB"]
    np.testing.assert_array_equal(adata.X.toarray(), COUNTS[:-1, :4])
    assert adata.X.dtype == np.int32
    pos = _positions().set_index("barcode").loc[in_tissue]
    np.testing.assert_array_equal(adata.obs[ARRAY_X], pos["array_col"])
    np.testing.assert_array_equal(adata.obs[ARRAY_Y], pos["array_row"])
    np.testing.assert_allclose(
        adata.obsm[SPATIAL], pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()
    )
    assert set(adata.obs[SECTION]) == {"V1_A1"}
    assert set(adata.obs[PATIENT]) == {"V1_A1"}
    meta = adata.uns[UNS]
    assert meta[MICRONS_PER_PIXEL] == pytest.approx(100 / PITCH_PX)
    assert meta[SPOT_DIAMETER_PX] == pytest.approx(55 / (100 / PITCH_PX))
    assert meta[IMAGE_PATH] is None
    assert meta[SOURCE_FORMAT] == "visium"


def test_section_and_patient_override(spaceranger: Callable[..., Path]) -> None:
    adata = read_visium(spaceranger(), section="S1", patient="P7")
    assert set(adata.obs[SECTION]) == {"S1"}
    assert set(adata.obs[PATIENT]) == {"P7"}


def _image(path: Path, size: tuple[int, int] = (200, 160)) -> Path:
    tifffile.imwrite(path, np.zeros((size[1], size[0], 3), dtype=np.uint8))
    return path


def test_image_search_order(spaceranger: Callable[..., Path]) -> None:
    outs = spaceranger()
    run = outs.parent
    # Parent folder: only an image named after the section counts.
    _image(run / "unrelated.tif")
    assert read_visium(outs).uns[UNS][IMAGE_PATH] is None
    named_above = _image(run / "V1_A1_fullres.tif")
    assert read_visium(outs).uns[UNS][IMAGE_PATH] == str(named_above)
    # A single image in the folder itself wins over the parent's.
    inside = _image(outs / "slide.tif")
    assert read_visium(outs).uns[UNS][IMAGE_PATH] == str(inside)
    # Several in the folder: the one named after the section.
    named_inside = _image(outs / "V1_A1.tif")
    assert read_visium(outs).uns[UNS][IMAGE_PATH] == str(named_inside)
    # An explicit image wins over everything.
    explicit = _image(run / "explicit.tif")
    assert read_visium(outs, image=explicit).uns[UNS][IMAGE_PATH] == str(explicit)


def test_ambiguous_images(spaceranger: Callable[..., Path]) -> None:
    outs = spaceranger()
    _image(outs / "a.tif")
    _image(outs / "b.tif")
    with pytest.raises(GR2STDataError, match=r"several candidate images .*pass image="):
        read_visium(outs)


def test_spots_outside_the_image(spaceranger: Callable[..., Path]) -> None:
    outs = spaceranger()
    image = _image(outs / "small.tif", size=(100, 100))
    with pytest.raises(GR2STDataError, match=r"small\.tif: \d+ spot centre\(s\) lie outside"):
        read_visium(outs, image=image)


def test_missing_explicit_image(spaceranger: Callable[..., Path], tmp_path: Path) -> None:
    with pytest.raises(GR2STDataError, match=r"missing\.tif: image not found"):
        read_visium(spaceranger(), image=tmp_path / "missing.tif")


def test_barcode_without_position(spaceranger: Callable[..., Path]) -> None:
    outs = spaceranger()
    path = outs / "spatial" / "tissue_positions.csv"
    table = pd.read_csv(path)
    table[table["barcode"] != "BC03-1"].to_csv(path, index=False)
    with pytest.raises(
        GR2STDataError, match=r"\.h5: 1 barcode\(s\) have no row in .*tissue_positions\.csv"
    ):
        read_visium(outs)


def test_no_spot_in_tissue(spaceranger: Callable[..., Path]) -> None:
    outs = spaceranger()
    path = outs / "spatial" / "tissue_positions.csv"
    pd.read_csv(path).assign(in_tissue=0).to_csv(path, index=False)
    with pytest.raises(GR2STDataError, match=r"no barcode of .* is in tissue"):
        read_visium(outs)


def test_missing_position_column(spaceranger: Callable[..., Path]) -> None:
    outs = spaceranger()
    path = outs / "spatial" / "tissue_positions.csv"
    pd.read_csv(path).drop(columns="pxl_row_in_fullres").to_csv(path, index=False)
    with pytest.raises(GR2STDataError, match=r"lacks column\(s\) 'pxl_row_in_fullres'"):
        read_visium(outs)


def test_missing_files(spaceranger: Callable[..., Path], tmp_path: Path) -> None:
    with pytest.raises(GR2STDataError, match="folder not found"):
        read_visium(tmp_path / "nope")
    outs = spaceranger()
    (outs / "spatial" / "tissue_positions.csv").unlink()
    with pytest.raises(GR2STDataError, match=r"tissue_positions_list\.csv: position table not"):
        read_visium(outs)
    (outs / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(GR2STDataError, match=r"no filtered_feature_bc_matrix\.h5 or"):
        read_visium(outs)


def test_corrupt_matrix(spaceranger: Callable[..., Path]) -> None:
    outs = spaceranger()
    (outs / "filtered_feature_bc_matrix.h5").write_bytes(b"not hdf5")
    with pytest.raises(GR2STDataError, match=r"\.h5: cannot read count matrix"):
        read_visium(outs)


def test_geo_prefixed_matrix(spaceranger: Callable[..., Path]) -> None:
    outs = spaceranger()
    (outs / "filtered_feature_bc_matrix.h5").rename(outs / "GSM1_filtered_feature_bc_matrix.h5")
    assert read_visium(outs).n_obs == 12


def test_resolution_sources_are_cross_checked(spaceranger: Callable[..., Path]) -> None:
    outs = spaceranger()
    pitch_mpp = 100 / PITCH_PX
    assert read_visium(outs, mpp=pitch_mpp * 1.1).uns[UNS][MICRONS_PER_PIXEL] == pytest.approx(
        pitch_mpp * 1.1
    )
    with pytest.raises(GR2STDataError, match=r"tissue_positions\.csv: --mpp gives .* but the "):
        read_visium(outs, mpp=pitch_mpp * 10)
    # Space Ranger's spot_diameter_fullres (a 65 µm spot) contradicting the pitch
    (outs / "spatial" / "scalefactors_json.json").write_text(
        json.dumps({"spot_diameter_fullres": 260.0, "tissue_hires_scalef": 0.5})
    )
    with pytest.raises(
        GR2STDataError,
        match=r"scalefactors_json\.json spot_diameter_fullres gives 0\.25 µm/px but the visium",
    ):
        read_visium(outs)
