"""Tissue on the H&E image, and whether a section's spots sit on it.

Every command that reads a section with an image runs :func:`check_section_image`
before using it: a spot table that belongs to another image, swapped or flipped pixel
columns, a rotated image or an all-white one otherwise give exit 0 and wrong patches.

The image is read once, at about :data:`THUMBNAIL_PX` pixels on its longer side (a JPEG
is decoded at 1/2, 1/4 or 1/8 scale by libjpeg, which still reads every byte of the
file, so a truncated or corrupted file fails here), and its tissue mask is kept for the
rest of the process. Then, for the spot centres:

- **on tissue**: the share of spots with tissue within one spot radius of their centre.
  More than :data:`OFF_TISSUE_ERROR` of them off tissue is an error, more than
  :data:`OFF_TISSUE_WARN` a warning (the six imaged HER2ST sections: 0-2 % off);
- **other layouts**: the same share with the spot layout swapped (``x ↔ y``), flipped
  or rotated within the image; one that fits at least :data:`BETTER_FIT` better, and
  almost entirely on tissue, is named in the error ("pixel_x and pixel_y look swapped");
- **hull**: the share of the spots' convex hull that is tissue (82-99 % on HER2ST),
  recorded, with a warning below :data:`HULL_TISSUE_WARN`;
- **colour**: a greyscale image (one channel, or three equal ones) is an error unless
  allowed (``--allow-grey``): the encoders and stain normalisers expect H&E colour.

``--allow-off-tissue`` turns the off-tissue errors into warnings. The record of the
check (:meth:`SpotCheck.to_dict`) is stored in ``uns["gr2st"]["image_check"]``.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import numpy as np
from anndata import AnnData
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from skimage.draw import polygon
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

from gr2st._constants import IMAGE_CHECK, IMAGE_PATH, SECTION, SPATIAL, SPOT_DIAMETER_PX, UNS
from gr2st.errors import GR2STDataError
from gr2st.image.color import hsv_saturation
from gr2st.image.slide import PILLOW_SUFFIXES, open_slide

log = logging.getLogger(__name__)

#: Longer side (px) of the thumbnail the check reads (between this and twice this).
THUMBNAIL_PX: Final = 512
#: More than this share of spots off tissue is an error (unless allowed).
OFF_TISSUE_ERROR: Final = 0.25
#: More than this share of spots off tissue is a warning.
OFF_TISSUE_WARN: Final = 0.05
#: Another layout must put this much larger a share of spots on tissue to be named.
BETTER_FIT: Final = 0.2
#: ... and at least this share.
GOOD_FIT: Final = 1 - OFF_TISSUE_WARN
#: Below this share of the spots' convex hull being tissue, a warning.
HULL_TISSUE_WARN: Final = 0.5

# Otsu's threshold on saturation (or darkness, for a grey image) is bounded so that a
# slide that is all tissue (or all glass) is not split in two.
_SATURATION_BOUNDS = (0.05, 0.15)
_DARKNESS_BOUNDS = (0.08, 0.3)
# Tissue pieces and holes smaller than this share of the thumbnail are noise.
_MIN_OBJECT_SHARE = 5e-4
# Channels that differ by at most this (of 255) everywhere make a grey image.
_GREY_TOLERANCE = 2
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

#: What each alternative layout means, for the error message.
LAYOUTS: Final = {
    "swapped": "pixel_x and pixel_y look swapped",
    "flipped left-right": "the spots look flipped left-right against the image",
    "flipped top-bottom": "the spots look flipped top-bottom against the image",
    "rotated 180°": "the image looks rotated by 180° against the spots",
    "rotated 90° clockwise": "the image looks rotated by 90° clockwise against the spots",
    "rotated 90° counter-clockwise": (
        "the image looks rotated by 90° counter-clockwise against the spots"
    ),
}

_CHECKED_LOCK = threading.Lock()
_CHECKED: dict[tuple[Any, ...], SpotCheck] = {}


def detect_tissue(thumbnail: np.ndarray) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail.

    Stained tissue is saturated, glass is grey or white: pixels whose (smoothed) HSV
    saturation exceeds Otsu's threshold, bounded to ``[0.05, 0.15]`` so that an
    all-tissue or all-glass image is not split in two, are tissue. A greyscale image
    (three equal channels) has no saturation: there, pixels darker than Otsu's
    threshold (bounded to ``[0.08, 0.3]`` below white) are tissue. Pieces and holes
    smaller than 0.05 % of the thumbnail are removed / filled.

    Examples
    --------
    >>> img = np.full((100, 100, 3), 245, np.uint8)
    >>> img[20:60, 30:80] = (200, 120, 170)
    >>> mask = detect_tissue(img)
    >>> int(mask.sum()), bool(mask[40, 50]), bool(mask[5, 5])
    (2000, True, False)
    """
    rgb = np.asarray(thumbnail)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise GR2STDataError(f"thumbnail: expected a uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    if is_grey(rgb):
        score = 1.0 - rgb[..., 0].astype(np.float64) / 255
        bounds = _DARKNESS_BOUNDS
    else:
        score = hsv_saturation(rgb)
        bounds = _SATURATION_BOUNDS
    score = ndimage.uniform_filter(score, size=3, mode="nearest")
    lo, hi = bounds
    if float(score.max()) - float(score.min()) < 1e-6:
        threshold = hi
    else:
        threshold = float(np.clip(threshold_otsu(score), lo, hi))
    mask = score > threshold
    small = max(1, int(_MIN_OBJECT_SHARE * mask.size))
    mask = remove_small_objects(mask, max_size=small)
    return np.asarray(remove_small_holes(mask, max_size=small), dtype=bool)


def is_grey(rgb: np.ndarray) -> bool:
    """Whether the three channels of a uint8 RGB image are (almost) equal everywhere.

    Examples
    --------
    >>> is_grey(np.full((4, 4, 3), 120, np.uint8)), is_grey(np.array([[[200, 120, 170]]], np.uint8))
    (True, False)
    """
    pixels = np.asarray(rgb, dtype=np.int16)
    spread = pixels.max(axis=-1) - pixels.min(axis=-1)
    return bool(spread.size) and int(spread.max()) <= _GREY_TOLERANCE


@dataclass(frozen=True)
class ImageSummary:
    """An image's thumbnail facts, read once per file (see :func:`read_image_summary`).

    ``scale`` is thumbnail pixels per full-resolution pixel; ``to_tissue`` the distance
    (thumbnail px) of every thumbnail pixel to the nearest tissue pixel.
    """

    path: str
    width: int
    height: int
    scale: float
    grey: bool
    tissue_share: float
    mask: np.ndarray
    to_tissue: np.ndarray


def read_image_summary(path: str | Path) -> ImageSummary:
    """Decode ``path`` to a thumbnail once (remembered per file, size and mtime).

    Raises
    ------
    GR2STDataError
        The file is missing, truncated, corrupted or not an image.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "he.png"
    >>> img = np.full((60, 80, 3), 245, np.uint8); img[10:50, 10:40] = (200, 120, 170)
    >>> Image.fromarray(img).save(p)
    >>> s = read_image_summary(p)
    >>> (s.width, s.height, s.grey, round(s.tissue_share, 2))
    (80, 60, False, 0.25)
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        raise GR2STDataError(f"{path}: no such image file") from None
    return _summary(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _summary(path: str, size: int, mtime_ns: int) -> ImageSummary:
    rgb, scale, width, height, grey_mode = _thumbnail(Path(path))
    mask = detect_tissue(rgb)
    return ImageSummary(
        path=path,
        width=width,
        height=height,
        scale=scale,
        grey=grey_mode or is_grey(rgb),
        tissue_share=float(mask.mean()),
        mask=mask,
        to_tissue=ndimage.distance_transform_edt(~mask),
    )


def _thumbnail(path: Path) -> tuple[np.ndarray, float, int, int, bool]:
    """(RGB thumbnail, scale, full width, full height, whether the file is one channel)."""
    if path.suffix.lower() not in PILLOW_SUFFIXES:
        with open_slide(path) as slide:
            thumb, scale = slide.thumbnail(THUMBNAIL_PX)
            width, height = slide.dimensions
        return thumb, scale, width, height, False
    with _pillow_messages(path):
        limit = Image.MAX_IMAGE_PIXELS
        try:
            # Whole-slide JPEGs exceed Pillow's bomb limit; the user chose this file.
            Image.MAX_IMAGE_PIXELS = None
            with Image.open(path) as image:
                width, height = image.size
                grey = image.mode in _GREY_MODES
                ratio = THUMBNAIL_PX / max(width, height)
                if ratio < 1:
                    # JPEG: decode at the smallest DCT scale still above the thumbnail.
                    image.draft("RGB", (max(1, int(width * ratio)), max(1, int(height * ratio))))
                image.load()
                rgb = image.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise GR2STDataError(
                f"{path}: cannot decode the image ({' '.join(str(err).split())}); the file is "
                "truncated, corrupted or not an image: copy or export it again"
            ) from None
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    factor = max(rgb.size) // THUMBNAIL_PX
    if factor > 1:
        rgb = rgb.reduce(factor)
    return np.asarray(rgb), rgb.size[0] / width, width, height, grey


@contextmanager
def _pillow_messages(path: Path) -> Iterator[None]:
    """Turn Pillow's warnings while reading ``path`` into one-line gr2st warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for item in caught:
        text = " ".join(str(item.message).split())
        if issubclass(item.category, Image.DecompressionBombWarning):
            text = "a very large image; decoding it whole needs 3 bytes of memory per pixel"
        log.warning("%s: %s", path, text)


@dataclass(frozen=True)
class SpotCheck:
    """What :func:`check_spots_on_image` found for one section and its image."""

    section: str
    image: str
    n_spots: int
    on_tissue: float
    hull_tissue: float
    tissue_share: float
    grey: bool
    layouts: Mapping[str, float]
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (stored in ``uns["gr2st"]["image_check"]``)."""
        record = asdict(self)
        record["layouts"] = dict(self.layouts)
        record["warnings"] = list(self.warnings)
        return record


def check_spots_on_image(
    centers: np.ndarray,
    *,
    image: str | Path,
    spot_diameter_px: float,
    section: str,
    allow_off_tissue: bool = False,
    allow_grey: bool = False,
) -> SpotCheck:
    """Check that spot centres (full-resolution px) sit on the tissue of ``image``.

    Computed once per (image, spots); warnings are logged the first time only.

    Parameters
    ----------
    centers
        ``(N, 2)`` spot centres ``(x, y)`` in full-resolution pixels.
    image
        The H&E image they refer to.
    spot_diameter_px
        Spot diameter in full-resolution pixels.
    section
        Section name for messages.
    allow_off_tissue
        Off-tissue spots and better-fitting layouts become warnings, not errors.
    allow_grey
        Accept a greyscale image (else an error).

    Raises
    ------
    GR2STDataError
        A greyscale image (unless allowed), an image without tissue, more than
        :data:`OFF_TISSUE_ERROR` of the spots off tissue, or a clearly better-fitting
        swapped / flipped / rotated layout (unless ``allow_off_tissue``); or an
        unreadable image.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "he.png"
    >>> img = np.full((200, 300, 3), 245, np.uint8); img[20:100, 20:280] = (200, 120, 170)
    >>> Image.fromarray(img).save(p)
    >>> xy = np.array([[x, y] for x in range(40, 270, 20) for y in (40, 60, 80)], float)
    >>> check_spots_on_image(xy, image=p, spot_diameter_px=10, section="S").on_tissue
    1.0
    >>> check_spots_on_image(xy[:, ::-1], image=p, spot_diameter_px=10, section="S")
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STDataError: S: 24 of 36 spots (67 %) lie off the tissue of he.png; pixel_x ...
    """
    summary = read_image_summary(image)
    centers = np.asarray(centers, dtype=np.float64)
    key = (
        summary.path,
        summary.width,
        summary.height,
        float(spot_diameter_px),
        section,
        np.ascontiguousarray(centers).tobytes(),
    )
    with _CHECKED_LOCK:
        known = _CHECKED.get(key)
    check = known or _measure(summary, centers, spot_diameter_px, section)
    _raise_if_wrong(
        check,
        summary,
        allow_off_tissue=allow_off_tissue,
        allow_grey=allow_grey,
        first=known is None,
    )
    if known is None:
        for message in check.warnings:
            log.warning("%s", message)
        with _CHECKED_LOCK:
            _CHECKED[key] = check
    return check


def _measure(
    summary: ImageSummary, centers: np.ndarray, spot_diameter_px: float, section: str
) -> SpotCheck:
    radius = max(1.0, 0.5 * float(spot_diameter_px) * summary.scale)
    on_tissue = _on_tissue(summary, centers, radius)
    layouts = {
        name: _on_tissue(summary, xy, radius)
        for name, xy in _alternatives(centers, summary.width, summary.height).items()
    }
    hull = _hull_tissue(summary, centers)
    name = Path(summary.path).name
    notes = []
    off = 1 - on_tissue
    if OFF_TISSUE_WARN < off <= OFF_TISSUE_ERROR:
        notes.append(
            f"{section}: {round(off * len(centers))} of {len(centers)} spots ({100 * off:.0f} %) "
            f"lie off the tissue of {name}; check that the spots belong to this image"
        )
    if summary.tissue_share > 0 and hull < HULL_TISSUE_WARN:
        notes.append(
            f"{section}: only {100 * hull:.0f} % of the area the spots span is tissue on "
            f"{name}; check that the spots belong to this image"
        )
    return SpotCheck(
        section=section,
        image=summary.path,
        n_spots=len(centers),
        on_tissue=round(on_tissue, 4),
        hull_tissue=round(hull, 4),
        tissue_share=round(summary.tissue_share, 4),
        grey=summary.grey,
        layouts={k: round(v, 4) for k, v in layouts.items()},
        warnings=tuple(notes),
    )


def _raise_if_wrong(
    check: SpotCheck,
    summary: ImageSummary,
    *,
    allow_off_tissue: bool,
    allow_grey: bool,
    first: bool,
) -> None:
    path = summary.path
    override = "pass --allow-off-tissue to use them anyway"
    if summary.tissue_share == 0:
        if allow_off_tissue:
            if first:
                log.warning("%s: no tissue detected (the image is blank or glass only)", path)
            return
        raise GR2STDataError(
            f"{path}: no tissue detected (the image is blank or glass only); check that it "
            f"is section {check.section}'s H&E image, or {override}"
        )
    _check_colour(summary, allow_grey=allow_grey)
    off = 1 - check.on_tissue
    best = max(check.layouts, key=lambda k: check.layouts[k])
    fit = check.layouts[best]
    better = fit >= GOOD_FIT and fit >= check.on_tissue + BETTER_FIT
    if off <= OFF_TISSUE_ERROR and not better:
        return
    n_off = round(off * check.n_spots)
    message = (
        f"{check.section}: {n_off} of {check.n_spots} spots ({100 * off:.0f} %) lie off the "
        f"tissue of {Path(path).name}"
    )
    if better:
        message += f"; {LAYOUTS[best]} ({100 * fit:.0f} % of the spots on tissue {best})"
    else:
        message += f" (at most {100 * OFF_TISSUE_ERROR:.0f} % expected)"
    if allow_off_tissue:
        if first:
            log.warning("%s (--allow-off-tissue)", message)
        return
    raise GR2STDataError(
        f"{message}; check the spot table's pixel columns and the image, or {override}"
    )


def check_image_colour(image: str | Path, *, allow_grey: bool = False) -> None:
    """Raise for a greyscale image unless ``allow_grey`` (or an unreadable one).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "grey.png"
    >>> Image.fromarray(np.full((20, 20), 200, np.uint8)).save(p)
    >>> check_image_colour(p, allow_grey=True)
    >>> check_image_colour(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STDataError: ...grey.png: greyscale image (no colour); ...
    """
    _check_colour(read_image_summary(image), allow_grey=allow_grey)


def _check_colour(summary: ImageSummary, *, allow_grey: bool) -> None:
    if summary.grey and not allow_grey:
        raise GR2STDataError(
            f"{summary.path}: greyscale image (no colour); H&E features need the colour "
            "scan: give it, or pass --allow-grey to use this one"
        )


def _on_tissue(summary: ImageSummary, centers: np.ndarray, radius: float) -> float:
    """Share of ``centers`` (full-resolution px) within ``radius`` (thumbnail px) of tissue."""
    if not len(centers):
        return 0.0
    points = np.rint(centers * summary.scale).astype(np.int64)
    h, w = summary.mask.shape
    inside = (points[:, 0] >= 0) & (points[:, 1] >= 0) & (points[:, 0] < w) & (points[:, 1] < h)
    near = np.zeros(len(points), dtype=bool)
    p = points[inside]
    near[inside] = summary.to_tissue[p[:, 1], p[:, 0]] <= radius
    return float(near.mean())


def _alternatives(centers: np.ndarray, width: int, height: int) -> dict[str, np.ndarray]:
    """The spot layout transposed, flipped and rotated within a ``width × height`` image."""
    x, y = centers[:, 0], centers[:, 1]
    return {
        "swapped": np.column_stack([y, x]),
        "flipped left-right": np.column_stack([width - 1 - x, y]),
        "flipped top-bottom": np.column_stack([x, height - 1 - y]),
        "rotated 180°": np.column_stack([width - 1 - x, height - 1 - y]),
        # An image turned 90° clockwise moves the pixel (x, y) to (H0 - 1 - y, x).
        "rotated 90° clockwise": np.column_stack([width - 1 - y, x]),
        "rotated 90° counter-clockwise": np.column_stack([y, height - 1 - x]),
    }


def _hull_tissue(summary: ImageSummary, centers: np.ndarray) -> float:
    """Share of the spots' convex hull (on the thumbnail) that is tissue."""
    points = centers * summary.scale
    try:
        vertices = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):
        return 1.0  # fewer than three spots, or all on a line: no area to compare
    rows, cols = polygon(vertices[:, 1], vertices[:, 0], summary.mask.shape)
    if not rows.size:
        return 0.0
    return float(summary.mask[rows, cols].mean())


def check_section_image(
    adata: AnnData, *, allow_off_tissue: bool = False, allow_grey: bool = False
) -> SpotCheck | None:
    """Run :func:`check_spots_on_image` on a section that has an image; record it.

    Returns None for a section without an image; else the check, also stored as
    ``adata.uns["gr2st"]["image_check"]``.

    Examples
    --------
    >>> import tempfile
    >>> from gr2st.datasets import synthetic
    >>> sec = synthetic(n_sections=1, n_genes=3, grid=(4, 4), image_dir=tempfile.mkdtemp())[0]
    >>> check_section_image(sec).on_tissue, sec.uns["gr2st"]["image_check"]["on_tissue"]
    (1.0, 1.0)
    """
    meta = adata.uns.get(UNS, {})
    image = meta.get(IMAGE_PATH)
    if image is None or SPATIAL not in adata.obsm or adata.n_obs == 0:
        return None
    names = adata.obs[SECTION].astype(str).unique() if SECTION in adata.obs else []
    section = str(names[0]) if len(names) == 1 else Path(str(image)).stem
    check = check_spots_on_image(
        np.asarray(adata.obsm[SPATIAL], dtype=np.float64),
        image=str(image),
        spot_diameter_px=float(meta.get(SPOT_DIAMETER_PX) or 1.0),
        section=section,
        allow_off_tissue=allow_off_tissue,
        allow_grey=allow_grey,
    )
    meta[IMAGE_CHECK] = check.to_dict()
    return check
