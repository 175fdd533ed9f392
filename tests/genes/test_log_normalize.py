"""log_normalize / prepare_section against hand computations."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from gr2st._constants import (
    COUNTS_LAYER,
    IMAGE_PATH,
    SECTION,
    SPATIAL,
    UNS,
    ZERO_PANEL_SPOTS,
)
from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.genes import log_normalize, prepare_section, prepare_sections


def test_log_normalize_matches_hand_computation() -> None:
    counts = np.array([[1, 0, 3], [2, 2, 0]])
    # Library sizes 4 and 4: y = log10(1 + 1e4 * x / 4).
    expected = np.array(
        [
            [math.log10(2501), 0.0, math.log10(7501)],
            [math.log10(5001), math.log10(5001), 0.0],
        ]
    )
    out = log_normalize(counts)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(log_normalize(sp.csr_matrix(counts)), expected, rtol=1e-6)


def test_log_normalize_with_given_library_and_scale() -> None:
    out = log_normalize(np.array([[2, 6]]), library_size=[10], scale=100.0)
    np.testing.assert_allclose(out, [[math.log10(21), math.log10(61)]], rtol=1e-6)


def test_log_normalize_refuses_zero_libraries() -> None:
    with pytest.raises(GR2STDataError, match=r"1 spot\(s\) have a zero or invalid library size"):
        log_normalize(np.array([[1, 2], [0, 0]]))
    with pytest.raises(GR2STDataError, match=r"library_size has shape \(3,\)"):
        log_normalize(np.ones((2, 2)), library_size=[1, 2, 3])


def _section() -> AnnData:
    """Four spots × four genes; spot s2 has no count over the panel (A, B, C)."""
    counts = np.array(
        [
            [1, 0, 3, 5],
            [2, 2, 0, 0],
            [0, 0, 0, 9],
            [0, 7, 1, 1],
        ]
    )
    adata = AnnData(
        X=sp.csr_matrix(counts.astype(np.int32)),
        obs=pd.DataFrame({SECTION: "S"}, index=["s0", "s1", "s2", "s3"]),
        var=pd.DataFrame(index=["A", "B", "C", "D"]),
    )
    adata.obsm[SPATIAL] = np.arange(8, dtype=float).reshape(4, 2)
    adata.uns[UNS] = {IMAGE_PATH: None}
    return adata


def test_prepare_section(caplog: pytest.LogCaptureFixture) -> None:
    adata = _section()
    with caplog.at_level(logging.WARNING, logger="gr2st.genes.normalize"):
        out = prepare_section(adata, genes=["C", "A", "B"])

    assert list(out.var_names) == ["C", "A", "B"]
    assert list(out.obs_names) == ["s0", "s1", "s3"]
    assert isinstance(out.X, np.ndarray)
    assert out.X.dtype == np.float32
    lib = np.array([4.0, 4.0, 8.0])
    raw = np.array([[3, 1, 0], [0, 2, 2], [1, 0, 7]])
    np.testing.assert_allclose(out.X, np.log10(1 + 1e4 * raw / lib[:, None]), rtol=1e-6)
    np.testing.assert_array_equal(out.layers[COUNTS_LAYER].toarray(), raw)
    np.testing.assert_array_equal(out.obsm[SPATIAL], adata.obsm[SPATIAL][[0, 1, 3]])
    assert out.uns[UNS] == {IMAGE_PATH: None, ZERO_PANEL_SPOTS: ["s2"]}
    assert "S: dropped 1 spot(s) with zero counts over the 3 library genes: 's2'" in caplog.text
    # The input is left as it was.
    assert adata.shape == (4, 4)
    assert ZERO_PANEL_SPOTS not in adata.uns[UNS]


def test_non_panel_genes_use_the_panel_library() -> None:
    out = prepare_section(_section(), genes=["D", "A"], library_genes=["A", "B", "C"])
    lib = np.array([4.0, 4.0, 8.0])
    raw = np.array([[5, 1], [0, 2], [1, 0]])
    np.testing.assert_allclose(out.X, np.log10(1 + 1e4 * raw / lib[:, None]), rtol=1e-6)
    assert out.uns[UNS][ZERO_PANEL_SPOTS] == ["s2"]


def test_no_zero_spots_records_an_empty_list() -> None:
    out = prepare_section(_section(), genes=["D", "B"])
    assert out.n_obs == 4
    assert out.uns[UNS][ZERO_PANEL_SPOTS] == []


def test_prepare_section_errors() -> None:
    with pytest.raises(GR2STDataError, match=r"^S: 1 of 3 genes missing: 'MYC'$"):
        prepare_section(_section(), genes=["A", "MYC"], library_genes=["A", "B"])
    normalised = _section()
    normalised.X = sp.csr_matrix(np.log1p(normalised.X.toarray()))
    with pytest.raises(GR2STDataError, match=r"S: .* non-integer count"):
        prepare_section(normalised, genes=["A"])
    with pytest.raises(
        GR2STDataError, match="S: all 2 spots have zero counts over the 1 library genes"
    ):
        prepare_section(_section()[:, ["A"]][[2, 3]].copy(), genes=["A"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"genes": ["A", "B", "A"]}, "genes repeats 'A'; expected a list of distinct genes"),
        ({"genes": []}, "genes is empty"),
        ({"genes": ["A"], "library_genes": ["B", "B"]}, "library_genes repeats 'B'"),
    ],
)
def test_prepare_section_gene_list_errors(options: dict, message: str) -> None:
    with pytest.raises(GR2STConfigError, match=message):
        prepare_section(_section(), **options)


def test_prepare_sections_uses_one_gene_list() -> None:
    sections = synthetic(n_sections=2, n_genes=6, grid=(3, 3))
    out = prepare_sections(sections, genes=["GENE005", "GENE001"], progress=False)
    assert [list(s.var_names) for s in out] == [["GENE005", "GENE001"]] * 2
    assert [s.obs[SECTION].iloc[0] for s in out] == ["S0", "S1"]
