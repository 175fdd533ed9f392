"""hvg_panel: per-section HVGs pooled by union or intersection."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from gr2st._constants import SECTION
from gr2st.errors import GR2STConfigError
from gr2st.genes import hvg_panel


def _section(name: str, variable: Sequence[str], flat: Sequence[str], *, seed: int) -> AnnData:
    """80 spots: 2000 Poisson background genes, ``variable`` genes switching from spot to
    spot between rate 1 and a gene-specific high rate, and ``flat`` genes at rate 20.

    Many background genes keep every mean bin well filled: seurat's within-bin z-score
    of one outlier among n genes cannot exceed (n - 1) / sqrt(n).
    """
    rng = np.random.default_rng(seed)
    n_spots, n_background = 80, 2000
    background = np.tile(rng.uniform(1, 100, n_background), (n_spots, 1))
    high = 15.0 * 1.6 ** np.arange(len(variable))  # spread over the mean bins
    switching = np.where(rng.random((n_spots, len(variable))) < 0.5, high, 1.0)
    rates = np.hstack([background, switching, np.full((n_spots, len(flat)), 20.0)])
    return AnnData(
        X=sp.csr_matrix(rng.poisson(rates).astype(np.int32)),
        obs=pd.DataFrame({SECTION: name}, index=[f"{name}_{i}" for i in range(n_spots)]),
        var=pd.DataFrame(index=[*(f"BG{i:04d}" for i in range(n_background)), *variable, *flat]),
    )


@pytest.fixture(scope="module")
def sections() -> list[AnnData]:
    # HV1-3 vary in both sections, ONLY_A / ONLY_B in one (flat in the other), and
    # UNSHARED varies in A but is not measured in B.
    return [
        _section("A", ["HV1", "HV2", "HV3", "ONLY_A", "UNSHARED"], ["ONLY_B"], seed=0),
        _section("B", ["HV1", "HV2", "HV3", "ONLY_B"], ["ONLY_A"], seed=1),
    ]


@pytest.mark.slow
def test_union_and_intersection(sections: list[AnnData]) -> None:
    both = hvg_panel(sections, n_top=4, mode="intersection")
    union = hvg_panel(sections, n_top=4, mode="union")
    assert both == ["HV1", "HV2", "HV3"]
    # Genes chosen in both sections come first; a gene one section lacks never enters.
    assert union == ["HV1", "HV2", "HV3", "ONLY_A", "ONLY_B"]
    assert hvg_panel(sections, n_top=4, min_sections=2) == both


def test_exactly_n_top_genes_per_section(sections: list[AnnData]) -> None:
    assert len(hvg_panel(sections[:1], n_top=10)) == 10
    assert len(hvg_panel(sections[:1], n_top=10_000)) == sections[0].n_vars


def test_input_sections_are_not_modified(sections: list[AnnData]) -> None:
    before = sections[0].X.copy()
    hvg_panel(sections, n_top=4, flavor="cell_ranger")
    assert (before != sections[0].X).nnz == 0
    assert list(sections[0].var.columns) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"flavor": "seurat_v3"}, "flavor must be one of seurat, cell_ranger"),
        ({"mode": "both"}, "mode must be 'union' or 'intersection'"),
        ({"n_top": 0}, "n_top must be at least 1"),
        ({"mode": "intersection", "min_sections": 1}, "min_sections applies to mode='union'"),
        ({"min_sections": 3}, r"min_sections must be in 1\.\.2; got 3"),
    ],
)
def test_bad_options(sections: list[AnnData], options: dict, message: str) -> None:
    with pytest.raises(GR2STConfigError, match=message):
        hvg_panel(sections, **options)


def test_no_sections() -> None:
    with pytest.raises(GR2STConfigError, match="at least one"):
        hvg_panel([])
