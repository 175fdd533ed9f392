"""The CLIP-style projection head shared by mclSTExp, BLEEP-like models and GR2ST."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """Residual projection: ``LayerNorm(a + Dropout(Linear(GELU(a))))`` with ``a = Linear(x)``.

    Parameters
    ----------
    in_dim
        Width of the input.
    out_dim
        Width of the projection (256 in the published models).
    dropout
        Dropout on the residual branch.

    Examples
    --------
    >>> import torch
    >>> ProjectionHead(10, 4)(torch.randn(3, 10)).shape
    torch.Size([3, 4])
    """

    def __init__(self, in_dim: int, out_dim: int, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        projected = self.projection(x)
        residual = self.dropout(self.fc(F.gelu(projected)))
        return self.layer_norm(projected + residual)
