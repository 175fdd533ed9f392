"""Accessors for the prepared sections handed to methods (see :mod:`gr2st.methods.base`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from anndata import AnnData

from gr2st._constants import SECTION
from gr2st.errors import GR2STDataError


def section_name(adata: AnnData) -> str:
    """The single value of ``obs[SECTION]`` of one section.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> obs = pd.DataFrame({"section": ["B4", "B4"]}, index=["s1", "s2"])
    >>> a = anndata.AnnData(np.zeros((2, 1)), obs=obs)
    >>> section_name(a)
    'B4'
    """
    if SECTION not in adata.obs:
        raise GR2STDataError(f"obs[{SECTION!r}] is missing; expected the section name per spot")
    names = adata.obs[SECTION].astype(str).unique()
    if len(names) != 1:
        raise GR2STDataError(
            f"obs[{SECTION!r}]: expected one section per AnnData, found {sorted(names)}"
        )
    return str(names[0])


def stack_features(adatas: Sequence[AnnData], key: str) -> np.ndarray:
    """Concatenate ``obsm[key]`` of ``adatas`` into one float32 ``(spots, dim)`` array."""
    blocks = []
    for adata in adatas:
        if key not in adata.obsm:
            raise GR2STDataError(
                f"section {section_name(adata)!r}: obsm[{key!r}] is missing; "
                "compute image features first (gr2st features)"
            )
        blocks.append(np.asarray(adata.obsm[key], dtype=np.float32))
    dims = {b.shape[1] for b in blocks}
    if len(dims) > 1:
        raise GR2STDataError(f"obsm[{key!r}]: sections disagree on feature size {sorted(dims)}")
    return np.concatenate(blocks, axis=0)


def stack_expression(adatas: Sequence[AnnData]) -> np.ndarray:
    """Concatenate the (log-normalised) ``X`` of ``adatas`` into one dense float32 array."""
    blocks = []
    for adata in adatas:
        x = adata.X
        if x is None:
            raise GR2STDataError(f"section {section_name(adata)!r}: X is empty")
        blocks.append(np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32))
    genes = {b.shape[1] for b in blocks}
    if len(genes) > 1:
        raise GR2STDataError(f"X: sections disagree on the number of genes {sorted(genes)}")
    return np.concatenate(blocks, axis=0)
