"""Our losses against values computed by hand or by an independent formula.

These are the loss functions the baselines' ports share (ZINB of Hist2ST, HGGEP and
Reg2ST; Reg2ST's binary CLIP loss; mclSTExp's symmetric cross-entropy).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from gr2st.models.layers import clip_binary_cross_entropy, clip_cross_entropy, zinb_nll


def _zinb(x: float, mu: float, theta: float, pi: float) -> float:
    logit = math.log(pi / (1 - pi))
    return float(
        zinb_nll(
            torch.tensor([x], dtype=torch.float64),
            torch.tensor([mu], dtype=torch.float64),
            torch.tensor([theta], dtype=torch.float64),
            torch.tensor([logit], dtype=torch.float64),
            reduction="none",
        )[0]
    )


def test_zinb_hand_values():
    # μ = 2, θ = 1: NB(0) = (θ / (θ + μ))^θ = 1/3; NB(3) = Γ(4)/(Γ(1) 3!) (1/3) (2/3)³ = 8/81.
    # π = 1/4: ZINB(0) = 1/4 + 3/4 · 1/3 = 1/2, ZINB(3) = 3/4 · 8/81 = 2/27.
    assert _zinb(0.0, 2.0, 1.0, 0.25) == pytest.approx(math.log(2.0), abs=1e-12)
    assert _zinb(3.0, 2.0, 1.0, 0.25) == pytest.approx(math.log(27 / 2), abs=1e-12)
    # θ = 2, μ = 2: NB(1) = Γ(3)/(Γ(2) 1!) (1/2)² (1/2) = 2 · 1/8 = 1/4; π = 1/2 halves it.
    assert _zinb(1.0, 2.0, 2.0, 0.5) == pytest.approx(math.log(8.0), abs=1e-12)


def test_zinb_matches_scipy_negative_binomial():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 40, 200).astype(np.float64)
    mu = rng.uniform(0.05, 30, 200)
    theta = rng.uniform(0.1, 20, 200)
    pi = rng.uniform(0.01, 0.9, 200)
    nb = stats.nbinom.pmf(x, theta, theta / (theta + mu))  # scipy: n = θ, p = θ / (θ + μ)
    expected = -np.log(np.where(x == 0, pi + (1 - pi) * nb, (1 - pi) * nb))
    got = zinb_nll(
        *(torch.from_numpy(a) for a in (x, mu, theta, np.log(pi / (1 - pi)))), reduction="none"
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)


def test_zinb_agrees_with_the_published_eps_formula_away_from_the_clamps():
    """DCA/Hist2ST/Reg2ST write the NLL with eps = 1e-10 inside logs and lgammas."""
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(0, 30, 500).astype(np.float64))
    mu = torch.from_numpy(rng.uniform(0.1, 20, 500))
    theta = torch.from_numpy(rng.uniform(0.2, 10, 500))
    pi = torch.from_numpy(rng.uniform(0.05, 0.8, 500))
    eps = 1e-10
    t1 = torch.lgamma(theta + eps) + torch.lgamma(x + 1) - torch.lgamma(x + theta + eps)
    t2 = (theta + x) * torch.log(1 + mu / (theta + eps)) + x * (
        torch.log(theta + eps) - torch.log(mu + eps)
    )
    nb_case = t1 + t2 - torch.log(1 - pi + eps)
    zero_case = -torch.log(pi + (1 - pi) * torch.pow(theta / (theta + mu + eps), theta) + eps)
    published = torch.where(x <= 1e-8, zero_case, nb_case)
    ours = zinb_nll(x, mu, theta, torch.log(pi / (1 - pi)), reduction="none")
    torch.testing.assert_close(ours, published, rtol=1e-7, atol=1e-7)


def test_clip_losses_by_hand():
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]], dtype=torch.float64)
    # rows: CE(row 0, class 0) = log(1 + e^-2), CE(row 1, class 1) = log(1 + e^-2)
    # columns: CE(col 0, class 0) = log(1 + e^-1), CE(col 1, class 1) = log(1 + e^-3)
    rows = 2 * math.log(1 + math.exp(-2)) / 2
    cols = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-3))) / 2
    assert float(clip_cross_entropy(logits)) == pytest.approx((rows + cols) / 2, abs=1e-12)
    # BCE against the identity: mean over the 4 pairs of -log σ(z) (diagonal) / -log σ(-z)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    bce = -(math.log(sig(2.0)) + math.log(sig(-0.0)) + math.log(sig(-1.0)) + math.log(sig(3.0))) / 4
    assert float(clip_binary_cross_entropy(logits)) == pytest.approx(bce, abs=1e-12)
