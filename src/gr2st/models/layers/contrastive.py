"""Image–expression contrastive losses on a square logit matrix (row i ↔ column i)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def clip_cross_entropy(logits: Tensor) -> Tensor:
    """Symmetric CLIP loss: ``(CE(logits, I) + CE(logitsᵀ, I)) / 2``.

    Examples
    --------
    >>> round(float(clip_cross_entropy(torch.zeros(4, 4))), 4)  # log 4
    1.3863
    """
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def clip_binary_cross_entropy(logits: Tensor) -> Tensor:
    """Reg2ST's contrastive loss: elementwise BCE-with-logits against the identity.

    Every pair is an independent binary decision (matched or not), averaged over the
    ``n × n`` matrix. Reg2ST averages this over ``logits`` and ``logitsᵀ``, which is the
    same number, so it is computed once.

    Examples
    --------
    >>> round(float(clip_binary_cross_entropy(torch.zeros(3, 3))), 4)  # log 2
    0.6931
    """
    target = torch.eye(logits.shape[0], logits.shape[1], device=logits.device, dtype=logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, target)
