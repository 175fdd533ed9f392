"""Predict new slides: trained-model bundles, query spots of any input, slide-scale prediction.

Examples
--------
Train a bundle on two synthetic sections, then predict a grid of spots on a third image:

>>> import pathlib, tempfile
>>> from gr2st.datasets import synthetic
>>> from gr2st.image import open_slide
>>> from gr2st.predict import grid_spots, load_bundle, predict_spots, train_bundle, write_prediction
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> *train, new = synthetic(n_sections=3, n_genes=8, grid=(3, 3), image_dir=tmp)
>>> path = train_bundle(train, tmp / "bundle", panel=["GENE000", "GENE001", "GENE002"],
...                     nuclei="none", size_px=48, device="cpu", progress=False,
...                     overrides=["train.epochs=1", "model.proj_dim=8", "predict.top_k=4"])
>>> bundle = load_bundle(path, device="cpu")
>>> image = new.uns["gr2st"]["image_path"]
>>> with open_slide(image) as slide:
...     spots = grid_spots(slide, pitch_um=100, mpp=2.0)
>>> pred = predict_spots(bundle, image, spots, mpp=2.0, progress=False)
>>> pred.shape, list(pred.layers)
((14, 3), ['uncertainty'])
>>> write_prediction(pred, tmp / "new.h5ad").name
'new.h5ad'
"""

from __future__ import annotations

from gr2st.predict.bundle import (
    SCHEMA_VERSION,
    Bundle,
    BundleSettings,
    load_bundle,
    save_bundle,
)
from gr2st.predict.slide import (
    PROVENANCE_PREFIX,
    measured_expression,
    plot_genes,
    predict_spots,
    write_prediction,
)
from gr2st.predict.spots import (
    DEFAULT_PITCH_UM,
    QuerySpots,
    check_tissue,
    detect_tissue,
    grid_spots,
    hex_lattice,
    load_query,
    read_spots_csv,
    resolve_image,
    spots_from_section,
)
from gr2st.predict.train import DEFAULT_PANEL, train_bundle

__all__ = [
    "DEFAULT_PANEL",
    "DEFAULT_PITCH_UM",
    "PROVENANCE_PREFIX",
    "SCHEMA_VERSION",
    "Bundle",
    "BundleSettings",
    "QuerySpots",
    "check_tissue",
    "detect_tissue",
    "grid_spots",
    "hex_lattice",
    "load_bundle",
    "load_query",
    "measured_expression",
    "plot_genes",
    "predict_spots",
    "read_spots_csv",
    "resolve_image",
    "save_bundle",
    "spots_from_section",
    "train_bundle",
    "write_prediction",
]
