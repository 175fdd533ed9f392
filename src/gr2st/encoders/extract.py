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
everything they depend on: the image file's sha256, the spot coordinates, the patch size,
the stain normaliser's key, the version of the pixel code (:data:`PIXEL_CODE`), and the
encoder (name, weights hash, backend) or the nuclei source (for imported HoVer-Net
results, a fingerprint of their files). A run whose results are all cached decodes no
image at all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
    IMAGE_PATH,
    MICRONS_PER_PIXEL,
    PATCHES,
    SPATIAL,
    UNS,
    feature_key,
)
from gr2st._utils.files import sha256_bytes, sha256_file
from gr2st.encoders.base import Encoder, get_encoder
from gr2st.encoders.cache import ArrayCache
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.image.nuclei import (
    NUCLEI_SOURCES,
    ClassicalParams,
    NucleiOptions,
    NucleiTable,
    NucleusFeatures,
    annotate_nuclei,
    classify_nuclei,
    measure_patches,
)
from gr2st.image.nuclei.classical import ASSUMED_MPP
from gr2st.image.patches import iter_patches, patch_size_px
from gr2st.image.slide import Slide, open_slide
from gr2st.image.stain import StainNormalizer, get_stain_normalizer
from gr2st.image.workers import NucleiJob, PatchWorkers, SlideSource
from gr2st.sections import section_label

log = logging.getLogger(__name__)


# Bump when the way features are computed from patches changes (not the encoder itself).
_FEATURES_VERSION = 1

#: Version of the code that turns an image into patches, stain-normalised pixels and
#: nuclei (``gr2st.image``): part of every cache key. Change it (any new string) with
#: every change that alters those results; changes that keep them (refactoring, worker
#: processes) keep it, so that existing caches stay valid. Until the worker processes
#: came it was the sha256 of the sources, recomputed on every edit; this is its last
#: value, so caches written before still hit.
PIXEL_CODE = "83c55e88db0f14410c2372f8e995da8ee07bab828372613d323a6920eca86a0f"

StainOption = str | StainNormalizer | None

# More worker processes than this only add start-up time and memory.
_MAX_WORKERS = 32


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


# ----------------------------------------------------------------- section helpers


def image_path(adata: AnnData) -> Path:
    """The H&E image of ``adata`` (``uns[UNS][IMAGE_PATH]``), checked to exist."""
    path = adata.uns.get(UNS, {}).get(IMAGE_PATH)
    name = section_label(adata)
    if not path:
        raise GR2STDataError(
            f"section {name}: uns[{UNS!r}][{IMAGE_PATH!r}] is empty; image features need the "
            "H&E image"
        )
    path = Path(path)
    if not path.is_file():
        raise GR2STDataError(f"section {name}: image file {path} does not exist")
    return path


def spot_centers(adata: AnnData) -> np.ndarray:
    """``obsm[SPATIAL]`` as a C-contiguous float64 ``(n_obs, 2)`` array."""
    if SPATIAL not in adata.obsm:
        raise GR2STDataError(f"section {section_label(adata)}: obsm[{SPATIAL!r}] is missing")
    centers = np.ascontiguousarray(adata.obsm[SPATIAL], dtype=np.float64)
    if centers.shape != (adata.n_obs, 2):
        raise GR2STDataError(
            f"section {section_label(adata)}: obsm[{SPATIAL!r}] must have shape "
            f"({adata.n_obs}, 2), got {centers.shape}"
        )
    return centers


def resolve_stain(stain: StainOption) -> StainNormalizer | None:
    """``"reinhard"``/``"macenko"`` → a normaliser; ``None``/``"none"`` → None (no-op).

    Examples
    --------
    >>> resolve_stain("none") is None
    True
    >>> resolve_stain("reinhard").key.startswith("reinhard-")
    True
    """
    if stain is None or stain == "none":
        return None
    if isinstance(stain, str):
        return get_stain_normalizer(stain)
    if not isinstance(stain, StainNormalizer):
        raise GR2STConfigError(f"stain must be a name, None or a StainNormalizer, got {stain!r}")
    return stain


