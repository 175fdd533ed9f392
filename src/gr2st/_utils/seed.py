"""Seeding for deterministic runs (devices: :mod:`gr2st._utils.device`)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    # Third-party code (e.g. scanpy, sklearn defaults) still draws from the legacy global RNG.
    np.random.seed(seed % (2**32))  # noqa: NPY002
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
