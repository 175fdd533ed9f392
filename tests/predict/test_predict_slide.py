"""Slide prediction: every input kind, output layout, measured layer and plots."""

from __future__ import annotations

from pathlib import Path

import anndata
import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from predictfixtures import PANEL, Trained

from gr2st._constants import (
    IMAGE_PATH,
    MEASURED_LAYER,
    SPATIAL,
    UNCERTAINTY_LAYER,
    UNS,
    feature_key,
)
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.genes import log_normalize
from gr2st.image import open_slide
from gr2st.io import read_h5ad
from gr2st.predict import (
    PROVENANCE_PREFIX,
    grid_spots,
    load_bundle,
    measured_expression,
    plot_genes,
    predict_spots,
    read_spots_csv,
    resolve_image,
    spots_from_section,
    write_prediction,
)
from gr2st.predict.slide import check_output_size

matplotlib.use("Agg")


def _provenance(pred: anndata.AnnData) -> np.ndarray:
    return pred.obs[[f"{PROVENANCE_PREFIX}S0", f"{PROVENANCE_PREFIX}S1"]].to_numpy()


@pytest.mark.slow
def test_a_resolution_off_the_spot_spacing_is_refused(trained: Trained, tmp_path: Path) -> None:
    bundle = load_bundle(trained.path, device="cpu")
    test = trained.test
    image = test.uns[UNS][IMAGE_PATH]
    csv = tmp_path / "spots.csv"
    xy = test.obsm[SPATIAL]  # 48 px apart at 2 µm/px
    pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]}).to_csv(csv, index=False)
    with pytest.raises(
        GR2STDataError, match=r"with --mpp 20 µm/px neighbouring spots are 9\d\d µm apart"
    ):
        predict_spots(bundle, image, read_spots_csv(csv), mpp=20.0, progress=False)
    with pytest.raises(GR2STDataError, match=r"--mpp gives 0\.05 µm/px, outside the plausible"):
        predict_spots(bundle, image, read_spots_csv(csv), mpp=0.05, progress=False)
    # spots with their own geometry: a --mpp that contradicts it is refused
    section = spots_from_section(test, source="visium")
    with pytest.raises(
        GR2STDataError, match=r"--mpp 4 µm/px disagrees with the visium input's 2 µm/px"
    ):
        predict_spots(bundle, image, section, mpp=4.0, progress=False)


@pytest.mark.slow
def test_csv_spots_match_the_feature_pipeline(trained: Trained, tmp_path: Path) -> None:
    bundle = load_bundle(trained.path, device="cpu")
    test = trained.test
    csv = tmp_path / "spots.csv"
    xy = test.obsm[SPATIAL]
    pd.DataFrame({"id": test.obs_names, "x": xy[:, 0], "y": xy[:, 1]}).to_csv(csv, index=False)
    image = test.uns[UNS][IMAGE_PATH]
    # A PNG says nothing of its resolution and a CSV has no spot geometry: no guess.
    with pytest.raises(GR2STConfigError, match=r"microns per pixel unknown .* pass --mpp"):
        predict_spots(bundle, image, read_spots_csv(csv), progress=False)
    pred = predict_spots(bundle, image, read_spots_csv(csv), mpp=2.0, batch_size=5, progress=False)
    # Same patches, stain and encoder as the training features: the same prediction.
    want = bundle.predict_features(test.obsm[feature_key("efficientnet-lite0")])
    np.testing.assert_allclose(pred.X, want.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pred.layers[UNCERTAINTY_LAYER], want.std, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_provenance(pred), want.provenance, atol=1e-5)
    np.testing.assert_allclose(_provenance(pred).sum(axis=1), 1.0, atol=1e-5)
    assert pred.X.dtype == np.float32
    assert list(pred.var_names) == PANEL
    assert list(pred.obs_names) == list(test.obs_names)
    np.testing.assert_allclose(pred.obsm[SPATIAL], xy, rtol=1e-12)
    assert MEASURED_LAYER not in pred.layers
    meta = pred.uns[UNS]
    assert meta["bundle_fingerprint"] == bundle.fingerprint
    assert meta["patch_size_px"] == 48
    assert meta["microns_per_pixel"] == 2.0
    assert pred.obs["in_tissue"].all()
    library = pred.uns[SPATIAL]["S2"]
    thumb = library["images"]["hires"]
    assert thumb.dtype == np.uint8
    assert thumb.shape == (320, 320, 3)
    assert library["scalefactors"]["tissue_hires_scalef"] == 1.0
    assert library["scalefactors"]["spot_diameter_fullres"] == pytest.approx(48.0, abs=1.0)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::PendingDeprecationWarning")
