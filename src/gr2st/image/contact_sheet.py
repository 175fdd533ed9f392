"""A PNG grid of spot patches with their ids, to check patch alignment by eye."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gr2st._constants import DEFAULT_PATCH_PX
from gr2st._utils.files import atomic_path
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.image.patches import iter_patches
from gr2st.image.slide import Slide, open_slide
from gr2st.image.stain import StainNormalizer

HEADER_PX = 22
LABEL_PX = 18
_MARK = (255, 0, 0)
_CIRCLE = (0, 200, 255)


def contact_sheet(
    slide: Slide | str | Path,
    centers: np.ndarray,
    labels: Sequence[str],
    *,
    size_px: int = DEFAULT_PATCH_PX,
    n: int = 36,
    out_path: str | Path,
    stain: StainNormalizer | None = None,
    tile_px: int = 160,
    spot_diameter_px: float | None = None,
    seed: int | None = None,
) -> Path:
    """Write a grid of ``n`` spot patches, each titled with its spot id, as a PNG.

    The spots are taken evenly spaced through ``centers``, or at random with ``seed``
    (shown in their input order; all of them when ``n`` is larger). Each ``size_px``
    patch is resized to ``tile_px`` and marked with a red cross on its centre pixel
    (and, given ``spot_diameter_px``, a cyan circle of the spot's size). The sheet is
    ``cols * tile_px`` wide and ``HEADER_PX + rows * (tile_px + LABEL_PX)`` high, with
    ``cols = ceil(sqrt(k))`` and ``rows = ceil(k / cols)`` for ``k`` shown spots; the
    header names the image, patch size and stain normaliser. Written atomically.

    Parameters
    ----------
    slide
        Open slide or image path.
    centers
        ``(N, 2)`` spot centres ``(x, y)`` in full-resolution pixels.
    labels
        ``N`` spot ids printed under the patches.
    size_px
        Patch side in full-resolution pixels.
    n
        Number of spots shown.
    out_path
        PNG to write.
    stain
        Stain normaliser applied to the patches, or ``None``.
    tile_px
        Side of each drawn patch.
    spot_diameter_px
        Spot diameter in full-resolution pixels, drawn as a circle when given.
    seed
        Choose the spots at random with this seed instead of evenly spaced.

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> Image.fromarray(np.full((200, 300, 3), 180, np.uint8)).save(d / "he.png")
    >>> centres = np.array([[50.0, 50.0], [150.0, 100.0], [250.0, 150.0]])
    >>> out = contact_sheet(d / "he.png", centres, ["a", "b", "c"], size_px=64,
    ...                     out_path=d / "sheet.png", tile_px=64)
    >>> Image.open(out).size
    (128, 186)
    """
    if n < 1 or tile_px < 8:
        raise GR2STConfigError(f"need n >= 1 and tile_px >= 8, got n={n} tile_px={tile_px}")
    points = np.asarray(centers, dtype=np.float64)
    if len(labels) != len(points):
        raise GR2STDataError(f"got {len(labels)} spot labels for {len(points)} spot centres")
    if len(points) == 0:
        raise GR2STDataError("no spots to draw")
    k = min(n, len(points))
    if seed is None:
        chosen = np.unique(np.linspace(0, len(points) - 1, k).round().astype(int))
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(len(points), size=k, replace=False))
    opened = slide if isinstance(slide, Slide) else open_slide(slide)
    try:
        ((_, patches),) = iter_patches(
            opened,
            points[chosen],
            size_px=size_px,
            out_px=tile_px,
            batch_size=len(chosen),
            stain=stain,
            prefetch=False,
        )
        name = opened.path.name
    finally:
        if opened is not slide:
            opened.close()

    cols = math.ceil(math.sqrt(len(chosen)))
    rows = math.ceil(len(chosen) / cols)
    sheet = Image.new("RGB", (cols * tile_px, HEADER_PX + rows * (tile_px + LABEL_PX)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    stain_name = "none" if stain is None else stain.key
    draw.text((4, 4), f"{name} | {size_px} px | stain {stain_name}", fill="black", font=font)
    # Centre pixel of the patch (index size_px // 2), in tile coordinates.
    scale = tile_px / size_px
    centre = (size_px // 2 + 0.5) * scale
    for k, (spot, patch) in enumerate(zip(chosen, patches, strict=True)):
        left, top = (k % cols) * tile_px, HEADER_PX + (k // cols) * (tile_px + LABEL_PX)
        sheet.paste(Image.fromarray(patch), (left, top))
        cx, cy = left + centre, top + centre
        draw.line([(cx - 5, cy), (cx + 5, cy)], fill=_MARK)
        draw.line([(cx, cy - 5), (cx, cy + 5)], fill=_MARK)
        if spot_diameter_px is not None:
            r = spot_diameter_px * scale / 2
            draw.ellipse([(cx - r, cy - r), (cx + r, cy + r)], outline=_CIRCLE)
        draw.text((left + 3, top + tile_px + 2), str(labels[spot]), fill="black", font=font)
    out = Path(out_path)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
