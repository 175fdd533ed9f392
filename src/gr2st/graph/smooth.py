"""Spatial smoothing of predictions over a section's spot graph.

Expression varies smoothly across tissue while per-spot image predictions are noisy, so
blending each spot's prediction with the mean of its nearest spots' predictions removes
noise the model cannot (it predicts each spot alone). The smoothing is a post-processing
step applied identically to every method's predictions, so comparisons stay fair; its
strength is chosen on training sections only (see ``gr2st benchmark --select inner``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.spatial import cKDTree

from gr2st.config import Config, NonNegativeInt, Probability
from gr2st.errors import GR2STDataError


@dataclass(frozen=True)
class SmoothConfig(Config):
    """How predictions are smoothed over the spot graph.

    Attributes
    ----------
    weight
        Share of the neighbours' mean in a spot's smoothed value (0 = no smoothing).
    k
        Nearest spots (by centre distance, the spot itself excluded) averaged.
    """

    weight: Probability = 0.0
    k: NonNegativeInt = 6

    @property
    def active(self) -> bool:
        return self.weight > 0 and self.k > 0


def neighbour_table(coords: np.ndarray, k: int) -> np.ndarray:
    """``(N, min(k, N-1))`` indices of each spot's nearest other spots, nearest first.

    Distances are Euclidean between centres; equal distances go to the lower index.
    A k-d tree keeps memory linear in the number of spots.

    Examples
    --------
    >>> neighbour_table(np.array([[0.0, 0], [0, 1], [0, 3], [5, 5]]), 2).tolist()
    [[1, 2], [0, 2], [1, 0], [2, 1]]
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or not np.isfinite(coords).all():
        raise GR2STDataError(
            f"spot coordinates: expected a finite (N, 2) array, got {coords.shape}"
        )
    n = coords.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros((n, 0), dtype=np.int64)
    # One extra neighbour (the spot itself) and a margin for ties at the k-th distance.
    query = min(n, k + 1 + 8)
    dist, index = cKDTree(coords).query(coords, k=query)
    dist, index = np.atleast_2d(dist), np.atleast_2d(index)
    own = index == np.arange(n)[:, None]
    # Order by (distance, index), then drop the spot itself.
    order = np.lexsort((index, np.where(own, -1.0, dist)), axis=1)
    ranked = np.take_along_axis(index, order, axis=1)[:, 1:]
    return ranked[:, :k].astype(np.int64)


def smooth_predictions(values: np.ndarray, coords: np.ndarray, config: SmoothConfig) -> np.ndarray:
    """``(1 - w) · x_i + w · mean_{j ∈ kNN(i)} x_j`` for every spot ``i``.

    Parameters
    ----------
    values
        ``(N, G)`` predictions of one section.
    coords
        ``(N, 2)`` spot centres of that section (any unit).
    config
        Neighbours and weight; an inactive config returns ``values`` unchanged.

    Examples
    --------
    >>> v = np.array([[0.0], [2.0], [4.0]])
    >>> xy = np.array([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    >>> smooth_predictions(v, xy, SmoothConfig(weight=0.5, k=1)).ravel().tolist()
    [1.0, 1.0, 3.0]
    """
    values = np.asarray(values)
    if not config.active or values.shape[0] < 2:
        return values
    if len(coords) != values.shape[0]:
        raise GR2STDataError(
            f"smoothing: {values.shape[0]} predicted spots but {len(coords)} coordinates"
        )
    table = neighbour_table(coords, config.k)
    n, k = table.shape
    # Row-normalised neighbour matrix: memory O(N·k + N·G), not O(N·k·G).
    mean_of = sp.csr_matrix(
        (np.full(n * k, 1.0 / k), table.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n)
    )
    neighbours = mean_of @ values
    out = (1.0 - config.weight) * values + config.weight * neighbours
    return out.astype(values.dtype, copy=False)
