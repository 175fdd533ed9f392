"""Turn prepared AnnData sections into the tensors GR2ST trains and predicts on."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from torch import Tensor

from gr2st._constants import ARRAY_X, ARRAY_Y, CELL_TYPE, SECTION
from gr2st.errors import GR2STDataError


@dataclass(frozen=True)
class SectionTensors:
    """One section as float32/int64 tensors (spots in ``obs`` order)."""

    name: str
    obs_names: list[str]
    features: Tensor
    expression: Tensor
    positions: Tensor
    types: Tensor

    @property
    def n_spots(self) -> int:
        return int(self.positions.shape[0])

    def to(self, device: torch.device) -> SectionTensors:
        return SectionTensors(
            name=self.name,
            obs_names=self.obs_names,
            features=self.features.to(device),
            expression=self.expression.to(device),
            positions=self.positions.to(device),
            types=self.types.to(device),
        )


def section_name(adata: AnnData, default: str) -> str:
    """``obs[SECTION]``'s value, or ``default`` when the column is absent."""
    if SECTION in adata.obs and adata.n_obs:
        return str(adata.obs[SECTION].iloc[0])
    return default


def dense_expression(adata: AnnData, *, where: str) -> np.ndarray:
    """``X`` as a finite dense float32 array."""
    x = adata.X
    if x is None:
        raise GR2STDataError(f"{where}: X is empty; expected log-normalised expression")
    arr = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise GR2STDataError(
            f"{where}: X has non-finite values; expected log-normalised expression "
            "(drop spots whose panel counts are all zero)"
        )
    return arr


def image_features(adata: AnnData, *, feature_key: str, name: str) -> Tensor:
    """``obsm[feature_key]`` as a finite ``(n_spots, D)`` float32 tensor."""
    where = f"section {name!r}"
    if adata.n_obs == 0:
        raise GR2STDataError(f"{where}: no spots")
    if feature_key not in adata.obsm:
        raise GR2STDataError(
            f"{where}: obsm[{feature_key!r}] is missing; expected image features "
            "(compute them with `gr2st features`)"
        )
    features = np.asarray(adata.obsm[feature_key], dtype=np.float32)
    if features.ndim != 2 or not np.isfinite(features).all():
        raise GR2STDataError(f"{where}: obsm[{feature_key!r}] must be a finite 2-D array")
    return torch.from_numpy(features)


def section_tensors(
    adata: AnnData,
    *,
    feature_key: str,
    name: str,
    n_positions: int,
    n_cell_types: int,
) -> SectionTensors:
    """Validate one prepared section and extract its tensors.

    A missing ``obs[CELL_TYPE]`` column is read as type 0 (``nolabe``) with a warning,
    as the reference does for a missing nuclei record.
    """
    where = f"section {name!r}"
    features = image_features(adata, feature_key=feature_key, name=name)
    for key in (ARRAY_X, ARRAY_Y):
        if key not in adata.obs:
            raise GR2STDataError(f"{where}: obs[{key!r}] is missing; expected array coordinates")
    positions = adata.obs[[ARRAY_X, ARRAY_Y]].to_numpy(dtype=np.float32)
    # Rounded up as well as down, so both rounding modes stay inside the embedding.
    if (
        not np.isfinite(positions).all()
        or (positions < 0).any()
        or (positions + 0.5 >= n_positions).any()
    ):
        raise GR2STDataError(
            f"{where}: obs[{ARRAY_X!r}]/obs[{ARRAY_Y!r}] must be finite and in "
            f"[0, {n_positions}) (model.n_positions)"
        )
    if CELL_TYPE in adata.obs:
        types = adata.obs[CELL_TYPE].to_numpy()
        if (
            not np.issubdtype(types.dtype, np.integer)
            or types.min() < 0
            or types.max() >= n_cell_types
        ):
            raise GR2STDataError(
                f"{where}: obs[{CELL_TYPE!r}] must hold integer type ids in 0..{n_cell_types - 1}"
            )
    else:
        warnings.warn(
            f"{where}: obs[{CELL_TYPE!r}] is missing; every spot gets type 0", stacklevel=3
        )
        types = np.zeros(adata.n_obs, dtype=np.int64)
    return SectionTensors(
        name=name,
        obs_names=[str(o) for o in adata.obs_names],
        features=features,
        expression=torch.from_numpy(dense_expression(adata, where=where)),
        positions=torch.from_numpy(positions),
        types=torch.from_numpy(types.astype(np.int64)),
    )
