"""Spot geometry of a section: platform, pitch, array→pixel fit and resolution, cross-checked.

Every reader that knows array (grid) coordinates calls :func:`infer_geometry`, which

1. **infers the platform** from the array coordinates alone: spots whose column + row
   parities are mixed sit on a square grid (``st-1k``); spots that all share one parity
   sit on a checkerboard whose nearest neighbours are diagonal steps, either a
   staggered square grid (``st-2k``) or Visium's hexagonal one (``visium``). The two
   checkerboards are told apart by the pixels: only the right one maps the array onto
   the image with equal x and y scales;
2. measures the **resolution** from the pitch: the median pixel distance between
   nearest array neighbours per array step, divided into the pitch's microns (the
   estimate gr2st has always used, robust to a few misplaced spots), and fits an
   **affine array→pixel map** by least squares whose column lengths give separate x
   and y resolutions; x and y differing by more than :data:`ANISOTROPY_WARN` warns;
3. **cross-checks** every other source of the resolution (a given ``--mpp``, Space
   Ranger's ``spot_diameter_fullres``, the image's metadata): one disagreeing with the
   pitch by more than :data:`AGREEMENT_TOLERANCE` is an error naming both values and
   the overrides (``--mpp``, ``--platform``, ``--pitch-um``).

Platforms
---------
=============  ==========  ====================================================  =========
platform       lattice     pitch (µm per array step)                             spot (µm)
=============  ==========  ====================================================  =========
``st-1k``      square      200: neighbours one column or row apart               100
``st-2k``      staggered   100 per column and per row; neighbours are diagonal   100
               checker     steps, 141 µm apart
``visium``     hex         100 between neighbours in a row (2 columns apart);    55
                           rows √3/2 · 100 µm apart
``visium-hd``  square      2 (square bins)                                       2
``free``       none        measured: nearest-neighbour spacing × µm/px           given
=============  ==========  ====================================================  =========

The published ST (Ståhl et al., Science 2016; HER2ST) uses ``st-1k``; ``st-2k`` arrays
index every 100 µm step with only half of the positions occupied.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from scipy.spatial import cKDTree

from gr2st._constants import (
    GEOMETRY_AFFINE,
    GEOMETRY_LATTICE,
    GEOMETRY_MPP_X,
    GEOMETRY_MPP_Y,
    GEOMETRY_PITCH_UM,
    GEOMETRY_PLATFORM,
    GEOMETRY_SOURCES,
    GEOMETRY_SPOT_DIAMETER_UM,
    MICRONS_PER_PIXEL,
)
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.io._validate import pixels_per_grid_unit

log = logging.getLogger(__name__)

#: Relative disagreement between two sources of the resolution that is an error.
AGREEMENT_TOLERANCE: Final = 0.25
#: Relative difference between the x and y resolution that warns.
ANISOTROPY_WARN: Final = 0.03
#: A plausible microns-per-pixel range of an H&E image (beyond 40× scans to 20 µm/px thumbnails).
PLAUSIBLE_MPP: Final = (0.1, 20.0)
#: A plausible centre-to-centre spacing of neighbouring spots (Visium HD bins to ST 1k).
PLAUSIBLE_SPACING_UM: Final = (2.0, 500.0)
_OVERRIDES = "--mpp, --platform or --pitch-um"


@dataclass(frozen=True)
class PlatformSpec:
    """One platform's array: lattice, pitch per array step and spot diameter (µm).

    ``lattice`` is ``"square"``, ``"staggered"``, ``"hex"`` or ``"free"`` (no array).
    """

    name: str
    lattice: str
    pitch_um: float | None
    spot_um: float | None


PLATFORM_SPECS: Final = {
    "st-1k": PlatformSpec("st-1k", "square", 200.0, 100.0),
    "st-2k": PlatformSpec("st-2k", "staggered", 100.0, 100.0),
    "visium": PlatformSpec("visium", "hex", 100.0, 55.0),
    "visium-hd": PlatformSpec("visium-hd", "square", 2.0, 2.0),
    "free": PlatformSpec("free", "free", None, None),
}
_ALIASES: Final = {
    "st": "st-1k",
    "1k": "st-1k",
    "2k": "st-2k",
    "legacy-st": "st-1k",
    "spatial-transcriptomics": "st-1k",
    "10x-visium": "visium",
    "visiumhd": "visium-hd",
}


def platform_spec(name: str) -> PlatformSpec:
    """The :class:`PlatformSpec` called ``name`` (case-insensitive; ``st`` is ``st-1k``).

    Examples
    --------
    >>> platform_spec("ST").name, platform_spec("st-2k").lattice
    ('st-1k', 'staggered')
    """
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = _ALIASES.get(key, key)
    if key not in PLATFORM_SPECS:
        raise GR2STConfigError(f"platform {name!r}: expected one of {', '.join(PLATFORM_SPECS)}")
    return PLATFORM_SPECS[key]


@dataclass(frozen=True)
class Geometry:
    """A section's spot geometry; stored as ``uns["gr2st"]["geometry"]`` by :meth:`to_dict`.

    Attributes
    ----------
    platform, lattice
        See the module docstring.
    pitch_um
        Microns per array step (``free``: the nearest-neighbour spacing in µm).
    microns_per_pixel
        The resolution used (given, or the pitch estimate).
    microns_per_pixel_x, microns_per_pixel_y
        The resolution along the array's x and y axes from the affine fit (equal to
        ``microns_per_pixel`` without one).
    spot_diameter_um
        Physical spot diameter.
    array_to_pixel
        Affine map ``(a, b, c, d, e, f)`` from array ``(x, y)`` to pixels
        ``(a x + b y + c, d x + e y + f)``, or None (no array, or collinear spots).
    sources
        What determined the resolution, e.g. ``("spot pitch",)`` or
        ``("--mpp", "spot pitch")`` (given, and checked against the pitch).

    Examples
    --------
    >>> g = Geometry("st-1k", "square", 200.0, 0.5, 0.5, 0.5, 100.0, None, ("spot pitch",))
    >>> g.spot_diameter_px, g.pitch_px
    (200.0, 400.0)
    """

    platform: str
    lattice: str
    pitch_um: float
    microns_per_pixel: float
    microns_per_pixel_x: float
    microns_per_pixel_y: float
    spot_diameter_um: float
    array_to_pixel: tuple[float, ...] | None
    sources: tuple[str, ...]

    @property
    def spot_diameter_px(self) -> float:
        """Spot diameter in full-resolution pixels."""
        return self.spot_diameter_um / self.microns_per_pixel

    @property
    def pitch_px(self) -> float:
        """The pitch in full-resolution pixels."""
        return self.pitch_um / self.microns_per_pixel

    @property
    def anisotropy(self) -> float:
        """Relative difference of the x and y resolutions (0 = square pixels)."""
        return abs(self.microns_per_pixel_x / self.microns_per_pixel_y - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain types for ``uns`` (h5ad-writable: no None, lists not tuples)."""
        out: dict[str, Any] = {
            GEOMETRY_PLATFORM: self.platform,
            GEOMETRY_LATTICE: self.lattice,
            GEOMETRY_PITCH_UM: self.pitch_um,
            MICRONS_PER_PIXEL: self.microns_per_pixel,
            GEOMETRY_MPP_X: self.microns_per_pixel_x,
            GEOMETRY_MPP_Y: self.microns_per_pixel_y,
            GEOMETRY_SPOT_DIAMETER_UM: self.spot_diameter_um,
            GEOMETRY_SOURCES: list(self.sources),
        }
        if self.array_to_pixel is not None:
            out[GEOMETRY_AFFINE] = list(self.array_to_pixel)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Geometry:
        """Inverse of :meth:`to_dict` (also from an h5ad round trip's numpy values)."""
        affine = data.get(GEOMETRY_AFFINE)
        return cls(
            platform=str(data[GEOMETRY_PLATFORM]),
            lattice=str(data[GEOMETRY_LATTICE]),
            pitch_um=float(data[GEOMETRY_PITCH_UM]),
            microns_per_pixel=float(data[MICRONS_PER_PIXEL]),
            microns_per_pixel_x=float(data[GEOMETRY_MPP_X]),
            microns_per_pixel_y=float(data[GEOMETRY_MPP_Y]),
            spot_diameter_um=float(data[GEOMETRY_SPOT_DIAMETER_UM]),
            array_to_pixel=None if affine is None else tuple(float(v) for v in affine),
            sources=tuple(str(s) for s in np.atleast_1d(data[GEOMETRY_SOURCES])),
        )


