"""``gr2st export qupath|spatialdata``, ``gr2st report`` and predict's extra outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "predict"))

from predictfixtures import Trained, trained

from gr2st._constants import IMAGE_PATH, SPATIAL, UNS
from gr2st.cli.main import app, run
from gr2st.errors import GR2STConfigError, GR2STDataError

__all__ = ["trained"]


def _invoke(*args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output, result.exception


@pytest.fixture(scope="module")
def predicted(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``gr2st predict --qupath --spatialdata-out --report`` on the held-out section."""
    folder = tmp_path_factory.mktemp("exportcli")
    test = trained.test
    xy = test.obsm[SPATIAL]
    csv = folder / "spots.csv"
    pd.DataFrame({"id": test.obs_names, "x": xy[:, 0], "y": xy[:, 1]}).to_csv(csv, index=False)
    code, output, exc = _invoke(
        "predict", "--model", str(trained.path), "--out", str(folder / "pred.h5ad"),
        "--spots", str(csv), "--image", test.uns[UNS][IMAGE_PATH], "--mpp", "2",
        "--qupath", str(folder / "pred.geojson"), "--spatialdata-out", str(folder / "pred.zarr"),
        "--report", "--no-progress", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, (output, exc)
    assert "QuPath detections:" in output
    assert "SpatialData store:" in output
    assert "Report:" in output
    return folder


def test_predict_writes_every_extra_output(predicted: Path) -> None:
    pred = anndata.read_h5ad(predicted / "pred.h5ad")
    doc = json.loads((predicted / "pred.geojson").read_text())
    assert len(doc["features"]) == pred.n_obs
    assert set(pred.var_names) <= set(doc["features"][0]["properties"]["measurements"])
    assert (predicted / "pred.zarr" / "zarr.json").is_file() or (
        predicted / "pred.zarr" / ".zgroup"
    ).is_file()
    page = (predicted / "pred.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "gr2st prediction" in page


def test_export_commands(predicted: Path, tmp_path: Path) -> None:
    pred = predicted / "pred.h5ad"
    code, output, exc = _invoke(
        "export", "qupath", str(pred), "--genes", "top:2", "--out", str(tmp_path / "t.geojson")
    )
    assert code == 0, (output, exc)
    names = json.loads((tmp_path / "t.geojson").read_text())["features"][0]["properties"]
    assert len([n for n in names["measurements"] if " " not in n and n != "in_tissue"]) == 2
    code, output, exc = _invoke(
        "export", "spatialdata", str(pred), "--out", str(tmp_path / "s.zarr")
    )
    assert code == 0, (output, exc)
    assert (tmp_path / "s.zarr").is_dir()
    code, output, exc = _invoke("report", str(pred), "--out", str(tmp_path / "r.html"))
    assert code == 0, (output, exc)
    assert "Report:" in output
    assert (tmp_path / "r.html").stat().st_size > 1_000_000  # Plotly's JS is inside


def test_export_errors_are_one_line(
    predicted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred = predicted / "pred.h5ad"
    _, _, exc = _invoke("export", "qupath", str(pred), "--genes", "NOPE", "--out", "x.geojson")
    assert isinstance(exc, GR2STConfigError)
    assert str(exc).startswith("--genes: NOPE not among the")
    (tmp_path / "file").write_text("x")
    _, _, exc = _invoke("export", "spatialdata", str(pred), "--out", str(tmp_path / "file"))
    assert isinstance(exc, GR2STConfigError)
    _, _, exc = _invoke(
        "export", "qupath", str(pred), "--out", str(tmp_path / "file" / "x.geojson")
    )
    assert isinstance(exc, GR2STConfigError)
    # A bundle-less h5ad without spatial information.
    bare = anndata.AnnData(np.ones((3, 2), np.float32))
    bare.write_h5ad(tmp_path / "bare.h5ad")
    _, _, exc = _invoke("export", "qupath", str(tmp_path / "bare.h5ad"), "--out", "x.geojson")
    assert isinstance(exc, GR2STDataError)
    assert "missing obsm['spatial']" in str(exc)
    _, _, exc = _invoke("report", str(tmp_path / "bare.h5ad"))
    assert isinstance(exc, GR2STDataError)
    _, _, exc = _invoke("report", str(tmp_path))
    assert isinstance(exc, GR2STDataError)
    assert "no results.json or per_gene.csv" in str(exc)
    # What the user sees: one line, no traceback.
    assert run(["export", "qupath", str(pred), "--genes", "NOPE", "--out", "x.geojson"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: --genes: NOPE")
    assert not Path("x.geojson").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.h5ad", "file"]


def test_predict_refuses_bad_extra_outputs_before_predicting(
    trained: Trained, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("x")
    common = [
        "predict", "--model", str(trained.path), "--out", str(tmp_path / "p.h5ad"),
        "--h5ad", str(tmp_path / "missing.h5ad"),
    ]  # fmt: skip
    _, _, exc = _invoke(*common, "--spatialdata-out", str(tmp_path / "file"))
    assert isinstance(exc, GR2STConfigError)
    _, _, exc = _invoke(*common, "--qupath", str(tmp_path / "spots.txt"))
    assert isinstance(exc, GR2STConfigError)
    assert "expected a .geojson file name" in str(exc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
