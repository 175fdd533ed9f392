"""Key names shared by every step of the pipeline, defined once.

Every AnnData that flows through gr2st follows one shape (see ``docs`` in the README):
raw integer counts in ``X``, spot centres in full-resolution pixels in
``obsm[SPATIAL]``, section and patient in ``obs``, and per-section metadata in
``uns[UNS]``.
"""

from __future__ import annotations

from typing import Final

# obs columns
SECTION: Final = "section"
PATIENT: Final = "patient"
ARRAY_X: Final = "array_x"
ARRAY_Y: Final = "array_y"
PATHOLOGY: Final = "pathology"
CELL_TYPE: Final = "cell_type"

# obsm keys
SPATIAL: Final = "spatial"
NUCLEI_COMPOSITION: Final = "nuclei_composition"
NUCLEI_COUNTS: Final = "nuclei_counts"
NUCLEI_MORPHOLOGY: Final = "nuclei_morphology"
# uint8 RGB patch stacks (n_spots, side, side, 3) for the methods that learn from pixels
PATCHES: Final = "patches"

# layers
COUNTS_LAYER: Final = "counts"
UNCERTAINTY_LAYER: Final = "uncertainty"
MEASURED_LAYER: Final = "measured"

# uns[UNS] and its fields
UNS: Final = "gr2st"
IMAGE_PATH: Final = "image_path"
SPOT_DIAMETER_PX: Final = "spot_diameter_px"
MICRONS_PER_PIXEL: Final = "microns_per_pixel"
SOURCE_FORMAT: Final = "source_format"
ZERO_PANEL_SPOTS: Final = "zero_panel_spots"
# The section's spot geometry (gr2st.io.geometry.Geometry.to_dict()) and its fields.
GEOMETRY: Final = "geometry"
GEOMETRY_PLATFORM: Final = "platform"
GEOMETRY_LATTICE: Final = "lattice"
GEOMETRY_PITCH_UM: Final = "pitch_um"
GEOMETRY_SPOT_DIAMETER_UM: Final = "spot_diameter_um"
GEOMETRY_MPP_X: Final = "microns_per_pixel_x"
GEOMETRY_MPP_Y: Final = "microns_per_pixel_y"
GEOMETRY_AFFINE: Final = "array_to_pixel"
GEOMETRY_SOURCES: Final = "sources"
# False when X does not hold raw counts (a section read for prediction only); absent = True.
HAS_COUNTS: Final = "has_counts"
# Record of the spot-on-image check (gr2st.image.tissue.SpotCheck.to_dict()).
IMAGE_CHECK: Final = "image_check"

# PanNuke nuclear types in the reference's order; the index is the type id.
NUCLEAR_TYPES: Final = ("nolabe", "necros", "neopla", "inflam", "connec", "no-neo")
N_NUCLEAR_TYPES: Final = len(NUCLEAR_TYPES)

# Defaults of the image and gene steps, used by the API and the CLI alike.
#: The reference patch side in full-resolution pixels.
DEFAULT_PATCH_PX: Final = 224
#: The frozen patch encoder (offline ImageNet weights).
DEFAULT_ENCODER: Final = "efficientnet-lite0"
#: Stain normalisation of every patch.
DEFAULT_STAIN: Final = "reinhard"
#: Source of the nuclear types.
DEFAULT_NUCLEI: Final = "classical"
#: The model's gene panel.
DEFAULT_PANEL: Final = "her2st-785"
#: Wall-clock seconds between training checkpoints (the end of a fit is always saved).
DEFAULT_CHECKPOINT_SECONDS: Final = 300.0


def feature_key(encoder: str) -> str:
    """Return the ``obsm`` key holding the features of ``encoder``.

    Examples
    --------
    >>> feature_key("efficientnet-lite0")
    'X_efficientnet-lite0'
    """
    return f"X_{encoder}"
