"""Per-spot image inputs of a section: frozen patch features and nuclear types, cached.

:func:`extract_features` encodes the patch of every spot and writes
``obsm[feature_key(encoder.name)]``. :func:`prepare_image_inputs` does that and the
nuclear typing of :func:`gr2st.image.nuclei.annotate_nuclei` (``obsm`` nuclei summaries,
``obs[CELL_TYPE]``) for a list of sections in one pass over the patches: each image is
decoded once, each patch cut and stain-normalised once (in a background thread, while the
previous batch is encoded and its nuclei measured), and the next section's image is decoded
in the background while the current one is processed.

With ``workers`` (``gr2st features --workers N``), reading, stain normalisation and the
classical nuclei measurements run in worker processes
(:class:`~gr2st.image.workers.PatchWorkers`) while this process encodes the batches in
order (on the GPU when the encoder is there); the results are the same as in-process.

Results are cached in an :class:`~gr2st.encoders.cache.ArrayCache` under keys holding
everything they depend on (:mod:`gr2st.encoders.keys`). A run whose results are all
cached decodes no image at all. The patch → encoder loop itself is
:func:`~gr2st.encoders.encode_spots`; the option checks are in
:mod:`gr2st.encoders.options`, the nuclei plumbing in :mod:`gr2st.encoders.nuclei`, the
image prefetcher in :mod:`gr2st.encoders.prefetch`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData
from tqdm.auto import tqdm

from gr2st._constants import (
    DEFAULT_ENCODER,
    DEFAULT_NUCLEI,
    DEFAULT_STAIN,
    PATCHES,
    feature_key,
)
from gr2st.encoders.base import Encoder
from gr2st.encoders.cache import ArrayCache
from gr2st.encoders.keys import features_key, image_key, nuclei_key, patches_key
from gr2st.encoders.nuclei import KnownNuclei, SpotNuclei, table_arrays, table_from_arrays
from gr2st.encoders.options import (
    StainOption,
    check_batch_size,
    check_workers,
    image_path,
    parse_nuclei,
    resolve_stain,
    section_patch_px,
    spot_centers,
)
from gr2st.encoders.prefetch import ImagePrefetcher
from gr2st.encoders.registry import get_encoder
from gr2st.encoders.spots import PassTimes, encode_spots
from gr2st.errors import GR2STConfigError
from gr2st.image.nuclei import NUCLEI_SOURCES, NucleiOptions, NucleiTable, annotate_nuclei
from gr2st.image.patches import iter_patches
from gr2st.image.slide import Slide, open_slide
from gr2st.image.stain import StainNormalizer
from gr2st.image.workers import PatchWorkers, SlideSource
from gr2st.sections import section_label

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SectionReport:
    """What :func:`prepare_image_inputs` did for one section.

    Attributes
    ----------
    wait_s
        Time spent waiting for the section's image to be decoded (0 when it was decoded
        in the background meanwhile, or not needed).
    encode_s, nuclei_s
        Time spent encoding patches and measuring nuclei (the patch reading and stain
        normalisation run alongside, in a background thread). The nuclei of a batch are
        measured while the next one is encoded, so the two overlap: their sum may exceed
        ``total_s``.
    total_s
        Wall time of the section, everything included except the cache look-up, which
        is done for all sections before the first one is processed.
    """

    section: str
    n_spots: int
    wait_s: float
    encode_s: float
    nuclei_s: float
    total_s: float
    features_cached: bool
    nuclei_cached: bool


def extract_features(
    adata: AnnData,
    *,
    encoder: Encoder | str = DEFAULT_ENCODER,
    size_px: int | None = None,
    patch_um: float | None = None,
    stain: StainOption = DEFAULT_STAIN,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
    slide: Slide | None = None,
    key_added: str | None = None,
) -> np.ndarray:
    """Encode the patch of every spot and store it in ``obsm[key_added]``.

    Parameters
    ----------
    adata
        One section: ``obsm[SPATIAL]`` spot centres (full-resolution pixels) and
        ``uns[UNS][IMAGE_PATH]``.
    encoder
        An :class:`~gr2st.encoders.Encoder` or a name for :func:`get_encoder`.
    size_px, patch_um
        Patch side in full-resolution pixels (default 224) or in microns (needs
        ``uns[UNS][MICRONS_PER_PIXEL]``); give at most one.
    stain
        ``"reinhard"`` (default), ``"macenko"``, a ``StainNormalizer``, or None/``"none"``.
    cache_dir
        Folder of the feature cache; None computes without caching.
    batch_size
        Patches encoded at once (bounds memory).
    progress
        Show a progress bar.
    slide
        The already opened :class:`~gr2st.image.Slide` of the section's image, to avoid
        decoding it again; by default it is opened here (only on a cache miss).
    key_added
        The ``obsm`` key of the features (default ``feature_key(encoder.name)``, i.e.
        ``X_<encoder name>``, where the models look for them).

    Returns
    -------
    numpy.ndarray
        ``float32`` ``(n_obs, encoder.dim)``, also written to ``adata.obsm[key_added]``.

    Examples
    --------
    >>> import tempfile
    >>> from gr2st.datasets import synthetic
    >>> adata = synthetic(n_sections=1, grid=(2, 2), image_dir=tempfile.mkdtemp())[0]
    >>> extract_features(adata, stain=None, progress=False).shape
    (4, 1280)
    >>> "X_efficientnet-lite0" in adata.obsm
    True
    >>> _ = extract_features(adata, stain=None, progress=False, key_added="lite0")
    >>> adata.obsm["lite0"].shape
    (4, 1280)
    """
    enc = encoder if isinstance(encoder, Encoder) else get_encoder(encoder)
    check_batch_size(batch_size)
    if key_added is not None and (not isinstance(key_added, str) or not key_added):
        raise GR2STConfigError(f"key_added must be a non-empty string, got {key_added!r}")
    size = section_patch_px(adata, size_px, patch_um)
    normalizer = resolve_stain(stain)
    key = features_key(image_key(adata, size, normalizer), enc)
    cache = ArrayCache(cache_dir) if cache_dir is not None else None
    features = _cached_features(cache, adata, key)
    if features is None:
        with open_slide(image_path(adata)) if slide is None else nullcontext(slide) as image:
            features = encode_spots(
                image,
                spot_centers(adata),
                encoder=enc,
                size_px=size,
                stain=normalizer,
                batch_size=batch_size,
                progress=progress,
                desc=_describe(adata, enc, None),
            )
        assert features is not None
        if cache is not None:
            cache.save(section_label(adata), "features", key, {"features": features})
    adata.obsm[key_added or feature_key(enc.name)] = features
    return features


def _describe(adata: AnnData, encoder: Encoder | None, nuclei: SpotNuclei | None) -> str:
    """Progress-bar label of a pass over a section: what it computes."""
    parts = ([encoder.name] if encoder is not None else []) + (["nuclei"] if nuclei else [])
    return f"{section_label(adata)} {' + '.join(parts)}"


def prepare_image_inputs(
    adatas: Sequence[AnnData],
    *,
    encoder: Encoder | str = DEFAULT_ENCODER,
    nuclei: str = DEFAULT_NUCLEI,
    size_px: int | None = None,
    patch_um: float | None = None,
    stain: StainOption = DEFAULT_STAIN,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
    on_section: Callable[[SectionReport], None] | None = None,
    workers: int = 0,
) -> list[SectionReport]:
    """Fill the image features and nuclear types of every section, using the cache.

    Writes ``obsm[feature_key(encoder.name)]`` (as :func:`extract_features`) and, unless
    ``nuclei="none"``, what :func:`gr2st.image.nuclei.annotate_nuclei` writes
    (``obsm`` nuclei counts, composition and morphology, ``obs[CELL_TYPE]`` and its
    ``uns`` fields). The classical nuclei are measured on the same normalised patches
    as the features.

    Parameters
    ----------
    adatas
        Sections with ``obsm[SPATIAL]`` and ``uns[UNS][IMAGE_PATH]``.
    encoder
        An :class:`~gr2st.encoders.Encoder` or a name for :func:`get_encoder`.
    nuclei
        ``"classical"`` (scikit-image segmentation), ``"hovernet:<path>"`` (imported
        HoVer-Net results: a folder of per-spot files or one JSON) or ``"none"``.
    size_px, patch_um, stain, batch_size
        As in :func:`extract_features`.
    cache_dir
        Cache folder; None computes everything without caching.
    progress
        Show progress bars.
    on_section
        Called with each section's report as soon as the section is done.
    workers
        Worker processes that read, stain-normalise and measure the nuclei of the
        patches while this process encodes them (same results); 0 runs everything here,
        with one background thread for reading (see :func:`default_workers`).

    Returns
    -------
    list[SectionReport]
        Per-section timings and cache hits, in the order of ``adatas``.

    Examples
    --------
    >>> import tempfile
    >>> from gr2st.datasets import synthetic
    >>> sections = synthetic(n_sections=2, grid=(2, 2), image_dir=tempfile.mkdtemp())
    >>> cache = tempfile.mkdtemp()
    >>> _ = prepare_image_inputs(sections, size_px=48, cache_dir=cache, progress=False)
    >>> again = prepare_image_inputs(sections, size_px=48, cache_dir=cache, progress=False)
    >>> [(r.features_cached, r.nuclei_cached) for r in again]
    [(True, True), (True, True)]
    """
    enc = encoder if isinstance(encoder, Encoder) else get_encoder(encoder)
    check_batch_size(batch_size)
    check_workers(workers)
    source, results = parse_nuclei(nuclei)
    normalizer = resolve_stain(stain)
    cache = ArrayCache(cache_dir) if cache_dir is not None else None
    # Look everything up first, so that a warm run decodes no image at all.
    plans = [_plan(a, enc, source, results, size_px, patch_um, normalizer, cache) for a in adatas]
    todo = [i for i, plan in enumerate(plans) if plan.needs_pixels]
    reports: list[SectionReport] = []
    with ImagePrefetcher([plan.adata for plan in plans], todo, workers) as pixels:
        for i, plan in enumerate(plans):
            start = time.perf_counter()
            image = pixels.take(i)
            wait = time.perf_counter() - start
            try:
                times = _run(plan, image, pixels.pool, enc, normalizer, cache, batch_size, progress)
            finally:
                pixels.done(image)
            report = SectionReport(
                section=section_label(plan.adata),
                n_spots=plan.adata.n_obs,
                wait_s=wait,
                encode_s=times.encode_s,
                nuclei_s=times.nuclei_s,
                total_s=time.perf_counter() - start,
                features_cached=plan.features is not None,
                nuclei_cached=plan.nuclei is not None,
            )
            reports.append(report)
            if on_section is not None:
                on_section(report)
    return reports


def _cached_features(
    cache: ArrayCache | None, adata: AnnData, key: dict[str, Any]
) -> np.ndarray | None:
    if cache is None:
        return None
    hit = cache.load(section_label(adata), "features", key, n_rows=adata.n_obs)
    return None if hit is None else hit["features"]


def _cached_nuclei(
    cache: ArrayCache | None, adata: AnnData, key: dict[str, Any]
) -> NucleiTable | None:
    if cache is None:
        return None
    hit = cache.load(section_label(adata), "nuclei", key)
    if hit is None:
        return None
    try:
        return table_from_arrays(hit)
    except (ValueError, TypeError) as err:
        log.warning(
            "ignoring cached nuclei of section %s (%s); recomputing", section_label(adata), err
        )
        return None


@dataclass
class _Plan:
    """One section's settings, cache keys and whatever the cache already holds."""

    adata: AnnData
    size: int
    source: str
    results: Path | None
    features_key: dict[str, Any]
    nuclei_key: dict[str, Any] | None
    features: np.ndarray | None
    nuclei: NucleiTable | None

    @property
    def needs_pixels(self) -> bool:
        measure = self.nuclei_key is not None and self.nuclei is None and self.results is None
        return self.features is None or measure


