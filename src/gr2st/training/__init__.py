"""The one training loop of every learned method, with resumable checkpoints."""

from __future__ import annotations

from gr2st.training.checkpoint import Checkpoint, fingerprint
from gr2st.training.trainer import (
    DEFAULT_CHECKPOINT_SECONDS,
    Batch,
    Trainer,
    TrainingStats,
    TrainingTask,
)

__all__ = [
    "DEFAULT_CHECKPOINT_SECONDS",
    "Batch",
    "Checkpoint",
    "Trainer",
    "TrainingStats",
    "TrainingTask",
    "fingerprint",
]
