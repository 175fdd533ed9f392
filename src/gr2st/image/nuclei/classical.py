"""Classical nuclei detection and typing: a fast, model-free proxy for HoVer-Net.

What it does, per 224 px patch (all lengths in µm, converted with the section's
microns per pixel):

1. Colour deconvolution (Ruifrok & Johnston, scikit-image's ``rgb2hed`` matrix) into
   haematoxylin (H) and eosin (E) optical densities, vectorised over the batch with a
   lookup table (equal to :func:`skimage.color.rgb2hed`).
2. Blank-patch guards: a patch whose H has no structure larger than a pixel (noise,
   :data:`MIN_STRUCTURE`) or no contrast (glass, flat colour) has no nuclei.
3. H smoothed by a small Gaussian (:data:`SMOOTH_UM`) and thresholded: Otsu, never below
   :data:`H_FLOOR`.
4. Seeds = local maxima of a nucleus-sized Gaussian of H (:data:`BLOB_SIGMA_UM`) at
   least :data:`MIN_SEPARATION_UM` apart; a watershed of the smoothed H splits touching
   nuclei, and neighbours without a real pale line between them (:data:`MIN_DIP`) are
   merged back. Objects smaller than :data:`MIN_AREA_UM2` or not darker than the
   patch background by :data:`MIN_H_CONTRAST` are dropped.
5. Per nucleus, vectorised: area (µm²), eccentricity, solidity, mean H and E.
6. A documented rule (:func:`classify_nuclei`) maps each nucleus to a PanNuke name,
   with darkness relative to the section's median nucleus.

What it cannot see: the rule knows size, shape and stain darkness only. It cannot tell
a lymphocyte from a small pyknotic tumour cell, a plump fibroblast from an epithelial
cell, or tumour from normal epithelium by context (gland architecture, atypia, mitoses),
which is what HoVer-Net learns from PanNuke. Treat its types as a morphological proxy
that correlates with the real classes, not as a substitute for HoVer-Net; import real
HoVer-Net results with the ``hovernet`` source when you have them.

Speed: deconvolution, smoothing and seeding run on the whole batch; the per-patch
watershed and measurements run in a thread pool (``n_jobs``). About 100 patches of
224 px per CPU-second on HER2ST (0.69 µm/px).

One file (over 600 lines, a fifth of them this description and the tuned constants):
the steps above are one algorithm sharing :class:`ClassicalParams`, read top to bottom.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.color import hed_from_rgb
from skimage.filters import threshold_otsu
from skimage.morphology import disk
from skimage.segmentation import watershed

from gr2st._constants import NUCLEAR_TYPES
from gr2st.image.nuclei.summary import NucleiTable

# --- segmentation defaults -------------------------------------------------------------
#: Microns per pixel assumed when the section does not record it (a 20x scan).
ASSUMED_MPP = 0.5
#: Sigma (µm) of the Gaussian that denoises the haematoxylin channel.
SMOOTH_UM = 0.7
#: Sigma (µm) of the nucleus-sized Gaussian whose maxima seed the watershed.
BLOB_SIGMA_UM = 1.5
#: Minimum distance (µm) between two nucleus centres (about a lymphocyte radius).
MIN_SEPARATION_UM = 2.5
#: Smallest dip of H (skimage ``rgb2hed`` units) between two touching regions for them
#: to stay separate nuclei; shallower boundaries are merged (one nucleus cut in two).
MIN_DIP = 0.015
#: Lowest haematoxylin threshold (skimage ``rgb2hed`` units): paler pixels are never
#: nuclear, whatever Otsu says (protects stroma-only and glass patches).
H_FLOOR = 0.06
#: Minimum excess of a nucleus' mean H over the patch background (median H outside the
#: nuclei): noise and texture crossing the threshold fail it, real nuclei pass easily
#: (~0.07-0.2).
MIN_H_CONTRAST = 0.045
#: Fraction of the H channel's variance that must survive a 1-pixel Gaussian blur:
#: pixel-independent noise keeps ~8 %, real H&E 60-95 % (its structure is larger than a
#: pixel). Patches below it have no nuclei.
MIN_STRUCTURE = 0.3
#: Objects smaller than this (µm²) are debris or noise and are not counted.
MIN_AREA_UM2 = 8.0

# --- typing rule defaults (see classify_nuclei) ----------------------------------------
#: Larger objects (µm²) are unsplit clumps: counted, but unclassifiable (nolabe).
MAX_AREA_UM2 = 400.0
#: Upper area (µm²) of a small, lymphocyte-sized nucleus (~30 µm² at 0.69 µm/px).
SMALL_AREA_UM2 = 45.0
#: Lower area (µm²) of a large, tumour-sized nucleus (~9.5 µm across).
LARGE_AREA_UM2 = 70.0
#: Eccentricity from which any nucleus is spindle-shaped (axis ratio >= ~2.5).
ELONGATED_ECCENTRICITY = 0.92
#: Eccentricity from which a small nucleus is spindle-shaped (axis ratio >= ~1.9).
SMALL_ELONGATED_ECCENTRICITY = 0.85
#: Solidity under which a medium or large nucleus is irregular (pleomorphic).
IRREGULAR_SOLIDITY = 0.8
#: Solidity under which a small or medium object is fragmented (karyorrhexis).
FRAGMENTED_SOLIDITY = 0.7
#: Darkness (mean H over the median of all nuclei) from which a small nucleus is dark
#: enough to be a lymphocyte; paler small nuclei are taken as stromal.
DARK_RATIO = 0.85
#: Area (µm²) under which a very dark nucleus is pyknotic and a faint one unlabelled.
PYKNOTIC_AREA_UM2 = 20.0
#: Darkness from which a nucleus under PYKNOTIC_AREA_UM2 counts as pyknotic.
VERY_DARK_RATIO = 1.3

# Directions in [0, π) of the convex-hull approximation used for solidity (each gives
# two supporting lines).
_HULL_DIRECTIONS = 16

_TYPE = {name: i for i, name in enumerate(NUCLEAR_TYPES)}
_FEATURE_NAMES = ("area_um2", "eccentricity", "solidity", "hematoxylin", "eosin")

# rgb2hed's optical density per 8-bit value: log(max(v / 255, 1e-6)) / log(1e-6).
_OD_LUT = (np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / np.log(1e-6)).astype(np.float32)
_HE_FROM_OD = np.asarray(hed_from_rgb[:, :2], dtype=np.float32)


@dataclass(frozen=True)
class ClassicalParams:
    """Thresholds of the classical detector; defaults are the module constants.

    Lengths are in µm and areas in µm², converted to pixels with the section's
    microns per pixel. H values are skimage ``rgb2hed`` optical densities. Darkness
    ratios are relative to the median mean-H of the section's nuclei (of the batch's,
    in :func:`detect_nuclei`), so they follow each slide's staining.
    """

    smooth_um: float = SMOOTH_UM
    blob_sigma_um: float = BLOB_SIGMA_UM
    min_separation_um: float = MIN_SEPARATION_UM
    min_dip: float = MIN_DIP
    h_floor: float = H_FLOOR
    min_h_contrast: float = MIN_H_CONTRAST
    min_structure: float = MIN_STRUCTURE
    min_area_um2: float = MIN_AREA_UM2
    max_area_um2: float = MAX_AREA_UM2
    small_area_um2: float = SMALL_AREA_UM2
    large_area_um2: float = LARGE_AREA_UM2
    elongated_eccentricity: float = ELONGATED_ECCENTRICITY
    small_elongated_eccentricity: float = SMALL_ELONGATED_ECCENTRICITY
    irregular_solidity: float = IRREGULAR_SOLIDITY
    fragmented_solidity: float = FRAGMENTED_SOLIDITY
    dark_ratio: float = DARK_RATIO
    pyknotic_area_um2: float = PYKNOTIC_AREA_UM2
    very_dark_ratio: float = VERY_DARK_RATIO


def hed_channels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin optical densities of uint8 RGB pixels.

    Equal (to float32 precision) to ``skimage.color.rgb2hed(rgb)[..., 0]`` and
    ``[..., 1]`` but works on any leading shape (a batch of patches) through a
    256-entry lookup table instead of a float64 logarithm per pixel.

    Parameters
    ----------
    rgb
        ``(..., 3)`` uint8 array.

    Returns
    -------
    tuple of numpy.ndarray
        H and E, each float32 of shape ``rgb.shape[:-1]``.

    Examples
    --------
    >>> h, e = hed_channels(np.array([[255, 255, 255], [60, 40, 140]], dtype=np.uint8))
    >>> bool(h[0] == 0.0), bool(h[1] > 0.1)
    (True, True)
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB pixels (..., 3), got {rgb.dtype} {rgb.shape}")
    he = _OD_LUT[rgb] @ _HE_FROM_OD
    np.maximum(he, 0.0, out=he)
    return he[..., 0], he[..., 1]


def segment_nuclei(
    h_smooth: np.ndarray,
    seeds: np.ndarray,
    *,
    microns_per_pixel: float,
    params: ClassicalParams,
) -> np.ndarray:
    """Label the nuclei of one patch (0 = background, 1..n = nuclei).

    Parameters
    ----------
    h_smooth
        Haematoxylin smoothed by ``params.smooth_um`` (2-D).
    seeds
        Boolean mask of candidate nucleus centres: local maxima of the haematoxylin
        smoothed by ``params.blob_sigma_um`` (see :func:`seed_mask`).
    microns_per_pixel
        Pixel size of the patch.
    params
        Detector thresholds.

    Returns
    -------
    numpy.ndarray
        int32 label image; objects smaller than ``params.min_area_um2`` are removed and
        the remaining labels are consecutive.
    """
    labels = np.zeros(h_smooth.shape, dtype=np.int32)
    if float(np.ptp(h_smooth)) < params.min_h_contrast:
        return labels  # flat patch: glass or one colour
    threshold = max(float(threshold_otsu(h_smooth)), params.h_floor)
    fg = ndi.binary_opening(h_smooth > threshold, structure=disk(1))
    if not fg.any():
        return labels
    markers, _ = ndi.label(seeds & fg)  # a flat-topped maximum is one marker
    labels = watershed(-h_smooth, markers, mask=fg).astype(np.int32)
    labels = _merge_shallow(labels, h_smooth, min_dip=params.min_dip)
    flat = labels.ravel()
    areas = np.bincount(flat)
    mean_h = np.bincount(flat, weights=h_smooth.ravel()) / np.maximum(areas, 1)
    # Objects must stand out from the patch's background: noise and texture that merely
    # cross the threshold do not (their mean sits just above the median).
    background = float(np.median(h_smooth[~fg]))
    keep = (areas >= params.min_area_um2 / microns_per_pixel**2) & (
        mean_h - background >= params.min_h_contrast
    )
    keep[0] = False
    relabel = np.zeros(len(areas), dtype=np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return relabel[labels]


def _merge_shallow(labels: np.ndarray, h: np.ndarray, *, min_dip: float) -> np.ndarray:
    """Merge neighbouring regions not separated by a real dip in ``h``.

    Two touching nuclei are separated by a paler line; the two halves of one elongated
    or flat-topped nucleus are not. For each pair of touching regions the saddle is the
    highest ``h`` along their shared boundary (taking the paler pixel of each boundary
    pair); the pair merges when min(peak_a, peak_b) - saddle < ``min_dip`` (a one-step,
    vectorised stand-in for h-maxima, ~10x cheaper). Labels keep their values (with
    gaps); callers relabel.
    """
    n = int(labels.max())
    if n < 2:
        return labels
    firsts, seconds, values = [], [], []
    for a, b, va, vb in (
        (labels[:, :-1], labels[:, 1:], h[:, :-1], h[:, 1:]),
        (labels[:-1], labels[1:], h[:-1], h[1:]),
    ):
        edge = (a != b) & (a > 0) & (b > 0)
        firsts.append(a[edge])
        seconds.append(b[edge])
        values.append(np.minimum(va[edge], vb[edge]))
    first, second = np.concatenate(firsts), np.concatenate(seconds)
    if not len(first):
        return labels
    low = np.minimum(first, second).astype(np.int64)
    high = np.maximum(first, second).astype(np.int64)
    pair, index = np.unique(low * (n + 1) + high, return_inverse=True)
    saddle = np.full(len(pair), -np.inf)
    np.maximum.at(saddle, index, np.concatenate(values))
    inside = labels > 0
    peak = np.full(n + 1, -np.inf)
    np.maximum.at(peak, labels[inside], h[inside])
    low, high = pair // (n + 1), pair % (n + 1)
    merge = np.minimum(peak[low], peak[high]) - saddle < min_dip
    if not merge.any():
        return labels
    graph = coo_matrix((np.ones(int(merge.sum())), (low[merge], high[merge])), shape=(n + 1, n + 1))
    _, component = connected_components(graph, directed=False)
    # Shift by one so that no merged region can land on 0 (background).
    relabel = component.astype(np.int32) + 1
    relabel[0] = 0
    return relabel[labels]


@dataclass(frozen=True)
class NucleusFeatures:
    """Per-nucleus measurements (of a patch, a batch or a section), aligned arrays."""

    area_um2: np.ndarray
    eccentricity: np.ndarray
    solidity: np.ndarray
    hematoxylin: np.ndarray
    eosin: np.ndarray

    @classmethod
    def concat(cls, parts: list[NucleusFeatures]) -> NucleusFeatures:
        """Stack the nuclei of several parts, in order."""
        return cls(
            **{
                name: np.concatenate([np.empty(0), *(getattr(p, name) for p in parts)])
                for name in _FEATURE_NAMES
            }
        )

    def to_table(self, *, n_spots: int, spot: np.ndarray, type_id: np.ndarray) -> NucleiTable:
        """Package as a :class:`NucleiTable` (measurements kept per nucleus)."""
        return NucleiTable(
            n_spots=n_spots,
            spot=spot,
            type_id=type_id,
            **{name: getattr(self, name) for name in _FEATURE_NAMES},
        )


def measure_nuclei(
    labels: np.ndarray, h: np.ndarray, e: np.ndarray, *, microns_per_pixel: float
) -> NucleusFeatures:
    """Vectorised per-label area, eccentricity, solidity and mean H / E.

    Area, eccentricity and mean intensities equal :func:`skimage.measure.regionprops`'.
    Solidity is pixel count over convex-hull area, the hull being that of the pixel
    centres grown by half a pixel, bounded by 32 supporting lines at equally spaced
    angles (a circumscribed polygon, < 0.5 % larger than the exact hull for round
    shapes). It stays within a few hundredths of regionprops' solidity on nucleus-like
    blobs while replacing a per-object Python loop by a few array reductions.

    Examples
    --------
    >>> lab = np.zeros((9, 9), dtype=np.int32); lab[2:5, 2:7] = 1
    >>> f = measure_nuclei(lab, np.ones((9, 9)), np.zeros((9, 9)), microns_per_pixel=1.0)
    >>> float(f.area_um2[0]), round(float(f.solidity[0]), 3)
    (15.0, 1.0)
    """
    n = int(labels.max())
    flat = labels.ravel()
    inside = np.flatnonzero(flat)
    lab = flat[inside].astype(np.int64)
    width = labels.shape[1]
    y = (inside // width).astype(np.float64)
    x = (inside % width).astype(np.float64)

    def per_label_sum(w: np.ndarray | None) -> np.ndarray:
        return np.bincount(lab, weights=w, minlength=n + 1)[1:]

    area = per_label_sum(None)
    if not area.all():
        raise ValueError("labels must be consecutive 1..n (see segment_nuclei)")
    my, mx = per_label_sum(y) / area, per_label_sum(x) / area
    # Eigenvalues of the inertia tensor (central second moments over the area).
    cy, cx = y - my[lab - 1], x - mx[lab - 1]
    myy = per_label_sum(cy * cy) / area
    mxx = per_label_sum(cx * cx) / area
    mxy = per_label_sum(cx * cy) / area
    half_diff = np.sqrt(((mxx - myy) / 2) ** 2 + mxy**2)
    l1 = (mxx + myy) / 2 + half_diff
    l2 = (mxx + myy) / 2 - half_diff
    ratio = np.divide(l2, l1, out=np.ones_like(l1), where=l1 > 0)  # one pixel: a "circle"
    eccentricity = np.sqrt(np.clip(1 - ratio, 0.0, 1.0))

    solidity = area / _hull_area(lab, cx, cy, n)
    px_area = microns_per_pixel**2
    return NucleusFeatures(
        area_um2=area * px_area,
        eccentricity=eccentricity,
        solidity=np.minimum(solidity, 1.0),
        hematoxylin=per_label_sum(h.ravel()[inside]) / area,
        eosin=per_label_sum(e.ravel()[inside]) / area,
    )


def _hull_area(lab: np.ndarray, cx: np.ndarray, cy: np.ndarray, n: int) -> np.ndarray:
    """Area of the polygon of supporting lines of each label's pixel squares.

    For directions u_k at angles 2πk/K (K = 2 * _HULL_DIRECTIONS), the support h_k is the
    maximum over the label's pixels of (p - centroid)·u_k, plus half a pixel. The
    polygon bounded by these lines has edge k of length (h_{k-1} + h_{k+1} - 2 h_k cos Δ)
    / sin Δ and area ½ Σ h_k L_k (Δ = 2π/K), all lines being tangent to one convex set.
    """
    angles = np.pi * np.arange(_HULL_DIRECTIONS) / _HULL_DIRECTIONS
    cos, sin = np.cos(angles), np.sin(angles)
    proj = cx[:, None] * cos + cy[:, None] * sin  # (pixels, K/2)
    order = np.argsort(lab, kind="stable")
    starts = np.searchsorted(lab[order], np.arange(1, n + 1))
    proj = proj[order]
    upper = np.maximum.reduceat(proj, starts, axis=0) + 0.5
    lower = -np.minimum.reduceat(proj, starts, axis=0) + 0.5
    support = np.concatenate([upper, lower], axis=1)  # angles 0..π then π..2π
    delta = 2 * np.pi / support.shape[1]
    prev = np.roll(support, 1, axis=1)
    nxt = np.roll(support, -1, axis=1)
    edge = (prev + nxt - 2 * support * np.cos(delta)) / np.sin(delta)
    return np.asarray(0.5 * (support * edge).sum(axis=1))


def classify_nuclei(
    features: NucleusFeatures,
    *,
    params: ClassicalParams,
    reference_hematoxylin: float | None = None,
) -> np.ndarray:
    """Map each nucleus to a PanNuke type id with a transparent size/shape/stain rule.

    "Darkness" is a nucleus' mean H over ``reference_hematoxylin`` (default: the median
    over ``features``, i.e. over all nuclei of the section or batch), so the rule follows
    each slide's staining. Small = area ≤ ``small_area_um2``, large = area ≥
    ``large_area_um2``. The first matching line wins:

    1. area > ``max_area_um2`` → ``nolabe`` (an unsplit clump)
    2. (area < ``pyknotic_area_um2`` and darkness ≥ ``very_dark_ratio``) or
       (not large and solidity < ``fragmented_solidity``) → ``necros`` (pyknosis,
       karyorrhexis)
    3. eccentricity ≥ ``elongated_eccentricity``, or small and eccentricity ≥
       ``small_elongated_eccentricity`` → ``connec`` (spindle: fibroblast, endothelium,
       smooth muscle)
    4. small and darkness ≥ ``dark_ratio`` → ``inflam`` (lymphocyte-like)
    5. large, or medium with solidity < ``irregular_solidity`` → ``neopla`` (enlarged or
       pleomorphic)
    6. medium (between small and large), regular → ``no-neo`` (epithelial-like)
    7. small, pale, at least ``pyknotic_area_um2`` → ``connec`` (a stromal nucleus cut
       across: in H&E, fibroblast nuclei are paler than lymphocytes)
    8. otherwise (tiny and faint: debris or a nucleus grazed by the section) → ``nolabe``

    Returns
    -------
    numpy.ndarray
        int64 type ids (``NUCLEAR_TYPES`` order), one per nucleus.

    Examples
    --------
    >>> f = NucleusFeatures(
    ...     area_um2=np.array([30.0, 30.0, 120.0, 55.0]),
    ...     eccentricity=np.array([0.3, 0.97, 0.5, 0.4]),
    ...     solidity=np.array([0.95, 0.95, 0.95, 0.95]),
    ...     hematoxylin=np.array([0.2, 0.2, 0.2, 0.2]),
    ...     eosin=np.zeros(4),
    ... )
    >>> [NUCLEAR_TYPES[t] for t in classify_nuclei(f, params=ClassicalParams())]
    ['inflam', 'connec', 'neopla', 'no-neo']
    """
    p = params
    area, ecc, sol = features.area_um2, features.eccentricity, features.solidity
    type_id = np.full(len(area), _TYPE["nolabe"], dtype=np.int64)
    if not len(area):
        return type_id
    if reference_hematoxylin is None:
        reference_hematoxylin = float(np.median(features.hematoxylin))
    darkness = features.hematoxylin / max(reference_hematoxylin, 1e-6)
    small = area <= p.small_area_um2
    large = area >= p.large_area_um2
    rules = [
        (area > p.max_area_um2, "nolabe"),
        (
            ((area < p.pyknotic_area_um2) & (darkness >= p.very_dark_ratio))
            | (~large & (sol < p.fragmented_solidity)),
            "necros",
        ),
        (
            (ecc >= p.elongated_eccentricity) | (small & (ecc >= p.small_elongated_eccentricity)),
            "connec",
        ),
        (small & (darkness >= p.dark_ratio), "inflam"),
        (large | (~small & (sol < p.irregular_solidity)), "neopla"),
        (~small, "no-neo"),
        (area >= p.pyknotic_area_um2, "connec"),
    ]
    decided = np.zeros(len(area), dtype=bool)
    for match, name in rules:
        hit = match & ~decided
        type_id[hit] = _TYPE[name]
        decided |= hit
    return type_id


def measure_patches(
    patches: np.ndarray,
    *,
    microns_per_pixel: float | None,
    params: ClassicalParams | None = None,
    n_jobs: int = 1,
) -> tuple[np.ndarray, NucleusFeatures]:
    """Segment and measure the nuclei of a batch of patches (no typing yet).

    Parameters
    ----------
    patches
        ``(B, S, S, 3)`` uint8 RGB patches.
    microns_per_pixel
        Pixel size; ``None`` uses :data:`ASSUMED_MPP` with a warning.
    params
        Detector thresholds (defaults: :class:`ClassicalParams`).
    n_jobs
        Threads for the per-patch watershed and measurements (scikit-image and SciPy
        release the GIL in their inner loops).

    Returns
    -------
    spot : numpy.ndarray
        int64 index in ``patches`` of each nucleus.
    features : NucleusFeatures
        Their measurements.
    """
    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[-1] != 3 or patches.dtype != np.uint8:
        raise ValueError(f"patches must be uint8 (B, S, S, 3), got {patches.dtype} {patches.shape}")
    mpp = _resolve_mpp(microns_per_pixel)
    params = params or ClassicalParams()
    h, e = hed_channels(patches)
    h_smooth, seeds, structured = _smooth(h, mpp=mpp, params=params)

    def one(i: int) -> NucleusFeatures:
        if structured[i]:
            labels = segment_nuclei(h_smooth[i], seeds[i], microns_per_pixel=mpp, params=params)
        else:
            labels = np.zeros(h[i].shape, dtype=np.int32)
        return measure_nuclei(labels, h[i], e[i], microns_per_pixel=mpp)

    if n_jobs > 1 and len(patches) > 1:
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            feats = list(pool.map(one, range(len(patches))))
    else:
        feats = [one(i) for i in range(len(patches))]
    spot = np.repeat(np.arange(len(patches), dtype=np.int64), [len(f.area_um2) for f in feats])
    return spot, NucleusFeatures.concat(feats)


def detect_nuclei(
    patches: np.ndarray,
    *,
    microns_per_pixel: float | None,
    params: ClassicalParams | None = None,
    n_jobs: int = 1,
) -> NucleiTable:
    """Detect, measure and type the nuclei of a batch of patches.

    Darkness for typing is relative to the median nucleus of this batch; to type a
    whole section consistently, :class:`ClassicalNuclei` measures every batch first
    and types all nuclei of the section together.

    Parameters
    ----------
    patches, microns_per_pixel, params, n_jobs
        As in :func:`measure_patches`.

    Returns
    -------
    NucleiTable
        ``spot`` = index of the patch in ``patches``.

    Examples
    --------
    >>> white = np.full((2, 64, 64, 3), 250, dtype=np.uint8)
    >>> detect_nuclei(white, microns_per_pixel=0.5).n_nuclei
    0
    """
    params = params or ClassicalParams()
    spot, feats = measure_patches(
        patches, microns_per_pixel=microns_per_pixel, params=params, n_jobs=n_jobs
    )
    return feats.to_table(
        n_spots=len(patches), spot=spot, type_id=classify_nuclei(feats, params=params)
    )


def segment_patch(
    patch: np.ndarray,
    *,
    microns_per_pixel: float | None,
    params: ClassicalParams | None = None,
    reference_hematoxylin: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Label image and per-label type ids of one patch (for inspection and overlays).

    Examples
    --------
    >>> labels, types = segment_patch(np.full((64, 64, 3), 250, np.uint8), microns_per_pixel=0.5)
    >>> int(labels.max()), types.tolist()
    (0, [])
    """
    params = params or ClassicalParams()
    mpp = _resolve_mpp(microns_per_pixel)
    h, e = hed_channels(np.asarray(patch)[None])
    h_smooth, seeds, structured = _smooth(h, mpp=mpp, params=params)
    h, e = h[0], e[0]
    labels = np.zeros(h.shape, dtype=np.int32)
    if structured[0]:
        labels = segment_nuclei(h_smooth[0], seeds[0], microns_per_pixel=mpp, params=params)
    feats = measure_nuclei(labels, h, e, microns_per_pixel=mpp)
    types = classify_nuclei(feats, params=params, reference_hematoxylin=reference_hematoxylin)
    return labels, types


