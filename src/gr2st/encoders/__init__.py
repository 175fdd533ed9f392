"""Frozen patch encoders, the one per-spot encoding loop, feature extraction and its cache.

Examples
--------
>>> from gr2st.encoders import get_encoder, list_encoders
>>> list_encoders()
['efficientnet-lite0', 'efficientnet-lite1', 'efficientnet-lite2', 'hf']
>>> get_encoder("efficientnet-lite1", backend="torch").input_size
240
"""

from __future__ import annotations

from gr2st.encoders import efficientnet as _efficientnet  # noqa: F401  (registers lite0/1/2)
from gr2st.encoders import hf as _hf  # noqa: F401  (registers hf:)
from gr2st.encoders.base import Encoder
from gr2st.encoders.cache import ArrayCache
from gr2st.encoders.compose import Concatenated, ViewAveraged, WithContext, encoder_name
from gr2st.encoders.efficientnet import EfficientNetLite
from gr2st.encoders.extract import (
    DEFAULT_ENCODER,
    SectionReport,
    extract_features,
    extract_patches,
    prepare_image_inputs,
)
from gr2st.encoders.hf import HFEncoder
from gr2st.encoders.registry import ENCODERS, get_encoder, list_encoders
from gr2st.encoders.spots import encode_spots

__all__ = [
    "DEFAULT_ENCODER",
    "ENCODERS",
    "ArrayCache",
    "Concatenated",
    "EfficientNetLite",
    "Encoder",
    "HFEncoder",
    "SectionReport",
    "ViewAveraged",
    "WithContext",
    "encode_spots",
    "encoder_name",
    "extract_features",
    "extract_patches",
    "get_encoder",
    "list_encoders",
    "prepare_image_inputs",
]
