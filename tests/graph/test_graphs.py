from __future__ import annotations

import numpy as np
import pytest
import torch

from gr2st.errors import GR2STDataError
from gr2st.graph import cdist_topk_graph, functional_topk_graph, spatial_knn_graph


def naive_spatial(pos: np.ndarray, k: int) -> np.ndarray:
    """Loop version: per spot, the k nearest by (distance, index)."""
    edges = []
    for i in range(len(pos)):
        d = [float(np.sum((pos[i] - pos[j]) ** 2)) for j in range(len(pos))]
        for j in sorted(range(len(pos)), key=lambda j: (d[j], j))[:k]:
            edges.append((i, j))
    return np.array(edges).T


def naive_functional(
    h: np.ndarray, t: np.ndarray, types: np.ndarray, k: int, tau: float, bonus: float
) -> set:
    """The reference's steps per spot: affinity row, softmax, k largest."""
    edges = set()
    for i in range(len(h)):
        row = np.array([h[i] @ t[j] / tau + bonus * (types[i] == types[j]) for j in range(len(h))])
        prob = np.exp(row - row.max())
        prob /= prob.sum()
        for j in np.argsort(-prob, kind="stable")[:k]:
            edges.add((i, int(j)))
    return edges


@pytest.mark.parametrize("k", [1, 5, 20])
def test_spatial_graph_equals_loop_on_a_grid_with_ties(k: int) -> None:
    rows, cols = np.indices((6, 7))
    pos = np.column_stack([cols.ravel(), rows.ravel()]).astype(np.float32)
    pos = pos[np.random.default_rng(0).permutation(len(pos))]
    got = spatial_knn_graph(torch.from_numpy(pos), k=k).numpy()
    np.testing.assert_array_equal(got, naive_spatial(pos, k))


def test_spatial_graph_float_positions_self_first_and_direction() -> None:
    pos = np.random.default_rng(1).uniform(0, 10, (30, 2)).astype(np.float32)
    got = spatial_knn_graph(torch.from_numpy(pos), k=4).numpy()
    np.testing.assert_array_equal(got, naive_spatial(pos, 4))
    # Row 0 is the centre, each centre's first neighbour is itself.
    np.testing.assert_array_equal(got[0], np.repeat(np.arange(30), 4))
    np.testing.assert_array_equal(got[1, ::4], np.arange(30))


def test_spatial_graph_clamps_k_to_n() -> None:
    pos = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0]])
    got = spatial_knn_graph(pos, k=20)
    assert got.tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 2, 1, 1, 2, 0, 2, 0, 1]]


@pytest.mark.parametrize(("k", "tau", "bonus"), [(3, 1.0, 0.3), (8, 0.5, 0.0), (40, 2.0, 1.0)])
def test_functional_graph_equals_reference_loop(k: int, tau: float, bonus: float) -> None:
    gen = torch.Generator().manual_seed(k)
    h, t = torch.randn(25, 6, generator=gen), torch.randn(25, 6, generator=gen)
    types = torch.randint(0, 3, (25,), generator=gen)
    got = functional_topk_graph(h, t, types, k=k, tau=tau, same_type_bonus=bonus)
    assert got.shape == (2, 25 * min(k, 25))
    expected = naive_functional(h.numpy(), t.numpy(), types.numpy(), min(k, 25), tau, bonus)
    assert {tuple(e) for e in got.T.tolist()} == expected
    np.testing.assert_array_equal(got[0].numpy(), np.repeat(np.arange(25), min(k, 25)))


def test_functional_graph_type_bonus_and_no_grad() -> None:
    h = torch.zeros(4, 2, requires_grad=True)
    types = torch.tensor([0, 1, 0, 1])
    got = functional_topk_graph(h, h, types, k=2, same_type_bonus=0.3)
    assert not got.requires_grad
    # Equal affinities except the bonus: each spot picks the two spots of its own type.
    pairs = {tuple(e) for e in got.T.tolist()}
    assert pairs == {(0, 0), (0, 2), (1, 1), (1, 3), (2, 0), (2, 2), (3, 1), (3, 3)}
    assert functional_topk_graph(h, h, None, k=2).shape == (2, 8)


def test_graphs_reject_bad_input() -> None:
    with pytest.raises(GR2STDataError, match="pos: expected a non-empty"):
        spatial_knn_graph(torch.zeros(0, 2))
    with pytest.raises(GR2STDataError, match="k: expected a positive"):
        spatial_knn_graph(torch.zeros(3, 2), k=0)
    with pytest.raises(GR2STDataError, match="h, t: expected two"):
        functional_topk_graph(torch.zeros(3, 2), torch.zeros(4, 2), None)


def test_cdist_topk_graph_is_the_published_construction() -> None:
    rng = np.random.default_rng(0)
    pos = torch.from_numpy(rng.integers(0, 12, size=(60, 2)).astype(np.float32))
    edges = cdist_topk_graph(pos, k=6)
    expected = torch.topk(-torch.cdist(pos, pos), 6, dim=-1).indices
    assert torch.equal(edges[1].reshape(60, 6), expected)
    assert torch.equal(edges[0], torch.arange(60).repeat_interleave(6))
    # Same neighbour distances as the index tie-break: only tied spots may differ.
    exact = spatial_knn_graph(pos, k=6)[1].reshape(60, 6)
    d = torch.cdist(pos.double(), pos.double())
    rows = torch.arange(60)[:, None]
    torch.testing.assert_close(
        d[rows, expected].sort(1).values, d[rows, exact].sort(1).values, rtol=0, atol=1e-4
    )
