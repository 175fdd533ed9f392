"""Parsing shared by the readers of spatial containers: platforms, scale factors, counts.

The scanpy/squidpy convention (``sc.read_visium``, ``sq.read.visium``, HEST, and gr2st's
own predictions) keeps spot centres in full-resolution pixels in ``obsm["spatial"]``
and, per library, downscaled images and scale factors in
``uns["spatial"][library_id]``::

    {"images": {"hires": array, "lowres": array},
     "scalefactors": {"tissue_hires_scalef": s_h, "tissue_lowres_scalef": s_l,
                      "spot_diameter_fullres": d, "fiducial_diameter_fullres": f},
     "metadata": {...}}

A pixel ``p`` of the full-resolution image is at ``p * tissue_<key>_scalef`` in the
``<key>`` image.

Microns per pixel
-----------------
Measured, in this order of preference, by :func:`resolve_mpp`:

1. the value the caller gives;
2. the spot pitch: the median full-resolution pixel distance between grid neighbours
   (``array_row``/``array_col``, or ``"<x>x<y>"`` spot ids) divided by the platform's
   pitch (Visium 100 µm on a hexagonal grid, ST 200 µm on a square one), as
   :func:`gr2st.io.read_visium` does; this needs no convention about scale factors;
3. ``spot_diameter_fullres``: the platform's reference size divided by it. Space
   Ranger defines ``spot_diameter_fullres`` as the pixels spanning "a theoretical
   65 µm spot" (10x Genomics, Space Ranger spatial outputs), although the physical
   Visium spot is 55 µm, so for Visium the reference is 65 µm; for ST it is the
   100 µm spot.

The platform is given (``"visium"`` or ``"st"``) or inferred by
:func:`infer_platform`: Space Ranger metadata or 10x barcodes (``ACGT…-1``) mean
Visium, ``"<x>x<y>"`` spot ids mean ST.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from PIL import Image
from scipy.spatial import cKDTree

from gr2st._utils.files import atomic_path
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.io._validate import as_counts, examples, pixels_per_grid_unit

log = logging.getLogger(__name__)

#: ``uns`` key of the scanpy/squidpy spatial libraries.
UNS_SPATIAL: Final = "spatial"
#: Downscaled images looked for in a library, largest first by convention.
IMAGE_KEYS: Final = ("hires", "downscaled_fullres", "lowres")
_BARCODE = re.compile(r"^[ACGTN]{12,}(-\d+)?$")
_ST_ID = re.compile(r"^(-?\d+(?:\.\d*)?)x(-?\d+(?:\.\d*)?)$")


@dataclass(frozen=True)
class Platform:
    """Spot geometry of a spatial-transcriptomics platform.

    Attributes
    ----------
    name
        ``"visium"`` or ``"st"``.
    spot_um
        Physical spot diameter.
    pitch_um
        Centre-to-centre distance of grid neighbours.
    hexagonal
        Hexagonal grid (Visium: neighbours in a row are 2 columns apart, rows
        ``√3/2`` pitches apart) or square (ST).
    scalefactor_spot_um
        The spot size that ``spot_diameter_fullres`` measures (see the module docstring).
    """

    name: str
    spot_um: float
    pitch_um: float
    hexagonal: bool
    scalefactor_spot_um: float


PLATFORMS: Final = {
    "visium": Platform("visium", spot_um=55.0, pitch_um=100.0, hexagonal=True,
                       scalefactor_spot_um=65.0),
    "st": Platform("st", spot_um=100.0, pitch_um=200.0, hexagonal=False,
                   scalefactor_spot_um=100.0),
}  # fmt: skip


def get_platform(name: str) -> Platform:
    """The :class:`Platform` called ``name`` (case-insensitive).

    Examples
    --------
    >>> get_platform("Visium").pitch_um
    100.0
    """
    key = name.strip().lower().replace(" ", "_")
    aliases = {
        "spatial_transcriptomics": "st",
        "legacy_st": "st",
        "st-1k": "st",  # gr2st.io.geometry's name of the same array
        "10x_visium": "visium",
    }
    key = aliases.get(key, key)
    if key not in PLATFORMS:
        raise GR2STConfigError(f"platform {name!r}: expected one of {', '.join(PLATFORMS)}")
    return PLATFORMS[key]


def infer_platform(adata: AnnData, library: Mapping[str, Any] | None = None) -> Platform | None:
    """Guess the platform from Space Ranger metadata or the spot ids, else None.

    Examples
    --------
    >>> a = AnnData(np.zeros((2, 1)))
    >>> a.obs_names = ["AAACAAGTATCTCCCA-1", "AAACACCAATAACTGC-1"]
    >>> infer_platform(a).name
    'visium'
    >>> a.obs_names = ["10x12", "11x12"]
    >>> infer_platform(a).name
    'st'
    """
    meta = (library or {}).get("metadata") or {}
    text = " ".join(str(meta.get(k, "")) for k in ("software_version", "chemistry_description"))
    if "spaceranger" in text.lower() or "visium" in text.lower():
        return PLATFORMS["visium"]
    names = pd.Index(adata.obs_names.astype(str))
    if len(names) and names.str.match(_BARCODE.pattern).all():
        return PLATFORMS["visium"]
    if len(names) and names.str.match(_ST_ID.pattern).all():
        return PLATFORMS["st"]
    return None


def spatial_library(
    adata: AnnData, library_id: str | None, *, source: str | Path
) -> tuple[str | None, Mapping[str, Any]]:
    """``(library_id, uns["spatial"][library_id])``, or ``(None, {})`` without libraries.

    With several libraries ``library_id`` must name one.

    Examples
    --------
    >>> a = AnnData(np.zeros((1, 1)), uns={"spatial": {"V1": {"scalefactors": {}}}})
    >>> spatial_library(a, None, source="x")[0]
    'V1'
    """
    libraries = adata.uns.get(UNS_SPATIAL)
    if not isinstance(libraries, Mapping) or not libraries:
        if library_id is not None:
            raise GR2STDataError(
                f"{source}: no uns['spatial'] libraries; cannot use {library_id!r}"
            )
        return None, {}
    names = [str(k) for k in libraries]
    if library_id is None:
        if len(names) > 1:
            raise GR2STDataError(
                f"{source}: uns['spatial'] holds {len(names)} libraries ({examples(names)}); "
                "choose one (library_id= / --library)"
            )
        library_id = names[0]
    if library_id not in libraries:
        raise GR2STDataError(
            f"{source}: no library {library_id!r} in uns['spatial'] (found {examples(names)})"
        )
    library = libraries[library_id]
    if not isinstance(library, Mapping):
        raise GR2STDataError(f"{source}: uns['spatial'][{library_id!r}] is not a mapping")
    return library_id, library


def scalefactor(library: Mapping[str, Any], key: str, *, source: str | Path) -> float | None:
    """A positive finite ``scalefactors[key]``, None when absent, an error when invalid."""
    factors = library.get("scalefactors") or {}
    if key not in factors:
        return None
    try:
        value = float(np.asarray(factors[key]).ravel()[0])
    except (TypeError, ValueError, IndexError):
        value = float("nan")
    if not (np.isfinite(value) and value > 0):
        raise GR2STDataError(
            f"{source}: uns['spatial'][…]['scalefactors'][{key!r}] = {factors[key]!r}; "
            "expected a positive number"
        )
    return value


def grid_coordinates(adata: AnnData) -> np.ndarray | None:
    """Array coordinates ``(column, row)`` of every spot, or None when the input has none.

    Read from ``obs["array_x"]/["array_y"]`` (gr2st), ``obs["array_col"]/["array_row"]``
    (Space Ranger, scanpy) or ``"<x>x<y>"`` spot ids (ST).

    Examples
    --------
    >>> a = AnnData(np.zeros((2, 1)))
    >>> a.obs_names = ["3x4", "5.2x6"]
    >>> grid_coordinates(a).tolist()
    [[3.0, 4.0], [5.2, 6.0]]
    """
    for cx, cy in (("array_x", "array_y"), ("array_col", "array_row")):
        if cx in adata.obs and cy in adata.obs:
            grid = adata.obs[[cx, cy]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
            if np.isfinite(grid).all():
                return grid
    names = pd.Index(adata.obs_names.astype(str))
    if len(names) and names.str.match(_ST_ID.pattern).all():
        return names.str.extract(_ST_ID).to_numpy(dtype=float)
    return None


def grid_units(grid: np.ndarray, platform: Platform) -> np.ndarray:
    """Array coordinates in units of the platform's pitch (hexagonal grids unsheared).

    Examples
    --------
    >>> grid_units(np.array([[2.0, 1.0]]), PLATFORMS["visium"]).round(3).tolist()
    [[1.0, 0.866]]
    """
    grid = np.asarray(grid, dtype=float)
    if not platform.hexagonal:
        return grid
    return np.column_stack([grid[:, 0] / 2, grid[:, 1] * np.sqrt(3) / 2])


def resolve_mpp(
    *,
    given: float | None,
    platform: Platform | None,
    grid: np.ndarray | None,
    spatial: np.ndarray,
    spot_diameter_fullres: float | None,
    source: str | Path,
) -> tuple[float | None, str]:
    """Microns per full-resolution pixel and how it was found (module docstring order).

    Returns ``(None, "unknown")`` when nothing determines it.

    Examples
    --------
    >>> grid = np.array([[0, 0], [2, 0], [1, 1]], dtype=float)
    >>> px = grid_units(grid, PLATFORMS["visium"]) * 200.0
    >>> mpp, how = resolve_mpp(given=None, platform=PLATFORMS["visium"], grid=grid,
    ...                        spatial=px, spot_diameter_fullres=None, source="x")
    >>> round(mpp, 6), how
    (0.5, 'spot pitch')
    """
    pitch_px = None
    if platform is not None and grid is not None and len(np.unique(grid, axis=0)) >= 2:
        try:
            pitch_px = pixels_per_grid_unit(grid_units(grid, platform), spatial, source=source)
        except GR2STDataError:
            if given is None:
                raise  # the resolution rests on the pitch; a given one does not
    if given is not None:
        if not (np.isfinite(given) and given > 0):
            raise GR2STConfigError(f"microns per pixel must be positive, got {given}")
        result: tuple[float | None, str] = (float(given), "given")
    elif platform is not None and pitch_px is not None:
        result = (platform.pitch_um / pitch_px, "spot pitch")
    elif platform is not None and spot_diameter_fullres is not None:
        result = (platform.scalefactor_spot_um / spot_diameter_fullres, "spot_diameter_fullres")
    else:
        result = (None, "unknown")
    if platform is not None and pitch_px is not None:
        check_pitch(pitch_px, result[0], result[1], platform, source=source)
    return result


#: Relative disagreement between the measured and the platform's spot pitch that warns.
PITCH_TOLERANCE = 0.25


def check_pitch(
    pitch_px: float, mpp: float | None, how: str, platform: Platform, *, source: str | Path
) -> None:
    """Warn when the spots' positions look like microns rather than pixels (a pitch of
    exactly the platform's micron pitch); raise when a given resolution (or
    ``spot_diameter_fullres``) puts the pitch more than :data:`PITCH_TOLERANCE` off the
    platform's.

    Examples
    --------
    >>> check_pitch(100.0, 1.0, "spot pitch", PLATFORMS["visium"], source="x")  # warns
    >>> check_pitch(200.0, 0.5, "given", PLATFORMS["visium"], source="x")  # silent
    >>> check_pitch(200.0, 5.0, "given", PLATFORMS["visium"], source="x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STDataError: x: the spot pitch is 200.0 px × 5 µm/px (given) = 1000 µm, ...
    """
    if abs(pitch_px / platform.pitch_um - 1) < 0.01:
        log.warning(
            "%s: spot positions look like microns, not pixels: neighbouring spots are %.1f "
            "units apart, exactly %s's %g µm pitch; obsm['spatial'] must hold full-resolution "
            "image pixels",
            source,
            pitch_px,
            platform.name,
            platform.pitch_um,
        )
    elif mpp is not None and how != "spot pitch":
        pitch_um = pitch_px * mpp
        if abs(pitch_um / platform.pitch_um - 1) > PITCH_TOLERANCE:
            raise GR2STDataError(
                f"{source}: the spot pitch is {pitch_px:.1f} px × {mpp:.4g} µm/px ({how}) = "
                f"{pitch_um:.0f} µm, but {platform.name} spots are {platform.pitch_um:g} µm "
                "apart; fix the resolution (--mpp) or the platform (--platform)"
            )


def spot_spacing(spatial: np.ndarray) -> float | None:
    """Median distance (px) from each spot to its nearest neighbour; None for < 2 spots."""
    points = np.unique(np.asarray(spatial, dtype=float), axis=0)
    if len(points) < 2:
        return None
    distance, _ = cKDTree(points).query(points, k=2)
    return float(np.median(distance[:, 1]))


def approximate_grid(spatial: np.ndarray) -> np.ndarray:
    """Array coordinates ``(column, row)`` guessed from pixel positions on a regular grid.

    For inputs without array coordinates. Rows are runs of spots at the same height;
    rows ``√3/2`` spot spacings apart are a hexagonal grid, whose columns get Visium's
    numbering (half-spacing steps, neighbours in a row 2 apart); otherwise columns are
    spacing steps (ST). Exact for axis-aligned grids.

    Examples
    --------
    >>> approximate_grid(np.array([[10.0, 5.0], [30.0, 5.0], [10.0, 25.0]])).tolist()
    [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    >>> hexagon = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, np.sqrt(3)]]) * 50
    >>> approximate_grid(hexagon).tolist()
    [[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]]
    """
    spatial = np.asarray(spatial, dtype=float)
    spacing = spot_spacing(spatial) or 1.0
    order = np.argsort(spatial[:, 1], kind="stable")
    new_row = np.r_[False, np.diff(spatial[order, 1]) > spacing / 4]
    rows = np.empty(len(spatial))
    rows[order] = np.cumsum(new_row)
    heights = np.array([np.median(spatial[rows == r, 1]) for r in np.unique(rows)])
    step = float(np.median(np.diff(heights))) if len(heights) > 1 else spacing
    hexagonal = abs(step / spacing - np.sqrt(3) / 2) < 0.1
    unit = spacing / 2 if hexagonal else spacing
    columns = np.rint((spatial[:, 0] - spatial[:, 0].min()) / unit)
    return np.column_stack([columns, rows])


def embedded_image(
    library: Mapping[str, Any], *, source: str | Path
) -> tuple[str, np.ndarray, float] | None:
    """The largest downscaled image of a library with its scale factor, or None.

    Returns ``(key, uint8 RGB array, scale)``: full-resolution pixel ``p`` is at
    ``p * scale`` in the image.
    """
    images = library.get("images") or {}
    found = []
    for key in (*IMAGE_KEYS, *(k for k in images if k not in IMAGE_KEYS)):
        if key not in images:
            continue
        scale = scalefactor(library, f"tissue_{key}_scalef", source=source)
        if scale is None:
            continue
        found.append((key, np.asarray(images[key]), scale))
    if not found:
        return None
    key, array, scale = max(found, key=lambda item: item[2])
    return key, _as_rgb8(array, what=f"uns['spatial'][…]['images'][{key!r}]", source=source), scale


def _as_rgb8(array: np.ndarray, *, what: str, source: str | Path) -> np.ndarray:
    """scanpy stores images as uint8 or as floats in [0, 1]; gray or RGBA are allowed."""
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise GR2STDataError(f"{source}: {what} has shape {array.shape}; expected an RGB image")
    array = array[..., :3]
    if array.dtype.kind == "f":
        top = float(np.nanmax(array)) if array.size else 0.0
        array = np.clip(np.nan_to_num(array) * (255.0 if top <= 1.0 else 1.0), 0, 255).round()
    return np.ascontiguousarray(array, dtype=np.uint8)


def rescale_library(library: Mapping[str, Any], scale: float) -> dict[str, Any]:
    """A library for coordinates multiplied by ``scale`` (its images stay as they are).

    Examples
    --------
    >>> lib = {"scalefactors": {"tissue_hires_scalef": 0.25, "spot_diameter_fullres": 130.0}}
    >>> rescale_library(lib, 0.25)["scalefactors"]
    {'tissue_hires_scalef': 1.0, 'spot_diameter_fullres': 32.5}
    """
    factors = dict(library.get("scalefactors") or {})
    for key, value in factors.items():
        if key.startswith("tissue_") and key.endswith("_scalef"):
            factors[key] = float(value) / scale
        elif key.endswith("_diameter_fullres"):
            factors[key] = float(value) * scale
    return {**library, "scalefactors": factors}


def write_image_file(array: np.ndarray, folder: str | Path) -> Path:
    """Write an RGB array as ``<folder>/<sha256 of its pixels>.png`` (kept if present).

    Named by content, so the same image maps to the same file (and the same feature
    cache entries) across runs.
    """
    digest = hashlib.sha256(np.ascontiguousarray(array).tobytes())
    digest.update(repr(array.shape).encode())
    path = Path(folder) / f"{digest.hexdigest()[:32]}.png"
    if not path.is_file():
        with atomic_path(path) as tmp:
            Image.fromarray(array).save(tmp, format="PNG")
    return path


def find_counts(
    adata: AnnData, *, source: str | Path
) -> tuple[sp.csr_matrix, pd.Index, str] | None:
    """Raw integer counts from ``X``, else ``layers["counts"]``, else ``.raw.X``.

    Returns ``(counts, gene names, where)`` or None when none of them holds counts.

    Examples
    --------
    >>> a = AnnData(np.array([[-0.5, 1.2]]), layers={"counts": np.array([[0.0, 3.0]])})
    >>> counts, genes, where = find_counts(a, source="x")
    >>> counts.toarray().tolist(), where
    ([[0, 3]], "layers['counts']")
    """
    candidates: list[tuple[Any, pd.Index, str]] = [(adata.X, adata.var_names, "X")]
    if "counts" in adata.layers:
        candidates.append((adata.layers["counts"], adata.var_names, "layers['counts']"))
    if adata.raw is not None:
        candidates.append((adata.raw.X, adata.raw.var_names, ".raw.X"))
    for matrix, genes, where in candidates:
        if matrix is None:
            continue
        try:
            return as_counts(matrix, source=source), pd.Index(genes.astype(str)), where
        except GR2STDataError:
            continue
    return None


def describe_values(matrix: Any) -> str:
    """A short account of why ``matrix`` is not counts, for error messages.

    Examples
    --------
    >>> describe_values(np.array([[-1.0, 0.5]]))
    '1 negative and 1 non-integer value(s)'
    """
    values = sp.csr_matrix(matrix).data if sp.issparse(matrix) else np.asarray(matrix).ravel()
    if values.dtype.kind not in "iuf":
        return f"values of dtype {values.dtype}"
    negative = int((values < 0).sum())
    fractional = int((np.isfinite(values) & (values != np.round(values))).sum())
    parts = [f"{negative} negative" if negative else "", f"{fractional} non-integer" if fractional
             else ""]  # fmt: skip
    shown = " and ".join(p for p in parts if p)
    return f"{shown} value(s)" if shown else "no raw counts"
