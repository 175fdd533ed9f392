from __future__ import annotations

import numpy as np
import pytest
import torch

from gr2st.errors import GR2STDataError
from gr2st.retrieval import neighbour_weights, retrieve


def naive(
    query: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    top_k: int,
    groups: np.ndarray,
    order: int = 1,
):
    """The reference's loop: cosine top-k, then 1/L1² (cSCC: 1/L2²) weights per query."""
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    kn = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    means, stds, provs = [], [], []
    for i in range(len(query)):
        idx = np.argsort(-(kn @ qn[i]), kind="stable")[:top_k]
        l1 = np.linalg.norm(keys[idx] - query[i], axis=1, ord=order)
        w = np.reciprocal(l1**2)
        w = w / w.sum()
        mean = np.average(values[idx], axis=0, weights=w)
        means.append(mean)
        stds.append(np.sqrt(np.average((values[idx] - mean) ** 2, axis=0, weights=w)))
        provs.append(np.bincount(groups[idx], weights=w, minlength=groups.max() + 1))
    return np.array(means), np.array(stds), np.array(provs)


@pytest.fixture
def data() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(150, 8)).astype(np.float32)
    query = rng.normal(size=(37, 8)).astype(np.float32)
    values = rng.gamma(2.0, size=(150, 5)).astype(np.float32)
    groups = rng.integers(0, 4, 150)
    return query, keys, values, groups


@pytest.mark.parametrize("top_k", [1, 10, 200])
def test_equals_the_reference_loop(data: tuple[np.ndarray, ...], top_k: int) -> None:
    query, keys, values, groups = data
    res = retrieve(query, keys, values, top_k=top_k, key_groups=groups, device="cpu")
    mean, std, prov = naive(query, keys, values, min(top_k, 150), groups)
    np.testing.assert_allclose(res.mean, mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.std, std, rtol=1e-4, atol=1e-4)
    assert res.provenance is not None
    np.testing.assert_allclose(res.provenance, prov, rtol=1e-5, atol=1e-6)
    assert res.mean.dtype == res.std.dtype == np.float32
    assert res.indices is None
    assert res.weights is None


def test_chunk_size_does_not_change_the_result(data: tuple[np.ndarray, ...]) -> None:
    query, keys, values, groups = data
    ref = retrieve(
        query,
        keys,
        values,
        top_k=12,
        chunk_size=1000,
        key_groups=groups,
        return_neighbours=True,
        device="cpu",
    )
    for chunk in (1, 5, 36):
        res = retrieve(
            query,
            keys,
            values,
            top_k=12,
            chunk_size=chunk,
            key_groups=groups,
            return_neighbours=True,
            device="cpu",
        )
        np.testing.assert_array_equal(res.indices, ref.indices)
        np.testing.assert_allclose(res.mean, ref.mean, rtol=1e-6)
        np.testing.assert_allclose(res.provenance, ref.provenance, rtol=1e-6)


def test_neighbours_are_cosine_ranked_and_weights_sum_to_one(data: tuple[np.ndarray, ...]) -> None:
    query, keys, values, _ = data
    res = retrieve(query, keys, values, top_k=500, return_neighbours=True, device="cpu")
    assert res.indices is not None
    assert res.weights is not None
    assert res.indices.shape == (37, 150)  # top_k clamped to the number of keys
    np.testing.assert_allclose(res.weights.sum(1), 1.0, rtol=1e-5)
    # Neighbours come most cosine-similar first.
    cos = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (
        keys / np.linalg.norm(keys, axis=1, keepdims=True)
    ).T
    ranked = np.take_along_axis(cos, res.indices, axis=1)
    assert (np.diff(ranked, axis=1) <= 1e-6).all()


def test_identical_key_and_query_give_no_nan() -> None:
    keys = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0]], dtype=np.float32)
    values = np.array([[1.0], [3.0], [10.0]], dtype=np.float32)
    res = retrieve(keys[:1], keys, values, top_k=3, return_neighbours=True, device="cpu")
    assert np.isfinite(res.mean).all()
    assert np.isfinite(res.std).all()
    # The two exact matches share (almost) all the weight equally.
    np.testing.assert_allclose(res.mean, [[2.0]], rtol=1e-6)
    np.testing.assert_allclose(neighbour_weights(torch.zeros(1, 2), eps=1e-8).numpy(), [[0.5, 0.5]])


def test_accepts_tensors_and_empty_queries(data: tuple[np.ndarray, ...]) -> None:
    query, keys, values, groups = data
    a = retrieve(torch.from_numpy(query), torch.from_numpy(keys), torch.from_numpy(values), top_k=5)
    b = retrieve(query, keys, values, top_k=5, device="cpu")
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6)
    empty = retrieve(query[:0], keys, values, key_groups=groups, device="cpu")
    assert empty.mean.shape == (0, 5)
    assert empty.provenance is not None
    assert empty.provenance.shape == (0, 4)


def test_bad_input_is_rejected(data: tuple[np.ndarray, ...]) -> None:
    query, keys, values, groups = data
    with pytest.raises(GR2STDataError, match="query/keys: expected the same width"):
        retrieve(query[:, :3], keys, values)
    with pytest.raises(GR2STDataError, match="keys/values: expected the same non-zero"):
        retrieve(query, keys, values[:10])
    with pytest.raises(GR2STDataError, match="values: contains non-finite"):
        retrieve(query, keys, np.full_like(values, np.nan))
    with pytest.raises(GR2STDataError, match="top_k/chunk_size: expected positive"):
        retrieve(query, keys, values, top_k=0)
    with pytest.raises(GR2STDataError, match="key_groups: expected one non-negative"):
        retrieve(query, keys, values, key_groups=groups[:5])
    with pytest.raises(GR2STDataError, match="key_groups: ids must be below n_groups=2"):
        retrieve(query, keys, values, key_groups=groups, n_groups=2)


def test_l2_weights_equal_the_published_cscc_loop(data: tuple[np.ndarray, ...]) -> None:
    query, keys, values, groups = data
    res = retrieve(query, keys, values, top_k=60, key_groups=groups, device="cpu", distance="l2")
    mean, std, _ = naive(query, keys, values, 60, groups, order=2)
    np.testing.assert_allclose(res.mean, mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.std, std, rtol=1e-4, atol=1e-4)
    l1 = retrieve(query, keys, values, top_k=60, device="cpu")
    assert not np.allclose(l1.mean, res.mean)
    with pytest.raises(GR2STDataError, match="distance: expected 'l1' or 'l2'"):
        retrieve(query, keys, values, top_k=5, device="cpu", distance="cosine")