def infer_lattice(grid: np.ndarray) -> str | None:
    """``"square"`` or ``"checker"`` (all spots share one column + row parity), from the
    array coordinates; None with fewer than two distinct positions.

    Examples
    --------
    >>> infer_lattice(np.array([[0, 0], [1, 0], [0, 1]]))
    'square'
    >>> infer_lattice(np.array([[0, 0], [2, 0], [1, 1]]))
    'checker'
    """
    cells = np.unique(np.rint(np.asarray(grid, dtype=float)).astype(np.int64), axis=0)
    if len(cells) < 2:
        return None
    parity = cells.sum(axis=1) % 2
    return "checker" if (parity == parity[0]).all() else "square"


def _unit_steps(lattice: str) -> tuple[float, float]:
    """Array steps along x and y in units of the pitch."""
    return (0.5, np.sqrt(3) / 2) if lattice == "hex" else (1.0, 1.0)


def _affine(grid: np.ndarray, pixels: np.ndarray) -> np.ndarray | None:
    """Least-squares 2×3 array→pixel map, refit without outliers; None when collinear."""
    design = np.column_stack([grid, np.ones(len(grid))])
    if len(grid) < 3 or np.linalg.matrix_rank(design) < 3:
        return None
    keep = np.ones(len(grid), dtype=bool)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[keep], pixels[keep], rcond=None)
        residual = np.linalg.norm(design @ coef - pixels, axis=1)
        # misplaced spots (a few in every ST alignment) must not tilt the fit
        keep = residual <= max(3 * float(np.median(residual)), 1e-9)
        if keep.sum() < 3 or np.linalg.matrix_rank(design[keep]) < 3:
            break
    return np.asarray(coef.T)


