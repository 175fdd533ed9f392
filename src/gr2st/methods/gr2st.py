"""``gr2st``: GR2ST (graph attention + contrastive alignment + retrieval) for the benchmark.

Wraps :class:`gr2st.models.GR2ST`. Profiles: ``default`` (ours) and ``reference`` (the
published recipe, see ``gr2st.models.config``). Overrides are the model's dotted keys,
e.g. ``model.fusion=concat`` or ``train.epochs=50`` (a bare field name works too).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from gr2st.errors import GR2STConfigError
from gr2st.methods.base import METHODS, Method
from gr2st.models import GR2ST, Prediction, apply_overrides, get_profile


@METHODS.register("gr2st")
class GR2STMethod(Method):
    """GR2ST as a benchmark method.

    Parameters
    ----------
    progress
        Show the training progress bar.
    **kwargs
        :class:`~gr2st.methods.base.Method`'s options (feature key, profile, overrides,
        seed, device).

    Examples
    --------
    >>> m = GR2STMethod(feature_key="X_uni", profile="reference", overrides=["epochs=5"])
    >>> m.config.train.epochs, m.config.train.optimiser_per_epoch
    (5, True)
    """

    profiles = ("default", "reference")

    def __init__(self, *, progress: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = apply_overrides(get_profile(self.profile), self.overrides)
        self.progress = progress
        self.model: GR2ST | None = None

    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        """Train on ``train``; per-epoch checkpoints in ``workdir`` make the fit resumable."""
        self.model = GR2ST(
            train,
            feature_key=self.feature_key,
            config=self.config,
            seed=self.seed,
            device=self.device,
        )
        self.model.train(progress=self.progress, checkpoint_dir=workdir)

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

    def describe(self) -> dict[str, Any]:
        return {"profile": self.profile, **self.config.to_dict()}
