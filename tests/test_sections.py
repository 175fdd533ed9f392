"""Section accessors: names, arrays and their one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from gr2st._constants import ARRAY_X, ARRAY_Y, CELL_TYPE, COUNTS_LAYER, SECTION
from gr2st.errors import GR2STDataError
from gr2st.sections import (
    section_arrays,
    section_label,
    section_name,
    stack_expression,
    stack_features,
)


def _section(name: str = "A1", n: int = 3, genes: int = 2) -> AnnData:
    obs = pd.DataFrame(
        {
            SECTION: name,
            ARRAY_X: np.arange(n, dtype=float) + 0.2,
            ARRAY_Y: np.arange(n, dtype=float) * 2,
            CELL_TYPE: np.arange(n) % 6,
        },
        index=[f"{name}_{i}" for i in range(n)],
    )
    adata = AnnData(
        sp.csr_matrix(np.arange(n * genes, dtype=np.float32).reshape(n, genes)), obs=obs
    )
    adata.obsm["X_f"] = np.ones((n, 4), np.float32)
    adata.layers[COUNTS_LAYER] = np.ones((n, genes), np.float32)
    return adata


def test_section_name_strict_and_lenient() -> None:
    assert section_name(_section("B4")) == "B4"
    mixed = _section()
    mixed.obs[SECTION] = ["A", "B", "A"]
    with pytest.raises(
        GR2STDataError, match=r"expected one section per AnnData, found \['A', 'B'\]"
    ):
        section_name(mixed)
    assert section_name(mixed, default="x") == "A"
    bare = AnnData(np.zeros((2, 1)))
    with pytest.raises(GR2STDataError, match=r"obs\['section'\] is missing"):
        section_name(bare)
    assert section_label(bare) == "section"


def test_section_arrays_reads_and_checks_every_field() -> None:
    arrays = section_arrays(_section(), feature_key="X_f", with_counts=True, n_types=6)
    assert arrays.name == "A1"
    assert arrays.obs_names == ["A1_0", "A1_1", "A1_2"]
    np.testing.assert_array_equal(arrays.expression, [[0, 1], [2, 3], [4, 5]])
    assert arrays.expression.dtype == np.float32
    np.testing.assert_array_equal(arrays.positions, [[0, 0], [1, 2], [2, 4]])
    np.testing.assert_allclose(arrays.coords[:, 0], [0.2, 1.2, 2.2], rtol=1e-6)
    assert arrays.features.shape == (3, 4)
    assert arrays.counts.shape == (3, 2)
    np.testing.assert_array_equal(arrays.types, [0, 1, 2])
    assert section_arrays(_section()).features.shape == (3, 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.obs.__setitem__(ARRAY_X, [0.0, np.nan, 1.0]), "must be finite and >= 0"),
        (lambda a: a.obs.drop(columns=[ARRAY_Y], inplace=True), r"obs\['array_y'\] is missing"),
        (lambda a: a.obsm.pop("X_f"), r"obsm\['X_f'\] is missing; compute image features"),
        (lambda a: a.layers.pop(COUNTS_LAYER), r"layers\['counts'\] \(raw panel counts\)"),
        (lambda a: a.obs.__setitem__(CELL_TYPE, [0, 1, 9]), r"type ids in 0..5"),
    ],
)
def test_section_arrays_errors_name_the_field(change, message: str) -> None:
    adata = _section()
    change(adata)
    with pytest.raises(GR2STDataError, match=message):
        section_arrays(adata, feature_key="X_f", with_counts=True, n_types=6)


def test_missing_cell_types_read_as_zero_with_a_warning() -> None:
    adata = _section()
    del adata.obs[CELL_TYPE]
    with pytest.warns(UserWarning, match="every spot gets type 0"):
        arrays = section_arrays(adata, n_types=6)
    np.testing.assert_array_equal(arrays.types, [0, 0, 0])


def test_stacking_checks_widths() -> None:
    a, b = _section("A"), _section("B")
    assert stack_features([a, b], "X_f").shape == (6, 4)
    assert stack_expression([a, b]).shape == (6, 2)
    b.obsm["X_f"] = np.ones((3, 5), np.float32)
    with pytest.raises(GR2STDataError, match=r"sections disagree on feature size \[4, 5\]"):
        stack_features([a, b], "X_f")
    a.X = np.full((3, 2), np.inf, np.float32)
    with pytest.raises(GR2STDataError, match="section 'A': X: contains NaN or infinite values"):
        stack_expression([a])
