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
from gr2st.sections import section_label

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
