"""align_sections against the per-section statistics it promises."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from gr2st._constants import COUNTS_LAYER
from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.evaluation.metrics import pearson_per_gene
from gr2st.genes import SECTION_ALIGNMENTS, align_sections, prepare_sections


@pytest.fixture
def sections() -> list[AnnData]:
    # Sections of different depth: the offsets that alignment removes.
    raw = [
        synthetic(n_sections=1, n_genes=8, grid=(6, 7), depth=depth, seed=seed)[0]
        for seed, depth in ((0, 15.0), (1, 60.0), (2, 200.0))
    ]
    return prepare_sections(raw, genes=list(raw[0].var_names), progress=False)


def _x(adata: AnnData) -> np.ndarray:
    return np.asarray(adata.X, dtype=np.float64)


def test_center_gives_every_section_the_pooled_mean_and_keeps_its_deviations(
    sections: list[AnnData],
) -> None:
    means = np.array([_x(s).mean(0) for s in sections])
    assert np.ptp(means, axis=0).max() > 0.1  # the sections do differ in level
    aligned = align_sections(sections, how="center")
    for before, after in zip(sections, aligned, strict=True):
        np.testing.assert_allclose(_x(after).mean(0), means.mean(0), atol=1e-5)
        np.testing.assert_allclose(
            _x(after) - _x(after).mean(0), _x(before) - _x(before).mean(0), atol=1e-5
        )


def test_standardize_gives_the_pooled_spread_and_keeps_each_gene_within_a_section(
    sections: list[AnnData],
) -> None:
    x = [_x(s) for s in sections]
    x[1][:, 3] = 0.7  # a gene without spread on one section
    sections[1].X = x[1].astype(np.float32)
    means = np.array([m.mean(0) for m in x])
    sds = np.array([m.std(0) for m in x])
    aligned = align_sections(sections, how="standardize")
    for i, after in enumerate(aligned):
        got = _x(after)
        spread = sds[i] > 1e-6
        expected = np.where(
            spread,
            (x[i] - means[i]) / np.where(spread, sds[i], 1) * sds.mean(0) + means.mean(0),
            means.mean(0),
        )
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.std(0)[spread], sds.mean(0)[spread], rtol=1e-4)
        # Within a section each gene only moves and stretches: its ranks and r stay.
        r = pearson_per_gene(got[:, spread], x[i][:, spread])
        np.testing.assert_allclose(r, 1.0, atol=1e-5)
    assert np.all(_x(aligned[1])[:, 3] == pytest.approx(means[:, 3].mean(), abs=1e-6))


def test_only_x_changes_and_the_inputs_stay_as_they_were(sections: list[AnnData]) -> None:
    before = [_x(s).copy() for s in sections]
    assert align_sections(sections, how="none") == sections
    aligned = align_sections(sections, how="standardize")
    for original, after, x in zip(sections, aligned, before, strict=True):
        np.testing.assert_array_equal(_x(original), x)
        assert after.X.dtype == np.float32
        assert list(after.obs_names) == list(original.obs_names)
        assert list(after.var_names) == list(original.var_names)
        assert set(after.obsm) == set(original.obsm)
        assert after.layers[COUNTS_LAYER] is original.layers[COUNTS_LAYER]


def test_sparse_input_equals_dense_input(sections: list[AnnData]) -> None:
    dense = align_sections(sections, how="standardize")
    sparse = [s.copy() for s in sections]
    for s in sparse:
        s.X = sp.csr_matrix(s.X)
    for a, b in zip(dense, align_sections(sparse, how="standardize"), strict=True):
        np.testing.assert_allclose(_x(a), _x(b), rtol=1e-6)


def test_bad_requests_get_one_line_errors(sections: list[AnnData]) -> None:
    with pytest.raises(GR2STConfigError, match=r"^section alignment 'zscore': expected one of"):
        align_sections(sections, how="zscore")
    assert "standardize" in SECTION_ALIGNMENTS
    narrow = AnnData(np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(GR2STDataError, match=r"disagree on the number of genes \[2, 8\]"):
        align_sections([sections[0], narrow], how="center")
