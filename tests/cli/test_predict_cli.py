"""``gr2st train``, ``gr2st info`` and ``gr2st predict`` end to end on a HER2ST-layout folder."""

from __future__ import annotations

import json
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from gr2st._constants import MEASURED_LAYER, SECTION, UNCERTAINTY_LAYER
from gr2st.cli.main import app
from gr2st.datasets import synthetic, write_her2st_layout
from gr2st.errors import GR2STConfigError, GR2STDataError

SMALL = ["--set", "train.epochs=2", "--set", "model.proj_dim=32", "--set", "model.heads=2"]


def _invoke(*args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output, result.exception


def _spaceranger(folder: Path, image: Path, counts: np.ndarray, genes: list[str]) -> Path:
    """A Space Ranger folder: 16 hexagonal spots at a 48-px pitch over ``image``."""
    rows, cols = np.divmod(np.arange(16), 4)
    cols = 2 * cols + rows % 2
    barcodes = [f"BC{i:02d}-1" for i in range(16)]
    positions = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": 1,
            "array_row": rows,
            "array_col": cols,
            "pxl_row_in_fullres": 60 + rows * 48 * np.sqrt(3) / 2,
            "pxl_col_in_fullres": 60 + cols * 24,
        }
    )
    (folder / "spatial").mkdir(parents=True)
    positions.to_csv(folder / "spatial" / "tissue_positions.csv", index=False)
    m = sp.csr_matrix(counts.astype(np.int32))
    with h5py.File(folder / "filtered_feature_bc_matrix.h5", "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"], g["indices"], g["indptr"] = m.data, m.indices, m.indptr
        g["shape"] = np.array([len(genes), len(barcodes)])
        feats = g.create_group("features")
        feats["id"] = np.array([f"ENSG{i}" for i in range(len(genes))], dtype="S")
        feats["name"] = np.array(genes, dtype="S")
        feats["feature_type"] = np.array([b"Gene Expression"] * len(genes))
        feats["genome"] = np.array([b"GRCh38"] * len(genes))
    (folder / image.name).write_bytes(image.read_bytes())
    return folder


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list]:
    tmp = tmp_path_factory.mktemp("cli")
    secs = synthetic(n_sections=3, n_genes=10, grid=(6, 6), signal=2.0, image_dir=tmp, seed=2)
    for adata, name in zip(secs, ["A1", "A2", "B1"], strict=True):
        adata.obs[SECTION] = name
    root = write_her2st_layout(secs, tmp / "her2st")
    (tmp / "panel.txt").write_text("\n".join(f"GENE{i:03d}" for i in range(5)) + "\n")
    code, output, exc = _invoke(
        "train", "--data", str(root), "--sections", "A1,A2", "--panel", str(tmp / "panel.txt"),
        "--nuclei", "none", "--size", "48", "--cache", str(tmp / "cache"), "--device", "cpu",
        "--no-progress", *SMALL, "--out", str(tmp / "bundle"),
    )  # fmt: skip
    assert code == 0, exc
    assert "bundle:" in output
    return tmp / "bundle", tmp, secs


@pytest.mark.filterwarnings("ignore:section .* obs\\['cell_type'\\] is missing:UserWarning")
def test_train_writes_a_bundle_and_info_shows_it(bundle: tuple[Path, Path, list]) -> None:
    folder, _, _ = bundle
    meta = json.loads((folder / "bundle.json").read_text())
    assert [s["name"] for s in meta["train_sections"]] == ["A1", "A2"]
    assert meta["genes"]["panel"] == [f"GENE{i:03d}" for i in range(5)]
    assert len(meta["genes"]["all"]) == 10
    assert meta["config"]["model"]["proj_dim"] == 32
    assert meta["nuclei"] == "none"
    assert meta["patch"]["size_px"] == 48
    code, output, exc = _invoke("info", str(folder))
    assert code == 0, exc
    assert "efficientnet-lite0" in output
    assert "matches the installed weights" in output
    assert "A1 (36), A2 (36)" in output
    assert "panel 5, all 10" in output


