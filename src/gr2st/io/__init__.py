"""Readers: one AnnData per section, in gr2st's shape, validated.

Every reader returns raw integer counts in ``X`` (CSR), spot ids as ``obs_names``,
``obs["section"]``, ``obs["patient"]``, ``obs["array_x"]``, ``obs["array_y"]``, spot
centres in full-resolution image pixels in ``obsm["spatial"]`` and
``uns["gr2st"] = {image_path, spot_diameter_px, microns_per_pixel, source_format}``,
and raises a one-line :class:`~gr2st.errors.GR2STDataError` naming the file and the
problem when the input is wrong. Readers of containers whose expression may be
normalised (scanpy/squidpy AnnData, SpatialData) can return a section without counts
for prediction (``uns["gr2st"]["has_counts"] = False``).

=====================================  ==================================================
format                                 reader
=====================================  ==================================================
HER2ST folder                          :func:`read_her2st`
cSCC (GSE144240) folder                :func:`read_cscc`
legacy ST (counts + spot table + H&E)  :func:`read_st_legacy`
10x Space Ranger ``outs/``             :func:`read_visium`
scanpy/squidpy spatial AnnData         :func:`read_anndata_spatial`, :func:`read_h5ad`
HEST-1k sample                         :func:`read_hest`
SpatialData zarr store                 :func:`read_spatialdata` (``gr2st[spatialdata]``)
=====================================  ==================================================
"""

from __future__ import annotations

from gr2st.io._validate import validate_section
from gr2st.io.anndata_spatial import read_anndata_spatial
from gr2st.io.cscc import list_cscc, read_cscc
from gr2st.io.h5ad import read_h5ad
from gr2st.io.her2st import list_her2st, read_her2st
from gr2st.io.hest import is_hest_folder, list_hest, read_hest
from gr2st.io.st import read_st_legacy
from gr2st.io.visium import read_visium

__all__ = [
    "is_hest_folder",
    "list_cscc",
    "list_her2st",
    "list_hest",
    "read_anndata_spatial",
    "read_cscc",
    "read_h5ad",
    "read_her2st",
    "read_hest",
    "read_st_legacy",
    "read_visium",
    "validate_section",
]
