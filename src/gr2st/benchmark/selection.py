"""Model selection without peeking: choices made by inner cross-validation on training sections.

Every choice a method's result depends on — a hyperparameter override, the per-section
alignment of the training expression, the image features it reads, the strength of the
spatial smoothing of its predictions — can be given as a grid (``gr2st benchmark
--grid``); with ``--select inner`` each outer fold picks, per method, the choice with
the best mean per-gene Pearson r over an inner leave-one-section-out on its *training*
sections only. A fold with a single training section (e.g. a patient split whose other
patient has one section) is cross-validated within it instead, over contiguous stripes of
its spots (:func:`spatial_blocks`). The held-out section is never seen; the chosen values
are recorded per fold in ``results.json``.

Without ``--select inner`` the first value of every grid key is used (so a one-value grid
is simply a fixed setting, e.g. ``--grid smooth.weight=0.5``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from anndata import AnnData

from gr2st._constants import SECTION, SPATIAL, feature_key
from gr2st.config import apply_overrides, split_override
from gr2st.errors import GR2STConfigError
from gr2st.evaluation.metrics import pearson_per_gene
from gr2st.genes.normalize import SECTION_ALIGNMENTS, align_sections
from gr2st.graph import SmoothConfig, smooth_predictions
from gr2st.sections import grid_coordinates, section_name, stack_expression

#: Grid keys that post-process every method's predictions (the rest are overrides).
SMOOTH_KEYS = ("smooth.weight", "smooth.k")
#: Grid key of the per-section alignment of every method's training expression
#: (:func:`gr2st.genes.align_sections`).
ALIGN_KEY = "expression.align"
#: Grid key of the image encoder whose features a method reads (its ``obsm`` key is
#: ``feature_key(encoder)``; the sections must carry every candidate's features).
ENCODER_KEY = "features.encoder"
SELECTIONS = ("none", "inner")
#: A lone training section is cut into this many stripes for its inner folds.
SECTION_BLOCKS = 3
#: ... unless a stripe would hold fewer spots than this (then the first choice is kept).
MIN_BLOCK_SPOTS = 10


@dataclass(frozen=True)
class Choice:
    """One candidate setting of a method in a fold.

    Attributes
    ----------
    overrides
        ``key=value`` overrides of the method (on top of the run's own).
    align
        How the training sections' expression is aligned before the fit (one of
        :data:`gr2st.genes.SECTION_ALIGNMENTS`).
    smooth
        Spatial smoothing of the predictions.
    encoder
        The encoder whose features the method reads (None: the run's own).
    """

    overrides: tuple[str, ...] = ()
    align: str = "none"
    smooth: SmoothConfig = field(default_factory=SmoothConfig)
    encoder: str | None = None

    def describe(self) -> dict[str, Any]:
        """The chosen values, as recorded in ``results.json``."""
        values: dict[str, Any] = dict(split_override(o) for o in self.overrides)
        if self.encoder is not None:
            values[ENCODER_KEY] = self.encoder
        values[ALIGN_KEY] = self.align
        values["smooth.weight"] = self.smooth.weight
        values["smooth.k"] = self.smooth.k
        return values

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.describe().items())

    def feature_key(self, default: str) -> str:
        """The ``obsm`` key of this choice's features (``default``: the run's own)."""
        return default if self.encoder is None else feature_key(self.encoder)


def parse_grid(items: Sequence[str], methods: Sequence[str]) -> dict[str, list[Choice]]:
    """``--grid`` items → each method's candidate choices (their Cartesian product).

    ``smooth.weight=0,0.5``, ``smooth.k=6``, ``expression.align=none,standardize`` and
    ``features.encoder=efficientnet-lite0,efficientnet-lite0@s4.s6`` apply to every
    method; ``key=v1,v2``
    to every method too (as an override, which each method must accept);
    ``method:key=v1,v2`` to one method. The first value of each key comes first, so the
    first choice is the grid's default.

    Examples
    --------
    >>> grid = parse_grid(["smooth.weight=0,0.5", "knn:top_k=50,200"], ["knn", "ridge"])
    >>> grid["knn"][1].label
    'top_k=50, expression.align=none, smooth.weight=0.5, smooth.k=6'
    >>> len(grid["knn"]), len(grid["ridge"])
    (4, 2)
    """
    per_method: dict[str, dict[str, list[str]]] = {m: {} for m in methods}
    for item in items:
        head, sep, values = item.partition("=")
        target, colon, key = head.partition(":")
        key, target = (key.strip(), target.strip()) if colon else (head.strip(), "")
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not options:
            raise GR2STConfigError(f"--grid {item!r}: expected [method:]key=value1,value2,…")
        if target and target not in per_method:
            raise GR2STConfigError(
                f"--grid {item!r}: method {target!r} is not among the selected methods "
                f"({', '.join(methods)})"
            )
        for name in [target] if target else methods:
            per_method[name][key] = options
    return {name: _product(keys) for name, keys in per_method.items()}


def _product(keys: Mapping[str, list[str]]) -> list[Choice]:
    smooth_keys = [k for k in keys if k in SMOOTH_KEYS]
    override_keys = [k for k in keys if k not in (*SMOOTH_KEYS, ALIGN_KEY, ENCODER_KEY)]
    aligns = keys.get(ALIGN_KEY, ["none"])
    encoders: list[str | None] = list(keys.get(ENCODER_KEY, [None]))
    for how in aligns:
        if how not in SECTION_ALIGNMENTS:
            raise GR2STConfigError(
                f"--grid {ALIGN_KEY}={how}: expected one of {', '.join(SECTION_ALIGNMENTS)}"
            )
    choices = []
    for encoder, values in itertools.product(
        encoders, itertools.product(*(keys[k] for k in override_keys))
    ):
        overrides = tuple(f"{k}={v}" for k, v in zip(override_keys, values, strict=True))
        for how in aligns:
            for smooth_values in itertools.product(*(keys[k] for k in smooth_keys)):
                settings = [
                    f"{k.split('.', 1)[1]}={v}"
                    for k, v in zip(smooth_keys, smooth_values, strict=True)
                ]
                smooth = apply_overrides(SmoothConfig(), settings, owner="--grid smooth")
                choices.append(
                    Choice(overrides=overrides, align=how, smooth=smooth, encoder=encoder)
                )
    return choices or [Choice()]


def spot_coordinates(adata: AnnData) -> np.ndarray:
    """Where a section's spots are, for smoothing: pixel centres, else array coordinates."""
    if SPATIAL in adata.obsm:
        return np.asarray(adata.obsm[SPATIAL], dtype=np.float64)
    return grid_coordinates(adata).astype(np.float64)


