"""``ridge``: linear probe on frozen image features (the HEST-Benchmark recipe).

StandardScaler → PCA → ridge regression onto all genes at once. The ridge penalty is
chosen by an inner cross-validation over the *training* sections only (leave one
training section out; with a single training section, contiguous blocks of its spots),
scored by the benchmark's own metric, the mean per-gene Pearson r.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
from anndata import AnnData
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold, LeaveOneGroupOut
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from gr2st.config import Bound, Config, PositiveFloat, PositiveInt
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.evaluation.metrics import pearson_per_gene
from gr2st.methods.base import Method, register_method
from gr2st.sections import section_name, stack_expression, stack_features


@dataclass(frozen=True)
class RidgeConfig(Config):
    """Settings of :class:`RidgeBaseline`.

    Attributes
    ----------
    n_components
        PCA components kept (capped by the number of spots and feature size).
    alphas
        Candidate ridge penalties for the inner cross-validation.
    inner_folds
        Spot blocks used for the inner cross-validation when there is only one
        training section.
    """

    n_components: PositiveInt = 256
    alphas: tuple[PositiveFloat, ...] = (1e1, 1e2, 1e3, 1e4, 1e5, 1e6)
    inner_folds: Annotated[int, Bound(low=2)] = 5

    def check(self) -> None:
        if not self.alphas:
            raise GR2STConfigError("alphas: expected at least one penalty")


def _score(pred: np.ndarray, truth: np.ndarray) -> float:
    r = pearson_per_gene(pred, truth)
    r = r[np.isfinite(r)]
    return float(r.mean()) if r.size else float("nan")


@register_method
class RidgeBaseline(Method[RidgeConfig]):
    """Scaler → PCA → ridge, with α picked on the training sections.

    Examples
    --------
    >>> RidgeBaseline(feature_key="X_f", overrides=["alphas=1,10"]).config.alphas
    (1.0, 10.0)
    """

    name = "ridge"
    supports_values = True
    profiles: ClassVar[dict[str, RidgeConfig]] = {"default": RidgeConfig()}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._reduce: Pipeline | None = None
        self._ridge: Ridge | None = None
        self._train_scores: np.ndarray | None = None
        self.alpha_: float | None = None
        self.cv_scores_: dict[float, float] = {}

    def _reducer(self, n_spots: int, n_features: int) -> Pipeline:
        k = min(self.config.n_components, n_spots, n_features)
        # Exact PCA from the feature covariance: deterministic, and several times faster
        # than the randomized or full SVD when spots outnumber feature dimensions.
        return make_pipeline(StandardScaler(), PCA(n_components=k, svd_solver="covariance_eigh"))

    def _inner_splits(
        self, features: np.ndarray, groups: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if np.unique(groups).size >= 2:
            yield from LeaveOneGroupOut().split(features, groups=groups)
            return
        n_folds = min(self.config.inner_folds, features.shape[0])
        if n_folds < 2:
            raise GR2STDataError("ridge: need at least 2 training spots for the inner CV")
        yield from KFold(n_splits=n_folds, shuffle=False).split(features)

    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        features = stack_features(train, self.feature_key)
        expression = stack_expression(train)
        groups = np.concatenate([np.full(a.n_obs, section_name(a)) for a in train])
        alphas = sorted(self.config.alphas)
        per_alpha: dict[float, list[float]] = {a: [] for a in alphas}
        for inner_train, inner_val in self._inner_splits(features, groups):
            x_tr, y_tr = features[inner_train], expression[inner_train]
            # Scaler and PCA do not depend on α: fit them once per inner fold.
            reduce = self._reducer(*x_tr.shape).fit(x_tr)
            z_tr, z_val = reduce.transform(x_tr), reduce.transform(features[inner_val])
            for alpha in alphas:
                pred = Ridge(alpha=alpha).fit(z_tr, y_tr).predict(z_val)
                per_alpha[alpha].append(_score(pred, expression[inner_val]))
        self.cv_scores_ = {
            a: float(np.nanmean(s)) if np.isfinite(s).any() else float("nan")
            for a, s in per_alpha.items()
        }
        finite = {a: s for a, s in self.cv_scores_.items() if np.isfinite(s)}
        # Ties (or no finite score) resolve to the strongest penalty: the safest probe.
        self.alpha_ = max(finite, key=lambda a: (finite[a], a)) if finite else alphas[-1]
        self._reduce = self._reducer(*features.shape).fit(features)
        self._train_scores = self._reduce.transform(features)
        self._ridge = Ridge(alpha=self.alpha_).fit(self._train_scores, expression)

    def predict(self, test: AnnData) -> np.ndarray:
        ridge = self.require_fit(self._ridge)
        return np.asarray(ridge.predict(self._scores(test)), dtype=np.float32)

    def predict_values(self, test: AnnData, values: Sequence[AnnData]) -> np.ndarray:
        """Predict the genes of ``values`` (one AnnData per training section).

        The same scaler, PCA and α as the fitted model; only the linear map onto the
        new genes is refitted (cheap: a ridge on the PCA scores).
        """
        train_scores, alpha = self.require_fit(self._train_scores), self.require_fit(self.alpha_)
        targets = stack_expression(values)
        if targets.shape[0] != train_scores.shape[0]:
            raise GR2STDataError(
                f"ridge: {targets.shape[0]} value rows for {train_scores.shape[0]} training spots"
            )
        ridge = Ridge(alpha=alpha).fit(train_scores, targets)
        return np.asarray(ridge.predict(self._scores(test)), dtype=np.float32)

    def _scores(self, test: AnnData) -> np.ndarray:
        reduce = self.require_fit(self._reduce)
        return np.asarray(reduce.transform(stack_features([test], self.feature_key)))

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "alpha": self.alpha_,
            "cv_mean_pcc": {str(a): s for a, s in self.cv_scores_.items()},
        }