def parse_nuclei(nuclei: str) -> tuple[str, Path | None]:
    """``"classical"`` / ``"hovernet:<path>"`` / ``"none"`` → (source, HoVer-Net results).

    Examples
    --------
    >>> parse_nuclei("classical")
    ('classical', None)
    """
    source, sep, rest = nuclei.partition(":")
    if source == "hovernet":
        if not sep or not rest:
            raise GR2STConfigError(
                "nuclei='hovernet:<path>' needs the HoVer-Net results (folder or JSON file)"
            )
        path = Path(rest).expanduser()
        if not path.exists():
            raise GR2STConfigError(f"HoVer-Net results {path} do not exist")
        return source, path
    if source in ("classical", "none") and not sep:
        return source, None
    raise GR2STConfigError(
        f"nuclei must be 'classical', 'hovernet:<path>' or 'none', got {nuclei!r}"
    )


def _patch_px(adata: AnnData, size_px: int | None, patch_um: float | None) -> int:
    mpp = adata.uns.get(UNS, {}).get(MICRONS_PER_PIXEL)
    return patch_size_px(patch_px=size_px, patch_um=patch_um, mpp=mpp)


# ----------------------------------------------------------------------- cache keys


def _image_key(adata: AnnData, size: int, stain: StainNormalizer | None) -> dict[str, Any]:
    """The part of every cache key that identifies the pixels of each spot's patch."""
    return {
        # The file's sha256, as Slide.content_hash(), without decoding the image.
        "image": sha256_file(image_path(adata)),
        "coords": sha256_bytes(spot_centers(adata).tobytes()),
        "n_spots": adata.n_obs,
        "size_px": size,
        "stain": stain.key if stain is not None else "none",
        # Reading, cropping, normalising and nuclei code: results change when it does.
        "code": PIXEL_CODE,
    }


def _features_key(image_key: dict[str, Any], encoder: Encoder) -> dict[str, Any]:
    return {"kind": "features", "version": _FEATURES_VERSION, **image_key, **encoder.describe()}


def _nuclei_key(
    adata: AnnData, image_key: dict[str, Any], source: str, results: Path | None
) -> dict[str, Any]:
    key = {"kind": "nuclei", **image_key, "source": source}
    if results is not None:
        # Imported nuclei depend on the files and the spot ids, not on the pixels.
        key.update(
            image=None,
            stain=None,
            results=_files_fingerprint(results),
            spot_ids=sha256_bytes(*(str(s).encode() for s in adata.obs_names)),
            mpp=adata.uns.get(UNS, {}).get(MICRONS_PER_PIXEL),
        )
    return key


