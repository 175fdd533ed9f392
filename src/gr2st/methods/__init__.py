"""Benchmark methods; importing this package registers every one of them in ``METHODS``."""

from __future__ import annotations

from gr2st.methods import (
    gr2st,
    hggep,
    hist2st,
    histogene,
    knn,
    mclstexp,
    mean,
    oracle,
    reg2st,
    ridge,
    thitogene,
)
from gr2st.methods.base import METHODS, Method

__all__ = [
    "METHODS",
    "Method",
    "gr2st",
    "hggep",
    "hist2st",
    "histogene",
    "knn",
    "mclstexp",
    "mean",
    "oracle",
    "reg2st",
    "ridge",
    "thitogene",
]
