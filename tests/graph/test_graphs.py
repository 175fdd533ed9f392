from __future__ import annotations

import numpy as np
import pytest
import torch

from gr2st.errors import GR2STDataError
from gr2st.graph import cdist_topk_graph, functional_topk_graph, knn, spatial_knn_graph


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


def _dense_reference(pos: torch.Tensor, k: int) -> torch.Tensor:
    """The full-matrix spatial graph: stable sort of float64 squared distances."""
    pos = pos.to(torch.float64)
    dist2 = (pos[:, None, :] - pos[None, :, :]).square().sum(-1)
    order = torch.sort(dist2, dim=1, stable=True).indices[:, : min(k, len(pos))]
    return torch.stack([torch.arange(len(pos)).repeat_interleave(order.shape[1]), order.ravel()])


def _layouts(rng: np.random.Generator) -> dict[str, np.ndarray]:
    rows, cols = np.indices((23, 31))
    square = np.column_stack([cols.ravel(), rows.ravel()])
    # Visium-style hexagonal array coordinates: odd rows shifted by one column.
    hexagonal = np.column_stack([2 * cols.ravel() + rows.ravel() % 2, rows.ravel()])
    return {
        "square": square.astype(np.float32),
        "hexagonal": hexagonal.astype(np.float32),
        "duplicates": rng.integers(0, 12, (500, 2)).astype(np.float32),
        "float": rng.uniform(0, 50, (600, 2)).astype(np.float32),
        "pixels": (square * 137.5 + 1000).astype(np.float32),
    }


@pytest.mark.parametrize("layout", ["square", "hexagonal", "duplicates", "float", "pixels"])
@pytest.mark.parametrize("k", [1, 6, 20, 45])
def test_spatial_kdtree_path_equals_full_matrix_with_ties(
    layout: str, k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(knn, "SPATIAL_DENSE_MAX", 0)
    rng = np.random.default_rng(k)
    pos = _layouts(rng)[layout]
    # The whole layout, a shuffled copy and random subsets (as training batches are).
    for subset in (
        np.arange(len(pos)),
        rng.permutation(len(pos)),
        rng.choice(len(pos), 257, replace=False),
        rng.choice(len(pos), 3, replace=False),
    ):
        points = torch.from_numpy(pos[subset])
        assert torch.equal(spatial_knn_graph(points, k=k), _dense_reference(points, k))


def test_spatial_graph_switches_to_the_tree_above_the_threshold() -> None:
    rng = np.random.default_rng(5)
    rows, cols = np.indices((40, 40))
    pos = np.column_stack([cols.ravel(), rows.ravel()])[rng.permutation(1600)]
    points = torch.from_numpy(pos.astype(np.float32))
    assert len(points) > knn.SPATIAL_DENSE_MAX
    assert torch.equal(spatial_knn_graph(points, k=20), _dense_reference(points, 20))


def test_spatial_tree_path_rejects_non_finite_positions() -> None:
    pos = torch.zeros(knn.SPATIAL_DENSE_MAX + 1, 2)
    pos[3, 0] = float("nan")
    with pytest.raises(GR2STDataError, match="pos: expected finite"):
        spatial_knn_graph(pos, k=4)


@pytest.mark.parametrize("block", [1, 7, 64, 10**9])
def test_functional_graph_in_row_blocks_equals_one_matrix(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = torch.Generator().manual_seed(block % 1000)
    n = 90
    h, t = torch.randn(n, 16, generator=gen), torch.randn(n, 16, generator=gen)
    types = torch.randint(0, 6, (n,), generator=gen)
    scores = (h @ t.T) / 0.7 + 0.3 * (types[:, None] == types[None, :]).float()
    top = torch.topk(scores, 11, dim=1).indices
    expected = torch.stack([torch.arange(n).repeat_interleave(11), top.ravel()])
    monkeypatch.setattr(knn, "FUNCTIONAL_BLOCK", block)
    got = functional_topk_graph(h, t, types, k=11, tau=0.7, same_type_bonus=0.3)
    assert torch.equal(got, expected)


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
