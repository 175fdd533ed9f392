"""``gr2st train``, ``gr2st info`` and ``gr2st predict`` end to end on a HER2ST-layout folder."""

from __future__ import annotations

import json
import logging
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


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def trained_cli(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list, str, list]:
    """``gr2st train --no-progress`` on two sections; (bundle, folder, sections, output, logs)."""
    tmp = tmp_path_factory.mktemp("cli")
    secs = synthetic(n_sections=3, n_genes=10, grid=(6, 6), signal=2.0, image_dir=tmp, seed=2)
    for adata, name in zip(secs, ["A1", "A2", "B1"], strict=True):
        adata.obs[SECTION] = name
    # One spot of A1 without panel counts: dropped, and said so once.
    counts = secs[0].X.toarray()
    counts[0, :5] = 0
    secs[0].X = sp.csr_matrix(counts)
    root = write_her2st_layout(secs, tmp / "her2st")
    (tmp / "panel.txt").write_text("\n".join(f"GENE{i:03d}" for i in range(5)) + "\n")
    handler = _Lines()
    logging.getLogger("gr2st").addHandler(handler)
    try:
        code, output, exc = _invoke(
            "train", "--data", str(root), "--sections", "A1,A2", "--panel",
            str(tmp / "panel.txt"), "--nuclei", "none", "--size", "48", "--cache",
            str(tmp / "cache"), "--device", "cpu", "--no-progress", *SMALL,
            "--out", str(tmp / "bundle"),
        )  # fmt: skip
    finally:
        logging.getLogger("gr2st").removeHandler(handler)
    assert code == 0, exc
    return tmp / "bundle", tmp, secs, output, handler.lines


@pytest.fixture(scope="module")
def bundle(trained_cli: tuple[Path, Path, list, str, list]) -> tuple[Path, Path, list]:
    return trained_cli[:3]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:section .* obs\\['cell_type'\\] is missing:UserWarning")
def test_train_without_progress_bars_prints_its_stages(
    trained_cli: tuple[Path, Path, list, str, list],
) -> None:
    _, tmp, _, output, logs = trained_cli
    lines = output.splitlines()
    assert lines[0] == f"read 2 sections from {tmp / 'her2st'}"
    assert lines[1:6] == [
        "features: 1/2 sections (A1)",
        "features: 2/2 sections (A2)",
        "normalising: 2 sections",
        "training: epoch 1/2 (loss " + lines[4].split("(loss ")[1],
        "training: epoch 2/2 (loss " + lines[5].split("(loss ")[1],
    ]
    assert lines[6] == "writing the bundle"
    assert lines[7].startswith("Trained on 2 sections in ")
    assert "bundle:" in lines[7]
    dropped = [line for line in logs if "dropped" in line]
    assert dropped == ["A1: dropped 1 spot(s) with zero counts over the 5 library genes: '1x1'"]


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
    assert "A1 (35), A2 (36)" in output  # A1's spot without panel counts was dropped
    assert "panel 5, all 10" in output


@pytest.mark.slow
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


@pytest.mark.slow
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
    _, _, exc = _invoke(
        "train", "--data", str(tmp / "her2st"), "--sections", "A1,A2", "--align", "zscore",
        "--out", str(tmp / "aligned"),
    )  # fmt: skip
    assert isinstance(exc, GR2STConfigError)
    assert str(exc) == "align 'zscore': expected one of none, center, standardize"
    assert not (tmp / "aligned").exists()
    assert not (tmp / "e.h5ad").exists()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::PendingDeprecationWarning")