def _scales(
    affine: np.ndarray | None, lattice: str, pitch_um: float, mpp: float
) -> tuple[float, float]:
    """µm/px along the array's x and y axes (both ``mpp`` without a fit)."""
    if affine is None:
        return mpp, mpp
    ux, uy = _unit_steps(lattice)
    norms = np.linalg.norm(affine[:, :2], axis=0)
    return float(pitch_um * ux / norms[0]), float(pitch_um * uy / norms[1])


def _lattice_for(checker: bool, affine: np.ndarray | None) -> str:
    """A checkerboard is hexagonal when the hex scaling makes the pixel axes equal."""
    if not checker:
        return "square"
    if affine is None:
        return "hex"
    norms = np.linalg.norm(affine[:, :2], axis=0)
    hex_ratio = abs(norms[0] * np.sqrt(3) / norms[1] - 1)
    staggered_ratio = abs(norms[0] / norms[1] - 1)
    return "hex" if hex_ratio < staggered_ratio else "staggered"


def infer_geometry(
    grid: np.ndarray | None,
    pixels: np.ndarray,
    *,
    platform: str | None = None,
    pitch_um: float | None = None,
    mpp: float | None = None,
    spot_diameter_um: float | None = None,
    evidence: Mapping[str, float] | None = None,
    source: str | Path,
) -> Geometry:
    """Infer and cross-check a section's :class:`Geometry` (module docstring).

    Parameters
    ----------
    grid
        Array coordinates ``(x, y)`` of every spot, or None (``free``).
    pixels
        Spot centres ``(x, y)`` in full-resolution pixels, row for row.
    platform
        Override of the inferred platform (checked against the array's lattice).
    pitch_um
        Override of the platform's pitch (µm per array step).
    mpp
        Given µm/px (``--mpp``); used when it agrees with the pitch.
    spot_diameter_um
        Override of the platform's spot diameter.
    evidence
        Other estimates of µm/px by name (``{"spot_diameter_fullres": 0.5}``), each
        checked against the result.
    source
        Prefix of messages (the file read).

    Raises
    ------
    GR2STDataError
        Sources that disagree by more than :data:`AGREEMENT_TOLERANCE`, a platform whose
        lattice the array does not have, or a resolution that cannot be determined.
    GR2STConfigError
        A non-positive override.

    Examples
    --------
    >>> grid = np.array([[x, y] for x in range(4) for y in range(3)], dtype=float)
    >>> g = infer_geometry(grid, grid * 290.0 + 5, source="demo")
    >>> g.platform, round(g.microns_per_pixel, 4), round(g.spot_diameter_px, 1)
    ('st-1k', 0.6897, 145.0)
    >>> stagger = grid[grid.sum(axis=1) % 2 == 0]
    >>> infer_geometry(stagger, stagger * 23.0, source="demo").platform
    'st-2k'
    """
    for name, value in (
        ("pitch_um", pitch_um),
        ("mpp", mpp),
        ("spot_diameter_um", spot_diameter_um),
    ):
        if value is not None and not (np.isfinite(value) and value > 0):
            raise GR2STConfigError(f"{name} must be positive, got {value}")
    pixels = np.asarray(pixels, dtype=float)
    spec = None if platform is None else platform_spec(platform)
    if grid is None or (spec is not None and spec.lattice == "free"):
        return _free(pixels, spec, pitch_um, mpp, spot_diameter_um, evidence, source)
    grid = np.asarray(grid, dtype=float)
    found = infer_lattice(grid)
    if found is None:
        raise GR2STDataError(
            f"{source}: need spots at two or more array positions to measure the spot pitch"
        )
    cells, first = np.unique(grid, axis=0, return_index=True)
    affine = _affine(cells, pixels[first])
    lattice = _lattice_for(found == "checker", affine)
    if spec is None:
        spec = {"square": PLATFORM_SPECS["st-1k"], "staggered": PLATFORM_SPECS["st-2k"]}.get(
            lattice, PLATFORM_SPECS["visium"]
        )
    elif (spec.lattice == "square") != (lattice == "square"):
        raise GR2STDataError(
            f"{source}: platform {spec.name} has a {spec.lattice} array, but the spots' array "
            f"positions form a {'square grid' if lattice == 'square' else 'checkerboard'} "
            f"({'st-1k' if lattice == 'square' else 'st-2k or visium'}); fix --platform"
        )
    else:
        lattice = spec.lattice
    pitch = pitch_um if pitch_um is not None else spec.pitch_um
    assert pitch is not None  # only free has no pitch
    ux, uy = _unit_steps(lattice)
    unit = grid if lattice != "hex" else np.column_stack([grid[:, 0] * ux, grid[:, 1] * uy])
    measured = pitch / pixels_per_grid_unit(unit, pixels, source=source)
    sources: tuple[str, ...] = ("spot pitch",)
    named = f"the {spec.name} pitch ({pitch:g} µm per array step)"
    if mpp is not None:
        _agree("--mpp", mpp, named, measured, source)
        measured, sources = float(mpp), ("--mpp", "spot pitch")
    for name, value in (evidence or {}).items():
        _agree(name, value, named if mpp is None else "--mpp", measured, source)
    _plausible(measured, sources[0], source)
    mpp_x, mpp_y = _scales(affine, lattice, pitch, measured)
    geometry = Geometry(
        platform=spec.name,
        lattice=lattice,
        pitch_um=float(pitch),
        microns_per_pixel=float(measured),
        microns_per_pixel_x=mpp_x,
        microns_per_pixel_y=mpp_y,
        spot_diameter_um=float(spot_diameter_um or spec.spot_um or pitch / 2),
        array_to_pixel=None if affine is None else tuple(float(v) for v in affine.ravel()),
        sources=sources,
    )
    if geometry.anisotropy > ANISOTROPY_WARN:
        log.warning(
            "%s: the image's x and y scales differ by %.0f %% (%.4g vs %.4g µm/px along the "
            "array's x and y); gr2st uses one resolution, %.4g µm/px, for both",
            source,
            100 * geometry.anisotropy,
            mpp_x,
            mpp_y,
            measured,
        )
    return geometry


