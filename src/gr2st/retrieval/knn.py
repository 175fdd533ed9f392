"""Embedding retrieval: predict a query's values as a weighted mean of its nearest keys.

GR2ST predicts a spot's expression from the training spots whose embeddings are
closest to the spot's image embedding: the ``top_k`` keys by cosine similarity, each
weighted by ``1 / L1²`` where ``L1`` is the L1 distance between the unnormalised key and
query, the weights summing to one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gr2st._utils.device import resolve_device
from gr2st.errors import GR2STDataError


@dataclass(frozen=True)
class RetrievalResult:
    """Weighted-neighbour prediction for every query.

    Attributes
    ----------
    mean
        ``(Q, G)`` weighted mean of the neighbours' values (the prediction).
    std
        ``(Q, G)`` weighted standard deviation of the neighbours' values (spread of the
        evidence: a per-gene uncertainty).
    provenance
        ``(Q, n_groups)`` share of each key group (e.g. training section) in the weight;
        ``None`` without ``key_groups``.
    indices
        ``(Q, k)`` key indices, most similar first; only with ``return_neighbours``.
    weights
        ``(Q, k)`` their weights; only with ``return_neighbours``.
    """

    mean: np.ndarray
    std: np.ndarray
    provenance: np.ndarray | None = None
    indices: np.ndarray | None = None
    weights: np.ndarray | None = None


def _as_tensor(x: np.ndarray | Tensor, name: str, device: torch.device) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    if t.dim() != 2:
        raise GR2STDataError(f"{name}: expected a 2-D array, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise GR2STDataError(f"{name}: contains non-finite values")
    return t.to(device=device, dtype=torch.float32)


def neighbour_weights(l1: Tensor, *, eps: float) -> Tensor:
    """``w ∝ 1 / max(L1, eps)²`` along the last axis, normalised to sum 1.

    Computed as ``(L1_min / L1)²`` over its sum, so equal or zero distances neither
    overflow nor give NaN: keys at distance below ``eps`` share the weight equally.

    Examples
    --------
    >>> neighbour_weights(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), eps=1e-8)
    tensor([[0.8000, 0.2000],
            [0.5000, 0.5000]])
    """
    d = l1.clamp_min(eps)
    r = (d.min(dim=-1, keepdim=True).values / d).square()
    return r / r.sum(dim=-1, keepdim=True)


def retrieve(
    query: np.ndarray | Tensor,
    keys: np.ndarray | Tensor,
    values: np.ndarray | Tensor,
    *,
    top_k: int = 200,
    chunk_size: int = 128,
    key_groups: np.ndarray | Tensor | None = None,
    n_groups: int | None = None,
    eps: float = 1e-8,
    return_neighbours: bool = False,
    device: str | torch.device | None = None,
    distance: str = "l1",
) -> RetrievalResult:
    """Predict ``values`` for each query from its ``top_k`` most similar keys.

    Keys are ranked by cosine similarity (both sides L2-normalised); the chosen keys get
    weights ``∝ 1 / L1²`` (L1 distance between the *unnormalised* vectors), normalised
    to sum 1 — GR2ST's published retrieval rule (its cSCC evaluation: ``1 / L2²``).
    Queries are processed ``chunk_size`` at a time, so memory stays
    ``O(chunk_size · (K + top_k · max(P, G)))``.

    Parameters
    ----------
    query
        ``(Q, P)`` query embeddings (image embeddings of the test spots).
    keys
        ``(K, P)`` key embeddings (spot embeddings of the training spots).
    values
        ``(K, G)`` values attached to the keys (their expression).
    top_k
        Neighbours per query; clamped to ``K``.
    chunk_size
        Queries per chunk.
    key_groups
        ``(K,)`` integer group id of every key (e.g. its training section), for the
        provenance of each prediction.
    n_groups
        Number of groups (default ``max(key_groups) + 1``).
    eps
        Smallest L1 distance used in the weights (identical vectors would give ``1/0``).
    return_neighbours
        Also return the neighbour indices and weights.
    device
        Where to compute (default: CUDA when present).
    distance
        ``"l1"`` or ``"l2"``: the distance in the weights.

    Returns
    -------
    RetrievalResult
        float32 ``mean`` and ``std`` (and provenance/neighbours as requested).

    Examples
    --------
    >>> keys = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    >>> values = np.array([[1.0], [5.0], [3.0]])
    >>> res = retrieve(np.array([[1.0, 0.05]]), keys, values, top_k=2, device="cpu")
    >>> res.mean.round(3).tolist()
    [[2.0]]
    """
    dev = resolve_device(None if device is None else str(device))
    q = _as_tensor(query, "query", dev)
    k_all = _as_tensor(keys, "keys", dev)
    v_all = _as_tensor(values, "values", dev)
    if k_all.shape[0] == 0 or k_all.shape[0] != v_all.shape[0]:
        raise GR2STDataError(
            f"keys/values: expected the same non-zero number of rows, got "
            f"{k_all.shape[0]} and {v_all.shape[0]}"
        )
    if q.shape[1] != k_all.shape[1]:
        raise GR2STDataError(
            f"query/keys: expected the same width, got {q.shape[1]} and {k_all.shape[1]}"
        )
    if distance not in ("l1", "l2"):
        raise GR2STDataError(f"distance: expected 'l1' or 'l2', got {distance!r}")
    if top_k < 1 or chunk_size < 1:
        raise GR2STDataError(
            f"top_k/chunk_size: expected positive values, got {top_k}/{chunk_size}"
        )
    groups: Tensor | None = None
    if key_groups is not None:
        groups = (
            torch.as_tensor(np.asarray(key_groups)).to(device=dev, dtype=torch.long).reshape(-1)
        )
        if groups.shape[0] != k_all.shape[0] or (groups < 0).any():
            raise GR2STDataError("key_groups: expected one non-negative group id per key")
        n_groups = int(groups.max()) + 1 if n_groups is None else n_groups
        if int(groups.max()) >= n_groups:
            raise GR2STDataError(f"key_groups: ids must be below n_groups={n_groups}")
    k = min(top_k, k_all.shape[0])
    n_query, width = q.shape[0], v_all.shape[1]
    mean_out = np.empty((n_query, width), np.float32)
    std_out = np.empty((n_query, width), np.float32)
    prov_out = None if groups is None else np.empty((n_query, n_groups or 0), np.float32)
    idx_out = np.empty((n_query, k), np.int64) if return_neighbours else None
    w_out = np.empty((n_query, k), np.float32) if return_neighbours else None
    keys_unit = torch.nn.functional.normalize(k_all, dim=1)
    for start in range(0, n_query, chunk_size):
        rows = slice(start, start + chunk_size)
        qc = q[rows]
        sim = torch.nn.functional.normalize(qc, dim=1) @ keys_unit.T
        idx = torch.topk(sim, k, dim=1).indices  # (c, k), most similar first
        diff = k_all[idx] - qc[:, None, :]
        dist = diff.abs().sum(-1) if distance == "l1" else diff.square().sum(-1).sqrt()
        w = neighbour_weights(dist, eps=eps)
        v = v_all[idx]  # (c, k, G)
        mean = torch.einsum("ck,ckg->cg", w, v)
        var = torch.einsum("ck,ckg->cg", w, (v - mean[:, None, :]).square())
        mean_out[rows] = mean.cpu().numpy()
        std_out[rows] = var.sqrt().cpu().numpy()
        if prov_out is not None and groups is not None:
            share = torch.zeros(qc.shape[0], prov_out.shape[1], device=dev, dtype=w.dtype)
            prov_out[rows] = share.scatter_add_(1, groups[idx], w).cpu().numpy()
        if idx_out is not None and w_out is not None:
            idx_out[rows] = idx.cpu().numpy()
            w_out[rows] = w.cpu().numpy()
    return RetrievalResult(
        mean=mean_out, std=std_out, provenance=prov_out, indices=idx_out, weights=w_out
    )


def mixture(
    means: Sequence[np.ndarray], stds: Sequence[np.ndarray], provenances: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, spread and provenance of an equal-weight mixture of predictions of the same
    spots (retrievals from several banks, or an ensemble's models).

    The spread follows the law of total variance: the mean of the variances plus the
    variance of the means (computed in float64, returned in the inputs' dtype).

    Examples
    --------
    >>> mean, std, prov = mixture(
    ...     [np.array([[0.0]]), np.array([[2.0]])],
    ...     [np.array([[1.0]]), np.array([[1.0]])],
    ...     [np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])],
    ... )
    >>> mean.tolist(), std.tolist(), prov.tolist()
    ([[1.0]], [[1.4142135623730951]], [[0.5, 0.5]])
    """
    if len(means) == 1:
        return means[0], stds[0], provenances[0]
    stacked = np.stack(means)
    mean = stacked.mean(axis=0)
    spread = stacked.astype(np.float64) - mean
    variance = np.mean([s.astype(np.float64) ** 2 for s in stds], axis=0)
    variance += (spread**2).mean(axis=0)
    return mean, np.sqrt(variance).astype(stds[0].dtype), np.stack(provenances).mean(axis=0)
