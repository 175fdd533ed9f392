"""Spot graphs of GR2ST: spatial k-nearest neighbours and the functional top-k graph.

Both graphs follow the reference's edge direction: spot ``i`` and each of its ``k``
chosen spots ``j`` give the edge ``[i, j]`` (``edge_index[0] = i``,
``edge_index[1] = j``). Under PyG's ``source_to_target`` flow, messages travel from
row 0 to row 1, so a spot *receives* from every spot that chose it (its in-degree
varies) — not from its own ``k`` choices.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gr2st.errors import GR2STDataError


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


def spatial_knn_graph(pos: Tensor, *, k: int = 20) -> Tensor:
    """Connect each spot to its ``k`` nearest spots by Euclidean distance (itself included).

    Ties (common on a regular grid) are broken by the lower spot index, so the graph
    is a deterministic function of ``pos`` on every device.

    Parameters
    ----------
    pos
        ``(N, 2)`` spot positions (array-grid coordinates in GR2ST).
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
    # Squared differences rather than cdist's matrix-product shortcut: exact on integer
    # grids, so equal distances stay equal and the tie-break is by index only.
    dist2 = (pos[:, None, :] - pos[None, :, :]).square().sum(-1)
    k = min(k, pos.shape[0])
    order = torch.sort(dist2, dim=1, stable=True).indices[:, :k]
    return _rows_to_edge_index(order)


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
    underflow to the same zero). No gradient flows through the graph.

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
    scores = (h @ t.T) / tau
    if types is not None and same_type_bonus != 0.0:
        scores = scores + same_type_bonus * (types[:, None] == types[None, :]).to(scores.dtype)
    k = min(k, h.shape[0])
    return _rows_to_edge_index(torch.topk(scores, k, dim=1).indices)
