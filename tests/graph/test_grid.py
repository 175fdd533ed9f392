from __future__ import annotations

import itertools

import pytest
import torch

from gr2st.errors import GR2STDataError
from gr2st.graph import grid_adjacency, grid_graph


def _naive(pos: list[tuple[int, int]], neighbourhood: int) -> set[tuple[int, int]]:
    edges = set()
    for i, j in itertools.permutations(range(len(pos)), 2):
        dx, dy = abs(pos[i][0] - pos[j][0]), abs(pos[i][1] - pos[j][1])
        if (neighbourhood == 4 and dx + dy == 1) or (neighbourhood == 8 and max(dx, dy) == 1):
            edges.add((i, j))
    return edges


@pytest.mark.parametrize("neighbourhood", [4, 8])
def test_grid_graph_matches_pairwise_definition(neighbourhood):
    gen = torch.Generator().manual_seed(0)
    cells = torch.randperm(12 * 9, generator=gen)[:60]
    pos = torch.stack([cells // 9 + 3, cells % 9 - 2], 1)  # negative coordinates too
    edges = grid_graph(pos, neighbourhood=neighbourhood)
    got = {tuple(e) for e in edges.T.tolist()}
    assert got == _naive([tuple(p) for p in pos.tolist()], neighbourhood)
    assert len(got) == edges.shape[1]  # no duplicates
    # Sorted by centre then neighbour.
    key = edges[0] * 1000 + edges[1]
    assert torch.equal(key, key.sort().values)


def test_grid_graph_full_lattice_degrees():
    xs, ys = torch.meshgrid(torch.arange(4), torch.arange(5), indexing="ij")
    pos = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    deg4 = torch.bincount(grid_graph(pos)[0], minlength=20)
    deg8 = torch.bincount(grid_graph(pos, neighbourhood=8)[0], minlength=20)
    assert deg4.max() == 4
    assert deg4.min() == 2
    assert int(deg4.sum()) == 2 * (3 * 5 + 4 * 4)
    assert deg8.max() == 8
    assert deg8.min() == 3


def test_grid_adjacency_is_symmetric_without_self_loops():
    pos = torch.tensor([[0, 0], [0, 1], [1, 1], [4, 4]])
    adj = grid_adjacency(pos, neighbourhood=8)
    assert torch.equal(adj, adj.T)
    assert adj.diag().sum() == 0
    assert adj.tolist() == [[0, 1, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]


def test_grid_graph_errors():
    with pytest.raises(GR2STDataError, match="neighbourhood: expected 4 or 8"):
        grid_graph(torch.zeros((2, 2)), neighbourhood=6)
    with pytest.raises(GR2STDataError, match="share the same array coordinates"):
        grid_graph(torch.tensor([[1, 1], [1, 1]]))
    with pytest.raises(GR2STDataError, match=r"expected an \(N, 2\) tensor"):
        grid_graph(torch.zeros(3))
    assert grid_graph(torch.zeros((0, 2))).shape == (2, 0)
