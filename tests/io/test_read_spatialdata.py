"""read_spatialdata on SpatialData stores laid out as spatialdata-io writes Visium."""

from __future__ import annotations

import builtins
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

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


def _visium_store(tmp_path: Path, *, polygons: bool = False, tables: int = 1) -> dict[str, Any]:
    sd = pytest.importorskip("spatialdata", reason="optional extra gr2st[spatialdata]")
    import anndata
    import geopandas as gpd
    from shapely.geometry import Point, box
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    (sec,) = synthetic(n_sections=1, grid=(6, 6), image_dir=tmp_path, seed=5)
    hires = np.asarray(Image.open(sec.uns[UNS][IMAGE_PATH]))  # 320 × 320
    rng = np.random.default_rng(0)
    pitch = 100 / FULL_MPP
    rows, cols, xs, ys = [], [], [], []
    for r in range(6):
        for k in range(5):
            rows.append(r)
            cols.append(2 * k + r % 2)
            xs.append(pitch / 2 * (1 + r % 2) + k * pitch)
            ys.append(pitch / 2 + r * pitch * np.sqrt(3) / 2)
    barcodes = ["".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in rows]
    if polygons:
        side = 55 / FULL_MPP
        half = side / 2
        geometry = [
            box(x - half, y - half, x + half, y + half) for x, y in zip(xs, ys, strict=True)
        ]
        shapes = gpd.GeoDataFrame(geometry=geometry, index=barcodes)
    else:
        shapes = gpd.GeoDataFrame(
            {"radius": np.full(len(xs), 65 / FULL_MPP / 2)},
            geometry=[Point(x, y) for x, y in zip(xs, ys, strict=True)],
            index=barcodes,
        )
    counts = rng.poisson(3, (len(rows), 6)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "in_tissue": 1,
            "array_row": rows,
            "array_col": cols,
            "spot_id": barcodes,
            "region": pd.Categorical(["V1"] * len(rows)),
        },
        index=barcodes,
    )
    table = anndata.AnnData(counts, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(6)]))
    table = TableModel.parse(table, region="V1", region_key="region", instance_key="spot_id")
    image = Image2DModel.parse(
        np.moveaxis(hires, -1, 0),
        dims=("c", "y", "x"),
        transformations={"global": Scale([1 / HIRES, 1 / HIRES], axes=("x", "y"))},
    )
    fullres = tmp_path / "fullres.png"
    Image.fromarray(hires).resize((1280, 1280), Image.Resampling.NEAREST).save(fullres)
    sdata = sd.SpatialData(
        images={"V1_hires_image": image},
        shapes={"V1": ShapesModel.parse(shapes, transformations={"global": Identity()})},
        tables={f"table{i}" if i else "table": table for i in range(tables)},
    )
    store = tmp_path / "visium.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata.write(store)
    return {
        "store": store,
        "fullres": fullres,
        "hires": hires,
        "xy": np.column_stack([xs, ys]),
        "counts": counts,
        "barcodes": barcodes,
    }


def test_visium_store_with_its_hires_image(tmp_path: Path) -> None:
    made = _visium_store(tmp_path)
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


def test_full_resolution_slide_given(tmp_path: Path) -> None:
    made = _visium_store(tmp_path)
    adata = read_spatialdata(made["store"], image=made["fullres"])
    np.testing.assert_allclose(adata.obsm[SPATIAL], made["xy"])
    assert adata.uns[UNS][MICRONS_PER_PIXEL] == pytest.approx(FULL_MPP)
    assert adata.uns[UNS][IMAGE_PATH] == str(made["fullres"])
    assert read_spatialdata(made["store"], image=made["fullres"], mpp=0.4).uns[UNS][
        MICRONS_PER_PIXEL
    ] == pytest.approx(0.4)


def test_square_bins_are_read_as_their_centroids(tmp_path: Path) -> None:
    made = _visium_store(tmp_path, polygons=True)
    adata = read_spatialdata(made["store"], image=made["fullres"], platform="visium")
    np.testing.assert_allclose(adata.obsm[SPATIAL], made["xy"], atol=1e-6)
    assert adata.uns["spatial"]["V1"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(
        55 / FULL_MPP
    )


def test_one_line_errors(tmp_path: Path) -> None:
    made = _visium_store(tmp_path, tables=2)
    with pytest.raises(GR2STDataError, match=r"visium\.zarr: 2 tables \('table', 'table1'\)"):
        read_spatialdata(made["store"], image=made["fullres"])
    with pytest.raises(GR2STDataError, match=r"no table 'nope' \(tables: 'table', 'table1'\)"):
        read_spatialdata(made["store"], table="nope", image=made["fullres"])
    assert read_spatialdata(made["store"], table="table1", image=made["fullres"]).n_obs == 30
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
