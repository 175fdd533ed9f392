"""``oracle``: a ceiling that retrieves training spots by their *expression*.

Each test spot is predicted from its ``k`` nearest training spots in log-normalised
expression space (cosine similarity, GR2ST's 1/L1² weights). It reads the test
section's measured expression, so it is not a method: it bounds what any method that
predicts by retrieving training spots could reach, and is reported below the ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from anndata import AnnData

from gr2st.config import PositiveInt
from gr2st.methods.base import register_method
from gr2st.methods.knn import KNNConfig, NeighbourRetrieval
from gr2st.sections import stack_expression


@dataclass(frozen=True)
class OracleConfig(KNNConfig):
    """Settings of :class:`ExpressionOracle`.

    Attributes
    ----------
    top_k
        Number of training spots averaged per test spot.
    """

    top_k: PositiveInt = 50


@register_method
class ExpressionOracle(NeighbourRetrieval[OracleConfig]):
    """Expression-space nearest-neighbour ceiling (needs the test truth).

    Examples
    --------
    >>> ExpressionOracle.is_ceiling
    True
    """

    name = "oracle"
    is_ceiling = True
    profiles: ClassVar[dict[str, OracleConfig]] = {"default": OracleConfig()}

    def embed(self, sections: Sequence[AnnData]) -> np.ndarray:
        return stack_expression(sections)