def test_predict_every_input(bundle: tuple[Path, Path, list]) -> None:
    folder, tmp, secs = bundle
    image = Path(secs[2].uns["gr2st"]["image_path"])
    common = ["--model", str(folder), "--device", "cpu", "--no-progress"]
    # h5ad (with measured counts) and a map
    secs[2].write_h5ad(tmp / "B1.h5ad")
    code, output, exc = _invoke(
        "predict", *common, "--h5ad", str(tmp / "B1.h5ad"), "--genes", "all",
        "--plot", "GENE000", "--out", str(tmp / "h5ad.h5ad"),
    )  # fmt: skip
    assert code == 0, exc
    assert "Predicted 10 genes at 36 spots" in output
    pred = anndata.read_h5ad(tmp / "h5ad.h5ad")
    assert pred.shape == (36, 10)
    assert set(pred.layers) == {UNCERTAINTY_LAYER, MEASURED_LAYER}
    assert (tmp / "h5ad_GENE000.png").is_file()
    # spots CSV: the PNG has no resolution, so --mpp gives the h5ad's (same patch size)
    xy = secs[2].obsm["spatial"]
    pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]}).to_csv(tmp / "spots.csv", index=False)
    code, _, exc = _invoke(
        "predict", *common, "--spots", str(tmp / "spots.csv"), "--image", str(image),
        "--mpp", "2", "--out", str(tmp / "csv.h5ad"),
    )  # fmt: skip
    assert code == 0, exc
    by_csv = anndata.read_h5ad(tmp / "csv.h5ad")
    np.testing.assert_allclose(by_csv.X, pred[:, by_csv.var_names].X, rtol=1e-4, atol=1e-5)
    assert by_csv.uns["gr2st"]["patch_size_px"] == pred.uns["gr2st"]["patch_size_px"]
    # Visium
    counts = np.random.default_rng(0).poisson(3, (16, 10))
    genes = [f"GENE{i:03d}" for i in range(10)]
    outs = _spaceranger(tmp / "visium" / "V1", image, counts, genes)
    code, _, exc = _invoke("predict", *common, "--visium", str(outs), "--out", str(tmp / "v.h5ad"))
    assert code == 0, exc
    visium = anndata.read_h5ad(tmp / "v.h5ad")
    assert visium.shape == (16, 5)
    assert visium.layers[MEASURED_LAYER].shape == (16, 5)
    assert np.isfinite(visium.layers[MEASURED_LAYER]).all()
    # grid: the PNG has no resolution metadata, so --mpp is required
    grid = ["predict", *common, "--grid", "--image", str(image), "--pitch-um", "96"]
    _, _, exc = _invoke(*grid, "--out", str(tmp / "g.h5ad"))
    assert isinstance(exc, GR2STConfigError)
    assert "pass --mpp" in str(exc)
    code, _, exc = _invoke(*grid, "--mpp", "2", "--out", str(tmp / "g.h5ad"))
    assert code == 0, exc
    assert anndata.read_h5ad(tmp / "g.h5ad").n_obs > 30


def test_predict_errors(bundle: tuple[Path, Path, list]) -> None:
    folder, tmp, secs = bundle
    image = secs[2].uns["gr2st"]["image_path"]
    common = ["predict", "--model", str(folder), "--out", str(tmp / "e.h5ad"), "--no-progress"]
    _, _, exc = _invoke(*common)
    assert isinstance(exc, GR2STConfigError)
    assert "exactly one of" in str(exc)
    _, _, exc = _invoke(*common, "--grid", "--spots", str(tmp / "spots.csv"))
    assert isinstance(exc, GR2STConfigError)
    assert "['--spots', '--grid']" in str(exc)
    (tmp / "bad.csv").write_text("px,py\n1,2\n")
    _, _, exc = _invoke(*common, "--spots", str(tmp / "bad.csv"), "--image", image)
    assert isinstance(exc, GR2STDataError)
    assert "expected columns x, y" in str(exc)
    _, _, exc = _invoke(*common, "--spots", str(tmp / "bad.csv"))
    assert isinstance(exc, GR2STDataError)
    _, _, exc = _invoke("train", "--data", str(tmp / "her2st"), "--method", "knn", "--out", "x")
    assert isinstance(exc, GR2STConfigError)
    assert "bundles support gr2st only" in str(exc)
    assert not (tmp / "e.h5ad").exists()
