"""Neighbourhood graphs on the spot array grid (Hist2ST's 4-neighbours, HGGEP's 8).

On ST and Visium arrays a spot's immediate neighbours are the spots one array step
away. The graphs here use the integer array coordinates (``array_x``, ``array_y``), so
they do not depend on pixel scale, and are symmetric with no self-loops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gr2st.errors import GR2STDataError

_OFFSETS = {
    4: ((1, 0), (-1, 0), (0, 1), (0, -1)),
    8: ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)),
}


def grid_graph(positions: Tensor, *, neighbourhood: int = 4) -> Tensor:
    """Edges between spots one grid step apart (4- or 8-neighbourhood).

    Parameters
    ----------
    positions
        ``(N, 2)`` integer array coordinates, unique per spot.
    neighbourhood
        4 (left, right, up, down) or 8 (also the diagonals).

    Returns
    -------
    torch.Tensor
        ``(2, E)`` long tensor, both directions of each pair, sorted by centre spot then
        neighbour index.

    Examples
    --------
    >>> pos = torch.tensor([[0, 0], [1, 0], [1, 1], [3, 3]])
    >>> grid_graph(pos)
    tensor([[0, 1, 1, 2],
            [1, 0, 2, 1]])
    >>> grid_graph(pos, neighbourhood=8).shape
    torch.Size([2, 6])
    """
    if neighbourhood not in _OFFSETS:
        raise GR2STDataError(f"neighbourhood: expected 4 or 8, got {neighbourhood}")
    if positions.dim() != 2 or positions.shape[1] != 2:
        raise GR2STDataError(
            f"positions: expected an (N, 2) tensor, got shape {tuple(positions.shape)}"
        )
    pos = positions.to(torch.int64)
    n = pos.shape[0]
    if n == 0:
        return torch.empty((2, 0), dtype=torch.int64, device=pos.device)
    # Shift to non-negative and hash (x, y) to one integer per cell to look neighbours up.
    low = pos.min(0).values
    shifted = pos - low + 1
    width = int(shifted[:, 1].max()) + 2
    codes = shifted[:, 0] * width + shifted[:, 1]
    order = torch.argsort(codes)
    sorted_codes = codes[order]
    if bool((sorted_codes[1:] == sorted_codes[:-1]).any()):
        raise GR2STDataError("positions: two spots share the same array coordinates")
    centres, neighbours = [], []
    for dx, dy in _OFFSETS[neighbourhood]:
        target = codes + dx * width + dy
        slot = torch.searchsorted(sorted_codes, target).clamp(max=n - 1)
        found = sorted_codes[slot] == target
        centres.append(torch.nonzero(found).squeeze(1))
        neighbours.append(order[slot[found]])
    edges = torch.stack([torch.cat(centres), torch.cat(neighbours)])
    # Sort by (centre, neighbour) so the result does not depend on the offset order.
    key = edges[0] * n + edges[1]
    return edges[:, torch.argsort(key)]


def grid_adjacency(positions: Tensor, *, neighbourhood: int = 4) -> Tensor:
    """Dense ``(N, N)`` 0/1 float adjacency of :func:`grid_graph`.

    Examples
    --------
    >>> grid_adjacency(torch.tensor([[0, 0], [0, 1], [5, 5]])).tolist()
    [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    n = positions.shape[0]
    edges = grid_graph(positions, neighbourhood=neighbourhood)
    adjacency = torch.zeros((n, n), device=positions.device)
    adjacency[edges[0], edges[1]] = 1.0
    return adjacency
