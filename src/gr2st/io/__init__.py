"""Readers: one AnnData per section, in gr2st's shape, validated.

Every reader returns raw integer counts in ``X`` (CSR), spot ids as ``obs_names``,
``obs["section"]``, ``obs["patient"]``, ``obs["array_x"]``, ``obs["array_y"]``, spot
centres in full-resolution image pixels in ``obsm["spatial"]`` and
``uns["gr2st"] = {image_path, spot_diameter_px, microns_per_pixel, source_format}``,
and raises a one-line :class:`~gr2st.errors.GR2STDataError` naming the file and the
problem when the input is wrong.
"""

from __future__ import annotations

from gr2st.io._validate import validate_section
from gr2st.io.cscc import list_cscc, read_cscc
from gr2st.io.h5ad import read_h5ad
from gr2st.io.her2st import list_her2st, read_her2st, read_st
from gr2st.io.visium import read_visium

__all__ = [
    "list_cscc",
    "list_her2st",
    "read_cscc",
    "read_h5ad",
    "read_her2st",
    "read_st",
    "read_visium",
    "validate_section",
]
