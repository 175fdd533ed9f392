"""SpatialData export: round trip through spatialdata and gr2st's reader, alignment, errors."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pytest
from predictfixtures import Trained

from gr2st._constants import (
    IMAGE_PATH,
    MEASURED_LAYER,
    MICRONS_PER_PIXEL,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNCERTAINTY_LAYER,
    UNS,
)
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.export import write_spatialdata
from gr2st.export.spatialdata import INSTANCE_KEY, TABLE
from gr2st.predict import detect_tissue, load_bundle, predict_spots, spots_from_section

spatialdata = pytest.importorskip("spatialdata")


@pytest.fixture(scope="module")
def prediction(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = load_bundle(trained.path, device="cpu")
    pred = predict_spots(
        bundle,
        trained.test.uns[UNS][IMAGE_PATH],
        spots_from_section(trained.test, source="h5ad"),
        progress=False,
    )
    # The synthetic spots lie 48 px apart on a square grid: as ST spots (200 µm pitch) that
    # is 200 / 48 µm/px, which the reader cross-checks against the pitch.
    pred.uns[UNS][MICRONS_PER_PIXEL] = 200.0 / 48
    path = tmp_path_factory.mktemp("sdata") / "pred.h5ad"
    pred.write_h5ad(path)
    return path


def test_round_trip_gives_the_same_spots_values_and_resolution(
    prediction: Path, tmp_path: Path
) -> None:
    from spatialdata.transformations import get_transformation

    from gr2st.io.spatialdata import read_spatialdata

    pred = anndata.read_h5ad(prediction)
    store = write_spatialdata(prediction, tmp_path / "pred.zarr")
    sdata = spatialdata.read_zarr(store)
    assert set(sdata.images) == {"S2_image"}
    assert set(sdata.shapes) == {"S2"}
    table = sdata.tables[TABLE]
    assert table.uns["spatialdata_attrs"]["region"] == "S2"
    assert table.uns["spatialdata_attrs"]["instance_key"] == INSTANCE_KEY
    np.testing.assert_array_equal(table.layers[UNCERTAINTY_LAYER], pred.layers[UNCERTAINTY_LAYER])
    circles = sdata.shapes["S2"]
    np.testing.assert_allclose(2 * circles["radius"], pred.uns[UNS][SPOT_DIAMETER_PX])
    for element in (circles, sdata.images["S2_image"]):
        matrix = get_transformation(element, "global").to_affine_matrix(("x", "y"), ("x", "y"))
        np.testing.assert_allclose(matrix, np.eye(3))

    back = read_spatialdata(store, image_cache=tmp_path / "cache")
    assert list(back.obs_names) == list(pred.obs_names)
    assert list(back.var_names) == list(pred.var_names)
    np.testing.assert_array_equal(back.obsm[SPATIAL], pred.obsm[SPATIAL])
    np.testing.assert_array_equal(back.X, pred.X)
    np.testing.assert_array_equal(back.layers[UNCERTAINTY_LAYER], pred.layers[UNCERTAINTY_LAYER])
    np.testing.assert_array_equal(back.layers[MEASURED_LAYER], pred.layers[MEASURED_LAYER])
    assert back.uns[UNS][MICRONS_PER_PIXEL] == pred.uns[UNS][MICRONS_PER_PIXEL]
    assert back.uns[UNS][SPOT_DIAMETER_PX] == pytest.approx(pred.uns[UNS][SPOT_DIAMETER_PX])
    # The image element is the slide itself, pixel for pixel.
    from PIL import Image

    slide = np.asarray(Image.open(pred.uns[UNS][IMAGE_PATH]).convert("RGB"))
    image = np.moveaxis(np.asarray(sdata.images["S2_image"]), 0, -1)
    np.testing.assert_array_equal(image, slide)


def test_spot_centres_fall_on_the_tissue_of_the_image_element(
    prediction: Path, tmp_path: Path
) -> None:
    from spatialdata.transformations import get_transformation

    pred = anndata.read_h5ad(prediction)
    sdata = spatialdata.read_zarr(write_spatialdata(prediction, tmp_path / "pred.zarr"))
    image = sdata.images["S2_image"]
    pixels = np.moveaxis(np.asarray(image), 0, -1)
    mask = detect_tissue(pixels)
    to_image = np.linalg.inv(
        get_transformation(image, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    )
    circles = sdata.shapes["S2"]
    xy = np.column_stack([circles.geometry.x, circles.geometry.y, np.ones(len(circles))])
    col, row, _ = np.rint(xy @ to_image.T).astype(int).T
    on_tissue = mask[row, col]
    in_tissue = pred.obs["in_tissue"].to_numpy(bool)
    assert in_tissue.sum() > 0.5 * len(in_tissue)
    assert on_tissue[in_tissue].mean() > 0.9


def test_multiscale_levels_halve_the_slide(
    prediction: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spatialdata.transformations import get_transformation

    from gr2st.export import spatialdata as export

    monkeypatch.setattr(export, "COARSEST_PX", 80)
    monkeypatch.setattr(export, "CHUNK_PX", 100)
    sdata = spatialdata.read_zarr(write_spatialdata(prediction, tmp_path / "pred.zarr"))
    image = sdata.images["S2_image"]
    levels = [next(iter(image[f"scale{i}"].values())) for i in range(len(image))]
    assert [tuple(level.shape[1:]) for level in levels] == [(320, 320), (160, 160), (80, 80)]
    for i, level in enumerate(levels):
        matrix = get_transformation(level, "global").to_affine_matrix(("x", "y"), ("x", "y"))
        np.testing.assert_allclose(np.diag(matrix)[:2], 2**i)


def test_bad_output_and_input(prediction: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(GR2STConfigError, match=r"--out .*file: is a file"):
        write_spatialdata(prediction, tmp_path / "file")
    (tmp_path / "old.zarr").mkdir()
    with pytest.raises(GR2STConfigError, match="already exists"):
        write_spatialdata(prediction, tmp_path / "old.zarr")
    pred = anndata.read_h5ad(prediction)
    pred.uns[UNS][IMAGE_PATH] = str(tmp_path / "gone.png")
    with pytest.raises(GR2STDataError, match=r"gone.png not found; give the slide"):
        write_spatialdata(pred, tmp_path / "new.zarr")
    assert not (tmp_path / "new.zarr").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "old.zarr"]
