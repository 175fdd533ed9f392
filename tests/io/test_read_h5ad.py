"""read_h5ad: sections already in gr2st's shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from gr2st._constants import ARRAY_Y, IMAGE_PATH, SECTION, SPATIAL, SPOT_DIAMETER_PX, UNS
from gr2st.datasets import synthetic
from gr2st.errors import GR2STDataError
from gr2st.io import read_h5ad


@pytest.fixture
def section(tmp_path: Path) -> AnnData:
    return synthetic(n_sections=1, n_genes=5, grid=(3, 4), image_dir=tmp_path)[0]


def test_round_trip(section: AnnData, tmp_path: Path) -> None:
    section.X = section.X.toarray().astype(np.float32)  # dense float counts become CSR int
    section.write_h5ad(tmp_path / "S0.h5ad")

    adata = read_h5ad(tmp_path / "S0.h5ad")

    assert isinstance(adata.X, sp.csr_matrix)
    assert adata.X.dtype == np.int32
    np.testing.assert_array_equal(adata.X.toarray(), section.X)
    np.testing.assert_allclose(adata.obsm[SPATIAL], section.obsm[SPATIAL])
    assert adata.uns[UNS] == section.uns[UNS]


def test_relative_image_path_is_resolved_against_the_file(section: AnnData, tmp_path: Path) -> None:
    section.uns[UNS][IMAGE_PATH] = "S0.png"  # synthetic wrote tmp_path / "S0.png"
    section.write_h5ad(tmp_path / "S0.h5ad")
    assert read_h5ad(tmp_path / "S0.h5ad").uns[UNS][IMAGE_PATH] == str(tmp_path / "S0.png")


def test_everything_missing_is_listed(section: AnnData, tmp_path: Path) -> None:
    del section.obs[SECTION]
    del section.obs[ARRAY_Y]
    del section.obsm[SPATIAL]
    del section.uns[UNS][SPOT_DIAMETER_PX]
    section.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(
        GR2STDataError,
        match=r"bad\.h5ad: missing obs\['section'\], obs\['array_y'\], obsm\['spatial'\], "
        r"uns\['gr2st'\]\['spot_diameter_px'\]$",
    ):
        read_h5ad(tmp_path / "bad.h5ad")


def test_normalised_expression_is_rejected(section: AnnData, tmp_path: Path) -> None:
    section.X = np.log1p(section.X.toarray())
    section.write_h5ad(tmp_path / "norm.h5ad")
    with pytest.raises(GR2STDataError, match=r"norm\.h5ad: \d+ non-integer count\(s\)"):
        read_h5ad(tmp_path / "norm.h5ad")


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(GR2STDataError, match=r"none\.h5ad: AnnData file not found"):
        read_h5ad(tmp_path / "none.h5ad")
    (tmp_path / "junk.h5ad").write_bytes(b"junk")
    with pytest.raises(GR2STDataError, match=r"junk\.h5ad: cannot read AnnData file"):
        read_h5ad(tmp_path / "junk.h5ad")
