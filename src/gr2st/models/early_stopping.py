"""GR2ST's early stopping (``train.early_stopping``): epochs chosen on a training section.

The model trains on all training sections but one, held out by the seed, and retrieval
on that section is scored every ``train.validate_every`` epochs; the earliest best
number of epochs is then trained on every section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from gr2st._utils.files import atomic_path
from gr2st.errors import GR2STConfigError
from gr2st.evaluation.metrics import pearson_per_gene

if TYPE_CHECKING:
    from gr2st.models.gr2st import GR2ST


@dataclass
class Validation:
    """Epochs chosen by ``train.early_stopping``.

    Attributes
    ----------
    section
        The training section held out to validate (never a test section).
    best_epochs
        Epochs of the best validation score (the earliest on ties).
    scores
        Mean per-gene Pearson r of the retrieval on ``section``, by epochs trained.
    """

    section: str
    best_epochs: int
    scores: dict[int, float]


_SCORES_FILE = "validation.json"


def _read_scores(folder: Path, validation: Validation) -> Validation:
    """Scores saved by an interrupted validation run of the same section."""
    path = folder / _SCORES_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("section") == validation.section:
            validation.scores.update({int(k): float(v) for k, v in saved["scores"].items()})
    return validation


def _write_scores(folder: Path, validation: Validation) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"section": validation.section, "scores": validation.scores}
    with atomic_path(folder / _SCORES_FILE) as tmp:
        tmp.write_text(json.dumps(payload))


def validate_epochs(
    model: GR2ST, *, progress: bool, checkpoint_dir: Path | None, checkpoint_every: float
) -> Validation:
    """Train on all training sections but one and score retrieval on that one.

    An inner model of ``model``'s class trains on the other sections and is scored
    every ``train.validate_every`` epochs; the scores are kept in ``checkpoint_dir``
    so that an interrupted validation resumes.
    """
    self = model
    if len(self._train_data) < 2:
        raise GR2STConfigError(
            "train.early_stopping needs at least two training sections (one validates)"
        )
    cfg = self.config.train
    held = int(np.random.default_rng(self.seed).integers(len(self._train_data)))
    val = self._train_data[held]
    inner = type(model).__new__(type(model))
    inner._setup(
        config=self.config,
        profile=self.profile,
        var_names=self.var_names,
        image_dim=self.image_dim,
        feature_key=self.feature_key,
        seed=self.seed,
        device=str(self.device),
        train_sections=[s for i, s in enumerate(self._train_sections) if i != held],
    )
    inner._train_data = [a for i, a in enumerate(self._train_data) if i != held]
    progress_so_far = Validation(section=val.name, best_epochs=cfg.epochs, scores={})
    if checkpoint_dir is not None:
        progress_so_far = _read_scores(checkpoint_dir, progress_so_far)
    # Set, so that the inner model does not validate in turn.
    inner.validation = progress_so_far
    truth = torch.from_numpy(val.expression)
    query = torch.from_numpy(val.features)

    def score(epoch: int, loss: float) -> None:
        if epoch % cfg.validate_every and epoch != cfg.epochs:
            return
        inner._bank = inner._build_bank()
        pred = inner.retrieve_embeddings(
            inner._image_embeddings(query),
            values=inner._bank.panel,
            genes=inner.var_names,
            obs_names=val.obs_names,
        )
        r = pearson_per_gene(pred.mean, truth.numpy())
        progress_so_far.scores[epoch] = float(np.nanmean(r)) if np.isfinite(r).any() else 0.0
        if checkpoint_dir is not None:
            _write_scores(checkpoint_dir, progress_so_far)

    inner.train(
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        on_epoch_end=score,
    )
    scores = progress_so_far.scores
    # The earliest of the best scores: fewer epochs when it makes no difference.
    best = max(sorted(scores), key=lambda e: scores[e])
    return Validation(section=val.name, best_epochs=best, scores=dict(sorted(scores.items())))
