"""``mean``: predict every gene's mean over the training spots.

Every prediction is the same vector, so the per-gene Pearson r is undefined (NaN) for
all genes: under the published NaN-dropping policy the section score is undefined too,
while the strict score (NaN counted as 0) is 0. The baseline is kept to make that policy
visible; its MSE and MAE are the meaningful numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from anndata import AnnData

from gr2st.config import Config
from gr2st.methods.base import Method, register_method
from gr2st.sections import stack_expression


@dataclass(frozen=True)
class MeanConfig(Config):
    """No settings: every override of ``mean`` is reported as unknown."""


@register_method
class MeanBaseline(Method[MeanConfig]):
    """Training-spot mean of each gene, identical for every test spot.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> obs = pd.DataFrame({"section": ["A", "A"]}, index=["s1", "s2"])
    >>> train = anndata.AnnData(np.array([[1.0, 2.0], [3.0, 6.0]], np.float32), obs=obs)
    >>> m = MeanBaseline(feature_key="X_none")
    >>> m.fit([train])
    >>> m.predict(train)
    array([[2., 4.],
           [2., 4.]], dtype=float32)
    """

    name = "mean"
    supports_values = True
    profiles: ClassVar[dict[str, MeanConfig]] = {"default": MeanConfig()}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._mean: np.ndarray | None = None

    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        self._mean = _spot_mean(train)

    def predict(self, test: AnnData) -> np.ndarray:
        return np.tile(self.require_fit(self._mean), (test.n_obs, 1))

    def predict_values(self, test: AnnData, values: Sequence[AnnData]) -> np.ndarray:
        """Predict the genes of ``values`` (one AnnData per training section)."""
        return np.tile(_spot_mean(values), (test.n_obs, 1))


def _spot_mean(sections: Sequence[AnnData]) -> np.ndarray:
    return stack_expression(sections).mean(axis=0, dtype=np.float64).astype(np.float32)