def seed_mask(h_blob: np.ndarray, *, min_separation_px: int) -> np.ndarray:
    """Local maxima of blob-scale H: the candidate nucleus centres.

    A pixel is a seed when it equals the maximum of the ``(2r+1)`` square around it
    (separable, so cheap); works on one image ``(S, S)`` or a batch ``(B, S, S)``.

    Examples
    --------
    >>> blob = np.zeros((9, 9)); blob[2, 2] = 1.0; blob[6, 6] = 2.0
    >>> np.argwhere(seed_mask(blob, min_separation_px=2) & (blob > 0)).tolist()
    [[2, 2], [6, 6]]
    """
    side = 2 * max(1, int(min_separation_px)) + 1
    size = (side,) * 2 if h_blob.ndim == 2 else (1, side, side)
    return np.asarray(h_blob == ndi.maximum_filter(h_blob, size=size))


def _smooth(
    h: np.ndarray, *, mpp: float, params: ClassicalParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Denoised H, seed mask and "has structure" flag of a batch ``(B, S, S)``.

    Filtering runs on the whole batch at once (nothing along the batch axis).
    """
    h_smooth = ndi.gaussian_filter(h, sigma=(0, *(2 * [params.smooth_um / mpp])))
    h_blob = ndi.gaussian_filter(h, sigma=(0, *(2 * [params.blob_sigma_um / mpp])))
    seeds = seed_mask(h_blob, min_separation_px=round(params.min_separation_um / mpp))
    kept = ndi.gaussian_filter(h, sigma=(0, 1.0, 1.0)).var(axis=(1, 2))
    total = h.var(axis=(1, 2))
    structured = (kept >= params.min_structure * total) & (total > 0)
    return h_smooth, seeds, structured


def _resolve_mpp(microns_per_pixel: float | None) -> float:
    if microns_per_pixel is None:
        warnings.warn(
            f"microns per pixel unknown; nuclei sizes assume {ASSUMED_MPP} µm/px",
            stacklevel=3,
        )
        return ASSUMED_MPP
    if not microns_per_pixel > 0:
        raise ValueError(f"microns_per_pixel must be > 0, got {microns_per_pixel}")
    return float(microns_per_pixel)
