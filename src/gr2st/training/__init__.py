"""The one training loop of every learned method, with resumable checkpoints."""

from __future__ import annotations

from gr2st.training.checkpoint import Checkpoint, fingerprint
from gr2st.training.trainer import (
    DEFAULT_CHECKPOINT_SECONDS,
    PROGRESS_LOG,
    Batch,
    Trainer,
    TrainingStats,
    TrainingTask,
    train_network,
)

__all__ = [
    "DEFAULT_CHECKPOINT_SECONDS",
    "PROGRESS_LOG",
    "Batch",
    "Checkpoint",
    "Trainer",
    "TrainingStats",
    "TrainingTask",
    "fingerprint",
    "train_network",
]
