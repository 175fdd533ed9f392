"""``oracle``: a ceiling that retrieves training spots by their *expression*.

Each test spot is predicted from its ``k`` nearest training spots in log-normalised
expression space (cosine similarity, GR2ST's 1/L1² weights). It reads the test
section's measured expression, so it is not a method: it bounds what any method that
predicts by retrieving training spots could reach, and is reported below the ranking.
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
from gr2st.sections import stack_expression


@dataclass(frozen=True)
class OracleConfig(Config):
    """Settings of :class:`ExpressionOracle`.

    Attributes
    ----------
    top_k
        Number of training spots averaged per test spot.
    """

    top_k: PositiveInt = 50


@register_method
class ExpressionOracle(Method[OracleConfig]):
    """Expression-space nearest-neighbour ceiling (needs the test truth).

    Examples
    --------
    >>> ExpressionOracle.is_ceiling
    True
    """

    name = "oracle"
    is_ceiling = True
    supports_values = True
    profiles: ClassVar[dict[str, OracleConfig]] = {"default": OracleConfig()}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._bank: np.ndarray | None = None

    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        self._bank = stack_expression(train)

    def predict(self, test: AnnData) -> np.ndarray:
        if self._bank is None:
            raise GR2STConfigError("oracle: predict() called before fit()")
        return self._retrieve(test, self._bank)

    def predict_values(self, test: AnnData, values: Sequence[AnnData]) -> np.ndarray:
        """Average the genes of ``values`` (one AnnData per training section) instead.

        Neighbours are still found on the fitted genes (the panel).
        """
        return self._retrieve(test, stack_expression(values))

    def _retrieve(self, test: AnnData, values: np.ndarray) -> np.ndarray:
        if self._bank is None:
            raise GR2STConfigError("oracle: predict() called before fit()")
        if values.shape[0] != self._bank.shape[0]:
            raise GR2STDataError(
                f"oracle: {values.shape[0]} value rows for {self._bank.shape[0]} training spots"
            )
        query = stack_expression([test])
        result = retrieve(query, self._bank, values, top_k=self.config.top_k, device=self.device)
        return np.asarray(result.mean, dtype=np.float32)
