"""Nuclear types per spot: the reference's spot type, from pluggable nuclei sources.

The reference runs HoVer-Net (PanNuke, 6 types) on each spot's patch, takes per spot
the proportion of nuclei of each type in the order ``nolabe, necros, neopla, inflam,
connec, no-neo`` and calls the largest the spot type (ties → first in that order; no
nuclei → ``nolabe``; a missing record → 0). :func:`annotate_nuclei` reproduces that
summary from any registered source:

- ``classical`` (default): colour deconvolution + watershed + a size/shape/stain rule
  (:mod:`gr2st.image.nuclei.classical`). A fast CPU heuristic that needs no model
  weights — **a proxy, not HoVer-Net**: it sees size, shape and darkness only, not the
  tissue context a trained network uses.
- ``hovernet``: real HoVer-Net results computed elsewhere
  (:mod:`gr2st.image.nuclei.hovernet`).

Register another source with ``NUCLEI_SOURCES.register(name)`` on a factory taking
:class:`NucleiOptions` and returning an object with
``detect(adata, *, size_px, progress) -> NucleiTable``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from anndata import AnnData

from gr2st._constants import (
    CELL_TYPE,
    DEFAULT_PATCH_PX,
    IMAGE_PATH,
    MICRONS_PER_PIXEL,
    NUCLEI_COMPOSITION,
    NUCLEI_COUNTS,
    NUCLEI_MORPHOLOGY,
    SPATIAL,
    UNS,
)
from gr2st._registry import Registry
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.image.nuclei.classical import (
    ASSUMED_MPP,
    ClassicalParams,
    NucleusFeatures,
    classify_nuclei,
    detect_nuclei,
    hed_channels,
    measure_nuclei,
    measure_patches,
    segment_nuclei,
    segment_patch,
)
from gr2st.image.nuclei.hovernet import (
    HOVERNET_PANNUKE_TYPES,
    HoVerNetImport,
    hovernet_type_ids,
    type_ids_from_names,
)
from gr2st.image.nuclei.summary import (
    MORPHOLOGY_NAMES,
    NucleiResult,
    NucleiTable,
    composition,
    dominant_type,
    summarise,
)
from gr2st.image.patches import iter_patches
from gr2st.image.slide import open_slide

if TYPE_CHECKING:
    from gr2st.image.stain import StainNormalizer

#: ``uns[UNS]`` fields written by :func:`annotate_nuclei`.
NUCLEI_SOURCE_KEY = "nuclei_source"
NUCLEI_MORPHOLOGY_NAMES_KEY = "nuclei_morphology_names"
NUCLEI_MISSING_KEY = "nuclei_missing"
NUCLEI_PATCH_PX_KEY = "nuclei_patch_px"


class NucleiSource(Protocol):
    """What :func:`annotate_nuclei` needs from a nuclei source."""

    name: str

    def detect(self, adata: AnnData, *, size_px: int, progress: bool) -> NucleiTable:
        """Nuclei of every spot of ``adata`` (patch side ``size_px``)."""
        ...


@dataclass(frozen=True)
class NucleiOptions:
    """Options a source factory may use (each source says which it accepts)."""

    stain: StainNormalizer | None = None
    hovernet_path: Path | None = None
    batch_size: int = 32
    n_jobs: int = 1


class ClassicalNuclei:
    """The ``classical`` source: segment and type nuclei in each spot's patch.

    All nuclei of a section are measured first and typed together, so "dark" means
    dark relative to this section's median nucleus.

    Parameters
    ----------
    params
        Detector and typing thresholds.
    stain
        Stain normaliser applied to the patches first (``None``: colours as scanned).
    batch_size
        Patches read and deconvolved at once.
    n_jobs
        Threads for the per-patch watershed.
    """

    name = "classical"

    def __init__(
        self,
        *,
        params: ClassicalParams | None = None,
        stain: StainNormalizer | None = None,
        batch_size: int = 32,
        n_jobs: int = 1,
    ) -> None:
        if batch_size < 1 or n_jobs < 1:
            raise GR2STConfigError(
                f"batch_size and n_jobs must be >= 1, got {batch_size} and {n_jobs}"
            )
        self.params = params or ClassicalParams()
        self.stain = stain
        self.batch_size = batch_size
        self.n_jobs = n_jobs

    def detect(self, adata: AnnData, *, size_px: int, progress: bool) -> NucleiTable:
        meta = adata.uns.get(UNS, {})
        image = meta.get(IMAGE_PATH)
        if image is None:
            raise GR2STDataError(
                f"uns[{UNS!r}][{IMAGE_PATH!r}] is not set: the classical nuclei source needs "
                "the section's H&E image"
            )
        mpp = meta.get(MICRONS_PER_PIXEL)
        if mpp is None:
            warnings.warn(
                f"uns[{UNS!r}][{MICRONS_PER_PIXEL!r}] is not set; nuclei sizes assume "
                f"{ASSUMED_MPP} µm/px",
                stacklevel=3,
            )
            mpp = ASSUMED_MPP
        spots: list[np.ndarray] = []
        feats: list[NucleusFeatures] = []
        with open_slide(image) as slide:
            for indices, patches in iter_patches(
                slide,
                adata.obsm[SPATIAL],
                size_px=size_px,
                batch_size=self.batch_size,
                stain=self.stain,
                progress=progress,
            ):
                spot, f = measure_patches(
                    patches, microns_per_pixel=mpp, params=self.params, n_jobs=self.n_jobs
                )
                spots.append(indices[spot])
                feats.append(f)
        features = NucleusFeatures.concat(feats)
        return features.to_table(
            n_spots=adata.n_obs,
            spot=np.concatenate([np.empty(0, np.int64), *spots]),
            type_id=classify_nuclei(features, params=self.params),
        )


NUCLEI_SOURCES: Registry[Callable[[NucleiOptions], NucleiSource]] = Registry("nuclei source")


@NUCLEI_SOURCES.register("classical")
def _classical_source(options: NucleiOptions) -> NucleiSource:
    if options.hovernet_path is not None:
        raise GR2STConfigError("hovernet_path is only used by source='hovernet'")
    return ClassicalNuclei(
        stain=options.stain, batch_size=options.batch_size, n_jobs=options.n_jobs
    )


@NUCLEI_SOURCES.register("hovernet")
def _hovernet_source(options: NucleiOptions) -> NucleiSource:
    if options.hovernet_path is None:
        raise GR2STConfigError(
            "source='hovernet' needs hovernet_path: a folder of per-spot HoVer-Net files "
            "or one whole-slide HoVer-Net JSON"
        )
    if options.stain is not None:
        raise GR2STConfigError("stain is not used by source='hovernet' (nuclei are imported)")
    return HoVerNetImport(options.hovernet_path)


def annotate_nuclei(
    adata: AnnData,
    *,
    source: str | NucleiSource = "classical",
    size_px: int = DEFAULT_PATCH_PX,
    stain: StainNormalizer | None = None,
    hovernet_path: str | Path | None = None,
    batch_size: int = 32,
    n_jobs: int = 1,
    progress: bool = True,
) -> NucleiResult:
    """Count nuclei by type in each spot's patch and write the spot type into ``adata``.

    Writes (all at the end, so a failure leaves ``adata`` untouched):
    ``obsm[NUCLEI_COUNTS]`` (int, n × 6), ``obsm[NUCLEI_COMPOSITION]`` (proportions,
    rows sum to 1 or are all-zero without nuclei), ``obsm[NUCLEI_MORPHOLOGY]`` (see
    :data:`MORPHOLOGY_NAMES`, NaN where undefined), ``obs[CELL_TYPE]`` (int 0..5, the
    reference's rule, see :func:`dominant_type`) and, in ``uns[UNS]``, the source name,
    morphology column names, number of spots without a record and patch side.

    Parameters
    ----------
    adata
        One section in gr2st's AnnData shape (``obsm[SPATIAL]`` spot centres; the
        ``classical`` source also needs ``uns[UNS][IMAGE_PATH]``).
    source
        A registered source name (``NUCLEI_SOURCES``: ``"classical"``, ``"hovernet"``) or
        a source object (e.g. ``ClassicalNuclei(params=...)``).
    size_px
        Patch side in full-resolution pixels (the reference: 224).
    stain
        Stain normaliser for the ``classical`` source.
    hovernet_path
        HoVer-Net results for the ``hovernet`` source: a folder of per-spot files or
        one whole-slide JSON (see :mod:`gr2st.image.nuclei.hovernet`).
    batch_size
        Patches per batch (``classical``).
    n_jobs
        Threads for the per-patch segmentation (``classical``).

        These four configure a source given by name; a source object carries its own.
    progress
        Show a progress bar.

    Returns
    -------
    NucleiResult
        What was written, as arrays.

    Examples
    --------
    >>> import tempfile
    >>> from gr2st.datasets import synthetic
    >>> section = synthetic(n_sections=1, grid=(3, 3), image_dir=tempfile.mkdtemp())[0]
    >>> result = annotate_nuclei(section, progress=False)
    >>> section.obsm["nuclei_counts"].shape, section.obs["cell_type"].dtype
    ((9, 6), dtype('int64'))
    """
    if isinstance(source, str):
        options = NucleiOptions(
            stain=stain,
            hovernet_path=None if hovernet_path is None else Path(hovernet_path),
            batch_size=batch_size,
            n_jobs=n_jobs,
        )
        detector = NUCLEI_SOURCES.get(source)(options)
    elif stain is not None or hovernet_path is not None:
        raise GR2STConfigError(
            "stain and hovernet_path configure a named source; pass them to the source "
            "object instead (e.g. ClassicalNuclei(stain=...))"
        )
    else:
        detector = source
    if size_px < 1:
        raise GR2STConfigError(f"size_px must be a positive number of pixels, got {size_px}")
    centers = np.asarray(adata.obsm.get(SPATIAL, np.empty((0, 0))))
    if centers.shape != (adata.n_obs, 2):
        raise GR2STDataError(
            f"obsm[{SPATIAL!r}] must hold (n_spots, 2) spot centres, got {centers.shape}"
        )
    table = detector.detect(adata, size_px=size_px, progress=progress)
    result = summarise(table, source=detector.name)
    if result.n_missing:
        warnings.warn(
            f"{result.n_missing} of {adata.n_obs} spots have no nuclei record from source "
            f"{detector.name!r}; they get type 0 (nolabe) and zero counts, as in the reference",
            stacklevel=2,
        )
    adata.obsm[NUCLEI_COUNTS] = result.counts
    adata.obsm[NUCLEI_COMPOSITION] = result.composition
    adata.obsm[NUCLEI_MORPHOLOGY] = result.morphology
    adata.obs[CELL_TYPE] = result.cell_type
    meta = adata.uns.setdefault(UNS, {})
    meta[NUCLEI_SOURCE_KEY] = detector.name
    meta[NUCLEI_MORPHOLOGY_NAMES_KEY] = list(result.morphology_names)
    meta[NUCLEI_MISSING_KEY] = result.n_missing
    meta[NUCLEI_PATCH_PX_KEY] = int(size_px)
    return result


__all__ = [
    "HOVERNET_PANNUKE_TYPES",
    "MORPHOLOGY_NAMES",
    "NUCLEI_MISSING_KEY",
    "NUCLEI_MORPHOLOGY_NAMES_KEY",
    "NUCLEI_PATCH_PX_KEY",
    "NUCLEI_SOURCES",
    "NUCLEI_SOURCE_KEY",
    "ClassicalNuclei",
    "ClassicalParams",
    "HoVerNetImport",
    "NucleiOptions",
    "NucleiResult",
    "NucleiSource",
    "NucleiTable",
    "NucleusFeatures",
    "annotate_nuclei",
    "classify_nuclei",
    "composition",
    "detect_nuclei",
    "dominant_type",
    "hed_channels",
    "hovernet_type_ids",
    "measure_nuclei",
    "measure_patches",
    "segment_nuclei",
    "segment_patch",
    "summarise",
    "type_ids_from_names",
]