def smoothed(pred: np.ndarray, test: AnnData, choice: Choice) -> np.ndarray:
    """``pred`` of section ``test`` smoothed as ``choice`` says."""
    return smooth_predictions(pred, spot_coordinates(test), choice.smooth)


def spatial_blocks(
    adata: AnnData, *, n_blocks: int = SECTION_BLOCKS
) -> list[tuple[AnnData, AnnData]]:
    """Inner folds within one section: ``(rest, stripe)`` for each of ``n_blocks`` stripes.

    The spots are ranked along the longer side of the section and cut into contiguous
    stripes of equal size (±1); each stripe is held out once and the other stripes are
    its training data. Held-out stripes are named ``<section>/block<i>`` and their
    training parts ``<section>/rest<i>``, so that fits on different parts never share a
    cache entry. Contiguous stripes rather than random spots keep the held-out spots away
    from most of their training neighbours, as a new section would be.

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> section = synthetic(n_sections=1, n_genes=3, grid=(6, 4))[0]
    >>> [(section_name(rest), rest.n_obs, section_name(block), block.n_obs)
    ...  for rest, block in spatial_blocks(section)][0]
    ('S0/rest1', 16, 'S0/block1', 8)
    """
    coords = spot_coordinates(adata)
    axis = int(np.argmax(np.ptp(coords, axis=0))) if len(coords) else 0
    order = np.argsort(coords[:, axis], kind="stable")
    name = section_name(adata)
    pairs = []
    for i, stripe in enumerate(np.array_split(order, n_blocks), start=1):
        held = np.zeros(adata.n_obs, dtype=bool)
        held[stripe] = True
        pairs.append(
            (_renamed(adata[~held], f"{name}/rest{i}"), _renamed(adata[held], f"{name}/block{i}"))
        )
    return pairs


def _renamed(view: AnnData, name: str) -> AnnData:
    part = view.copy()
    part.obs[SECTION] = name
    return part


@dataclass
class Selection:
    """The outcome of an inner cross-validation.

    Attributes
    ----------
    choice
        The chosen candidate.
    scores
        Mean inner-validation PCC of every candidate (by label).
    inner_folds
        The held-out training section (or stripe) of each inner fold.
    """

    choice: Choice
    scores: dict[str, float]
    inner_folds: list[str]

    def describe(self) -> dict[str, Any]:
        return {
            "chosen": self.choice.describe(),
            "inner_mean_pcc": self.scores,
            "inner_folds": self.inner_folds,
        }


#: What identifies a candidate's raw predictions: its overrides and alignment (the
#: smoothing candidates post-process the same predictions).
PredictionKey = tuple[tuple[str, ...], str, str | None]


def prediction_key(choice: Choice) -> PredictionKey:
    """The raw predictions ``choice`` shares with the candidates that differ only in smoothing."""
    return (choice.overrides, choice.align, choice.encoder)


