"""C2 of HER2ST predicted by a small real bundle, exported to QuPath: spots at the right
place and size on the slide (``gr2st predict --qupath``)."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import numpy as np
import pytest
import shapely
from scipy.spatial import cKDTree
from test_qupath import check_qupath_schema
from typer.testing import CliRunner

from gr2st._constants import IMAGE_PATH, SPATIAL, SPOT_DIAMETER_PX, UNS
from gr2st.cli.main import app
from gr2st.image import open_slide
from gr2st.io import read_her2st
from gr2st.predict import train_bundle

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_c2_prediction_overlays_c2_spots_in_qupath(her2st_root: Path, tmp_path: Path) -> None:
    train = read_her2st(her2st_root, "C3")
    c2 = read_her2st(her2st_root, "C2")
    bundle = train_bundle(
        [train],
        tmp_path / "bundle",
        panel=list(train.var_names[:40]),
        overrides=["train.epochs=2", "model.proj_dim=32", "model.heads=2"],
        nuclei="none",
        device="cpu",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    c2.write_h5ad(tmp_path / "C2.h5ad")
    result = CliRunner().invoke(
        app,
        [
            "predict", "--model", str(bundle), "--h5ad", str(tmp_path / "C2.h5ad"),
            "--out", str(tmp_path / "C2_pred.h5ad"), "--qupath", str(tmp_path / "C2.geojson"),
            "--no-progress", "--device", "cpu",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    pred = anndata.read_h5ad(tmp_path / "C2_pred.h5ad")
    doc = json.loads((tmp_path / "C2.geojson").read_text())
    check_qupath_schema(doc, genes=list(pred.var_names), measured=True)

    # Every C2 spot, at its centre in the slide's full-resolution pixels, with C2's size.
    centres = c2.obsm[SPATIAL][c2.obs_names.get_indexer(pred.obs_names)]
    diameter = c2.uns[UNS][SPOT_DIAMETER_PX]
    assert pred.uns[UNS][SPOT_DIAMETER_PX] == pytest.approx(diameter)
    assert len(doc["features"]) == c2.n_obs
    polygons = [shapely.geometry.shape(f["geometry"]) for f in doc["features"]]
    assert all(p.is_valid for p in polygons)
    assert [f["properties"]["name"] for f in doc["features"]] == list(pred.obs_names)
    found = np.array([p.centroid.coords[0] for p in polygons])
    np.testing.assert_allclose(found, centres, atol=0.05)
    radii = np.array([np.ptp(np.asarray(p.exterior.coords), axis=0).max() for p in polygons]) / 2
    np.testing.assert_allclose(radii, diameter / 2, atol=0.05)
    # HER2ST spots are 100 µm wide on a 200 µm pitch: circles never touch, and lie on the
    # slide QuPath opens (C2's full-resolution JPEG).
    pitch = np.median(cKDTree(centres).query(centres, k=2)[0][:, 1])
    assert 0.4 < diameter / pitch < 0.6
    with open_slide(c2.uns[UNS][IMAGE_PATH]) as slide:
        width, height = slide.dimensions
    bounds = np.array([p.bounds for p in polygons])
    assert (bounds[:, :2] >= 0).all()
    assert (bounds[:, 2] <= width).all()
    assert (bounds[:, 3] <= height).all()
    measured = [sum(k.endswith(" measured") for k in f["properties"]["measurements"])
                for f in doc["features"]]  # fmt: skip
    assert np.median(measured) > 0.9 * pred.n_vars
    # Most C2 spots lie on the tissue detected on the slide.
    in_tissue = np.array([f["properties"]["measurements"]["in_tissue"] for f in doc["features"]])
    assert in_tissue.mean() > 0.9
