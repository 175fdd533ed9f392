"""Predict new slides: trained-model bundles, query spots of any input, slide-scale prediction.

Examples
--------
>>> from gr2st.predict import load_bundle, grid_spots, predict_spots, write_prediction
>>> bundle = load_bundle("models/her2st")  # doctest: +SKIP
>>> from gr2st.image import open_slide
>>> with open_slide("slide.tif") as slide:  # doctest: +SKIP
...     spots = grid_spots(slide, pitch_um=100)
>>> pred = predict_spots(bundle, "slide.tif", spots, genes="panel")  # doctest: +SKIP
>>> write_prediction(pred, "slide.h5ad")  # doctest: +SKIP
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
