"""The work of one (method, outer fold) pair, as independent tasks for any executor.

A :class:`FoldJob` holds everything its tasks need besides the shared sections (which
every executor passes once, as the ``prepared``, ``targets`` and ``truths`` keyword
arguments). Its tasks:

* :func:`inner_fits` — one per inner fold and *fit group* (:meth:`FoldJob.fit_groups`:
  the candidates one fit serves), returning the raw predictions of the held-out part;
* :func:`fit_fold` — the outer fit with the chosen candidate, its predictions of the
  test sections and their scores.

Each task seeds itself and does exactly what the one-process loop did in the same order,
so the numbers do not depend on where or in which order the tasks run (given the same
torch/BLAS threads per task).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from gr2st._utils.seed import seed_everything
from gr2st.benchmark.selection import (
    Choice,
    PredictionKey,
    Selection,
    inner_splits,
    prediction_key,
    smoothed,
)
from gr2st.benchmark.store import FoldRecord
from gr2st.errors import GR2STDataError
from gr2st.evaluation.metrics import section_metrics
from gr2st.evaluation.splits import Fold
from gr2st.genes import align_sections
from gr2st.methods import Method

__all__ = ["FoldJob", "fit_fold", "inner_fits"]

#: File in a fold's work folder naming the request its checkpoints belong to.
WORKDIR_MARKER = ".gr2st-fold"
#: Estimated cost of one training epoch over one spot, relative to fitting a method that
#: trains no network on one spot (GR2ST's 100 epochs vs the knn baseline, measured).
_EPOCH_COST = 4.0


def blind(adata: AnnData) -> AnnData:
    """The test section as a method sees it: everything but the measured expression."""
    return AnnData(
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        obsm={k: v for k, v in adata.obsm.items()},
        uns=deepcopy(adata.uns),
    )


@dataclass(frozen=True)
class FoldJob:
    """One (method, outer fold) pair of a benchmark, as its tasks receive it.

    Attributes
    ----------
    cls, name
        The method's class and registered name.
    fold
        The outer fold (its training and test sections).
    genes
        Names of the scored genes, in order.
    feature_key, profile, overrides
        How each method instance is built (``overrides``: the run's own, before a
        candidate's).
    candidates
        The fold's candidate settings (the first is the default).
    select, inner_folds
        Selection mode and the most inner folds (see :func:`~gr2st.benchmark.run_benchmark`).
    seed
        The pair's seed (:func:`~gr2st.benchmark.fold_seed`).
    device, progress, checkpoint_every
        Passed to the outer fit (inner fits draw no bars and keep no checkpoints).
    workdir, fresh, fingerprint
        The outer fit's checkpoint folder, whether to discard what it holds, and the
        fingerprint of the request (checkpoints of another request are discarded).
    """

    cls: type[Method[Any]]
    name: str
    fold: Fold
    genes: tuple[str, ...]
    feature_key: str
    profile: str | None
    overrides: tuple[str, ...]
    candidates: tuple[Choice, ...]
    select: str
    inner_folds: int | None
    seed: int
    device: str
    workdir: Path
    fresh: bool
    fingerprint: str
    progress: bool
    checkpoint_every: float

    @property
    def key(self) -> str:
        return f"{self.name} {self.fold.name}"

    def method(self, choice: Choice, *, progress: bool = False) -> Method[Any]:
        """A fresh, unfitted instance of the method with ``choice``'s settings."""
        return self.cls(
            feature_key=choice.feature_key(self.feature_key),
            profile=self.profile,
            overrides=[*self.overrides, *choice.overrides],
            seed=self.seed,
            device=self.device,
            progress=progress,
            checkpoint_every=self.checkpoint_every,
        )

    def splits(self, prepared: Mapping[str, AnnData]) -> list[tuple[list[AnnData], AnnData]]:
        """The inner folds of the selection (none without ``select="inner"``)."""
        if self.select == "none":
            return []
        train = [prepared[s] for s in self.fold.train]
        return inner_splits(self.candidates, train, max_folds=self.inner_folds)

    def fit_groups(self) -> list[tuple[int, ...]]:
        """Candidates (by index) whose raw predictions one fit per inner fold serves.

        One entry per distinct :func:`~gr2st.benchmark.selection.prediction_key`, grouped
        by what the fit depends on (the alignment, the features and
        :meth:`Method.fit_settings`): the
        first of a group is fitted, the others adopt its fit (prediction settings,
        GR2ST's ensemble size), in the candidates' order.
        """
        groups: dict[str, list[int]] = {}
        seen: set[PredictionKey] = set()
        for i, choice in enumerate(self.candidates):
            if prediction_key(choice) in seen:
                continue
            seen.add(prediction_key(choice))
            settings = self.method(choice).fit_settings()
            key = json.dumps([choice.align, choice.encoder, settings], sort_keys=True)
            groups.setdefault(key, []).append(i)
        return [tuple(g) for g in groups.values()]

    def models(self, group: tuple[int, ...]) -> int:
        """Models the fits of ``group`` train (GR2ST's largest ensemble; else 1)."""
        return max(_models(self.method(self.candidates[i])) for i in group)

    def cost(self, n_spots: int, group: tuple[int, ...]) -> float:
        """Estimated cost of a fit of ``group`` on ``n_spots`` spots (arbitrary units)."""
        method = self.method(self.candidates[group[0]])
        epochs = getattr(getattr(method.config, "train", None), "epochs", None)
        if not isinstance(epochs, int):
            return float(n_spots)
        return n_spots * epochs * self.models(group) * _EPOCH_COST


def _models(method: Method[Any]) -> int:
    ensemble = getattr(getattr(method.config, "train", None), "ensemble", 1)
    return ensemble if isinstance(ensemble, int) and ensemble > 0 else 1


def inner_fits(
    job: FoldJob,
    *,
    prepared: Mapping[str, AnnData],
    split: int,
    group: tuple[int, ...],
) -> list[np.ndarray]:
    """Task: fit ``job``'s candidate group on inner fold ``split``, predict its held-out part.

    Returns the raw predictions of each candidate of ``group``, in order.
    """
    inner, held_out = job.splits(prepared)[split]
    aligned = align_sections(inner, how=job.candidates[group[0]].align)
    fitted: Method[Any] | None = None
    predictions = []
    for i in group:
        method = job.method(job.candidates[i])
        if fitted is None:
            seed_everything(job.seed)
            method.fit(aligned)
            fitted = method
        else:
            fitted.adopt(method)
        test = held_out if job.cls.is_ceiling else blind(held_out)
        predictions.append(np.asarray(fitted.predict(test), dtype=np.float32))
    return predictions


def fit_fold(
    job: FoldJob,
    *,
    prepared: Mapping[str, AnnData],
    targets: Mapping[str, AnnData] | None,
    truths: Mapping[str, np.ndarray],
    selection: Selection,
) -> FoldRecord:
    """Task: fit ``job``'s method with the chosen candidate on the fold's training
    sections, predict and score its test sections.

    It reads the shared sections and writes only checkpoints to ``job.workdir``; the
    caller saves the returned record.
    """
    workdir = job.workdir
    # Checkpoints of an interrupted fit are reused only for the very same request.
    marker = workdir / WORKDIR_MARKER
    if job.fresh or not marker.is_file() or marker.read_text() != job.fingerprint:
        shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    marker.write_text(job.fingerprint)
    seed_everything(job.seed)
    choice = selection.choice
    method = job.method(choice, progress=job.progress)
    fold = job.fold
    start = time.perf_counter()
    method.fit(align_sections([prepared[s] for s in fold.train], how=choice.align), workdir=workdir)
    values = (
        None
        if targets is None
        else align_sections([targets[s] for s in fold.train], how=choice.align)
    )
    predictions: dict[str, np.ndarray] = {}
    for section in fold.test:
        test = prepared[section] if job.cls.is_ceiling else blind(prepared[section])
        raw = method.predict(test) if values is None else method.predict_values(test, values)
        pred = smoothed(np.asarray(raw, dtype=np.float32), prepared[section], choice)
        expected = truths[section].shape
        if pred.shape != expected:
            raise GR2STDataError(
                f"method {job.name!r}, section {section!r}: predicted shape {pred.shape}, "
                f"expected {expected}"
            )
        if not np.isfinite(pred).all():
            raise GR2STDataError(
                f"method {job.name!r}, section {section!r}: predictions contain NaN or inf"
            )
        predictions[section] = pred
    seconds = time.perf_counter() - start

    scores: dict[str, dict[str, Any]] = {}
    pcc: dict[str, np.ndarray] = {}
    for section, pred in predictions.items():
        metrics = section_metrics(pred, truths[section], list(job.genes))
        pcc[section] = metrics.pop("pcc").to_numpy()
        scores[section] = metrics
    meta = {
        "fingerprint": job.fingerprint,
        "method": job.name,
        "fold": fold.name,
        "train": list(fold.train),
        "test": list(fold.test),
        "seed": job.seed,
        "seconds": seconds,
        "config": method.describe(),
        "sections": scores,
    }
    if method.training_stats is not None:
        meta["training"] = method.training_stats.as_dict()
    if choice != Choice() or selection.scores:
        meta["selection"] = selection.describe()
    return FoldRecord(meta=meta, predictions=predictions, pcc=pcc)
