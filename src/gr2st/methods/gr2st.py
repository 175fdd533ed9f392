"""``gr2st``: GR2ST (graph attention + contrastive alignment + retrieval) for the benchmark.

Wraps :class:`gr2st.models.GR2ST`. Profiles: ``default`` (ours) and ``paper`` (the
published recipe, alias ``reference``; see ``gr2st.models.config``). Overrides are the
model's dotted keys, e.g. ``model.fusion=concat`` or ``train.epochs=50`` (a bare field
name works too).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from gr2st.errors import GR2STConfigError
from gr2st.methods.base import Method, register_method
from gr2st.models import GR2ST, GR2STConfig, Prediction
from gr2st.models.config import PROFILE_ALIASES, PROFILES


@register_method
class GR2STMethod(Method[GR2STConfig]):
    """GR2ST as a benchmark method.

    Parameters
    ----------
    **kwargs
        :class:`~gr2st.methods.base.Method`'s options (feature key, profile, overrides,
        seed, device, progress, checkpoint interval).

    Examples
    --------
    >>> m = GR2STMethod(feature_key="X_uni", profile="reference", overrides=["epochs=5"])
    >>> m.profile, m.config.train.epochs, m.config.train.optimizer_per_epoch
    ('paper', 5, True)
    """

    name = "gr2st"
    learned = True
    supports_values = True
    profiles = PROFILES
    profile_aliases = PROFILE_ALIASES

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model: GR2ST | None = None

    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        """Train on ``train``; checkpoints in ``workdir`` make the fit resumable."""
        self.model = GR2ST(
            train,
            feature_key=self.feature_key,
            config=self.config,
            seed=self.seed,
            device=self.device,
        )
        self.model.train(
            progress=self.progress, checkpoint_dir=workdir, checkpoint_every=self.checkpoint_every
        )
        self.training_stats = self.model.training_stats

    def predict_full(self, test: AnnData) -> Prediction:
        """Prediction with its uncertainty (neighbour spread) and provenance per section."""
        if self.model is None:
            raise GR2STConfigError("gr2st: predict() called before fit()")
        return self.model.predict(test)

    def predict(self, test: AnnData) -> np.ndarray:
        return np.asarray(self.predict_full(test).mean, dtype=np.float32)

    def predict_values(self, test: AnnData, values: Sequence[AnnData]) -> np.ndarray:
        """Retrieve any measured genes: ``values`` holds one AnnData per training section."""
        if self.model is None:
            raise GR2STConfigError("gr2st: predict_values() called before fit()")
        return np.asarray(self.model.predict(test, values=values).mean, dtype=np.float32)
