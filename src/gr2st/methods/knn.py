"""``knn``: retrieve training spots by cosine similarity of frozen image features.

The same retrieval and 1/L1² weighting as GR2ST's prediction step, applied to the raw
features instead of learned embeddings: the gap to ``gr2st`` is what contrastive
training adds. :class:`NeighbourRetrieval` is that retrieval in any space; the
``oracle`` ceiling uses it on expression.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import numpy as np
from anndata import AnnData

from gr2st.config import Config, PositiveInt
from gr2st.errors import GR2STDataError
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


C = TypeVar("C", bound=KNNConfig)


class NeighbourRetrieval(Method[C]):
    """Weighted mean expression of the ``top_k`` training spots most cosine-similar to a
    test spot in the space of :meth:`embed` (GR2ST's retrieval and 1/L1² weights).

    Subclasses choose the space (:meth:`embed`) and a config with ``top_k``.
    """

    supports_values = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._keys: np.ndarray | None = None
        self._values: np.ndarray | None = None

    @abstractmethod
    def embed(self, sections: Sequence[AnnData]) -> np.ndarray:
        """The spots of ``sections`` in the retrieval space, stacked."""

    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        self._keys = self.embed(train)
        self._values = stack_expression(train)

    def predict(self, test: AnnData) -> np.ndarray:
        return self._retrieve(test, self.require_fit(self._values))

    def predict_values(self, test: AnnData, values: Sequence[AnnData]) -> np.ndarray:
        """Average the genes of ``values`` (one AnnData per training section) instead.

        Neighbours are still found in the fitted space.
        """
        return self._retrieve(test, stack_expression(values))

    def _retrieve(self, test: AnnData, values: np.ndarray) -> np.ndarray:
        keys = self.require_fit(self._keys)
        if values.shape[0] != keys.shape[0]:
            raise GR2STDataError(
                f"{self.name}: {values.shape[0]} value rows for {keys.shape[0]} training spots"
            )
        top_k = cast(KNNConfig, self.config).top_k
        result = retrieve(self.embed([test]), keys, values, top_k=top_k, device=self.device)
        return np.asarray(result.mean, dtype=np.float32)


@register_method
class KNNBaseline(NeighbourRetrieval[KNNConfig]):
    """Retrieval by the frozen image features.

    Examples
    --------
    >>> KNNBaseline(feature_key="X_efficientnet-lite0", overrides=["top_k=50"]).config
    KNNConfig(top_k=50)
    """

    name = "knn"
    profiles: ClassVar[dict[str, KNNConfig]] = {"default": KNNConfig()}

    def embed(self, sections: Sequence[AnnData]) -> np.ndarray:
        return stack_features(sections, self.feature_key)