def _files_fingerprint(path: Path) -> str:
    """sha256 of the names, sizes and modification times of ``path`` or the files under it."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        stat = f.stat()
        name = f.relative_to(path) if path.is_dir() else f.name
        h.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------- nuclei plumbing


class _PatchNuclei:
    """The ``classical`` nuclei source fed with patches that are read anyway.

    Does what :class:`gr2st.image.nuclei.ClassicalNuclei` does, but on the batches of the
    shared pass, so that patches are not read and stain-normalised a second time: measure
    each batch, then type all nuclei of the section together.
    """

    def __init__(self, adata: AnnData, params: ClassicalParams | None = None) -> None:
        mpp = adata.uns.get(UNS, {}).get(MICRONS_PER_PIXEL)
        if mpp is None:
            warnings.warn(
                f"section {section_label(adata)}: uns[{UNS!r}][{MICRONS_PER_PIXEL!r}] is not "
                f"set; nuclei sizes assume {ASSUMED_MPP} µm/px",
                stacklevel=4,
            )
            mpp = ASSUMED_MPP
        self.mpp = float(mpp)
        self.params = params or ClassicalParams()
        self.n_spots = adata.n_obs
        self._spots: list[np.ndarray] = []
        self._features: list[NucleusFeatures] = []

    def add(self, indices: np.ndarray, patches: np.ndarray) -> None:
        spot, features = measure_patches(patches, microns_per_pixel=self.mpp, params=self.params)
        self.add_measured(indices, spot, features)

    def add_measured(
        self, indices: np.ndarray, spot: np.ndarray, features: NucleusFeatures
    ) -> None:
        """Add a batch measured elsewhere (a worker process); batches in spot order."""
        self._spots.append(indices[spot])
        self._features.append(features)

    def job(self) -> NucleiJob:
        """What a worker process needs to measure the batches."""
        return NucleiJob(self.mpp, self.params)

    def table(self) -> NucleiTable:
        features = NucleusFeatures.concat(self._features)
        return features.to_table(
            n_spots=self.n_spots,
            spot=np.concatenate([np.empty(0, np.int64), *self._spots]),
            type_id=classify_nuclei(features, params=self.params),
        )


@dataclass
class _KnownNuclei:
    """A nuclei source that returns a table found earlier (cache or shared pass)."""

    name: str
    found: NucleiTable

    def detect(self, adata: AnnData, *, size_px: int, progress: bool) -> NucleiTable:
        return self.found


def _table_arrays(table: NucleiTable) -> dict[str, np.ndarray]:
    return {f.name: np.asarray(getattr(table, f.name)) for f in dataclasses.fields(table)}


def _table_from_arrays(arrays: dict[str, np.ndarray]) -> NucleiTable:
    names = {f.name for f in dataclasses.fields(NucleiTable)}
    if set(arrays) != names:
        raise ValueError(f"nuclei arrays {sorted(arrays)} do not match {sorted(names)}")
    values: dict[str, Any] = {k: (a.item() if a.ndim == 0 else a) for k, a in arrays.items()}
    return NucleiTable(**values)


# ---------------------------------------------------------------------- the one pass


@dataclass
class _PassTimes:
    encode_s: float = 0.0
    nuclei_s: float = 0.0


def _one_pass(
    adata: AnnData,
    slide: Slide,
    *,
    encoder: Encoder | None,
    nuclei: _PatchNuclei | None,
    size: int,
    stain: StainNormalizer | None,
    batch_size: int,
    progress: bool,
    times: _PassTimes,
) -> np.ndarray | None:
    """Read every spot's patch once; encode it and/or measure its nuclei."""
    features = None if encoder is None else np.empty((adata.n_obs, encoder.dim), np.float32)
    if encoder is not None and nuclei is not None and encoder.context != 1:
        raise AssertionError("an encoder with context reads other patches than the nuclei")
    side = size if encoder is None else encoder.read_px(size)
    patches = iter_patches(
        slide, spot_centers(adata), size_px=side, batch_size=batch_size, stain=stain, prefetch=True
    )
    parts = ([encoder.name] if encoder is not None else []) + (["nuclei"] if nuclei else [])
    desc = f"{section_label(adata)} {' + '.join(parts)}"

    def measure(indices: np.ndarray, batch: np.ndarray) -> None:
        assert nuclei is not None
        t0 = time.perf_counter()
        nuclei.add(indices, batch)
        times.nuclei_s += time.perf_counter() - t0

    # The nuclei of a batch are measured in a thread while the next batch is encoded: on
    # a CPU the encoder's threads and the single-threaded measurements then share the
    # cores instead of taking turns. One batch in flight keeps the order and the memory.
    with (
        tqdm(total=adata.n_obs, unit="spot", desc=desc, disable=not progress) as bar,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="gr2st-nuclei") as measuring,
    ):
        pending: Future[None] | None = None
        for indices, batch in patches:
            if nuclei is not None:
                if pending is not None:
                    pending.result()
                pending = measuring.submit(measure, indices, batch)
            if encoder is not None and features is not None:
                t0 = time.perf_counter()
                features[indices] = encoder.encode(batch)
                times.encode_s += time.perf_counter() - t0
            bar.update(len(indices))
        if pending is not None:
            pending.result()
    return features


