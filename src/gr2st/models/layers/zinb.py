"""Zero-inflated negative binomial (ZINB) likelihood on raw counts, and its output head.

Parameterisation (as in DCA / Hist2ST / Reg2ST): mean ``μ > 0``, inverse dispersion
``θ > 0`` (variance ``μ + μ²/θ``) and dropout probability ``π`` given by its logit.
For a count ``x``::

    NB(x; μ, θ) = Γ(x+θ) / (Γ(θ) x!) · (θ/(θ+μ))^θ · (μ/(θ+μ))^x
    ZINB(0)     = π + (1-π) · NB(0)
    ZINB(x>0)   = (1-π) · NB(x)

Everything is computed in log space (``logaddexp`` for the zero case, ``logsigmoid``
for ``π``), so no ``eps`` is needed.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gr2st.errors import GR2STConfigError, GR2STDataError

# Output ranges of the mean and dispersion activations (as in DCA and Reg2ST).
MEAN_RANGE = (1e-5, 1e6)
DISPERSION_RANGE = (1e-4, 1e4)
# Floor of a spot's size factor, so a spot without panel counts keeps a finite mean.
MIN_SIZE_FACTOR = 1e-3


def size_factors(counts: np.ndarray) -> np.ndarray:
    """Per-spot panel total divided by the section's median total (floored at 1e-3).

    The ZINB mean of a spot is scaled by it, as in Hist2ST and Reg2ST.

    Examples
    --------
    >>> size_factors(np.array([[1, 1], [2, 2], [4, 4]])).tolist()
    [0.5, 1.0, 2.0]
    """
    totals = counts.sum(axis=1)
    median = float(np.median(totals)) if len(totals) else 0.0
    if median <= 0:
        raise GR2STDataError("the median panel count of a section is 0; cannot scale ZINB")
    return np.maximum(totals / median, MIN_SIZE_FACTOR).astype(np.float32)


def zinb_nll(
    counts: Tensor,
    mean: Tensor,
    dispersion: Tensor,
    pi_logits: Tensor,
    *,
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> Tensor:
    """Negative log-likelihood of ``counts`` under ZINB(``mean``, ``dispersion``, ``π``).

    Parameters
    ----------
    counts
        Non-negative counts (float tensor).
    mean
        NB mean ``μ`` (already multiplied by any size factor), same shape.
    dispersion
        Inverse dispersion ``θ``, same shape.
    pi_logits
        Logit of the zero-inflation probability ``π``, same shape.
    reduction
        ``"mean"`` (default), ``"sum"`` or ``"none"`` (elementwise).

    Examples
    --------
    >>> x = torch.tensor([0.0, 3.0])
    >>> nll = zinb_nll(x, torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0]),
    ...                torch.tensor([-20.0, -20.0]), reduction="none")
    >>> [round(v, 4) for v in nll.tolist()]  # ≈ NB(1, p=1/3): -log(1/3), -log(8/81)
    [1.0986, 2.315]
    """
    log_theta_mu = torch.log(dispersion + mean)
    log_nb_zero = dispersion * (torch.log(dispersion) - log_theta_mu)
    log_nb = (
        torch.lgamma(counts + dispersion)
        - torch.lgamma(dispersion)
        - torch.lgamma(counts + 1.0)
        + log_nb_zero
        + counts * (torch.log(mean) - log_theta_mu)
    )
    log_pi = F.logsigmoid(pi_logits)
    log_one_minus_pi = F.logsigmoid(-pi_logits)
    log_zero = torch.logaddexp(log_pi, log_one_minus_pi + log_nb_zero)
    nll = -torch.where(counts > 0, log_one_minus_pi + log_nb, log_zero)
    if reduction == "mean":
        return nll.mean()
    if reduction == "sum":
        return nll.sum()
    if reduction == "none":
        return nll
    raise GR2STConfigError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


class ZINBHead(nn.Module):
    """Three linear heads giving ZINB mean, dispersion and ``π`` logits per gene.

    Mean: ``exp`` clamped to ``MEAN_RANGE``; dispersion: ``softplus`` clamped to
    ``DISPERSION_RANGE``; ``π``: a logit (the sigmoid is folded into :func:`zinb_nll`).

    Examples
    --------
    >>> mean, disp, pi_logits = ZINBHead(8, 5)(torch.randn(3, 8))
    >>> mean.shape, bool((mean > 0).all()), bool((disp > 0).all())
    (torch.Size([3, 5]), True, True)
    """

    def __init__(self, in_dim: int, n_genes: int) -> None:
        super().__init__()
        self.mean = nn.Linear(in_dim, n_genes)
        self.dispersion = nn.Linear(in_dim, n_genes)
        self.pi = nn.Linear(in_dim, n_genes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean = torch.exp(self.mean(x)).clamp(*MEAN_RANGE)
        dispersion = F.softplus(self.dispersion(x)).clamp(*DISPERSION_RANGE)
        return mean, dispersion, self.pi(x)
