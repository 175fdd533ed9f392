"""Per-gene and per-section scores, and their summary over sections.

The headline score follows the published protocol: per gene, Pearson r between the
prediction and the truth over the test section's spots; genes whose r is undefined
(constant prediction or constant truth) are dropped before averaging. Because that
policy flatters methods that predict constants, a strict score that counts undefined
genes as r = 0 and the number of such genes are reported next to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from gr2st.errors import GR2STDataError

#: Genes per block when correlating, so memory stays bounded for genome-wide panels.
_GENE_CHUNK = 4096


def _as_matrix(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "toarray"):
        values = values.toarray()
    arr = np.asarray(values)
    if arr.ndim != 2:
        raise GR2STDataError(f"{name}: expected a 2-d (spots, genes) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise GR2STDataError(f"{name}: contains NaN or infinite values")
    return arr


def pearson_per_gene(pred: Any, truth: Any) -> np.ndarray:
    """Pearson r of every gene (column) between ``pred`` and ``truth``.

    Parameters
    ----------
    pred, truth
        Arrays of shape ``(n_spots, n_genes)`` (dense or scipy sparse), finite.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_genes,)``, float64. NaN where either column is constant (r is
        undefined there), and everywhere when there are fewer than two spots.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    >>> pred = np.array([[1.0, 5.0], [3.0, 6.0], [2.0, 7.0]])
    >>> pearson_per_gene(pred, truth)
    array([0.5, nan])
    """
    p_all = _as_matrix(pred, "pred")
    t_all = _as_matrix(truth, "truth")
    if p_all.shape != t_all.shape:
        raise GR2STDataError(
            f"pred has shape {p_all.shape} but truth has shape {t_all.shape}; expected equal"
        )
    n_spots, n_genes = t_all.shape
    out = np.full(n_genes, np.nan)
    if n_spots < 2:
        return out
    for start in range(0, n_genes, _GENE_CHUNK):
        block = slice(start, start + _GENE_CHUNK)
        p = p_all[:, block].astype(np.float64)
        t = t_all[:, block].astype(np.float64)
        # Exact constancy test: centring a constant column in floating point can leave
        # tiny non-zero residues that would otherwise yield a meaningless r.
        constant = (p.max(axis=0) == p.min(axis=0)) | (t.max(axis=0) == t.min(axis=0))
        p -= p.mean(axis=0)
        t -= t.mean(axis=0)
        numerator = np.einsum("ij,ij->j", p, t)
        denominator = np.sqrt(np.einsum("ij,ij->j", p, p) * np.einsum("ij,ij->j", t, t))
        r = np.full(p.shape[1], np.nan)
        ok = ~constant & (denominator > 0)
        r[ok] = np.clip(numerator[ok] / denominator[ok], -1.0, 1.0)
        out[block] = r
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def section_metrics(
    pred: Any, truth: Any, genes: Sequence[str], *, top_n: int = 50
) -> dict[str, Any]:
    """Score one test section.

    Parameters
    ----------
    pred, truth
        Predicted and measured log-normalised expression, ``(n_spots, n_genes)``.
    genes
        Names of the ``n_genes`` columns.
    top_n
        Size of the highly expressed (HEG) and highly variable (HVG) gene subsets, both
        chosen on this section's truth (mean and variance over its spots).

    Returns
    -------
    dict
        ``mean_pcc`` (undefined genes dropped, the published policy),
        ``strict_mean_pcc`` (undefined genes count as 0), ``nan_genes``, ``mse``,
        ``mae``, ``heg50_pcc``, ``hvg50_pcc`` (undefined genes dropped), ``n_spots``
        and ``pcc``: the per-gene r as a :class:`pandas.Series` indexed by gene.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    >>> pred = np.array([[1.0, 5.0], [3.0, 6.0], [2.0, 7.0]])
    >>> m = section_metrics(pred, truth, ["A", "B"])
    >>> m["mean_pcc"], m["strict_mean_pcc"], m["nan_genes"]
    (0.5, 0.25, 1)
    """
    pcc = pearson_per_gene(pred, truth)
    p = _as_matrix(pred, "pred").astype(np.float64)
    t = _as_matrix(truth, "truth").astype(np.float64)
    if len(genes) != t.shape[1]:
        raise GR2STDataError(f"genes: got {len(genes)} names for {t.shape[1]} expression columns")
    if top_n < 1:
        raise GR2STDataError(f"top_n: expected a positive integer, got {top_n}")
    finite = np.isfinite(pcc)
    # Stable sorts make ties (e.g. several all-zero genes) resolve by panel order.
    heg = np.argsort(-t.mean(axis=0), kind="stable")[:top_n]
    hvg = np.argsort(-t.var(axis=0), kind="stable")[:top_n]
    err = p - t
    return {
        "mean_pcc": _nanmean(pcc),
        "strict_mean_pcc": float(np.where(finite, pcc, 0.0).mean()) if pcc.size else float("nan"),
        "nan_genes": int((~finite).sum()),
        "mse": float(np.mean(err**2)) if err.size else float("nan"),
        "mae": float(np.mean(np.abs(err))) if err.size else float("nan"),
        "heg50_pcc": _nanmean(pcc[heg]),
        "hvg50_pcc": _nanmean(pcc[hvg]),
        "n_spots": int(t.shape[0]),
        "pcc": pd.Series(pcc, index=pd.Index(list(genes), name="gene"), name="pcc"),
    }


def summarize(values: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """Mean, sample standard deviation and median of per-section scores.

    Non-finite scores (a section where every gene was undefined) are left out and the
    number of scores used is returned as ``n``. ``sd`` uses ``ddof=1`` (sections are a
    sample) and is NaN for fewer than two scores.

    Examples
    --------
    >>> summarize([0.1, 0.3, float("nan")])
    {'mean': 0.2, 'sd': 0.1414213562373095, 'median': 0.2, 'n': 2}
    """
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "median": float("nan"), "n": 0}
    return {
        "mean": float(arr.mean()),
        "sd": float(arr.std(ddof=1)) if arr.size > 1 else float("nan"),
        "median": float(np.median(arr)),
        "n": int(arr.size),
    }
