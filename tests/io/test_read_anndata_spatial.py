"""read_anndata_spatial / read_h5ad on scanpy/squidpy spatial AnnData (sc.read_visium's shape)."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
from PIL import Image

from gr2st._constants import (
    ARRAY_X,
    ARRAY_Y,
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
from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.genes import prepare_section
from gr2st.io import read_anndata_spatial, read_h5ad


@pytest.fixture
def visium(tmp_path: Path, make_squidpy_visium) -> tuple[Path, Path, Path]:
    """(h5ad, full-resolution PNG, hires PNG): counts-free, z-scored, 0.5 µm/px full res."""
    (sec,) = synthetic(n_sections=1, grid=(6, 6), image_dir=tmp_path, seed=3)
    hires = Path(sec.uns[UNS][IMAGE_PATH])
    h5ad, fullres = make_squidpy_visium(hires, tmp_path / "visium")
    return h5ad, fullres, hires


def test_standard_visium_anndata_reads_without_conversion(
    visium: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    h5ad, fullres, _hires = visium
    raw = anndata.read_h5ad(h5ad)
    assert (raw.X < 0).any()  # z-scored: not counts

    section = read_anndata_spatial(h5ad, image=fullres)

    meta = section.uns[UNS]
    # Measured from the 200-px hexagonal pitch (100 µm): 0.5 µm/px, 55 µm spots = 110 px.
    assert meta[MICRONS_PER_PIXEL] == pytest.approx(0.5, rel=1e-9)
    assert meta[SPOT_DIAMETER_PX] == pytest.approx(110.0, rel=1e-9)
    assert meta[IMAGE_PATH] == str(fullres)
    assert meta[SOURCE_FORMAT] == "anndata"
    assert meta[HAS_COUNTS] is False
    np.testing.assert_array_equal(section.obsm[SPATIAL], raw.obsm["spatial"])
    np.testing.assert_allclose(section.X, raw.X)  # values kept as given
    assert list(section.obs_names) == list(raw.obs_names)
    assert section.obs[SECTION].unique().tolist() == ["V1"]  # the library id
    assert section.obs[PATIENT].unique().tolist() == ["V1"]
    np.testing.assert_array_equal(section.obs[ARRAY_X], raw.obs["array_col"])
    np.testing.assert_array_equal(section.obs[ARRAY_Y], raw.obs["array_row"])
    assert section.obs["in_tissue"].eq(1).all()  # the input's other columns are kept
    assert set(section.uns["spatial"]) == {"V1"}


def test_embedded_hires_image_is_used_and_everything_rescaled(
    visium: tuple[Path, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h5ad, _, hires = visium
    raw = anndata.read_h5ad(h5ad)
    with caplog.at_level(logging.WARNING):
        section = read_anndata_spatial(h5ad, image_cache=tmp_path / "cache")
    assert "no full-resolution image given; using the embedded 'hires' image" in caplog.text
    meta = section.uns[UNS]
    image = Path(meta[IMAGE_PATH])
    assert image.parent == tmp_path / "cache"
    np.testing.assert_array_equal(np.asarray(Image.open(image)), np.asarray(Image.open(hires)))
    # hires = full resolution / 4: coordinates, spot size and resolution follow.
    np.testing.assert_allclose(section.obsm[SPATIAL], raw.obsm["spatial"] / 4)
    assert meta[MICRONS_PER_PIXEL] == pytest.approx(2.0)
    assert meta[SPOT_DIAMETER_PX] == pytest.approx(27.5)
    factors = section.uns["spatial"]["V1"]["scalefactors"]
    assert factors["tissue_hires_scalef"] == pytest.approx(1.0)
    assert factors["spot_diameter_fullres"] == pytest.approx(130 / 4)
    # The same content gives the same file (and so the same feature cache entries).
    again = read_anndata_spatial(h5ad, image_cache=tmp_path / "cache")
    assert again.uns[UNS][IMAGE_PATH] == meta[IMAGE_PATH]


def test_resolution_sources(visium: tuple[Path, Path, Path]) -> None:
    h5ad, fullres, _ = visium
    raw = anndata.read_h5ad(h5ad)
    # Without array coordinates: Space Ranger's spot_diameter_fullres is a 65 µm spot.
    no_grid = raw.copy()
    del no_grid.obs["array_row"], no_grid.obs["array_col"]
    section = read_anndata_spatial(no_grid, image=fullres)
    assert section.uns[UNS][MICRONS_PER_PIXEL] == pytest.approx(65 / 130)
    # Array coordinates recovered from the pixel positions: Visium's own numbering.
    grid = section.obs[[ARRAY_X, ARRAY_Y]].to_numpy()
    np.testing.assert_array_equal(grid, raw.obs[["array_col", "array_row"]].to_numpy())
    # A given resolution is used when it agrees with the pitch, refused when it does not.
    assert read_anndata_spatial(raw, image=fullres, mpp=0.55).uns[UNS][MICRONS_PER_PIXEL] == 0.55
    with pytest.raises(GR2STDataError, match=r"200\.0 px × 0\.25 µm/px \(given\) = 50 µm, but "):
        read_anndata_spatial(raw, image=fullres, mpp=0.25)
    # The platform sets the geometry: read as a square 200 µm ST grid, the nearest array
    # neighbours are diagonal (√2 units, 200 px apart): 200 µm / (200 px / √2).
    st = read_anndata_spatial(raw, image=fullres, platform="st")
    assert st.uns[UNS][MICRONS_PER_PIXEL] == pytest.approx(np.sqrt(2), rel=1e-9)
    assert st.uns[UNS][SPOT_DIAMETER_PX] == pytest.approx(100 / np.sqrt(2), rel=1e-9)
    # Nothing to go by: resolution unknown (prediction then asks for --mpp).
    bare = raw.copy()
    bare.obs_names = [f"spot{i}" for i in range(bare.n_obs)]
    del bare.obs["array_row"], bare.obs["array_col"]
    bare.uns["spatial"]["V1"]["metadata"] = {}
    assert read_anndata_spatial(bare, image=fullres).uns[UNS][MICRONS_PER_PIXEL] is None
    with pytest.raises(GR2STConfigError, match="platform 'xenium': expected one of visium, st"):
        read_anndata_spatial(raw, image=fullres, platform="xenium")


def test_counts_are_found_where_scanpy_keeps_them(visium: tuple[Path, Path, Path]) -> None:
    h5ad, fullres, _ = visium
    raw = anndata.read_h5ad(h5ad)
    counts = np.random.default_rng(0).poisson(2.0, raw.shape)
    in_layer = raw.copy()
    in_layer.layers["counts"] = counts.astype(np.float32)
    section = read_anndata_spatial(in_layer, image=fullres, require_counts=True)
    assert section.uns[UNS][HAS_COUNTS] is True
    assert isinstance(section.X, sp.csr_matrix)
    np.testing.assert_array_equal(section.X.toarray(), counts)
    in_raw = raw.copy()
    in_raw.raw = anndata.AnnData(X=counts, var=raw.var)
    np.testing.assert_array_equal(read_anndata_spatial(in_raw, image=fullres).X.toarray(), counts)


def test_counts_free_sections_are_refused_only_where_counts_are_needed(
    visium: tuple[Path, Path, Path],
) -> None:
    h5ad, fullres, _ = visium
    with pytest.raises(
        GR2STDataError,
        match=r"visium\.h5ad: no raw counts \(X has \d+ negative and \d+ non-integer value\(s\), "
        r"and neither layers\['counts'\] nor \.raw holds integer counts\); training and "
        r"scoring need raw counts, prediction does not$",
    ):
        read_anndata_spatial(h5ad, image=fullres, require_counts=True)
    with pytest.raises(GR2STDataError, match="no raw counts"):
        read_h5ad(h5ad, image=fullres)  # read_h5ad requires counts by default
    section = read_h5ad(h5ad, image=fullres, require_counts=False)
    with pytest.raises(
        GR2STDataError, match=r"^V1: the section holds no raw counts \(read for prediction only\)"
    ):
        prepare_section(section, genes=["GENE000"])


def test_read_h5ad_passes_scanpy_files_on(visium: tuple[Path, Path, Path]) -> None:
    h5ad, fullres, _ = visium
    section = read_h5ad(h5ad, require_counts=False, image=fullres)
    assert section.uns[UNS][MICRONS_PER_PIXEL] == pytest.approx(0.5)
    assert section.obs[SECTION].iloc[0] == "V1"


def test_several_libraries(visium: tuple[Path, Path, Path]) -> None:
    h5ad, fullres, _ = visium
    one = anndata.read_h5ad(h5ad)
    two = one.copy()
    two.obs_names = [f"{b[:-2]}-2" for b in one.obs_names]
    both = anndata.concat(
        {"V1": one, "V2": two}, label="library_id", uns_merge="unique", index_unique=None
    )
    both.uns["spatial"] = {"V1": one.uns["spatial"]["V1"], "V2": one.uns["spatial"]["V1"]}
    with pytest.raises(GR2STDataError, match=r"holds 2 libraries \('V1', 'V2'\); choose one"):
        read_anndata_spatial(both, image=fullres)
    section = read_anndata_spatial(both, library_id="V2", image=fullres)
    assert section.n_obs == one.n_obs
    assert section.obs[SECTION].iloc[0] == "V2"
    assert all(name.endswith("-2") for name in section.obs_names)
    with pytest.raises(GR2STDataError, match=r"no library 'V3' in uns\['spatial'\]"):
        read_anndata_spatial(both, library_id="V3", image=fullres)


def test_source_image_path_recorded_by_scanpy(visium: tuple[Path, Path, Path]) -> None:
    h5ad, fullres, _ = visium
    raw = anndata.read_h5ad(h5ad)
    raw.uns["spatial"]["V1"]["metadata"]["source_image_path"] = str(fullres)
    assert read_anndata_spatial(raw).uns[UNS][IMAGE_PATH] == str(fullres)


def test_one_line_errors(visium: tuple[Path, Path, Path], tmp_path: Path) -> None:
    h5ad, fullres, _ = visium
    raw = anndata.read_h5ad(h5ad)
    no_spatial = raw.copy()
    del no_spatial.obsm["spatial"]
    with pytest.raises(GR2STDataError, match=r"^AnnData: missing obsm\['spatial'\]; expected"):
        read_anndata_spatial(no_spatial)
    bad = raw.copy()
    bad.uns["spatial"]["V1"]["scalefactors"]["tissue_hires_scalef"] = -1.0
    with pytest.raises(GR2STDataError, match=r"\['tissue_hires_scalef'\] = -1\.0; expected a"):
        read_anndata_spatial(bad)
    nan_xy = raw.copy()
    nan_xy.obsm["spatial"] = nan_xy.obsm["spatial"].copy()
    nan_xy.obsm["spatial"][0, 0] = np.nan
    with pytest.raises(GR2STDataError, match=r"obsm\['spatial'\] must hold finite"):
        read_anndata_spatial(nan_xy, image=fullres)
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 100), (200, 120, 170)).save(small)
    with pytest.raises(GR2STDataError, match=r"small\.png: \d+ spot centre\(s\) lie outside"):
        read_anndata_spatial(raw, image=small)
    with pytest.raises(GR2STDataError, match=r"missing\.png: image not found"):
        read_anndata_spatial(raw, image=tmp_path / "missing.png")
    with pytest.raises(GR2STDataError, match=r"none\.h5ad: AnnData file not found"):
        read_anndata_spatial(tmp_path / "none.h5ad")
