"""Accessors of one section's AnnData: its name and its arrays, checked once for everyone.

A *prepared* section (:func:`gr2st.genes.prepare_section`) is what methods and models
consume: ``X`` holds log-normalised expression of the model's genes (dense float32),
``obs`` the section, patient, grid coordinates (``array_x``, ``array_y``) and nuclear
type (``cell_type``), ``obsm`` the spot centres and the image features ``X_<encoder>``,
``layers["counts"]`` the raw panel counts. Every reader of those fields goes through
this module, so a missing or malformed field gets the same one-line error everywhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from gr2st._constants import ARRAY_X, ARRAY_Y, CELL_TYPE, COUNTS_LAYER, SECTION
from gr2st.errors import GR2STDataError


def section_name(adata: AnnData, *, default: str | None = None) -> str:
    """The single value of ``obs[SECTION]`` of one section.

    Parameters
    ----------
    adata
        One section.
    default
        Returned when the column is absent or the section has no spots; without it,
        those are errors. (For messages about input that may not be valid yet.)

    Raises
    ------
    GR2STDataError
        The column is missing (and no ``default``), or it names several sections.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> obs = pd.DataFrame({"section": ["B4", "B4"]}, index=["s1", "s2"])
    >>> section_name(anndata.AnnData(np.zeros((2, 1)), obs=obs))
    'B4'
    >>> section_name(anndata.AnnData(np.zeros((0, 1))), default="query")
    'query'
    """
    if SECTION not in adata.obs or adata.n_obs == 0:
        if default is not None:
            return default
        raise GR2STDataError(f"obs[{SECTION!r}] is missing; expected the section name per spot")
    names = adata.obs[SECTION].astype(str).unique()
    if len(names) != 1:
        if default is not None:
            return str(names[0])
        raise GR2STDataError(
            f"obs[{SECTION!r}]: expected one section per AnnData, found {sorted(names)}"
        )
    return str(names[0])


def section_label(adata: AnnData) -> str:
    """The section's name for messages about input that may not be valid yet.

    Examples
    --------
    >>> section_label(AnnData(np.zeros((0, 1))))
    'section'
    """
    return section_name(adata, default="section")


def dense(matrix: Any, *, where: str) -> np.ndarray:
    """A finite, dense, 2-D float32 copy (or view) of ``matrix``.

    Examples
    --------
    >>> dense(sp.csr_matrix(np.eye(2)), where="X").dtype
    dtype('float32')
    """
    if matrix is None:
        raise GR2STDataError(f"{where}: is empty")
    array = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    if array.ndim != 2:
        raise GR2STDataError(f"{where}: expected a 2-D matrix, got shape {array.shape}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise GR2STDataError(f"{where}: contains NaN or infinite values")
    return array


def stack_features(adatas: Sequence[AnnData], key: str) -> np.ndarray:
    """Concatenate ``obsm[key]`` of ``adatas`` into one float32 ``(spots, dim)`` array."""
    blocks = [features(adata, key) for adata in adatas]
    dims = {b.shape[1] for b in blocks}
    if len(dims) > 1:
        raise GR2STDataError(f"obsm[{key!r}]: sections disagree on feature size {sorted(dims)}")
    return np.concatenate(blocks, axis=0)


def stack_expression(adatas: Sequence[AnnData]) -> np.ndarray:
    """Concatenate the (log-normalised) ``X`` of ``adatas`` into one dense float32 array."""
    blocks = [dense(a.X, where=f"section {section_name(a, default='?')!r}: X") for a in adatas]
    genes = {b.shape[1] for b in blocks}
    if len(genes) > 1:
        raise GR2STDataError(f"X: sections disagree on the number of genes {sorted(genes)}")
    return np.concatenate(blocks, axis=0)


def features(adata: AnnData, key: str) -> np.ndarray:
    """``obsm[key]`` of one section as a finite float32 ``(n_spots, dim)`` array."""
    where = f"section {section_name(adata, default='query')!r}"
    if key not in adata.obsm:
        raise GR2STDataError(
            f"{where}: obsm[{key!r}] is missing; compute image features first (gr2st features)"
        )
    return dense(adata.obsm[key], where=f"{where}: obsm[{key!r}]")


def grid_coordinates(adata: AnnData) -> np.ndarray:
    """Grid coordinates ``(array_x, array_y)`` as given, float32 ``(n, 2)``, finite and ``>= 0``.

    Examples
    --------
    >>> import pandas as pd
    >>> obs = pd.DataFrame({"section": "A1", "array_x": [1.0, 2.2], "array_y": [3.0, 4.6]})
    >>> grid_coordinates(AnnData(np.ones((2, 1), np.float32), obs=obs)).tolist()
    [[1.0, 3.0], [2.200000047683716, 4.599999904632568]]
    """
    where = f"section {section_name(adata, default='query')!r}"
    for column in (ARRAY_X, ARRAY_Y):
        if column not in adata.obs:
            raise GR2STDataError(f"{where}: obs[{column!r}] is missing (grid coordinates)")
    coords = adata.obs[[ARRAY_X, ARRAY_Y]].to_numpy(dtype=np.float64)
    if not np.isfinite(coords).all() or (coords < -0.5).any():
        raise GR2STDataError(f"{where}: obs[{ARRAY_X!r}/{ARRAY_Y!r}] must be finite and >= 0")
    return coords.astype(np.float32)


def spot_positions(adata: AnnData) -> np.ndarray:
    """Grid coordinates rounded to ``int64``, shape ``(n, 2)``.

    Examples
    --------
    >>> import pandas as pd
    >>> obs = pd.DataFrame({"section": "A1", "array_x": [1.0, 2.2], "array_y": [3.0, 4.6]})
    >>> spot_positions(AnnData(np.ones((2, 1), np.float32), obs=obs)).tolist()
    [[1, 3], [2, 5]]
    """
    return np.rint(grid_coordinates(adata).astype(np.float64)).astype(np.int64)


def cell_types(adata: AnnData, *, n_types: int) -> np.ndarray:
    """``obs[CELL_TYPE]`` as ``int64`` ids in ``0..n_types-1``.

    A missing column reads as type 0 (``nolabe``) with a warning, as the reference does
    for a spot without a nuclei record.
    """
    where = f"section {section_name(adata, default='query')!r}"
    if CELL_TYPE not in adata.obs:
        warnings.warn(
            f"{where}: obs[{CELL_TYPE!r}] is missing; every spot gets type 0", stacklevel=3
        )
        return np.zeros(adata.n_obs, dtype=np.int64)
    types = adata.obs[CELL_TYPE].to_numpy()
    if not np.issubdtype(types.dtype, np.integer) or (
        types.size and (types.min() < 0 or types.max() >= n_types)
    ):
        raise GR2STDataError(
            f"{where}: obs[{CELL_TYPE!r}] must hold integer type ids in 0..{n_types - 1}"
        )
    return types.astype(np.int64)


@dataclass(frozen=True)
class SectionArrays:
    """Dense arrays of one prepared section (spots in ``obs`` order).

    Attributes
    ----------
    name
        Section name (``obs[SECTION]``).
    obs_names
        Spot names.
    expression
        ``(n, G)`` float32 log-normalised expression (``X``).
    coords
        ``(n, 2)`` float32 grid coordinates as given.
    features
        ``(n, d)`` float32 frozen image features (``d = 0`` when not requested).
    counts
        ``(n, G)`` float32 raw panel counts (no columns when not requested).
    types
        ``(n,)`` int64 nuclear type ids (zeros when not requested).
    """

    name: str
    obs_names: list[str]
    expression: np.ndarray
    coords: np.ndarray
    features: np.ndarray
    counts: np.ndarray
    types: np.ndarray

    @property
    def positions(self) -> np.ndarray:
        """Grid coordinates rounded to ``int64``."""
        return np.rint(self.coords.astype(np.float64)).astype(np.int64)

    @property
    def n_spots(self) -> int:
        return int(self.coords.shape[0])


def section_arrays(
    adata: AnnData,
    *,
    feature_key: str | None = None,
    with_counts: bool = False,
    n_types: int | None = None,
) -> SectionArrays:
    """Read and check the arrays of one prepared section.

    Parameters
    ----------
    adata
        A prepared section (log-normalised ``X``, grid coordinates in ``obs``).
    feature_key
        ``obsm`` key of the image features to read; ``None`` reads none.
    with_counts
        Also read raw panel counts from ``layers[COUNTS_LAYER]``.
    n_types
        Also read nuclear types, which must lie in ``0..n_types-1``.

    Raises
    ------
    GR2STDataError
        A required field is missing, has the wrong shape, or holds non-finite values
        or negative coordinates or counts.

    Examples
    --------
    >>> import pandas as pd
    >>> obs = pd.DataFrame({"section": "A1", "array_x": [1.0, 2.2], "array_y": [3.0, 4.6]})
    >>> section_arrays(AnnData(np.ones((2, 3), np.float32), obs=obs)).positions.tolist()
    [[1, 3], [2, 5]]
    """
    name = section_name(adata)
    where = f"section {name!r}"
    expression = dense(adata.X, where=f"{where}: X")
    n = adata.n_obs
    feats = np.zeros((n, 0), np.float32) if feature_key is None else features(adata, feature_key)
    counts = np.zeros((n, 0), np.float32)
    if with_counts:
        if COUNTS_LAYER not in adata.layers:
            raise GR2STDataError(f"{where}: layers[{COUNTS_LAYER!r}] (raw panel counts) is missing")
        counts = dense(adata.layers[COUNTS_LAYER], where=f"{where}: layers[{COUNTS_LAYER!r}]")
        if counts.shape != expression.shape or (counts < 0).any():
            raise GR2STDataError(
                f"{where}: layers[{COUNTS_LAYER!r}] must be non-negative counts shaped like X"
            )
    types = np.zeros(n, np.int64) if n_types is None else cell_types(adata, n_types=n_types)
    return SectionArrays(
        name=name,
        obs_names=[str(o) for o in adata.obs_names],
        expression=expression,
        coords=grid_coordinates(adata),
        features=feats,
        counts=counts,
        types=types,
    )
