"""Log-normalisation of spot counts, as in the reference: ``log10(1 + 1e4 · x / library)``.

The library size of a spot is the sum of its counts over the *library genes*, by
default the panel itself (the reference's convention). Predicting genes outside the
panel ("all genes") keeps the panel as library genes so that every gene is scaled by
the same per-spot factor::

    prepare_section(adata, genes=common_genes(train), library_genes=get_panel("her2st-785"))
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from tqdm.auto import tqdm

from gr2st._constants import COUNTS_LAYER, HAS_COUNTS, UNS, ZERO_PANEL_SPOTS
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.genes.panels import check_genes
from gr2st.io._validate import as_counts, examples
from gr2st.sections import dense, section_label

log = logging.getLogger(__name__)

#: Target library size of the reference normalisation.
SCALE = 1e4


def log_normalize(counts: Any, *, library_size: Any = None, scale: float = SCALE) -> np.ndarray:
    """Return ``log10(1 + scale · counts / library_size)`` per spot, as dense float32.

    Parameters
    ----------
    counts
        Spots × genes counts (dense or sparse).
    library_size
        Per-spot library sizes; default: the row sums of ``counts``.
    scale
        Target library size.

    Raises
    ------
    GR2STDataError
        A spot with a zero (or negative, or non-finite) library size, which would give
        NaN; drop such spots first (:func:`prepare_section` does).

    Examples
    --------
    >>> log_normalize(np.array([[1, 3]]), scale=4.0).round(3)
    array([[0.301, 0.602]], dtype=float32)
    """
    x = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    x = x.astype(np.float64)
    lib = x.sum(axis=1) if library_size is None else np.asarray(library_size, dtype=np.float64)
    if lib.shape != (x.shape[0],):
        raise GR2STDataError(
            f"library_size has shape {lib.shape}; expected one value per spot ({x.shape[0]},)"
        )
    bad = ~(np.isfinite(lib) & (lib > 0))
    if bad.any():
        raise GR2STDataError(
            f"{int(bad.sum())} spot(s) have a zero or invalid library size (rows "
            f"{examples(np.flatnonzero(bad).tolist())}); drop them before normalising"
        )
    # log1p keeps precision for small ratios; dividing by ln 10 gives log10(1 + ·).
    return (np.log1p(scale * x / lib[:, None]) / np.log(10.0)).astype(np.float32)


def prepare_section(
    adata: AnnData,
    *,
    genes: Sequence[str],
    library_genes: Sequence[str] | None = None,
    scale: float = SCALE,
    log_dropped: bool = True,
) -> AnnData:
    """Restrict a section to ``genes`` and log-normalise it for the benchmark methods.

    Parameters
    ----------
    adata
        A section with raw counts in ``X`` (as returned by :mod:`gr2st.io`).
    genes
        Genes to keep, in this order.
    library_genes
        Genes whose counts sum to each spot's library size; default: ``genes``.
    scale
        Target library size.
    log_dropped
        Log a warning naming the spots dropped for a zero library (False when the same
        section is prepared again with the same library genes).

    Returns
    -------
    AnnData
        A new object: ``X`` = log-normalised expression (float32, dense),
        ``layers["counts"]`` = the raw counts of ``genes`` (CSR), spots whose library
        size is zero dropped (they would be NaN) and their ids listed in
        ``uns["gr2st"]["zero_panel_spots"]`` (also logged as a warning); ``obs``,
        ``obsm`` and ``uns`` are carried over.

    Raises
    ------
    GR2STDataError
        Missing genes, ``X`` not holding raw counts, or no spot with a non-zero library.
    GR2STConfigError
        Empty or repeated ``genes`` / ``library_genes``.

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> sec = synthetic(n_sections=1, n_genes=6, grid=(3, 3))[0]
    >>> prep = prepare_section(sec, genes=["GENE002", "GENE000"])
    >>> prep.X.dtype, list(prep.var_names), prep.layers["counts"].shape
    (dtype('float32'), ['GENE002', 'GENE000'], (9, 2))
    """
    genes = list(genes)
    lib_genes = genes if library_genes is None else list(library_genes)
    for what, names in (("genes", genes), ("library_genes", lib_genes)):
        dup = [g for g, n in Counter(names).items() if n > 1]
        if dup or not names:
            problem = f"repeats {examples(dup)}" if dup else "is empty"
            raise GR2STConfigError(f"{what} {problem}; expected a list of distinct genes")
    name = section_label(adata)
    if adata.uns.get(UNS, {}).get(HAS_COUNTS) is False:
        raise GR2STDataError(
            f"{name}: the section holds no raw counts (read for prediction only); training "
            "and scoring need raw integer counts"
        )
    check_genes(adata, dict.fromkeys([*genes, *lib_genes]), source=name)
    library = np.asarray(as_counts(adata[:, lib_genes].X, source=name).sum(axis=1)).ravel()
    zero = library == 0
    if zero.all():
        raise GR2STDataError(
            f"{name}: all {adata.n_obs} spots have zero counts over the {len(lib_genes)} "
            "library genes; nothing to normalise"
        )
    zero_ids = adata.obs_names[zero].tolist()
    if zero_ids and log_dropped:
        log.warning(
            "%s: dropped %d spot(s) with zero counts over the %d library genes: %s",
            name,
            len(zero_ids),
            len(lib_genes),
            examples(zero_ids),
        )
    keep = ~zero
    out = adata[keep, genes].copy()
    counts = as_counts(out.X, source=name)
    out.layers[COUNTS_LAYER] = counts
    out.X = log_normalize(counts, library_size=library[keep], scale=scale)
    out.uns[UNS] = {**out.uns.get(UNS, {}), ZERO_PANEL_SPOTS: zero_ids}
    return out


def prepare_sections(
    sections: Iterable[AnnData],
    *,
    genes: Sequence[str],
    library_genes: Sequence[str] | None = None,
    scale: float = SCALE,
    progress: bool = True,
    log_dropped: bool = True,
) -> list[AnnData]:
    """:func:`prepare_section` for each section (same genes and library genes for all).

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> secs = prepare_sections(synthetic(n_sections=2, n_genes=4, grid=(2, 2)),
    ...                         genes=["GENE000", "GENE001"], progress=False)
    >>> [s.shape for s in secs]
    [(4, 2), (4, 2)]
    """
    return [
        prepare_section(
            adata, genes=genes, library_genes=library_genes, scale=scale, log_dropped=log_dropped
        )
        for adata in tqdm(sections, desc="normalising", unit="section", disable=not progress)
    ]


#: How :func:`align_sections` removes each section's own level of every gene.
SECTION_ALIGNMENTS = ("none", "center", "standardize")
#: Standard deviations up to this (log-normalised units) count as a constant gene.
_NO_SPREAD = 1e-6


def align_sections(sections: Sequence[AnnData], *, how: str) -> list[AnnData]:
    """Remove each section's own per-gene level (and spread) from its expression.

    Sections differ in depth, chemistry and tissue mix, so the same gene sits at a
    different level on each; a method that pools spots of several sections then learns
    (or retrieves) those offsets along with the biology. The evaluation, a per-gene
    Pearson r *within* a section, cannot reward them. ``"center"`` moves every gene of a
    section to the pooled mean level; ``"standardize"`` also gives it the pooled spread
    (a gene constant on a section sits at the pooled mean there). Pooled statistics are
    the unweighted means over the sections of their own, so predictions stay in
    log-normalised units.

    Parameters
    ----------
    sections
        Prepared sections (:func:`prepare_section`) with the same genes; only ``X``
        changes (``layers["counts"]``, ``obs``, ``obsm`` are shared, not copied).
    how
        One of :data:`SECTION_ALIGNMENTS`; ``"none"`` returns the sections unchanged.

    Returns
    -------
    list of AnnData
        New AnnData objects with the aligned dense float32 ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> a = AnnData(np.array([[0.0, 1.0], [2.0, 1.0]], dtype=np.float32))
    >>> b = AnnData(np.array([[4.0, 3.0], [8.0, 3.0]], dtype=np.float32))
    >>> [s.X.tolist() for s in align_sections([a, b], how="center")]
    [[[2.5, 2.0], [4.5, 2.0]], [[1.5, 2.0], [5.5, 2.0]]]
    >>> [s.X.tolist() for s in align_sections([a, b], how="standardize")]
    [[[2.0, 2.0], [5.0, 2.0]], [[2.0, 2.0], [5.0, 2.0]]]
    """
    if how not in SECTION_ALIGNMENTS:
        raise GR2STConfigError(
            f"section alignment {how!r}: expected one of {', '.join(SECTION_ALIGNMENTS)}"
        )
    if how == "none" or not sections:
        return list(sections)
    matrices = [dense(s.X, where=f"{section_label(s)}: X") for s in sections]
    widths = {m.shape[1] for m in matrices}
    if len(widths) > 1:
        raise GR2STDataError(f"X: sections disagree on the number of genes {sorted(widths)}")
    means = [m.mean(axis=0, dtype=np.float64) for m in matrices]
    pooled_mean = np.mean(means, axis=0)
    if how == "standardize":
        sds = [m.std(axis=0, dtype=np.float64) for m in matrices]
        pooled_sd = np.mean(sds, axis=0)
    aligned = []
    for i, (adata, m) in enumerate(zip(sections, matrices, strict=True)):
        shifted = m - means[i]
        if how == "standardize":
            # A gene without spread on this section carries no signal there: z = 0
            # (the tolerance keeps rounding noise of a constant from being blown up).
            spread = sds[i] > _NO_SPREAD
            scale = np.divide(pooled_sd, sds[i], out=np.zeros_like(pooled_sd), where=spread)
            shifted = shifted * scale
        aligned.append(_with_x(adata, (shifted + pooled_mean).astype(np.float32)))
    return aligned


def _with_x(adata: AnnData, x: np.ndarray) -> AnnData:
    return AnnData(
        X=x,
        obs=adata.obs,
        var=adata.var,
        obsm=dict(adata.obsm),
        layers=dict(adata.layers),
        uns=dict(adata.uns),
    )
