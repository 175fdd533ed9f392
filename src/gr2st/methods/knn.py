"""``knn``: retrieve training spots by cosine similarity of frozen image features.

The same retrieval and 1/L1² weighting as GR2ST's prediction step, applied to the raw
features instead of learned embeddings: the gap to ``gr2st`` is what contrastive
training adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from anndata import AnnData

from gr2st.config import Config, PositiveInt
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.methods.base import Method, register_method
from gr2st.retrieval import retrieve
from gr2st.sections import stack_expression, stack_features


@dataclass(frozen=True)
class KNNConfig(Config):
    """Settings of :class:`KNNBaseline`.

    Attributes
    ----------
    top_k
        Number of training spots averaged per test spot.
    """

    top_k: PositiveInt = 200


@register_method
class KNNBaseline(Method[KNNConfig]):
    """Weighted mean expression of the ``top_k`` most similar training spots.

    Examples
    --------
    >>> KNNBaseline(feature_key="X_efficientnet-lite0", overrides=["top_k=50"]).config
    KNNConfig(top_k=50)
    """

    name = "knn"
    supports_values = True
    profiles: ClassVar[dict[str, KNNConfig]] = {"default": KNNConfig()}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._keys: np.ndarray | None = None
        self._values: np.ndarray | None = None

    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        self._keys = stack_features(train, self.feature_key)
        self._values = stack_expression(train)

    def predict(self, test: AnnData) -> np.ndarray:
        if self._values is None:
            raise GR2STConfigError("knn: predict() called before fit()")
        return self._retrieve(test, self._values)

    def predict_values(self, test: AnnData, values: Sequence[AnnData]) -> np.ndarray:
        """Average the genes of ``values`` (one AnnData per training section) instead."""
        return self._retrieve(test, stack_expression(values))

    def _retrieve(self, test: AnnData, values: np.ndarray) -> np.ndarray:
        if self._keys is None:
            raise GR2STConfigError("knn: predict() called before fit()")
        if values.shape[0] != self._keys.shape[0]:
            raise GR2STDataError(
                f"knn: {values.shape[0]} value rows for {self._keys.shape[0]} training spots"
            )
        query = stack_features([test], self.feature_key)
        result = retrieve(query, self._keys, values, top_k=self.config.top_k, device=self.device)
        return np.asarray(result.mean, dtype=np.float32)
