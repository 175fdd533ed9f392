"""gr2st: predict spatial gene expression from H&E histology.

The user-facing pieces are available from the top level; each is loaded on first use,
so ``import gr2st`` (and the command line) start fast.

Examples
--------
Train on five HER2ST sections and predict the sixth from its image alone::

    import gr2st
    train = [gr2st.read_her2st("data/her2st", s) for s in ("B4", "C2", "C3", "C4", "C5")]
    bundle = gr2st.load_bundle(gr2st.train_bundle(train, "models/her2st5"))
    pred = bundle.predict(gr2st.read_her2st("data/her2st", "C6"))  # AnnData
    pred.write_h5ad("C6_predicted.h5ad")
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("gr2st")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from gr2st import benchmark
    from gr2st._constants import (
        ARRAY_X,
        ARRAY_Y,
        CELL_TYPE,
        MICRONS_PER_PIXEL,
        PATIENT,
        SECTION,
        SPATIAL,
        UNCERTAINTY_LAYER,
        UNS,
        feature_key,
    )
    from gr2st.benchmark import run_benchmark
    from gr2st.datasets import synthetic
    from gr2st.encoders import extract_patches, get_encoder, prepare_image_inputs
    from gr2st.evaluation import pearson_per_gene
    from gr2st.genes import (
        align_sections,
        common_genes,
        get_panel,
        prepare_section,
        prepare_sections,
    )
    from gr2st.io import list_her2st, read_cscc, read_h5ad, read_her2st, read_visium
    from gr2st.methods import METHODS
    from gr2st.models import GR2ST
    from gr2st.predict import Bundle, load_bundle, predict_spots, train_bundle, write_prediction

# Public name → module that defines it.
_EXPORTS = {
    **dict.fromkeys(
        (
            "ARRAY_X",
            "ARRAY_Y",
            "CELL_TYPE",
            "MICRONS_PER_PIXEL",
            "PATIENT",
            "SECTION",
            "SPATIAL",
            "UNCERTAINTY_LAYER",
            "UNS",
            "feature_key",
        ),
        "gr2st._constants",
    ),
    **dict.fromkeys(
        ("list_her2st", "read_cscc", "read_h5ad", "read_her2st", "read_visium"), "gr2st.io"
    ),
    **dict.fromkeys(
        ("align_sections", "common_genes", "get_panel", "prepare_section", "prepare_sections"),
        "gr2st.genes",
    ),
    **dict.fromkeys(("extract_patches", "get_encoder", "prepare_image_inputs"), "gr2st.encoders"),
    "pearson_per_gene": "gr2st.evaluation",
    "GR2ST": "gr2st.models",
    "METHODS": "gr2st.methods",
    **dict.fromkeys(
        ("Bundle", "load_bundle", "predict_spots", "train_bundle", "write_prediction"),
        "gr2st.predict",
    ),
    "run_benchmark": "gr2st.benchmark",
    "synthetic": "gr2st.datasets",
}
_SUBPACKAGES = ("benchmark",)

__all__ = [
    "ARRAY_X",
    "ARRAY_Y",
    "CELL_TYPE",
    "GR2ST",
    "METHODS",
    "MICRONS_PER_PIXEL",
    "PATIENT",
    "SECTION",
    "SPATIAL",
    "UNCERTAINTY_LAYER",
    "UNS",
    "Bundle",
    "__version__",
    "align_sections",
    "benchmark",
    "common_genes",
    "extract_patches",
    "feature_key",
    "get_encoder",
    "get_panel",
    "list_her2st",
    "load_bundle",
    "pearson_per_gene",
    "predict_spots",
    "prepare_image_inputs",
    "prepare_section",
    "prepare_sections",
    "read_cscc",
    "read_h5ad",
    "read_her2st",
    "read_visium",
    "run_benchmark",
    "synthetic",
    "train_bundle",
    "write_prediction",
]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"gr2st.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gr2st' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