def _pool_pass(
    adata: AnnData,
    pool: PatchWorkers,
    source: SlideSource,
    *,
    encoder: Encoder | None,
    nuclei: _PatchNuclei | None,
    size: int,
    stain: StainNormalizer | None,
    batch_size: int,
    progress: bool,
    times: _PassTimes,
) -> np.ndarray | None:
    """:func:`_one_pass` with reading, stain and nuclei in the worker processes."""
    features = None if encoder is None else np.empty((adata.n_obs, encoder.dim), np.float32)
    if encoder is not None and nuclei is not None and encoder.context != 1:
        raise AssertionError("an encoder with context reads other patches than the nuclei")
    batches = pool.batches(
        source,
        spot_centers(adata),
        size_px=size if encoder is None else encoder.read_px(size),
        batch_size=batch_size,
        stain=stain,
        nuclei=None if nuclei is None else nuclei.job(),
        keep_patches=encoder is not None,
    )
    parts = ([encoder.name] if encoder is not None else []) + (["nuclei"] if nuclei else [])
    desc = f"{section_label(adata)} {' + '.join(parts)}"
    with tqdm(total=adata.n_obs, unit="spot", desc=desc, disable=not progress) as bar:
        for batch in batches:
            if encoder is not None and features is not None:
                assert batch.patches is not None
                t0 = time.perf_counter()
                features[batch.indices] = encoder.encode(batch.patches)
                times.encode_s += time.perf_counter() - t0
            if nuclei is not None:
                assert batch.nuclei is not None
                nuclei.add_measured(batch.indices, *batch.nuclei)
            bar.update(len(batch.indices))
    return features


def _check_workers(workers: int) -> None:
    if not isinstance(workers, int) or workers < 0:
        raise GR2STConfigError(f"workers must be a non-negative integer, got {workers!r}")


# -------------------------------------------------------------------- public API


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
) -> np.ndarray:
    """Encode the patch of every spot and store it in ``obsm[feature_key(encoder.name)]``.

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

    Returns
    -------
    numpy.ndarray
        ``float32`` ``(n_obs, encoder.dim)``, also written to ``adata.obsm``.

    Examples
    --------
    >>> import tempfile
    >>> from gr2st.datasets import synthetic
    >>> adata = synthetic(n_sections=1, grid=(2, 2), image_dir=tempfile.mkdtemp())[0]
    >>> extract_features(adata, stain=None, progress=False).shape
    (4, 1280)
    >>> "X_efficientnet-lite0" in adata.obsm
    True
    """
    enc = encoder if isinstance(encoder, Encoder) else get_encoder(encoder)
    _check_batch_size(batch_size)
    size = _patch_px(adata, size_px, patch_um)
    normalizer = resolve_stain(stain)
    key = _features_key(_image_key(adata, size, normalizer), enc)
    cache = ArrayCache(cache_dir) if cache_dir is not None else None
    features = _cached_features(cache, adata, key)
    if features is None:
        options: dict[str, Any] = {
            "encoder": enc,
            "nuclei": None,
            "size": size,
            "stain": normalizer,
            "batch_size": batch_size,
            "progress": progress,
            "times": _PassTimes(),
        }
        if slide is None:
            with open_slide(image_path(adata)) as opened:
                features = _one_pass(adata, opened, **options)
        else:
            features = _one_pass(adata, slide, **options)
        assert features is not None
        if cache is not None:
            cache.save(section_label(adata), "features", key, {"features": features})
    adata.obsm[feature_key(enc.name)] = features
    return features


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
    _check_batch_size(batch_size)
    _check_workers(workers)
    source, results = parse_nuclei(nuclei)
    normalizer = resolve_stain(stain)
    cache = ArrayCache(cache_dir) if cache_dir is not None else None
    # Look everything up first, so that a warm run decodes no image at all.
    plans = [_plan(a, enc, source, results, size_px, patch_um, normalizer, cache) for a in adatas]
    todo = [i for i, plan in enumerate(plans) if plan.needs_pixels]
    reports: list[SectionReport] = []
    with _Pixels(plans, todo, workers) as pixels:
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


