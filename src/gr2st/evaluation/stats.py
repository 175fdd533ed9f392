"""Paired significance test between two methods over the same test sections."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import wilcoxon

from gr2st.errors import GR2STDataError


@dataclass(frozen=True)
class WilcoxonResult:
    """Outcome of :func:`paired_wilcoxon`.

    Attributes
    ----------
    statistic
        Wilcoxon signed-rank statistic (NaN when no pair could be compared).
    p_value
        Two-sided p-value; 1.0 when every pair is equal, NaN when ``n == 0``.
    n
        Number of sections compared (pairs with a non-finite score are left out). With
        ``n < 6`` the exact two-sided p-value cannot fall below 0.05 whatever the data.
    """

    statistic: float
    p_value: float
    n: int


def paired_wilcoxon(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray
) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of per-section scores ``a`` vs ``b``.

    Parameters
    ----------
    a, b
        Scores of two methods on the same sections, in the same order.

    Examples
    --------
    >>> paired_wilcoxon([0.3, 0.4, 0.5, 0.6, 0.7], [0.1, 0.2, 0.3, 0.4, 0.5])
    WilcoxonResult(statistic=0.0, p_value=0.0625, n=5)
    >>> paired_wilcoxon([0.2, 0.3], [0.2, 0.3])
    WilcoxonResult(statistic=0.0, p_value=1.0, n=2)
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise GR2STDataError(
            f"paired scores: expected two 1-d arrays of equal length, got {x.shape} and {y.shape}"
        )
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n == 0:
        return WilcoxonResult(statistic=float("nan"), p_value=float("nan"), n=0)
    if np.all(x == y):
        # scipy drops zero differences and would have nothing left to rank.
        return WilcoxonResult(statistic=0.0, p_value=1.0, n=n)
    res = wilcoxon(x, y, alternative="two-sided")
    return WilcoxonResult(statistic=float(res.statistic), p_value=float(res.pvalue), n=n)