def _free(
    pixels: np.ndarray,
    spec: PlatformSpec | None,
    pitch_um: float | None,
    mpp: float | None,
    spot_diameter_um: float | None,
    evidence: Mapping[str, float] | None,
    source: str | Path,
) -> Geometry:
    """Spots without an array: the resolution must be given or come from the evidence."""
    estimates = dict(evidence or {})
    if mpp is not None:
        estimates = {"--mpp": mpp, **estimates}
    if not estimates:
        raise GR2STDataError(
            f"{source}: the spots have no array coordinates and nothing gives the image's "
            "microns per pixel; pass --mpp"
        )
    (first, value), *others = estimates.items()
    for name, other in others:
        _agree(name, other, first, value, source)
    _plausible(value, first, source)
    points = np.unique(pixels, axis=0)
    spacing_px = (
        float(np.median(cKDTree(points).query(points, k=2)[0][:, 1])) if len(points) > 1 else 0.0
    )
    pitch = pitch_um if pitch_um is not None else spacing_px * value
    if pitch_um is not None and spacing_px > 0:
        _agree("the spot spacing", pitch_um / spacing_px, f"{first} and --pitch-um", value, source)
    return Geometry(
        platform=(spec or PLATFORM_SPECS["free"]).name,
        lattice="free",
        pitch_um=float(pitch),
        microns_per_pixel=float(value),
        microns_per_pixel_x=float(value),
        microns_per_pixel_y=float(value),
        spot_diameter_um=float(spot_diameter_um or (pitch / 2 if pitch > 0 else 1.0)),
        array_to_pixel=None,
        sources=tuple(estimates),
    )


