"""Spot graphs of GR2ST: spatial k-nearest neighbours and the functional top-k graph.

Both graphs follow the reference's edge direction: spot ``i`` and each of its ``k``
chosen spots ``j`` give the edge ``[i, j]`` (``edge_index[0] = i``,
``edge_index[1] = j``). Under PyG's ``source_to_target`` flow, messages travel from
row 0 to row 1, so a spot *receives* from every spot that chose it (its in-degree
varies) — not from its own ``k`` choices.

Small graphs are built from the full ``N × N`` distance or affinity matrix; above a
size threshold the same edges come from a KD-tree (spatial) or row blocks (functional),
so memory stays linear in ``N``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from gr2st.errors import GR2STDataError

#: Largest graph whose spatial neighbours come from the full distance matrix.
SPATIAL_DENSE_MAX = 256
#: Most affinity entries (rows × N) held at once by the functional graph.
FUNCTIONAL_BLOCK = 1 << 22


def _check_positions(pos: Tensor, k: int) -> None:
    if pos.dim() != 2 or pos.shape[0] == 0:
        raise GR2STDataError(
            f"pos: expected a non-empty (N, D) tensor, got shape {tuple(pos.shape)}"
        )
    if k < 1:
        raise GR2STDataError(f"k: expected a positive number of neighbours, got {k}")


def _rows_to_edge_index(neighbours: Tensor) -> Tensor:
    """``(N, k)`` neighbour table → ``(2, N*k)`` edges ``[i, neighbours[i, m]]``, row-major."""
    n, k = neighbours.shape
    centre = torch.arange(n, device=neighbours.device).repeat_interleave(k)
    return torch.stack([centre, neighbours.reshape(-1)])


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """Sum of squared coordinate differences, ``(..., D) → (...)``, float64.

    Squared differences rather than cdist's matrix-product shortcut: exact on integer
    grids, so equal distances stay equal and ties are broken by index only. Both
    spatial paths use this one expression, so they see the same values.
    """
    return (a - b).square().sum(-1)


def _nearest_dense(pos: Tensor, k: int) -> Tensor:
    dist2 = _squared_distances(pos[:, None, :], pos[None, :, :])
    return torch.sort(dist2, dim=1, stable=True).indices[:, :k]


def _nearest_kdtree(pos: Tensor, k: int) -> Tensor:
    """:func:`_nearest_dense`'s table from a KD-tree, in ``O(N k log N)``.

    The tree's ``k``-th neighbour distance bounds each spot's ``k``-th smallest
    distance; every spot within that radius (plus a margin far above rounding) is a
    candidate, and the candidates are ranked by the exact distance, then by index.
    """
    points = pos.cpu().numpy()
    tree = cKDTree(points)
    kth = tree.query(points, k=[k])[0][:, 0]
    balls = tree.query_ball_point(points, kth * (1 + 1e-9), return_sorted=False)
    counts = np.fromiter((len(b) for b in balls), dtype=np.int64, count=len(balls))
    rows = np.repeat(np.arange(len(points)), counts)
    cols = np.concatenate([np.asarray(b, dtype=np.int64) for b in balls])
    dist2 = _squared_distances(pos.cpu()[rows], pos.cpu()[cols]).numpy()
    order = np.lexsort((cols, dist2, rows))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    take = order[(starts[:, None] + np.arange(k)[None, :]).reshape(-1)]
    return torch.from_numpy(cols[take].reshape(-1, k)).to(pos.device)


def spatial_knn_graph(pos: Tensor, *, k: int = 20) -> Tensor:
    """Connect each spot to its ``k`` nearest spots by Euclidean distance (itself included).

    Ties (common on a regular grid) are broken by the lower spot index, so the graph
    is a deterministic function of ``pos`` on every device. Above
    :data:`SPATIAL_DENSE_MAX` spots the neighbours come from a KD-tree (the same edges,
    ``O(N k log N)`` time, no ``N × N`` matrix).

    Parameters
    ----------
    pos
        ``(N, 2)`` finite spot positions (array-grid coordinates in GR2ST).
    k
        Neighbours per spot; clamped to ``N``.

    Returns
    -------
    torch.Tensor
        ``(2, N * min(k, N))`` long tensor; ``edge_index[0]`` is the centre spot and
        ``edge_index[1]`` its neighbour, neighbours ordered by distance.

    Examples
    --------
    >>> pos = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    >>> spatial_knn_graph(pos, k=2)
    tensor([[0, 0, 1, 1, 2, 2],
            [0, 1, 1, 0, 2, 1]])
    """
    _check_positions(pos, k)
    pos = pos.to(torch.float64)
    k = min(k, pos.shape[0])
    if pos.shape[0] <= SPATIAL_DENSE_MAX:
        return _rows_to_edge_index(_nearest_dense(pos, k))
    if not bool(torch.isfinite(pos).all()):
        raise GR2STDataError("pos: expected finite spot positions, found NaN or infinity")
    return _rows_to_edge_index(_nearest_kdtree(pos, k))


def cdist_topk_graph(pos: Tensor, *, k: int = 20) -> Tensor:
    """The published GR2ST code's spatial kNN graph: float32 ``cdist``, then ``topk``.

    Same neighbours as :func:`spatial_knn_graph` except where distances tie: ``cdist``
    computes them through a matrix product above 25 spots (rounding equal distances
    apart) and ``topk`` then picks among ties as its kernel happens to, so the graph may
    depend on the device and torch version. On real HER2ST array grids 58.8 % of spots
    get a different neighbour set than with the index tie-break. Used by the ``paper``
    profile to train the function the published code trains.

    Examples
    --------
    >>> pos = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    >>> cdist_topk_graph(pos, k=2)
    tensor([[0, 0, 1, 1, 2, 2],
            [0, 1, 1, 0, 2, 1]])
    """
    _check_positions(pos, k)
    pos = pos.to(torch.float32)
    k = min(k, pos.shape[0])
    order = torch.topk(-torch.cdist(pos, pos), k, dim=-1).indices
    return _rows_to_edge_index(order)


def pruned_knn_graph(pos: Tensor, *, k: int, max_distance: float | None = None) -> Tensor:
    """Each spot's ``k`` nearest *other* spots, optionally only those within ``max_distance``.

    The graph of the published pixel baselines (``calcADJ`` of Hist2ST, HGGEP and
    THItoGene): Hist2ST and HGGEP keep a spot's 4 or 8 nearest spots at most 2 array
    steps away (``pruneTag="Grid"``), THItoGene its 4 nearest (no pruning). Inside the
    tissue that is the 4- or 8-neighbourhood; at its border a spot with fewer grid
    neighbours also links to diagonal or two-step spots, and the graph is not
    symmetric there. Ties are broken by the lower spot index (the published
    ``argsort`` leaves them to numpy's sort).

    Parameters
    ----------
    pos
        ``(N, 2)`` array coordinates.
    k
        Neighbours per spot before pruning; clamped to ``N - 1``.
    max_distance
        Keep only neighbours at most this far (Euclidean); ``None`` keeps all ``k``.

    Returns
    -------
    torch.Tensor
        ``(2, E)`` long edges ``[i, j]``: spot ``i`` chose spot ``j``, nearest first.
        Message passing *into* ``i`` from its choices needs ``edge_index.flip(0)``.

    Examples
    --------
    >>> pos = torch.tensor([[0, 0], [0, 1], [0, 2], [0, 5]])
    >>> pruned_knn_graph(pos, k=2, max_distance=2.0)
    tensor([[0, 0, 1, 1, 2, 2],
            [1, 2, 0, 2, 1, 0]])
    """
    _check_positions(pos, k)
    n = pos.shape[0]
    p = pos.to(torch.float64)
    dist2 = (p[:, None, :] - p[None, :, :]).square().sum(-1)
    dist2.fill_diagonal_(float("inf"))
    k = min(k, n - 1)
    if k == 0:
        return torch.zeros((2, 0), dtype=torch.long, device=pos.device)
    order = torch.sort(dist2, dim=1, stable=True).indices[:, :k]
    edges = _rows_to_edge_index(order)
    if max_distance is not None:
        keep = dist2[edges[0], edges[1]] <= max_distance**2
        edges = edges[:, keep]
    return edges


@torch.no_grad()
def functional_topk_graph(
    h: Tensor,
    t: Tensor,
    types: Tensor | None,
    *,
    k: int = 20,
    tau: float = 1.0,
    same_type_bonus: float = 0.3,
) -> Tensor:
    """Connect each spot to the ``k`` spots with the largest head–tail affinity.

    The affinity is ``S = h tᵀ / tau + same_type_bonus · [type_i == type_j]``; the
    reference ranks ``softmax(S)`` per row, which orders a row exactly as ``S`` does,
    so ``S`` is ranked directly (this also keeps entries apart that the softmax would
    underflow to the same zero). No gradient flows through the graph. Rows are
    computed in blocks of at most :data:`FUNCTIONAL_BLOCK` entries, so memory stays
    linear in ``N`` (time is ``O(N² P)``: every pair is scored).

    Parameters
    ----------
    h, t
        ``(N, P)`` head and tail projections of the spots.
    types
        ``(N,)`` integer spot types, or ``None`` for no type bonus.
    k
        Neighbours per spot; clamped to ``N``.
    tau
        Temperature dividing the dot products.
    same_type_bonus
        Added to the affinity of two spots of the same type.

    Returns
    -------
    torch.Tensor
        ``(2, N * min(k, N))`` long tensor of edges ``[i, j]``, strongest first per spot.

    Examples
    --------
    >>> h = torch.eye(3)
    >>> functional_topk_graph(h, h, None, k=1)
    tensor([[0, 1, 2],
            [0, 1, 2]])
    """
    if h.dim() != 2 or h.shape != t.shape or h.shape[0] == 0:
        raise GR2STDataError(
            f"h, t: expected two non-empty (N, P) tensors of one shape, got "
            f"{tuple(h.shape)} and {tuple(t.shape)}"
        )
    if k < 1:
        raise GR2STDataError(f"k: expected a positive number of neighbours, got {k}")
    n = h.shape[0]
    k = min(k, n)
    bonus = types is not None and same_type_bonus != 0.0
    rows = max(1, FUNCTIONAL_BLOCK // n)
    tops = []
    for start in range(0, n, rows):
        block = slice(start, start + rows)
        scores = h[block] @ t.T
        if tau != 1.0:  # x / 1 == x exactly
            scores /= tau
        if bonus:
            assert types is not None
            same = types[block, None] == types[None, :]
            scores.add_(same.to(scores.dtype), alpha=same_type_bonus)
        tops.append(torch.topk(scores, k, dim=1).indices)
    return _rows_to_edge_index(torch.cat(tops))
