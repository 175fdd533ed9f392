from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit
from scipy.stats import nbinom

from gr2st.errors import GR2STConfigError
from gr2st.models.layers.zinb import DISPERSION_RANGE, MEAN_RANGE, ZINBHead, zinb_nll

COUNTS = np.array([0.0, 0.0, 1.0, 5.0, 12.0])
MEAN = np.array([2.0, 0.3, 0.5, 3.0, 20.0])
THETA = np.array([1.5, 0.8, 10.0, 0.7, 4.0])
PI_LOGITS = np.array([-1.0, 0.5, 2.0, -3.0, 0.0])


def _hand_nll() -> np.ndarray:
    """ZINB NLL written from the definition with scipy's NB (n = θ, p = θ / (θ + μ))."""
    pi = expit(PI_LOGITS)
    p = THETA / (THETA + MEAN)
    out = []
    for x, n_, p_, pi_ in zip(COUNTS, THETA, p, pi, strict=True):
        if x == 0:
            out.append(-np.log(pi_ + (1 - pi_) * nbinom.pmf(0, n_, p_)))
        else:
            out.append(-(np.log(1 - pi_) + nbinom.logpmf(x, n_, p_)))
    return np.array(out)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


def test_zinb_nll_matches_scipy_hand_computation():
    expected = _hand_nll()
    got = zinb_nll(_t(COUNTS), _t(MEAN), _t(THETA), _t(PI_LOGITS), reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)
    mean = zinb_nll(_t(COUNTS), _t(MEAN), _t(THETA), _t(PI_LOGITS))
    total = zinb_nll(_t(COUNTS), _t(MEAN), _t(THETA), _t(PI_LOGITS), reduction="sum")
    assert float(mean) == pytest.approx(expected.mean(), rel=1e-10)
    assert float(total) == pytest.approx(expected.sum(), rel=1e-10)


def test_no_inflation_limit_is_the_negative_binomial():
    nll = zinb_nll(_t(COUNTS), _t(MEAN), _t(THETA), _t(np.full(5, -60.0)), reduction="none")
    expected = -nbinom.logpmf(COUNTS, THETA, THETA / (THETA + MEAN))
    np.testing.assert_allclose(nll.numpy(), expected, rtol=1e-9)


def test_extreme_values_stay_finite_with_finite_gradients():
    counts = torch.tensor([0.0, 0.0, 3000.0, 1.0])
    mean = torch.tensor([1e-5, 1e6, 2500.0, 1e-5], requires_grad=True)
    theta = torch.tensor([1e-4, 1e4, 1e4, 1e-4], requires_grad=True)
    logits = torch.tensor([-30.0, 30.0, 0.0, 30.0], requires_grad=True)
    loss = zinb_nll(counts, mean, theta, logits)
    loss.backward()
    assert torch.isfinite(loss)
    for t in (mean, theta, logits):
        assert t.grad is not None
        assert torch.isfinite(t.grad).all()


def test_bad_reduction_is_rejected():
    x = torch.ones(2)
    with pytest.raises(GR2STConfigError, match="reduction"):
        zinb_nll(x, x, x, x, reduction="median")  # type: ignore[arg-type]


def test_head_clamps_mean_and_dispersion():
    torch.manual_seed(0)
    head = ZINBHead(4, 3)
    with torch.no_grad():
        mean, disp, pi_logits = head(torch.randn(6, 4) * 1e4)
    assert mean.shape == disp.shape == pi_logits.shape == (6, 3)
    low, high = np.float32(MEAN_RANGE[0]), np.float32(MEAN_RANGE[1])
    # Extreme inputs saturate both ends of the mean's range (float32 bounds).
    assert float(mean.min()) == pytest.approx(low)
    assert float(mean.max()) == pytest.approx(high)
    assert float(disp.min()) >= np.float32(DISPERSION_RANGE[0])
    assert float(disp.max()) <= np.float32(DISPERSION_RANGE[1])