def test_predict_a_squidpy_visium_anndata_as_it_is(
    bundle: tuple[Path, Path, list], make_squidpy_visium, tmp_path: Path
) -> None:
    import scanpy as sc
    from matplotlib import pyplot as plt

    folder, _, secs = bundle
    # The training images at their resolution (a 200 µm ST pitch is 48 px) as the hires
    # image of a Visium AnnData: z-scored X, scale factors, no full-resolution image.
    image = Path(secs[2].uns["gr2st"]["image_path"])
    mpp = 200 / 48
    h5ad, _ = make_squidpy_visium(image, tmp_path / "sq", image_mpp=mpp)
    common = ["--model", str(folder), "--device", "cpu", "--no-progress"]
    code, _, exc = _invoke(
        "predict", *common, "--h5ad", str(h5ad), "--plot", "GENE000", "--out",
        str(tmp_path / "sq.h5ad"),
    )  # fmt: skip
    assert code == 0, exc
    pred = anndata.read_h5ad(tmp_path / "sq.h5ad")
    source = anndata.read_h5ad(h5ad)
    assert pred.shape == (source.n_obs, 5)
    assert list(pred.obs_names) == list(source.obs_names)
    assert MEASURED_LAYER not in pred.layers  # no counts, nothing to compare
    meta = pred.uns["gr2st"]
    # Resolution measured from the spot pitch, rescaled to the embedded hires image.
    assert meta["microns_per_pixel"] == pytest.approx(mpp)
    assert meta["patch_size_px"] == 48
    assert pred.obs["in_tissue"].all()
    assert (tmp_path / "sq_GENE000.png").is_file()
    # The same spots as a CSV on the same image with --mpp: the same prediction.
    xy = pred.obsm["spatial"]
    csv = tmp_path / "sq.csv"
    pd.DataFrame({"id": pred.obs_names, "x": xy[:, 0], "y": xy[:, 1]}).to_csv(csv, index=False)
    code, _, exc = _invoke(
        "predict", *common, "--spots", str(csv), "--image", str(image), "--mpp", str(mpp),
        "--out", str(tmp_path / "csv.h5ad"),
    )  # fmt: skip
    assert code == 0, exc
    np.testing.assert_allclose(anndata.read_h5ad(tmp_path / "csv.h5ad").X, pred.X, atol=1e-5)
    axes = sc.pl.spatial(pred, color="GENE000", library_id="V1", show=False)
    assert len(axes[0].images) == 1  # the slide under the spots
    assert len(axes[0].collections) >= 1  # the spots
    plt.close("all")
    # `gr2st patches` shows the patches this prediction cut (bundle's size and stain).
    code, output, exc = _invoke(
        "patches", "--h5ad", str(h5ad), "--model", str(folder), "--n", "4", "--out",
        str(tmp_path / "sheet.png"),
    )  # fmt: skip
    assert code == 0, exc
    assert f"(4 of {source.n_obs} spots of V1, 48 px patches)" in output


@pytest.mark.slow
def test_predict_a_hest_sample(bundle: tuple[Path, Path, list], tmp_path: Path) -> None:
    from gr2st.datasets import write_hest_layout

    folder, _, secs = bundle
    root = write_hest_layout([secs[2]], tmp_path / "hest")
    code, _, exc = _invoke(
        "predict", "--model", str(folder), "--device", "cpu", "--no-progress",
        "--h5ad", str(root / "st" / "B1.h5ad"), "--out", str(tmp_path / "hest.h5ad"),
    )  # fmt: skip
    assert code == 0, exc
    pred = anndata.read_h5ad(tmp_path / "hest.h5ad")
    assert pred.uns["gr2st"]["source_format"] == "prediction:hest"
    assert pred.uns["gr2st"]["microns_per_pixel"] == 2.0  # HEST's pixel_size_um_estimated
    assert pred.uns["gr2st"]["image_path"] == str((root / "wsis" / "B1.tif").resolve())
    assert np.isfinite(pred.layers[MEASURED_LAYER]).all()  # HEST has counts