def _plan(
    adata: AnnData,
    encoder: Encoder,
    source: str,
    results: Path | None,
    size_px: int | None,
    patch_um: float | None,
    stain: StainNormalizer | None,
    cache: ArrayCache | None,
) -> _Plan:
    size = section_patch_px(adata, size_px, patch_um)
    pixels = image_key(adata, size, stain)
    f_key = features_key(pixels, encoder)
    n_key = None if source == "none" else nuclei_key(adata, pixels, source, results)
    return _Plan(
        adata=adata,
        size=size,
        source=source,
        results=results,
        features_key=f_key,
        nuclei_key=n_key,
        features=_cached_features(cache, adata, f_key),
        nuclei=None if n_key is None else _cached_nuclei(cache, adata, n_key),
    )


def _run(
    plan: _Plan,
    image: Slide | SlideSource | None,
    pool: PatchWorkers | None,
    encoder: Encoder,
    stain: StainNormalizer | None,
    cache: ArrayCache | None,
    batch_size: int,
    progress: bool,
) -> PassTimes:
    adata, name, times = plan.adata, section_label(plan.adata), PassTimes()
    features, table = plan.features, plan.nuclei
    measure = None
    if plan.nuclei_key is not None and table is None and plan.results is None:
        measure = SpotNuclei(adata)
    if image is not None:

        def read_pass(enc: Encoder | None, nuclei: SpotNuclei | None) -> np.ndarray | None:
            return encode_spots(
                image,
                spot_centers(adata),
                encoder=enc,
                size_px=plan.size,
                stain=stain,
                batch_size=batch_size,
                pool=pool,
                nuclei=nuclei,
                progress=progress,
                desc=_describe(adata, enc, nuclei),
                times=times,
            )

        if features is None and measure is not None and encoder.context != 1:
            # The context encoder reads larger patches than the nuclei: two passes.
            features = read_pass(encoder, None)
            read_pass(None, measure)
        else:
            computed = read_pass(encoder if features is None else None, measure)
            features = features if computed is None else computed
    if features is None:
        raise AssertionError(f"section {name}: features neither cached nor computed")
    if plan.features is None and cache is not None:
        cache.save(name, "features", plan.features_key, {"features": features})
    adata.obsm[feature_key(encoder.name)] = features
    if plan.nuclei_key is None:
        return times
    t0 = time.perf_counter()
    if table is None:
        if measure is not None:
            table = measure.table()
        else:
            options = NucleiOptions(hovernet_path=plan.results, batch_size=batch_size)
            detector = NUCLEI_SOURCES.get(plan.source)(options)
            table = detector.detect(adata, size_px=plan.size, progress=progress)
        if cache is not None:
            cache.save(name, "nuclei", plan.nuclei_key, table_arrays(table))
    annotate_nuclei(
        adata, source=KnownNuclei(plan.source, table), size_px=plan.size, progress=False
    )
    times.nuclei_s += time.perf_counter() - t0
    return times


