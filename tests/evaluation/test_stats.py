from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from gr2st.errors import GR2STDataError
from gr2st.evaluation import paired_wilcoxon


def test_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(0.2, 0.05, 12)
    b = a - rng.normal(0.02, 0.03, 12)
    res = paired_wilcoxon(a, b)
    ref = wilcoxon(a, b, alternative="two-sided")
    assert res.n == 12
    assert res.p_value == pytest.approx(ref.pvalue)
    assert res.statistic == pytest.approx(ref.statistic)


def test_small_n_exact_floor() -> None:
    # With 5 pairs all in one direction the exact two-sided p is 2 / 2**5.
    res = paired_wilcoxon([0.3, 0.4, 0.5, 0.6, 0.7], [0.1, 0.2, 0.3, 0.4, 0.5])
    assert res.n == 5
    assert res.p_value == pytest.approx(2 / 32)


def test_all_equal_and_nan_pairs() -> None:
    res = paired_wilcoxon([0.2, 0.3, float("nan")], [0.2, 0.3, 0.5])
    assert (res.p_value, res.n) == (1.0, 2)
    empty = paired_wilcoxon([float("nan")] * 3, [0.1, 0.2, 0.3])
    assert empty.n == 0
    assert math.isnan(empty.p_value)


def test_length_mismatch() -> None:
    with pytest.raises(GR2STDataError, match="equal length"):
        paired_wilcoxon([0.1, 0.2], [0.1])
