"""read_spatialdata on SpatialData stores laid out as spatialdata-io writes Visium."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gr2st._constants import (
    HAS_COUNTS,
    IMAGE_PATH,
    MICRONS_PER_PIXEL,
    SECTION,
    SOURCE_FORMAT,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNS,
)
from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.io.spatialdata import read_spatialdata

# Full resolution: 0.5 µm/px; Visium's 100 µm pitch = 200 px. The store holds only the
# hires image (a quarter of full resolution), as spatialdata-io's Visium reader does.
FULL_MPP = 0.5
HIRES = 0.25


@pytest.fixture
def visium_store(tmp_path: Path, make_spatialdata_visium) -> Any:
    """``visium_store(**options)``: a Visium store over a synthetic 320-px hires image."""
    (sec,) = synthetic(n_sections=1, grid=(6, 6), image_dir=tmp_path, seed=5)

    def make(**options: Any) -> dict[str, Any]:
        return make_spatialdata_visium(Path(sec.uns[UNS][IMAGE_PATH]), tmp_path, **options)

    return make


@pytest.mark.slow
def test_visium_store_with_its_hires_image(tmp_path: Path, visium_store: Any) -> None:
    made = visium_store()
    cache = tmp_path / "cache"
    adata = read_spatialdata(made["store"], image_cache=cache)
    meta = adata.uns[UNS]
    # Spots mapped into the hires image, whose resolution is measured from the pitch.
    np.testing.assert_allclose(adata.obsm[SPATIAL], made["xy"] * HIRES, atol=1e-9)
    assert meta[MICRONS_PER_PIXEL] == pytest.approx(FULL_MPP / HIRES)
    assert meta[SPOT_DIAMETER_PX] == pytest.approx(55 / (FULL_MPP / HIRES))
    assert meta[SOURCE_FORMAT] == "spatialdata"
    assert meta[HAS_COUNTS] is True
    np.testing.assert_array_equal(adata.X.toarray(), made["counts"])
    assert list(adata.obs_names) == made["barcodes"]
    assert adata.obs[SECTION].iloc[0] == "V1"
    exported = Path(meta[IMAGE_PATH])
    assert exported.parent == cache
    assert exported.suffix == ".tif"
    from gr2st.image import open_slide

    with open_slide(exported) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 320, 320), made["hires"])
    assert read_spatialdata(made["store"], image_cache=cache).uns[UNS][IMAGE_PATH] == str(exported)


def test_full_resolution_slide_given(tmp_path: Path, visium_store: Any) -> None:
    made = visium_store()
    adata = read_spatialdata(made["store"], image=made["fullres"])
    np.testing.assert_allclose(adata.obsm[SPATIAL], made["xy"])
    assert adata.uns[UNS][MICRONS_PER_PIXEL] == pytest.approx(FULL_MPP)
    assert adata.uns[UNS][IMAGE_PATH] == str(made["fullres"])
    assert read_spatialdata(made["store"], image=made["fullres"], mpp=0.4).uns[UNS][
        MICRONS_PER_PIXEL
    ] == pytest.approx(0.4)


def test_square_bins_are_read_as_their_centroids(tmp_path: Path, visium_store: Any) -> None:
    made = visium_store(polygons=True)
    adata = read_spatialdata(made["store"], image=made["fullres"], platform="visium")
    np.testing.assert_allclose(adata.obsm[SPATIAL], made["xy"], atol=1e-6)
    assert adata.uns["spatial"]["V1"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(
        55 / FULL_MPP
    )


@pytest.mark.slow
def test_one_line_errors(tmp_path: Path, visium_store: Any) -> None:
    made = visium_store(tables=2)
    with pytest.raises(GR2STDataError, match=r"visium\.zarr: 2 tables \('table', 'table1'\)"):
        read_spatialdata(made["store"], image=made["fullres"])
    with pytest.raises(GR2STDataError, match=r"no table 'nope' \(tables: 'table', 'table1'\)"):
        read_spatialdata(made["store"], table="nope", image=made["fullres"])
    assert read_spatialdata(made["store"], table="table1", image=made["fullres"]).n_obs == 42
    with pytest.raises(GR2STDataError, match=r"missing\.zarr: SpatialData store not found"):
        read_spatialdata(tmp_path / "missing.zarr")
    with pytest.raises(GR2STDataError, match="not in coordinate system 'aligned'"):
        read_spatialdata(
            made["store"], table="table", coordinate_system="aligned", image=made["fullres"]
        )


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_spatialdata(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "spatialdata" or name.startswith("spatialdata."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_spatialdata)
    with pytest.raises(
        GR2STConfigError,
        match=r"^reading SpatialData stores needs the optional package spatialdata: "
        r"pip install 'gr2st\[spatialdata\]'$",
    ):
        read_spatialdata("any.zarr")