def extract_patches(
    adatas: Sequence[AnnData],
    *,
    out_px: int,
    size_px: int | None = None,
    patch_um: float | None = None,
    stain: StainOption = DEFAULT_STAIN,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> None:
    """Store every spot's stain-normalised patch as ``uint8`` in ``obsm[PATCHES]``.

    The methods that learn from pixels (HisToGene, Hist2ST, …) train for hundreds of
    epochs on the same patches; keeping them decoded, cropped, resized and normalised
    once (and cached on disk) means no epoch touches a JPEG. The crop is the one the
    frozen encoders see (``size_px``/``patch_um``, default 224 px), resized to
    ``out_px`` with anti-aliasing, so every method looks at the same tissue.

    Parameters
    ----------
    adatas
        Sections with ``obsm[SPATIAL]`` and ``uns[UNS][IMAGE_PATH]``.
    out_px
        Side of the stored patches.
    size_px, patch_um, stain, cache_dir
        As in :func:`extract_features`.
    batch_size
        Patches read at once.
    progress
        Show a progress bar per section.

    Examples
    --------
    >>> import tempfile
    >>> from gr2st.datasets import synthetic
    >>> sections = synthetic(n_sections=1, grid=(2, 3), image_dir=tempfile.mkdtemp())
    >>> extract_patches(sections, out_px=16, size_px=48, stain=None, progress=False)
    >>> sections[0].obsm["patches"].shape, sections[0].obsm["patches"].dtype
    ((6, 16, 16, 3), dtype('uint8'))
    """
    if not isinstance(out_px, int) or out_px < 1:
        raise GR2STConfigError(f"out_px must be a positive integer, got {out_px!r}")
    check_batch_size(batch_size)
    normalizer = resolve_stain(stain)
    cache = ArrayCache(cache_dir) if cache_dir is not None else None
    for adata in adatas:
        name = section_label(adata)
        size = section_patch_px(adata, size_px, patch_um)
        key = patches_key(image_key(adata, size, normalizer), out_px)
        hit = None if cache is None else cache.load(name, "patches", key, n_rows=adata.n_obs)
        if hit is not None:
            adata.obsm[PATCHES] = hit["patches"]
            continue
        patches = np.empty((adata.n_obs, out_px, out_px, 3), np.uint8)
        batches = iter_patches(
            image_path(adata),
            spot_centers(adata),
            size_px=size,
            out_px=out_px,
            batch_size=batch_size,
            stain=normalizer,
        )
        with tqdm(
            total=adata.n_obs, unit="spot", desc=f"{name} patches", disable=not progress
        ) as bar:
            for indices, batch in batches:
                patches[indices] = batch
                bar.update(len(indices))
        if cache is not None:
            cache.save(name, "patches", key, {"patches": patches})
        adata.obsm[PATCHES] = patches