def test_h5ad_input_all_genes_measured_and_plots(trained: Trained, tmp_path: Path) -> None:
    import scanpy as sc
    from matplotlib import pyplot as plt

    bundle = load_bundle(trained.path, device="cpu")
    path = tmp_path / "S2.h5ad"
    trained.raw[2].write_h5ad(path)
    query = spots_from_section(read_h5ad(path), source="h5ad")
    assert query.mpp == 2.0
    assert query.image is not None
    pred = predict_spots(bundle, resolve_image(query, None), query, genes="all", progress=False)
    assert pred.shape == (36, 12)
    assert pred.layers[UNCERTAINTY_LAYER].shape == (36, 12)
    assert (pred.layers[UNCERTAINTY_LAYER] >= 0).all()
    np.testing.assert_allclose(_provenance(pred).sum(axis=1), 1.0, atol=1e-5)
    counts = trained.raw[2].X.toarray()
    library = counts[:, :6].sum(axis=1)
    np.testing.assert_allclose(
        pred.layers[MEASURED_LAYER], log_normalize(counts, library_size=library), rtol=1e-6
    )
    panel = predict_spots(bundle, resolve_image(query, None), query, progress=False)
    np.testing.assert_allclose(pred[:, PANEL].X, panel.X, rtol=1e-5, atol=1e-6)

    out = write_prediction(pred, tmp_path / "out" / "pred.h5ad")
    back = anndata.read_h5ad(out)
    np.testing.assert_array_equal(back.X, pred.X)
    assert back.uns[SPATIAL]["S2"]["images"]["hires"].shape == (320, 320, 3)
    ax = sc.pl.spatial(back, color="GENE000", library_id="S2", show=False)
    assert len(ax[0].images) == 1  # the thumbnail under the spots
    plt.close("all")
    paths = plot_genes(back, ["GENE000", "GENE007"], out=out)
    assert [p.name for p in paths] == ["pred_GENE000.png", "pred_GENE007.png"]
    with Image.open(paths[0]) as png:
        assert png.size[0] > 500
    with pytest.raises(GR2STConfigError, match=r"\['NOPE'\] are not among the predicted genes"):
        plot_genes(back, ["NOPE"], out=out)
    with pytest.raises(GR2STConfigError, match=r"expected a \.h5ad file name"):
        write_prediction(pred, tmp_path / "pred.csv")


def test_grid_prediction(trained: Trained, tmp_path: Path) -> None:
    bundle = load_bundle(trained.path, device="cpu")
    # Glass on the right half of a training image: the grid covers only the left half.
    img = np.asarray(Image.open(trained.test.uns[UNS][IMAGE_PATH])).copy()
    img[:, 160:] = 245
    png = tmp_path / "half.png"
    Image.fromarray(img).save(png)
    with open_slide(png) as slide:
        spots = grid_spots(slide, pitch_um=96.0, mpp=2.0)
    assert spots.centers[:, 0].max() < 160
    pred = predict_spots(bundle, png, spots, genes="GENE003,GENE001", mpp=2.0, progress=False)
    assert pred.shape == (spots.n_spots, 2)
    assert list(pred.var_names) == ["GENE003", "GENE001"]
    assert pred.uns[UNS]["source_format"] == "prediction:grid"
    assert pred.uns[SPATIAL]["half"]["scalefactors"]["spot_diameter_fullres"] == 48.0
    assert np.isfinite(pred.X).all()


def test_measured_expression_alignment() -> None:
    counts = np.array([[1, 3, 5], [0, 0, 7]])
    adata = anndata.AnnData(X=counts.astype(np.float32), var=pd.DataFrame(index=["A", "B", "C"]))
    values, missing = measured_expression(adata, genes=["C", "Z", "A"], library=["A", "B"])
    assert missing == ["Z"]
    np.testing.assert_allclose(values[0, [0, 2]], np.log10(1 + 1e4 * np.array([5, 1]) / 4))
    assert np.isnan(values[:, 1]).all()
    assert np.isnan(values[1]).all()


def test_errors(trained: Trained) -> None:
    unchecked = load_bundle(trained.path, device="cpu", check_encoder=False)
    query = spots_from_section(trained.test, source="h5ad")
    with pytest.raises(GR2STConfigError, match="check_encoder=True"):
        predict_spots(unchecked, "x.png", query)
    no_image = query.__class__(centers=query.centers, obs=query.obs, source="spots")
    with pytest.raises(GR2STDataError, match="spots: no image; pass --image SLIDE"):
        resolve_image(no_image, None)


def test_output_size_message_has_enough_precision() -> None:
    with pytest.raises(GR2STConfigError, match=r"need 0\.023 GB .*\(limit 0\.01 GB, --max-output"):
        check_output_size(1_000, 2_875, max_output_gb=0.01)
    with pytest.raises(GR2STConfigError, match=r"need 12\.0 GB .*\(limit 4\.0 GB,"):
        check_output_size(100_000, 15_000, max_output_gb=4.0)


@pytest.mark.slow
def test_output_size_limit_refuses_before_reading(trained: Trained, tmp_path: Path) -> None:
    bundle = load_bundle(trained.path, device="cpu")
    query = spots_from_section(trained.test, source="h5ad")
    n_all = len(bundle.resolve_genes("all"))
    limit = 2 * 4 * query.n_spots * n_all / 1e9 * 0.99
    # A missing image proves nothing was read: the size check comes first.
    with pytest.raises(GR2STConfigError, match=rf"{query.n_spots:,} spots × {n_all:,} genes"):
        predict_spots(bundle, tmp_path / "absent.png", query, genes="all", max_output_gb=limit)
    image = trained.test.uns[UNS][IMAGE_PATH]
    pred = predict_spots(bundle, image, query, genes="all", max_output_gb=limit / 0.98,
                         progress=False)  # fmt: skip
    assert pred.shape == (query.n_spots, n_all)


@pytest.mark.slow
def test_worker_processes_give_the_same_prediction(trained: Trained, tmp_path: Path) -> None:
    bundle = load_bundle(trained.path, device="cpu")
    spots = spots_from_section(trained.test, source="h5ad")
    image = trained.test.uns[UNS][IMAGE_PATH]
    serial = predict_spots(bundle, image, spots, batch_size=5, progress=False)
    parallel = predict_spots(bundle, image, spots, batch_size=5, progress=False, workers=2)
    # The same patches encoded in the same batches: identical, not merely close.
    np.testing.assert_array_equal(parallel.X, serial.X)
    np.testing.assert_array_equal(
        parallel.layers[UNCERTAINTY_LAYER], serial.layers[UNCERTAINTY_LAYER]
    )
    pd.testing.assert_frame_equal(parallel.obs, serial.obs)
