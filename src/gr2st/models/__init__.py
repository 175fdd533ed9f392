"""GR2ST: the network, its configuration, the user-facing model class and its bundle format."""

from __future__ import annotations

from gr2st.models.bundle import ImageSettings
from gr2st.models.config import (
    PROFILES,
    GR2STConfig,
    ModelConfig,
    PredictConfig,
    TrainConfig,
    get_profile,
)
from gr2st.models.gat import AutoGATConv, DenseGATConv, SparseGATConv, make_gat
from gr2st.models.gr2st import GR2ST, Prediction
from gr2st.models.module import GR2STModule

__all__ = [
    "GR2ST",
    "PROFILES",
    "AutoGATConv",
    "DenseGATConv",
    "GR2STConfig",
    "GR2STModule",
    "ImageSettings",
    "ModelConfig",
    "PredictConfig",
    "Prediction",
    "SparseGATConv",
    "TrainConfig",
    "get_profile",
    "make_gat",
]