@pytest.mark.slow
def test_safe_defaults(
    bundle: tuple[Path, Path, list], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from PIL import Image

    folder, _, secs = bundle
    image = Path(secs[2].uns["gr2st"]["image_path"])
    common = ["predict", "--model", str(folder), "--device", "cpu", "--no-progress"]
    xy = secs[2].obsm["spatial"]
    csv = tmp_path / "spots.csv"
    pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]}).to_csv(csv, index=False)
    out = ["--out", str(tmp_path / "p.h5ad")]
    # No resolution anywhere: stop and ask for --mpp (no silent 48 px of an unknown scale).
    _, _, exc = _invoke(*common, "--spots", str(csv), "--image", str(image), *out)
    assert isinstance(exc, GR2STConfigError)
    assert "microns per pixel unknown" in str(exc)
    assert "pass --mpp, which sets the patch size (the bundle's patches cover 200 µm)" in str(exc)
    # --plot genes are checked before anything is read (the spots file does not exist).
    _, _, exc = _invoke(*common, "--spots", str(tmp_path / "absent.csv"), "--plot", "ERBB2", *out)
    assert isinstance(exc, GR2STConfigError)
    assert str(exc).startswith("--plot: ['ERBB2'] are not among the predicted genes (5 with")
    # A blank image: no tissue, an error, whatever the mode.
    blank = tmp_path / "blank.png"
    Image.new("RGB", Image.open(image).size, (250, 250, 250)).save(blank)
    _, _, exc = _invoke(*common, "--spots", str(csv), "--image", str(blank), "--mpp", "2", *out)
    assert isinstance(exc, GR2STDataError)
    assert "blank.png: no tissue detected (the image is blank or glass only)" in str(exc)
    assert not (tmp_path / "p.h5ad").exists()
    # Half glass: an error (more than a quarter of the spots off tissue) unless allowed;
    # then spots there are counted in a warning and flagged, the rest predicted.
    half = np.asarray(Image.open(image)).copy()
    half[:, 170:] = 245
    Image.fromarray(half).save(tmp_path / "half.png")
    half_args = [*common, "--spots", str(csv), "--image", str(tmp_path / "half.png"), "--mpp", "2"]
    _, _, exc = _invoke(*half_args, *out)
    assert isinstance(exc, GR2STDataError)
    assert "spots: 18 of 36 spots (50 %) lie off the tissue of half.png" in str(exc)
    with caplog.at_level(logging.WARNING, logger="gr2st"):
        code, _, exc = _invoke(*half_args, "--allow-off-tissue", *out)
    assert code == 0, exc
    pred = anndata.read_h5ad(tmp_path / "p.h5ad")
    off = int((~pred.obs["in_tissue"]).sum())
    assert 0 < off < pred.n_obs
    assert f"{off} of {pred.n_obs} spots lie off the detected tissue" in caplog.text
    # Spot columns at x ≈ 40, 88, …, 280; glass from x = 170; a spot is on tissue when
    # tissue lies within its radius (half the 48-px spacing): the columns up to x ≈ 184.
    np.testing.assert_array_equal(pred.obs["in_tissue"], xy[:, 0] < 200)
    help_text = " ".join(CliRunner().invoke(app, ["predict", "--help"]).output.split())
    assert "sets the patch size" in help_text


@pytest.mark.slow
def test_predict_a_spatialdata_store(
    bundle: tuple[Path, Path, list], make_spatialdata_visium, tmp_path: Path
) -> None:
    folder, _, secs = bundle
    image = Path(secs[2].uns["gr2st"]["image_path"])
    mpp = 200 / 48  # the training resolution, as the store's hires image (scale 1/4)
    made = make_spatialdata_visium(image, tmp_path, full_mpp=mpp / 4)
    common = ["predict", "--model", str(folder), "--device", "cpu", "--no-progress"]
    code, _, exc = _invoke(*common, "--spatialdata", str(made["store"]), "--out",
                           str(tmp_path / "sd.h5ad"))  # fmt: skip
    assert code == 0, exc
    pred = anndata.read_h5ad(tmp_path / "sd.h5ad")
    assert list(pred.obs_names) == made["barcodes"]
    assert pred.uns["gr2st"]["source_format"] == "prediction:spatialdata"
    assert pred.uns["gr2st"]["microns_per_pixel"] == pytest.approx(mpp)
    assert pred.uns["gr2st"]["patch_size_px"] == 48
    xy = made["xy"] / 4
    csv = tmp_path / "sd.csv"
    pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]}).to_csv(csv, index=False)
    code, _, exc = _invoke(*common, "--spots", str(csv), "--image", str(image), "--mpp", str(mpp),
                           "--out", str(tmp_path / "csv.h5ad"))  # fmt: skip
    assert code == 0, exc
    np.testing.assert_allclose(anndata.read_h5ad(tmp_path / "csv.h5ad").X, pred.X, atol=1e-5)


@pytest.mark.slow
def test_predict_refuses_swapped_spots_before_loading_the_encoder(
    bundle: tuple[Path, Path, list], mini_b4, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gr2st.predict.bundle import Bundle

    def no_encoder(self: Bundle) -> None:
        raise AssertionError("the encoder was loaded before the input checks")

    monkeypatch.setattr(Bundle, "load_encoder", no_encoder)
    folder = mini_b4.write(tmp_path / "b4")
    csv = tmp_path / "swapped.csv"
    spots = mini_b4.spots
    pd.DataFrame({"x": spots["pixel_y"], "y": spots["pixel_x"]}).to_csv(csv, index=False)
    _, _, exc = _invoke(
        "predict", "--model", str(bundle[0]), "--spots", str(csv), "--image",
        str(folder / "ST-imgs/B/B4/B4_HE.jpg"), "--mpp", "2.76", "--out", str(tmp_path / "p.h5ad"),
    )  # fmt: skip
    assert isinstance(exc, GR2STDataError)
    assert "pixel_x and pixel_y look swapped" in str(exc)
    assert not (tmp_path / "p.h5ad").exists()
