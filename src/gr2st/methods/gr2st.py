"""``gr2st``: GR2ST (graph attention + contrastive alignment + retrieval) for the benchmark.

Wraps :class:`gr2st.models.GR2ST`. Profiles: ``default`` (ours) and ``paper`` (the
published recipe, alias ``reference``; see ``gr2st.models.config``). Overrides are the
model's dotted keys, e.g. ``model.fusion=concat`` or ``train.epochs=50`` (a bare field
name works too).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from gr2st.config import config_to_dict
from gr2st.methods.base import Method, register_method
from gr2st.models import GR2ST, GR2STConfig, Prediction
from gr2st.models.config import DATASET_PROFILES, PROFILE_ALIASES, PROFILES
from gr2st.retrieval import mixture


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
    has_profiles = True
    supports_values = True
    profiles = PROFILES
    profile_aliases = PROFILE_ALIASES
    dataset_profiles = DATASET_PROFILES
    prediction_fields = ("predict",)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.models: list[GR2ST] = []
        self._train: list[AnnData] = []

    @property
    def model(self) -> GR2ST | None:
        """The first (or only) trained model."""
        return self.models[0] if self.models else None

    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        """Train ``train.ensemble`` models (seeds derived from the method's seed).

        Checkpoints in ``workdir`` (the first model's, then ``member<i>/``) make the fit
        resumable.
        """
        self.models = []
        self._train = list(train)
        self._add_members(workdir)

    def _add_members(self, workdir: Path | None) -> None:
        for i in range(len(self.models), self.config.train.ensemble):
            model = GR2ST(
                self._train,
                feature_key=self.feature_key,
                config=self.config,
                seed=member_seed(self.seed, i),
                device=self.device,
            )
            folder = workdir if workdir is None or i == 0 else workdir / f"member{i}"
            model.train(
                progress=self.progress,
                checkpoint_dir=folder,
                checkpoint_every=self.checkpoint_every,
            )
            self.models.append(model)
        stats = [m.training_stats for m in self.models if m.training_stats is not None]
        self.training_stats = sum(stats[1:], stats[0]) if stats else None

    def fit_settings(self) -> dict[str, Any]:
        """Member ``i``'s seed does not depend on the ensemble's size, so a fit of ``k``
        models holds every smaller ensemble and grows into a larger one: the size is not a
        fit setting."""
        settings = super().fit_settings()
        del settings["train"]["ensemble"]
        if self.config.train.early_stopping:
            # The validation that picks the epochs retrieves with the prediction settings.
            settings["predict"] = config_to_dict(self.config.predict)
        return settings

    def adopt(self, other: Method[GR2STConfig]) -> None:
        """Also train the members a larger ``train.ensemble`` adds (a smaller one predicts
        with the first members)."""
        self._trained("adopt")
        super().adopt(other)
        self._add_members(None)
        for model in self.models:
            model.config = replace(model.config, predict=self.config.predict)

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        chosen = [m.validation for m in self.models if m.validation is not None]
        if chosen:
            described["early_stopping"] = [
                {"section": v.section, "epochs": v.best_epochs, "scores": v.scores} for v in chosen
            ]
        return described

    def predict_full(self, test: AnnData) -> Prediction:
        """Prediction with its uncertainty (neighbour spread) and provenance per section.

        An ensemble's prediction is the mean of its models'; its spread is that of all
        their neighbours together.
        """
        return self._combined([m.predict(test) for m in self._trained("predict")])

    def predict(self, test: AnnData) -> np.ndarray:
        return np.asarray(self.predict_full(test).mean, dtype=np.float32)

    def predict_values(self, test: AnnData, values: Sequence[AnnData]) -> np.ndarray:
        """Retrieve any measured genes: ``values`` holds one AnnData per training section."""
        parts = [m.predict(test, values=values) for m in self._trained("predict_values")]
        return np.asarray(self._combined(parts).mean, dtype=np.float32)

    def _trained(self, what: str) -> list[GR2ST]:
        models = self.require_fit(self.models or None, what=what)
        return models[: self.config.train.ensemble]

    @staticmethod
    def _combined(parts: list[Prediction]) -> Prediction:
        if len(parts) == 1:
            return parts[0]
        mean, std, provenance = mixture(
            [p.mean for p in parts], [p.std for p in parts], [p.provenance for p in parts]
        )
        return replace(parts[0], mean=mean, std=std, provenance=provenance)


def member_seed(seed: int, member: int) -> int:
    """Seed of ensemble member ``member`` (member 0 keeps ``seed``).

    Examples
    --------
    >>> member_seed(7, 0), member_seed(7, 1) != member_seed(7, 2)
    (7, True)
    """
    if member == 0:
        return seed
    digest = hashlib.sha256(f"{seed}\0member{member}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