class _Pixels:
    """The images of the sections that need pixels, each made ready ahead of its turn.

    In-process (``workers=0``), the next image is decoded by a background thread; with
    workers, the next image is handed to the pool (which decodes JPEG/PNG into shared
    memory). At most two images are held at once.
    """

    def __init__(self, plans: list[_Plan], todo: list[int], workers: int) -> None:
        self.plans, self.todo = plans, todo
        self.pool = PatchWorkers(min(workers, _MAX_WORKERS)) if workers and todo else None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gr2st-decode")
        self._ahead: dict[int, Future[Slide] | SlideSource] = {}
        self._prepare_after(-1)

    def _prepare_after(self, i: int) -> None:
        later = [j for j in self.todo if j > i]
        if later:
            adata = self.plans[later[0]].adata
            self._ahead[later[0]] = (
                self.pool.open(image_path(adata))
                if self.pool is not None
                else self._thread.submit(_open_decoded, adata)
            )

    def take(self, i: int) -> Slide | SlideSource | None:
        """Section ``i``'s image (``None`` when it needs no pixels); prepares the next."""
        ahead = self._ahead.pop(i, None)
        image = ahead.result() if isinstance(ahead, Future) else ahead
        self._prepare_after(i)
        return image

    def done(self, image: Slide | SlideSource | None) -> None:
        if isinstance(image, Slide):
            image.close()
        elif image is not None and self.pool is not None:
            self.pool.release(image)

    def __enter__(self) -> _Pixels:
        return self

    def __exit__(self, *exc: object) -> None:
        # After an error, release the image prepared for a section not reached.
        for ahead in self._ahead.values():
            if isinstance(ahead, Future):
                if not ahead.cancel() and ahead.exception() is None:
                    ahead.result().close()
            elif self.pool is not None:
                self.pool.release(ahead)
        self._thread.shutdown()
        if self.pool is not None:
            self.pool.close()


def _open_decoded(adata: AnnData) -> Slide:
    """Open the section's image and read one spot's pixel, so that formats decoded on
    first use (JPEG, PNG) are decoded now, in the calling (background) thread."""
    slide = open_slide(image_path(adata))
    if adata.n_obs:
        x, y = spot_centers(adata)[0]
        slide.read_region(int(x), int(y), 1, 1)
    return slide


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise GR2STConfigError(f"batch_size must be a positive integer, got {batch_size!r}")


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
        return _table_from_arrays(hit)
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
    size = _patch_px(adata, size_px, patch_um)
    image_key = _image_key(adata, size, stain)
    f_key = _features_key(image_key, encoder)
    n_key = None if source == "none" else _nuclei_key(adata, image_key, source, results)
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
) -> _PassTimes:
    adata, name, times = plan.adata, section_label(plan.adata), _PassTimes()
    features, table = plan.features, plan.nuclei
    measure = None
    if plan.nuclei_key is not None and table is None and plan.results is None:
        measure = _PatchNuclei(adata)
    if image is not None:
        pass_options: dict[str, Any] = {
            "size": plan.size,
            "stain": stain,
            "batch_size": batch_size,
            "progress": progress,
            "times": times,
        }

        def read_pass(enc: Encoder | None, nuclei: _PatchNuclei | None) -> np.ndarray | None:
            if isinstance(image, Slide):
                return _one_pass(adata, image, encoder=enc, nuclei=nuclei, **pass_options)
            assert pool is not None
            return _pool_pass(adata, pool, image, encoder=enc, nuclei=nuclei, **pass_options)

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
            cache.save(name, "nuclei", plan.nuclei_key, _table_arrays(table))
    annotate_nuclei(
        adata, source=_KnownNuclei(plan.source, table), size_px=plan.size, progress=False
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
    _check_batch_size(batch_size)
    normalizer = resolve_stain(stain)
    cache = ArrayCache(cache_dir) if cache_dir is not None else None
    for adata in adatas:
        name = section_label(adata)
        size = _patch_px(adata, size_px, patch_um)
        key = {"kind": "patches", "out_px": out_px, **_image_key(adata, size, normalizer)}
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