def _agree(name: str, value: float, reference: str, expected: float, source: str | Path) -> None:
    if abs(value / expected - 1) > AGREEMENT_TOLERANCE:
        raise GR2STDataError(
            f"{source}: {name} gives {value:.4g} µm/px but {reference} gives {expected:.4g} "
            f"µm/px ({value / expected:.2g}×); they must agree within "
            f"{100 * AGREEMENT_TOLERANCE:.0f} %: fix the wrong one or override with {_OVERRIDES}"
        )


def _plausible(mpp: float, how: str, source: str | Path) -> None:
    low, high = PLAUSIBLE_MPP
    if not low <= mpp <= high:
        raise GR2STDataError(
            f"{source}: {how} gives {mpp:.4g} µm/px, outside the plausible {low:g}–{high:g} "
            f"µm/px of an H&E image (spot positions in microns rather than pixels, or the "
            f"wrong platform?); override with {_OVERRIDES}"
        )


def check_spot_spacing(
    centers: np.ndarray, mpp: float, *, how: str, source: str | Path
) -> float | None:
    """Refuse a resolution under which the spots' spacing is no platform's.

    The median distance between nearest spots times ``mpp`` must lie in
    :data:`PLAUSIBLE_SPACING_UM` and ``mpp`` in :data:`PLAUSIBLE_MPP`: an ``--mpp`` 10×
    too large puts ST spots 2 mm apart. Returns the spacing in µm (None for < 2 spots).

    Examples
    --------
    >>> grid = np.array([[x, y] for x in range(3) for y in range(3)], dtype=float) * 290
    >>> round(check_spot_spacing(grid, 0.69, how="--mpp", source="s"))
    200
    >>> check_spot_spacing(grid, 6.9, how="--mpp", source="s")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STDataError: s: with --mpp 6.9 µm/px neighbouring spots are 2001 µm apart, ...
    """
    _plausible(mpp, how, source)
    points = np.unique(np.asarray(centers, dtype=float), axis=0)
    if len(points) < 2:
        return None
    spacing_um = float(np.median(cKDTree(points).query(points, k=2)[0][:, 1])) * mpp
    low, high = PLAUSIBLE_SPACING_UM
    if not low <= spacing_um <= high:
        raise GR2STDataError(
            f"{source}: with {how} {mpp:.4g} µm/px neighbouring spots are {spacing_um:.0f} µm "
            f"apart, outside the {low:g}–{high:g} µm of any spot platform; fix the resolution "
            "(--mpp)"
        )
    return spacing_um
