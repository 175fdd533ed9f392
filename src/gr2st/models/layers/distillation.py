"""Self-distillation over augmented views (Hist2ST's and HGGEP's auxiliary loss).

The model predicts each spot from several augmented copies of its patch; a small
scorer turns each view's hidden state into a weight, the views' predictions are
averaged with the softmax of those weights, and the prediction on the original patch
is pulled toward that average. Both sides receive gradients, as in the published code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ViewDistillation(nn.Module):
    """Score augmented views and fuse their predictions.

    Parameters
    ----------
    dim
        Width of the hidden state each view produces.

    Examples
    --------
    >>> d = ViewDistillation(6)
    >>> preds, hidden = torch.randn(3, 5, 4), torch.randn(3, 5, 6)
    >>> d.fuse(preds, hidden).shape
    torch.Size([5, 4])
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scorer = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def fuse(self, predictions: Tensor, hidden: Tensor) -> Tensor:
        """Softmax-weighted mean over views.

        Parameters
        ----------
        predictions
            ``(views, n_spots, n_genes)``.
        hidden
            ``(views, n_spots, dim)``: what each view's prediction came from.
        """
        weights = torch.softmax(self.scorer(hidden), dim=0)
        return (predictions * weights).sum(0)

    def loss(self, prediction: Tensor, predictions: Tensor, hidden: Tensor) -> Tensor:
        """MSE between the prediction on the original patches and the fused views."""
        return F.mse_loss(self.fuse(predictions, hidden), prediction)
