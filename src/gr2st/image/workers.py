"""Worker processes that read, stain-normalise and measure spot patches in parallel.

:class:`PatchWorkers` runs the CPU-bound per-patch steps — reading the slide, stain
normalisation and, optionally, the classical nuclei measurements — in a pool of worker
processes, while the calling process consumes the batches in order (typically encoding
them, on the GPU when there is one). Each batch is computed by the same functions as
the in-process path (:func:`gr2st.image.patches.read_patches`,
:func:`gr2st.image.nuclei.classical.measure_patches`) on the same spots, so the
results are identical to it, bit for bit.

Images that must be decoded whole (JPEG, PNG: a 9k × 10k HER2ST JPEG takes seconds and
280 MB) are decoded once, by one worker, into shared memory that every worker reads;
tiled formats (TIFF pyramids, OpenSlide) are opened by each worker and read lazily.
Workers are forked from a clean server process that has imported this module and the
nuclei code once (``forkserver``; ``spawn`` where that is missing), not from the caller,
whose torch and ONNX Runtime threads make plain ``fork`` unsafe; after the first pool of
a process, starting workers costs little.

Examples
--------
>>> import tempfile, pathlib
>>> from PIL import Image
>>> path = pathlib.Path(tempfile.mkdtemp()) / "he.png"
>>> Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(path)
>>> with PatchWorkers(1) as pool:  # doctest: +SKIP
...     image = pool.open(path)
...     [b.patches.shape for b in pool.batches(image, np.array([[20.0, 20.0]]), size_px=16)]
[(1, 16, 16, 3)]
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gr2st._constants import DEFAULT_PATCH_PX
from gr2st.errors import GR2STConfigError
from gr2st.image.patches import check_centers, patch_origins, read_patches
from gr2st.image.slide import Slide, open_slide, pillow_pixels, uses_pillow

if TYPE_CHECKING:
    from gr2st.image.nuclei.classical import ClassicalParams, NucleusFeatures
    from gr2st.image.stain import StainNormalizer


def default_workers() -> int:
    """Worker processes to use by default: one per CPU core, none on two cores or fewer.

    Reading, stain normalisation, nuclei and the encoder are all CPU-bound: on two
    cores the in-process path (one background reading thread) already keeps both busy,
    and worker processes only add their start-up and the transfer of patches (HER2ST-6
    on this project's 2-core machine: 123 s with two workers, 109 s without).

    Examples
    --------
    >>> default_workers() >= 0
    True
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return cores if cores > 2 else 0


@dataclass(frozen=True)
class SlideSource:
    """How a worker reaches a slide: its path, and the shared decoded pixels if any."""

    path: Path
    shared: str | None = None
    shape: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class NucleiJob:
    """Measure the classical nuclei of each batch (see :func:`measure_patches`)."""

    microns_per_pixel: float
    params: ClassicalParams


@dataclass(frozen=True)
class PatchBatch:
    """One batch from :meth:`PatchWorkers.batches`.

    Attributes
    ----------
    indices
        ``int64`` positions of the batch's spots in the centres given.
    patches
        ``uint8`` ``(B, S, S, 3)`` patches, or ``None`` when not kept.
    nuclei
        ``(spot, features)`` of :func:`measure_patches` (``spot`` indexes the batch),
        or ``None`` without a nuclei job.
    """

    indices: np.ndarray
    patches: np.ndarray | None
    nuclei: tuple[np.ndarray, NucleusFeatures] | None


class _SharedSlide(Slide):
    """A decoded image in shared memory, read like the Pillow slide it came from."""

    def __init__(self, source: SlideSource) -> None:
        super().__init__(source.path)
        assert source.shared is not None
        assert source.shape is not None
        self._memory = SharedMemory(name=source.shared)
        self._pixels: np.ndarray = np.ndarray(source.shape, np.uint8, buffer=self._memory.buf)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self._pixels.shape[1], self._pixels.shape[0]

    @property
    def mpp(self) -> float | None:
        return None  # as for Pillow images: JPEG/PNG resolution fields are display DPI

    def _read_box(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self._pixels[y0:y1, x0:x1].copy()

    def close(self) -> None:
        del self._pixels
        self._memory.close()


# ------------------------------------------------------------------ worker side
_OPEN: dict[SlideSource, Slide] = {}
_MAX_OPEN = 2


def _slide(source: SlideSource) -> Slide:
    """The worker's open slide for ``source`` (the two most recent stay open)."""
    slide = _OPEN.pop(source, None)
    if slide is None:
        slide = _SharedSlide(source) if source.shared else open_slide(source.path)
    _OPEN[source] = slide
    while len(_OPEN) > _MAX_OPEN:
        _OPEN.pop(next(iter(_OPEN))).close()
    return slide


def _decode(path: Path, name: str, shape: tuple[int, int, int]) -> None:
    memory = SharedMemory(name=name)
    try:
        np.ndarray(shape, np.uint8, buffer=memory.buf)[:] = pillow_pixels(path)
    finally:
        memory.close()


def _work(
    source: SlideSource,
    origins: np.ndarray,
    size_px: int,
    out_px: int | None,
    stain: StainNormalizer | None,
    nuclei: NucleiJob | None,
    keep: bool,
) -> tuple[np.ndarray | None, tuple[np.ndarray, NucleusFeatures] | None]:
    patches = read_patches(_slide(source), origins, size_px=size_px, out_px=out_px, stain=stain)
    measured = None
    if nuclei is not None:
        from gr2st.image.nuclei.classical import measure_patches

        measured = measure_patches(
            patches, microns_per_pixel=nuclei.microns_per_pixel, params=nuclei.params
        )
    return (patches if keep else None), measured


# ------------------------------------------------------------------ caller side
_PRELOAD = ["gr2st.image.workers", "gr2st.image.nuclei.classical"]


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # Only heeded before the server starts (the first pool of the process).
    context.set_forkserver_preload(_PRELOAD)
    return context


class PatchWorkers:
    """A pool of worker processes producing spot patches (and nuclei) in order.

    Parameters
    ----------
    workers
        Number of worker processes (at least 1).
    ahead
        Batches in flight at once (default ``2 · workers``): bounds memory to that many
        batches plus the one being consumed.
    """

    def __init__(self, workers: int, *, ahead: int | None = None) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise GR2STConfigError(f"workers must be a positive integer, got {workers!r}")
        self.workers = workers
        self.ahead = ahead or 2 * workers
        self._pool = ProcessPoolExecutor(workers, mp_context=_context())
        self._shared: dict[SlideSource, tuple[SharedMemory, Future[None]]] = {}

    def __enter__(self) -> PatchWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers and free the shared images."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for source in list(self._shared):
            self.release(source)

    def open(self, path: str | Path) -> SlideSource:
        """Prepare ``path`` for the workers; an image decoded whole starts decoding now,
        in a worker, into shared memory (free it with :meth:`release`)."""
        path = Path(path)
        with open_slide(path) as slide:  # headers only: checks the file, gives the size
            if not uses_pillow(slide):
                return SlideSource(path)
            width, height = slide.dimensions
        shape = (height, width, 3)
        memory = SharedMemory(create=True, size=max(1, height * width * 3))
        source = SlideSource(path, memory.name, shape)
        self._shared[source] = (memory, self._pool.submit(_decode, path, memory.name, shape))
        return source

    def release(self, source: SlideSource) -> None:
        """Free the shared pixels of ``source`` (a no-op for lazily read slides)."""
        entry = self._shared.pop(source, None)
        if entry is None:
            return
        memory, decoding = entry
        if not decoding.cancel():
            decoding.exception()  # wait: the worker may still be writing
        memory.close()
        memory.unlink()

    def batches(
        self,
        source: SlideSource,
        centers: np.ndarray,
        *,
        size_px: int = DEFAULT_PATCH_PX,
        out_px: int | None = None,
        batch_size: int = 64,
        stain: StainNormalizer | None = None,
        nuclei: NucleiJob | None = None,
        keep_patches: bool = True,
    ) -> Iterator[PatchBatch]:
        """Yield the batches of ``centers`` in order, as :func:`iter_patches` would.

        Parameters
        ----------
        source
            From :meth:`open`.
        centers, size_px, out_px, batch_size, stain
            As in :func:`gr2st.image.iter_patches`.
        nuclei
            Also measure each batch's nuclei in the workers.
        keep_patches
            Send the patches back (``False`` when only the nuclei are wanted).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise GR2STConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        entry = self._shared.get(source)
        if entry is not None:
            entry[1].result()  # the decoding's errors surface here
        with open_slide(source.path) as slide:
            points = check_centers(slide, centers)
        origins = patch_origins(points, size_px)
        n = len(points)
        starts = iter(range(0, n, batch_size))
        pending: deque[tuple[int, Future[Any]]] = deque()

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                chunk = origins[start : start + batch_size]
                args = (source, chunk, size_px, out_px, stain, nuclei, keep_patches)
                pending.append((start, self._pool.submit(_work, *args)))

        try:
            for _ in range(self.ahead):
                submit()
            while pending:
                start, future = pending.popleft()
                patches, measured = future.result()
                submit()
                stop = min(start + batch_size, n)
                yield PatchBatch(np.arange(start, stop, dtype=np.int64), patches, measured)
        finally:
            for _, future in pending:
                future.cancel()