def inner_splits(
    choices: Sequence[Choice], train: Sequence[AnnData], *, max_folds: int | None = None
) -> list[tuple[list[AnnData], AnnData]]:
    """The inner folds ``(inner_train, held_out)`` that choose among ``choices``.

    Leave-one-section-out over ``train``; a single section is cut into its
    :func:`spatial_blocks` (when each stripe has at least :data:`MIN_BLOCK_SPOTS` spots).
    Empty when there is nothing to choose or no inner fold is possible (then the first
    choice is kept). ``max_folds`` keeps the first ones.

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> secs = synthetic(n_sections=3, n_genes=4, grid=(4, 4))
    >>> choices = parse_grid(["smooth.weight=0,0.5"], ["mean"])["mean"]
    >>> [(len(inner), section_name(held)) for inner, held in inner_splits(choices, secs)]
    [(2, 'S0'), (2, 'S1'), (2, 'S2')]
    >>> inner_splits(choices[:1], secs)
    []
    """
    splits: list[tuple[list[AnnData], AnnData]]
    if len(choices) > 1 and len(train) > 1:
        splits = [([a for j, a in enumerate(train) if j != i], a) for i, a in enumerate(train)]
    elif len(choices) > 1 and train and train[0].n_obs >= SECTION_BLOCKS * MIN_BLOCK_SPOTS:
        splits = [([rest], block) for rest, block in spatial_blocks(train[0])]
    else:
        return []
    return splits[: max_folds or len(splits)]


def score_inner(
    choices: Sequence[Choice],
    held_out: Sequence[AnnData],
    predictions: Sequence[Mapping[PredictionKey, np.ndarray]],
) -> Selection:
    """The best of ``choices`` given each inner fold's raw predictions.

    Parameters
    ----------
    choices
        Candidates; on a tie (or without inner folds) the first wins.
    held_out
        The held-out part of each inner fold (prepared, with expression).
    predictions
        Per inner fold, the raw predictions of each :func:`prediction_key` of
        ``choices``; each candidate's smoothing is applied here.
    """
    if not held_out:
        return Selection(choice=choices[0], scores={}, inner_folds=[])
    totals: dict[str, list[float]] = {c.label: [] for c in choices}
    for test, preds in zip(held_out, predictions, strict=True):
        truth = stack_expression([test])
        for choice in choices:
            pred = smoothed(np.asarray(preds[prediction_key(choice)]), test, choice)
            r = pearson_per_gene(pred, truth)
            totals[choice.label].append(float(np.nanmean(r)) if np.isfinite(r).any() else 0.0)
    scores = {label: float(np.mean(v)) for label, v in totals.items()}
    best = max(choices, key=lambda c: (_finite(scores[c.label]), -choices.index(c)))
    return Selection(choice=best, scores=scores, inner_folds=[section_name(a) for a in held_out])


def select_inner(
    choices: Sequence[Choice],
    train: Sequence[AnnData],
    *,
    fit_predict: Callable[[Choice, list[AnnData], AnnData], np.ndarray],
    max_folds: int | None = None,
) -> Selection:
    """Pick the best of ``choices`` by leave-one-section-out over ``train`` only.

    The inner folds are :func:`inner_splits`, the scores :func:`score_inner`'s; the
    benchmark runs the same fits as independent tasks instead.

    Parameters
    ----------
    choices
        Candidates; on a tie (or when no inner fold is possible) the first wins.
    train
        The outer fold's training sections (prepared, with expression). A single
        section is cross-validated over its :func:`spatial_blocks` (when each stripe has
        at least :data:`MIN_BLOCK_SPOTS` spots).
    fit_predict
        ``fit_predict(choice, inner_train, inner_test) -> predictions``: fits the
        method with ``choice.overrides`` on ``inner_train`` (already aligned as
        ``choice.align`` says) and predicts ``inner_test`` (which it receives without its
        expression). Called once per inner fold and distinct overrides, alignment and
        encoder: the smoothing candidates reuse the same predictions.
    max_folds
        At most this many inner folds (holding out the first training sections, or
        stripes, in turn); None: one per training section (or stripe).

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> from gr2st.genes import prepare_section
    >>> secs = [prepare_section(s, genes=list(s.var_names))
    ...         for s in synthetic(n_sections=3, n_genes=6, grid=(5, 5))]
    >>> def mean_of_train(choice, inner_train, test):
    ...     return np.tile(stack_expression(inner_train).mean(0), (test.n_obs, 1))
    >>> choices = parse_grid(["smooth.weight=0,0.5"], ["mean"])["mean"]
    >>> sel = select_inner(choices, secs, fit_predict=mean_of_train, max_folds=2)
    >>> sel.choice == choices[0], sel.inner_folds
    (True, ['S0', 'S1'])
    """
    splits = inner_splits(choices, train, max_folds=max_folds)
    predictions = []
    for inner, held_out in splits:
        aligned: dict[str, list[AnnData]] = {}
        cache: dict[PredictionKey, np.ndarray] = {}
        for choice in choices:
            key = prediction_key(choice)
            if key not in cache:
                if choice.align not in aligned:
                    aligned[choice.align] = align_sections(inner, how=choice.align)
                cache[key] = np.asarray(
                    fit_predict(choice, aligned[choice.align], held_out), dtype=np.float32
                )
        predictions.append(cache)
    return score_inner(choices, [held for _, held in splits], predictions)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf
