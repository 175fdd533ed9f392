"""Export predictions to the viewers people use: QuPath (GeoJSON) and napari (SpatialData).

Examples
--------
>>> from gr2st.export import write_qupath, write_spatialdata
>>> write_qupath("slide.h5ad", "slide.geojson", genes="top:20")  # doctest: +SKIP
>>> write_spatialdata("slide.h5ad", "slide.zarr")  # doctest: +SKIP
"""

from __future__ import annotations

from gr2st.export._prediction import Prediction, read_prediction
from gr2st.export.qupath import write_qupath
from gr2st.export.spatialdata import write_spatialdata

__all__ = ["Prediction", "read_prediction", "write_qupath", "write_spatialdata"]
