"""Square patches centred on spots, in bounded-memory batches.

Centre convention (any patch side ``s``, odd or even): the spot centre ``(cx, cy)`` is
rounded half up to the pixel ``(px, py) = floor(c + 0.5)`` and the patch covers
columns ``px - s // 2 … px - s // 2 + s - 1`` (rows likewise). So ``(px, py)`` sits at
index ``s // 2`` of the patch: its exact middle for odd ``s``, the first pixel right of
/ below the middle for even ``s``. Patches reaching past the image border are filled by
reflection (see :meth:`gr2st.image.Slide.read_region`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from gr2st._constants import DEFAULT_PATCH_PX
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.image.slide import Slide, open_slide

if TYPE_CHECKING:
    from gr2st.image.stain import StainNormalizer

Batch = tuple[np.ndarray, np.ndarray]


def patch_size_px(
    *, patch_px: int | None = None, patch_um: float | None = None, mpp: float | None = None
) -> int:
    """Patch side in full-resolution pixels, from pixels or from microns.

    Parameters
    ----------
    patch_px
        Side in pixels, returned as is. With neither option, :data:`DEFAULT_PATCH_PX`.
    patch_um
        Side in microns, converted with ``mpp`` and rounded to the nearest pixel.
    mpp
        Microns per full-resolution pixel of the slide; required with ``patch_um``.

    Raises
    ------
    GR2STConfigError
        Both sizes given, a non-positive size, or ``patch_um`` without ``mpp``.

    Examples
    --------
    >>> patch_size_px(patch_um=112.0, mpp=0.5)
    224
    >>> patch_size_px(patch_px=100)
    100
    """
    if patch_px is not None and patch_um is not None:
        raise GR2STConfigError("give the patch size in pixels or in microns, not both")
    if patch_um is not None:
        if mpp is None:
            raise GR2STConfigError(
                f"patch size {patch_um} µm needs the slide's microns per pixel, which is "
                "unknown; give the size in pixels instead"
            )
        if not (patch_um > 0 and mpp > 0):
            raise GR2STConfigError(
                f"patch size and microns per pixel must be positive, got {patch_um} µm, {mpp}"
            )
        patch_px = round(patch_um / mpp)
    size = DEFAULT_PATCH_PX if patch_px is None else int(patch_px)
    if size < 1:
        raise GR2STConfigError(f"patch size must be at least 1 pixel, got {size}")
    return size


def patch_origins(centers: np.ndarray, size_px: int) -> np.ndarray:
    """Top-left pixel ``(x0, y0)`` of the ``size_px`` patch of each spot centre.

    Examples
    --------
    >>> patch_origins(np.array([[10.5, 20.2]]), 4).tolist()
    [[9, 18]]
    """
    return np.floor(np.asarray(centers, dtype=np.float64) + 0.5).astype(np.int64) - size_px // 2


def iter_patches(
    slide: Slide | str | Path,
    centers: np.ndarray,
    *,
    size_px: int = DEFAULT_PATCH_PX,
    out_px: int | None = None,
    batch_size: int = 64,
    stain: StainNormalizer | None = None,
    progress: bool = False,
    prefetch: bool = True,
) -> Iterator[Batch]:
    """Yield the patches of ``centers`` batch by batch, in the order given.

    Parameters
    ----------
    slide
        An open :class:`~gr2st.image.Slide` or a path (opened and closed here).
    centers
        ``(N, 2)`` spot centres ``(x, y)`` in full-resolution pixels.
    size_px
        Side of the square crop, in full-resolution pixels.
    out_px
        Side after resizing (Pillow bilinear, whose kernel widens with the downscale
        factor, so downsampling is antialiased); ``None`` keeps ``size_px``.
    batch_size
        Patches per yielded batch.
    stain
        Normaliser applied to each batch after resizing; ``None`` leaves colours as read.
    progress
        Show a progress bar over the spots.
    prefetch
        Decode the next batch in a background thread while the caller works on the
        current one. Memory then holds at most three batches (the caller's, one queued,
        one being built); with ``False``, one. The slide must not be read elsewhere
        while the iterator is running.

    Yields
    ------
    indices : numpy.ndarray
        ``int64`` positions of the batch's spots in ``centers``.
    patches : numpy.ndarray
        ``uint8`` array ``(B, out, out, 3)``, RGB.

    Raises
    ------
    GR2STDataError
        Malformed centres, or a centre outside the image.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "he.png"
    >>> Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(path)
    >>> centres = np.array([[10.0, 10.0], [60.0, 50.0], [110.0, 90.0]])
    >>> [(i.tolist(), p.shape) for i, p in iter_patches(path, centres, size_px=32, batch_size=2)]
    [([0, 1], (2, 32, 32, 3)), ([2], (1, 32, 32, 3))]
    """
    if isinstance(slide, Slide):
        yield from _iter_open(
            slide, centers, size_px, out_px, batch_size, stain, progress, prefetch
        )
        return
    with open_slide(slide) as opened:
        yield from _iter_open(
            opened, centers, size_px, out_px, batch_size, stain, progress, prefetch
        )


def _iter_open(
    slide: Slide,
    centers: np.ndarray,
    size_px: int,
    out_px: int | None,
    batch_size: int,
    stain: StainNormalizer | None,
    progress: bool,
    prefetch: bool,
) -> Iterator[Batch]:
    for name, value in (("size_px", size_px), ("out_px", out_px), ("batch_size", batch_size)):
        if value is not None and (not isinstance(value, int | np.integer) or value < 1):
            raise GR2STConfigError(f"{name} must be a positive integer, got {value!r}")
    points = check_centers(slide, centers)
    origins = patch_origins(points, size_px)

    def build(start: int, stop: int) -> Batch:
        out = read_patches(slide, origins[start:stop], size_px=size_px, out_px=out_px, stain=stain)
        return np.arange(start, stop, dtype=np.int64), out

    n = len(points)
    batches = (build(a, min(a + batch_size, n)) for a in range(0, n, batch_size))
    with tqdm(total=n, unit="spot", desc="patches", disable=not progress) as bar:
        for batch in _background(batches) if prefetch else batches:
            bar.update(len(batch[0]))
            yield batch


def read_patches(
    slide: Slide,
    origins: np.ndarray,
    *,
    size_px: int,
    out_px: int | None = None,
    stain: StainNormalizer | None = None,
) -> np.ndarray:
    """One batch: the ``size_px`` patches at ``origins``, resized and stain-normalised.

    The single place where patches are made, in the calling process or in a worker
    (:class:`gr2st.image.workers.PatchWorkers`), so both give the same pixels.

    Parameters
    ----------
    slide
        An open slide.
    origins
        ``(B, 2)`` top-left pixels from :func:`patch_origins`.
    size_px, out_px, stain
        As in :func:`iter_patches`.

    Returns
    -------
    numpy.ndarray
        ``uint8`` ``(B, out, out, 3)``.
    """
    side = size_px if out_px is None else out_px
    out = np.empty((len(origins), side, side, 3), dtype=np.uint8)
    for k, (x0, y0) in enumerate(origins):
        patch = slide.read_region(int(x0), int(y0), size_px, size_px)
        if side != size_px:
            resized = Image.fromarray(patch).resize((side, side), Image.Resampling.BILINEAR)
            patch = np.asarray(resized)
        out[k] = patch
    if stain is not None:
        out = stain.transform(out)
    return out


def check_centers(slide: Slide, centers: Any) -> np.ndarray:
    """``centers`` as float64 ``(N, 2)``, checked to be finite and inside ``slide``."""
    points = np.asarray(centers, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise GR2STDataError(f"spot centres must have shape (N, 2), got {points.shape}")
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise GR2STDataError(f"spot centre {int(np.argmax(bad))} is not finite: {points[bad][0]}")
    width, height = slide.dimensions
    outside = (points[:, 0] < 0) | (points[:, 0] >= width) | (points[:, 1] < 0)
    outside |= points[:, 1] >= height
    if outside.any():
        i = int(np.argmax(outside))
        raise GR2STDataError(
            f"{slide.path}: spot centre {i} ({points[i, 0]:.1f}, {points[i, 1]:.1f}) lies "
            f"outside the {width}x{height} image ({int(outside.sum())} such spots); are the "
            "coordinates full-resolution pixels?"
        )
    return points


def _background(items: Iterator[Batch]) -> Iterator[Batch]:
    """Run ``items`` in a worker thread, one item ahead of the consumer."""
    slot: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(message: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                slot.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("done", None))
        except BaseException as err:
            put(("error", err))

    worker = threading.Thread(target=work, name="gr2st-patches", daemon=True)
    worker.start()
    try:
        while True:
            kind, payload = slot.get()
            if kind == "done":
                return
            if kind == "error":
                raise payload
            yield payload
    finally:
        # The consumer may stop early: unblock the worker and wait for it.
        stop.set()
        while worker.is_alive():
            try:
                slot.get(timeout=0.1)
            except queue.Empty:
                continue
        worker.join()
