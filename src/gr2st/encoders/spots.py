"""The one patch → encoder loop: every spot's patch read once, encoded, kept in order.

:func:`encode_spots` is what ``gr2st features`` (:func:`~gr2st.encoders.extract_features`,
:func:`~gr2st.encoders.prepare_image_inputs`) and ``gr2st predict``
(:func:`~gr2st.predict.predict_spots`) run: patches are read and stain-normalised in a
background thread (or, with a :class:`~gr2st.image.workers.PatchWorkers` pool, in worker
processes) while this process encodes the previous batch; the classical nuclei of a batch
can be measured on the same patches (in a second thread, or in the workers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gr2st.encoders.base import Encoder
from gr2st.encoders.nuclei import SpotNuclei
from gr2st.image.patches import iter_patches
from gr2st.image.slide import Slide
from gr2st.image.stain import StainNormalizer
from gr2st.image.workers import PatchBatch, PatchWorkers, SlideSource


@dataclass
class PassTimes:
    """Seconds spent encoding and measuring nuclei (added to by :func:`encode_spots`)."""

    encode_s: float = 0.0
    nuclei_s: float = 0.0


def encode_spots(
    image: Slide | SlideSource | str | Path,
    centers: np.ndarray,
    *,
    encoder: Encoder | None,
    size_px: int,
    stain: StainNormalizer | None = None,
    batch_size: int = 32,
    pool: PatchWorkers | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    dim: int | None = None,
    nuclei: SpotNuclei | None = None,
    progress: bool = False,
    desc: str = "encode",
    times: PassTimes | None = None,
) -> np.ndarray | None:
    """Encode the patch around every centre, batch by batch, in the order given.

    Parameters
    ----------
    image
        An open :class:`~gr2st.image.Slide` or an image path (read here, with a
        background thread), or a :class:`~gr2st.image.workers.SlideSource` of ``pool``.
    centers
        ``(N, 2)`` spot centres ``(x, y)`` in full-resolution pixels.
    encoder
        The frozen encoder; it reads patches of ``encoder.read_px(size_px)``. None reads
        the spot patches for ``nuclei`` only (and returns None).
    size_px
        Side of the spot patch in full-resolution pixels.
    stain
        Stain normaliser applied to each patch (None: colours as read).
    batch_size
        Patches read and encoded at once.
    pool
        Worker processes that read (and measure nuclei) when ``image`` is their source.
    transform
        Applied to each batch's features before they are stored (e.g. a bundle's
        projection to its embedding space); ``dim`` is then the length of its output.
    dim
        Columns of the result (default ``encoder.dim``).
    nuclei
        Also measure the classical nuclei of every spot patch into it; the encoder must
        then read the spot patch itself (no context).
    progress, desc
        Show a progress bar with this label.
    times
        Where the seconds spent encoding and measuring are added.

    Returns
    -------
    numpy.ndarray or None
        ``float32`` ``(N, dim)``; None without an encoder.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> from gr2st.encoders import get_encoder
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "he.png"
    >>> Image.fromarray(np.full((64, 96, 3), 200, np.uint8)).save(path)
    >>> enc = get_encoder("efficientnet-lite0", backend="torch", device="cpu")
    >>> centres = np.array([[20.0, 20.0], [70.0, 40.0]])
    >>> encode_spots(path, centres, encoder=enc, size_px=32).shape
    (2, 1280)
    >>> encode_spots(path, centres, encoder=enc, size_px=32, transform=lambda f: f[:, :3],
    ...              dim=3).shape
    (2, 3)
    """
    if encoder is not None and nuclei is not None and encoder.context != 1:
        raise AssertionError("an encoder with context reads other patches than the nuclei")
    times = times if times is not None else PassTimes()
    n = len(centers)
    out = None
    if encoder is not None:
        out = np.empty((n, encoder.dim if dim is None else dim), np.float32)
    batches = _batches(
        image,
        centers,
        size_px=size_px if encoder is None else encoder.read_px(size_px),
        stain=stain,
        batch_size=batch_size,
        pool=pool,
        nuclei=nuclei,
        keep_patches=encoder is not None,
    )

    def measure(indices: np.ndarray, patches: np.ndarray) -> None:
        assert nuclei is not None
        t0 = time.perf_counter()
        nuclei.add(indices, patches)
        times.nuclei_s += time.perf_counter() - t0

    # In-process, the nuclei of a batch are measured in a thread while the next batch is
    # encoded: on a CPU the encoder's threads and the single-threaded measurements then
    # share the cores instead of taking turns. One batch in flight keeps the order and
    # the memory.
    with (
        tqdm(total=n, unit="spot", desc=desc, disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="gr2st-nuclei") as measuring,
    ):
        pending: Future[None] | None = None
        for batch in batches:
            if nuclei is not None and batch.nuclei is not None:
                nuclei.add_measured(batch.indices, *batch.nuclei)
            elif nuclei is not None:
                assert batch.patches is not None
                if pending is not None:
                    pending.result()
                pending = measuring.submit(measure, batch.indices, batch.patches)
            if encoder is not None and out is not None:
                assert batch.patches is not None
                t0 = time.perf_counter()
                features = encoder.encode(batch.patches)
                out[batch.indices] = features if transform is None else transform(features)
                times.encode_s += time.perf_counter() - t0
            bar.update(len(batch.indices))
        if pending is not None:
            pending.result()
    return out


def _batches(
    image: Slide | SlideSource | str | Path,
    centers: np.ndarray,
    *,
    size_px: int,
    stain: StainNormalizer | None,
    batch_size: int,
    pool: PatchWorkers | None,
    nuclei: SpotNuclei | None,
    keep_patches: bool,
) -> Iterator[PatchBatch]:
    """The patch batches of ``centers``, read here or by the worker processes."""
    if isinstance(image, SlideSource):
        if pool is None:
            raise ValueError("a SlideSource is read by the pool it was opened with: pass pool")
        yield from pool.batches(
            image,
            centers,
            size_px=size_px,
            batch_size=batch_size,
            stain=stain,
            nuclei=None if nuclei is None else nuclei.job(),
            keep_patches=keep_patches,
        )
        return
    for indices, patches in iter_patches(
        image, centers, size_px=size_px, batch_size=batch_size, stain=stain, prefetch=True
    ):
        yield PatchBatch(indices, patches, None)
