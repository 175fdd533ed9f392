"""Image side: slide reading, spot patches, stain normalisation and contact sheets.

Examples
--------
>>> from gr2st.image import get_stain_normalizer, iter_patches, open_slide
"""

from __future__ import annotations

from gr2st.image.contact_sheet import contact_sheet
from gr2st.image.patches import iter_patches, patch_origins, patch_size_px
from gr2st.image.slide import Slide, open_slide
from gr2st.image.stain import (
    STAIN_NORMALIZERS,
    LabMoments,
    MacenkoNormalizer,
    NoNormalizer,
    ReinhardNormalizer,
    StainNormalizer,
    get_stain_normalizer,
    load_reference,
    tissue_weight,
)

__all__ = [
    "STAIN_NORMALIZERS",
    "LabMoments",
    "MacenkoNormalizer",
    "NoNormalizer",
    "ReinhardNormalizer",
    "Slide",
    "StainNormalizer",
    "contact_sheet",
    "get_stain_normalizer",
    "iter_patches",
    "load_reference",
    "open_slide",
    "patch_origins",
    "patch_size_px",
    "tissue_weight",
]
