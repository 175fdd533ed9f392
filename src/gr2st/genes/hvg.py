"""Data-driven gene panels: highly variable genes pooled over training sections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from anndata import AnnData

from gr2st._utils.optional import require
from gr2st.errors import GR2STConfigError
from gr2st.genes.panels import common_genes
from gr2st.io._validate import as_counts
from gr2st.sections import section_label

_FLAVORS = ("seurat", "cell_ranger")


def hvg_panel(
    sections: Sequence[AnnData],
    *,
    n_top: int = 1000,
    flavor: Literal["seurat", "cell_ranger"] = "seurat",
    mode: Literal["union", "intersection"] = "union",
    min_sections: int | None = None,
) -> list[str]:
    """Select highly variable genes per section and pool them into one panel.

    Each section is normalised on a copy (``scanpy.pp.normalize_total`` to 1e4 over
    all its genes, then ``log1p``) and restricted to the genes every section measures;
    its ``n_top`` genes of highest normalised dispersion
    (``scanpy.pp.highly_variable_genes``) are chosen, exactly ``n_top`` with ties
    broken by gene order. A gene enters the panel when it is chosen in at least
    ``min_sections`` sections.

    Pass **only training sections**: choosing genes with a test section's expression
    leaks test information into the benchmark.

    Parameters
    ----------
    sections
        Sections with raw counts in ``X``.
    n_top
        Genes chosen per section (capped at the number of candidate genes).
    flavor
        scanpy's dispersion flavour (``"seurat"`` or ``"cell_ranger"``).
    mode
        ``"union"``: genes chosen in at least ``min_sections`` sections (default 1);
        ``"intersection"``: genes chosen in every section.
    min_sections
        Threshold of ``"union"`` mode.

    Returns
    -------
    list of str
        Genes ordered by the number of sections that chose them (most first), ties in
        the first section's gene order.

    Raises
    ------
    GR2STConfigError
        Bad option values or no section.

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> train = synthetic(n_sections=2, n_genes=30, grid=(6, 6))
    >>> panel = hvg_panel(train, n_top=5, mode="intersection")
    >>> len(panel) <= 5
    True
    >>> len(hvg_panel(train, n_top=5, mode="union")) >= 5
    True
    """
    # scanpy takes ~2 s to import; only HVG selection and the Visium reader need it.
    sc = require("scanpy", feature="hvg_panel (highly variable genes)", extra="scanpy")

    if not sections:
        raise GR2STConfigError("hvg_panel needs at least one (training) section")
    if flavor not in _FLAVORS:
        raise GR2STConfigError(f"flavor must be one of {', '.join(_FLAVORS)}; got {flavor!r}")
    if mode not in ("union", "intersection"):
        raise GR2STConfigError(f"mode must be 'union' or 'intersection'; got {mode!r}")
    if n_top < 1:
        raise GR2STConfigError(f"n_top must be at least 1; got {n_top}")
    n = len(sections)
    if min_sections is not None and mode == "intersection":
        raise GR2STConfigError("min_sections applies to mode='union' only")
    threshold = (1 if mode == "union" else n) if min_sections is None else min_sections
    if not 1 <= threshold <= n:
        raise GR2STConfigError(f"min_sections must be in 1..{n}; got {threshold}")

    candidates = common_genes(sections)
    votes = np.zeros(len(candidates), dtype=np.int64)
    for adata in sections:
        norm = AnnData(X=as_counts(adata.X, source=section_label(adata)).astype(np.float32))
        norm.var_names = adata.var_names
        sc.pp.normalize_total(norm, target_sum=1e4)
        sc.pp.log1p(norm)
        norm = norm[:, candidates].copy()
        stats = sc.pp.highly_variable_genes(norm, flavor=flavor, inplace=False)
        # scanpy marks every gene tied with the n-th; keep exactly n_top (ties: gene order).
        dispersion = np.nan_to_num(stats["dispersions_norm"].to_numpy(float), nan=-np.inf)
        votes[np.argsort(-dispersion, kind="stable")[:n_top]] += 1
    order = np.argsort(-votes, kind="stable")
    return [candidates[i] for i in order if votes[i] >= threshold]
