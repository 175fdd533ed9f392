"""QuPath GeoJSON: the keys QuPath reads, valid circles of the spot size, streamed values."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import anndata
import numpy as np
import pytest
import shapely
from predictfixtures import Trained

from gr2st._constants import IMAGE_PATH, MEASURED_LAYER, SPATIAL, UNCERTAINTY_LAYER, UNS
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.export import _prediction, write_qupath
from gr2st.export.qupath import SPOT_NAMESPACE
from gr2st.predict import load_bundle, predict_spots, spots_from_section


@pytest.fixture(scope="module")
def prediction(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = load_bundle(trained.path, device="cpu")
    pred = predict_spots(
        bundle,
        trained.test.uns[UNS][IMAGE_PATH],
        spots_from_section(trained.test, source="h5ad"),
        genes="all",
        progress=False,
    )
    path = tmp_path_factory.mktemp("qupath") / "pred.h5ad"
    pred.write_h5ad(path)
    return path


def check_qupath_schema(doc: dict, *, genes: list[str], measured: bool) -> None:
    """The exact structure QuPath's GeoJSON import reads for detections."""
    assert set(doc) == {"type", "features"}
    assert doc["type"] == "FeatureCollection"
    ids = set()
    for feature in doc["features"]:
        assert set(feature) == {"type", "id", "geometry", "properties"}
        assert feature["type"] == "Feature"
        ids.add(str(uuid.UUID(feature["id"])))
        assert feature["geometry"]["type"] == "Polygon"
        props = feature["properties"]
        assert set(props) == {"objectType", "name", "measurements"}
        assert props["objectType"] == "detection"
        values = props["measurements"]
        assert isinstance(values, dict)
        assert all(isinstance(v, float) and np.isfinite(v) for v in values.values())
        expected = {*genes, *(f"{g} uncertainty" for g in genes), "in_tissue"}
        # A measured value is left out where it is undefined (a gene or spot without counts).
        allowed = expected | ({f"{g} measured" for g in genes} if measured else set())
        assert expected <= set(values) <= allowed
        assert values["in_tissue"] in (0.0, 1.0)
    assert len(ids) == len(doc["features"])


def test_spots_are_detections_with_one_measurement_per_gene(
    prediction: Path, tmp_path: Path
) -> None:
    pred = anndata.read_h5ad(prediction)
    genes = ["GENE003", "GENE001"]
    out = write_qupath(prediction, tmp_path / "spots.geojson", genes=",".join(genes))
    doc = json.loads(out.read_text())
    check_qupath_schema(doc, genes=genes, measured=True)
    assert len(doc["features"]) == pred.n_obs
    diameter = pred.uns[UNS]["spot_diameter_px"]
    for i, feature in enumerate(doc["features"]):
        polygon = shapely.geometry.shape(feature["geometry"])
        assert polygon.is_valid
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        assert np.array_equal(ring[0], ring[-1])
        # A circle of the spot's diameter around the spot's centre (full-resolution px).
        centre = pred.obsm[SPATIAL][i]
        np.testing.assert_allclose(np.linalg.norm(ring - centre, axis=1), diameter / 2, atol=0.02)
        np.testing.assert_allclose(polygon.centroid.coords[0], centre, atol=0.02)
        values = feature["properties"]["measurements"]
        assert feature["properties"]["name"] == pred.obs_names[i]
        assert feature["id"] == str(uuid.uuid5(SPOT_NAMESPACE, f"S2/{pred.obs_names[i]}"))
        for gene in genes:
            j = pred.var_names.get_loc(gene)
            np.testing.assert_allclose(values[gene], pred.X[i, j], rtol=1e-5)
            np.testing.assert_allclose(
                values[f"{gene} uncertainty"], pred.layers[UNCERTAINTY_LAYER][i, j], rtol=1e-5
            )
            np.testing.assert_allclose(
                values[f"{gene} measured"], pred.layers[MEASURED_LAYER][i, j], rtol=1e-5
            )
        assert values["in_tissue"] == float(pred.obs["in_tissue"].iloc[i])


def test_same_file_from_memory_and_in_small_blocks(
    prediction: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = write_qupath(anndata.read_h5ad(prediction), tmp_path / "a.geojson", genes="all")
    # Blocks of one spot: the file is streamed, not built whole.
    monkeypatch.setattr(_prediction, "BLOCK_BYTES", 1)
    streamed = write_qupath(prediction, tmp_path / "b.geojson", genes="all")
    assert whole.read_text() == streamed.read_text()


def test_top_genes_are_the_most_variable(prediction: Path, tmp_path: Path) -> None:
    pred = anndata.read_h5ad(prediction)
    out = write_qupath(prediction, tmp_path / "top.geojson", genes="top:2")
    names = json.loads(out.read_text())["features"][0]["properties"]["measurements"]
    expected = pred.var_names[np.argsort(-pred.X.var(axis=0), kind="stable")[:2]]
    assert [n for n in names if " " not in n and n != "in_tissue"] == list(expected)


def test_unmeasured_values_are_left_out(prediction: Path, tmp_path: Path) -> None:
    pred = anndata.read_h5ad(prediction)
    pred.layers[MEASURED_LAYER][:, 0] = np.nan
    out = write_qupath(pred, tmp_path / "nan.geojson", genes=list(pred.var_names[:2]))
    values = json.loads(out.read_text())["features"][0]["properties"]["measurements"]
    gene0, gene1 = pred.var_names[:2]
    assert f"{gene0} measured" not in values
    assert f"{gene1} measured" in values
    assert gene0 in values


def test_bad_input_gets_one_line_errors(prediction: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.geojson"
    with pytest.raises(GR2STConfigError, match=r"^--genes: NOPE not among the \d+ genes of"):
        write_qupath(prediction, out, genes="GENE000,NOPE")
    with pytest.raises(GR2STConfigError, match="top:N with N a positive integer"):
        write_qupath(prediction, out, genes="top:x")
    with pytest.raises(GR2STConfigError, match="is a folder"):
        write_qupath(prediction, tmp_path, genes="all")
    bare = anndata.read_h5ad(prediction)
    del bare.obsm[SPATIAL]
    with pytest.raises(GR2STDataError, match=r"missing obsm\['spatial'\]"):
        write_qupath(bare, out)
    bare = anndata.read_h5ad(prediction)
    bare.uns = {}
    bare.write_h5ad(tmp_path / "bare.h5ad")
    with pytest.raises(GR2STDataError, match=r"bare.h5ad: no spot diameter"):
        write_qupath(tmp_path / "bare.h5ad", out)
    (tmp_path / "junk.h5ad").write_text("not hdf5")
    with pytest.raises(GR2STDataError, match=r"junk.h5ad: cannot read as .h5ad"):
        write_qupath(tmp_path / "junk.h5ad", out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_write_leaves_no_file(
    prediction: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gr2st.export import qupath

    def fail(*args: object, **kwargs: object) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(qupath.json, "dumps", fail)
    with pytest.raises(OSError, match="disk full"):
        write_qupath(prediction, tmp_path / "x.geojson")
    assert list(tmp_path.iterdir()) == []
