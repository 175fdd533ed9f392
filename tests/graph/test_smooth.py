from __future__ import annotations

import numpy as np
import pytest

from gr2st.config import apply_overrides
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.graph import SmoothConfig, neighbour_table, smooth_predictions


def _naive_table(coords: np.ndarray, k: int) -> np.ndarray:
    rows = []
    for i in range(len(coords)):
        d = np.sqrt(((coords - coords[i]) ** 2).sum(1))
        order = [j for j in np.lexsort((np.arange(len(coords)), d)) if j != i]
        rows.append(order[:k])
    return np.array(rows)


@pytest.mark.parametrize("k", [1, 4, 6, 30])
def test_neighbour_table_equals_the_sorted_distances_with_index_ties(k: int) -> None:
    # A hexagonal-ish integer grid: many exactly tied distances.
    xx, yy = np.meshgrid(np.arange(7), np.arange(5))
    coords = np.c_[2 * xx.ravel() + (yy.ravel() % 2), yy.ravel()].astype(float)
    np.testing.assert_array_equal(neighbour_table(coords, k), _naive_table(coords, min(k, 34)))


def test_smoothing_equals_the_definition() -> None:
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 100, size=(50, 2))
    values = rng.normal(size=(50, 7)).astype(np.float32)
    out = smooth_predictions(values, coords, SmoothConfig(weight=0.3, k=5))
    table = _naive_table(coords, 5)
    expected = 0.7 * values + 0.3 * values[table].mean(axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert out.dtype == np.float32


def test_inactive_or_tiny_inputs_are_returned_unchanged() -> None:
    values = np.arange(6.0).reshape(3, 2)
    coords = np.zeros((3, 2))
    assert smooth_predictions(values, coords, SmoothConfig()) is values
    assert smooth_predictions(values, coords, SmoothConfig(weight=0.5, k=0)) is values
    assert smooth_predictions(values[:1], coords[:1], SmoothConfig(weight=0.5)) is not None


def test_bad_inputs_get_one_line_errors() -> None:
    with pytest.raises(GR2STDataError, match="2 predicted spots but 3 coordinates"):
        smooth_predictions(np.zeros((2, 1)), np.zeros((3, 2)), SmoothConfig(weight=0.5))
    with pytest.raises(GR2STDataError, match="finite \\(N, 2\\) array"):
        neighbour_table(np.array([[0.0, np.nan], [1.0, 1.0]]), 1)
    with pytest.raises(GR2STConfigError, match="weight"):
        apply_overrides(SmoothConfig(), ["weight=2"], owner="smooth")
