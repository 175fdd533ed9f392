"""read_hest / list_hest on a synthetic folder in HEST-1k's layout."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pytest
from anndata import AnnData

from gr2st._constants import (
    HAS_COUNTS,
    IMAGE_PATH,
    MICRONS_PER_PIXEL,
    PATIENT,
    SECTION,
    SOURCE_FORMAT,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNS,
)
from gr2st.datasets import synthetic, write_hest_layout
from gr2st.errors import GR2STDataError
from gr2st.image import open_slide
from gr2st.io import is_hest_folder, list_hest, read_hest


@pytest.fixture
def sections(tmp_path: Path) -> list[AnnData]:
    return synthetic(n_sections=3, n_genes=8, grid=(4, 5), image_dir=tmp_path / "img", seed=4)


@pytest.fixture
def root(sections: list[AnnData], tmp_path: Path) -> Path:
    return write_hest_layout(sections, tmp_path / "hest")


def _edit_metadata(root: Path, sample: str, **fields: object) -> None:
    path = root / "metadata" / f"{sample}.json"
    meta = json.loads(path.read_text())
    meta.update(fields)
    path.write_text(json.dumps(meta))


def test_sample_in_gr2st_shape(root: Path, sections: list[AnnData]) -> None:
    truth = sections[1]
    adata = read_hest(root, "S1")
    np.testing.assert_array_equal(adata.X.toarray(), truth.X.toarray())
    np.testing.assert_allclose(adata.obsm[SPATIAL], truth.obsm[SPATIAL])
    assert list(adata.obs_names) == list(truth.obs_names)
    meta = adata.uns[UNS]
    assert meta[IMAGE_PATH] == str(root / "wsis" / "S1.tif")
    assert meta[MICRONS_PER_PIXEL] == 2.0  # pixel_size_um_estimated
    assert meta[SPOT_DIAMETER_PX] == pytest.approx(truth.uns[UNS][SPOT_DIAMETER_PX])
    assert meta[SOURCE_FORMAT] == "hest"
    assert meta[HAS_COUNTS] is True
    assert adata.obs[SECTION].unique().tolist() == ["S1"]
    # Patient ids are qualified by the study (HEST's "Patient A" occurs in several).
    assert adata.obs[PATIENT].unique().tolist() == ["P0 (synthetic)"]
    assert adata.obs["dataset_title"].iloc[0] == "synthetic"
    with open_slide(meta[IMAGE_PATH]) as slide:  # the WSI reads, with its resolution
        assert slide.mpp == pytest.approx(2.0)
        assert slide.dimensions == (272, 224)


def test_metadata_wins_over_the_tiff_and_patients_group_per_study(root: Path) -> None:
    _edit_metadata(
        root, "S0", pixel_size_um_estimated=1.0, spot_diameter=55.0, inter_spot_dist=48.0
    )
    adata = read_hest(root, "S0")
    assert adata.uns[UNS][MICRONS_PER_PIXEL] == 1.0
    assert adata.uns[UNS][SPOT_DIAMETER_PX] == pytest.approx(55.0)
    # metadata that contradicts the spots' own pitch is refused
    _edit_metadata(root, "S1", pixel_size_um_estimated=1.0)
    with pytest.raises(GR2STDataError, match=r"S1\.h5ad: the spot pitch is 48\.\d px × 1 µm/px"):
        read_hest(root, "S1")
    _edit_metadata(root, "S1", pixel_size_um_estimated=2.0)
    _edit_metadata(root, "S0", patient=None)
    _edit_metadata(root, "S2", patient=float("nan"))
    patients = {s: read_hest(root, s).obs[PATIENT].iloc[0] for s in ("S0", "S1", "S2")}
    assert patients == {
        "S0": "unknown patient (synthetic)",
        "S1": "P0 (synthetic)",
        "S2": "unknown patient (synthetic)",
    }


def test_list_hest(root: Path) -> None:
    (root / "wsis" / "S2.tif").unlink()
    (root / "patches").mkdir()
    (root / "patches" / "S0.h5").write_bytes(b"")
    table = list_hest(root)
    assert table["id"].tolist() == ["S0", "S1", "S2"]
    assert table["patient"].tolist() == ["P0 (synthetic)", "P0 (synthetic)", "P1 (synthetic)"]
    assert table["has_image"].tolist() == [True, True, False]
    assert table["has_patches"].tolist() == [True, False, False]
    assert is_hest_folder(root)
    assert not is_hest_folder(root / "st")


def test_counts_free_sample_for_prediction(root: Path) -> None:
    st = root / "st" / "S0.h5ad"
    adata = anndata.read_h5ad(st)
    adata.X = np.log1p(adata.X.toarray()) - 1.0
    adata.write_h5ad(st)
    with pytest.raises(GR2STDataError, match=r"S0\.h5ad: no raw counts"):
        read_hest(root, "S0")
    assert read_hest(root, "S0", require_counts=False).uns[UNS][HAS_COUNTS] is False


@pytest.mark.parametrize(
    ("breaks", "message"),
    [
        (lambda r: (r / "st" / "S0.h5ad").unlink(),
         r"st/S0\.h5ad: HEST expression file not found \(samples here: 'S1', 'S2'\); download "
         r"it with `gr2st data fetch hest --ids S0 --dest .*`$"),
        (lambda r: (r / "metadata" / "S0.json").unlink(),
         r"metadata/S0\.json: HEST metadata not found; download the sample with `gr2st data "
         r"fetch hest --ids S0"),
        (lambda r: (r / "wsis" / "S0.tif").unlink(),
         r"wsis/S0\.tif: HEST whole-slide image not found; download it with"),
        (lambda r: _edit_metadata(r, "S0", pixel_size_um_estimated=None),
         r"metadata/S0\.json: pixel_size_um_estimated is None; expected the WSI's µm per pixel$"),
        (lambda r: (r / "metadata" / "S0.json").write_text("{not json"),
         r"metadata/S0\.json: cannot parse HEST metadata"),
        (lambda r: (r / "st" / "S0.h5ad").write_bytes(b"junk"),
         r"st/S0\.h5ad: cannot read AnnData file"),
    ],
)  # fmt: skip
def test_one_line_error_for_each_missing_piece(root: Path, breaks, message: str) -> None:
    breaks(root)
    with pytest.raises(GR2STDataError, match=message) as info:
        read_hest(root, "S0")
    assert "\n" not in str(info.value)


def test_bad_ids(root: Path) -> None:
    with pytest.raises(GR2STDataError, match=r"'\.\./x' is not a HEST sample id"):
        read_hest(root, "../x")
    with pytest.raises(GR2STDataError, match="no st/ folder; expected the HEST layout"):
        list_hest(root / "metadata")
