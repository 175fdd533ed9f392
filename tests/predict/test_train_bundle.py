"""train_bundle's per-section alignment: the bundle banks what the model was trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError
from gr2st.genes import align_sections, common_genes, prepare_sections
from gr2st.models import GR2ST
from gr2st.predict import train_bundle
from gr2st.sections import stack_expression


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:section .* obs\\['cell_type'\\] is missing:UserWarning")
def test_an_aligned_bundle_banks_the_aligned_expression(tmp_path: Path) -> None:
    train = synthetic(n_sections=2, n_genes=6, grid=(4, 4), image_dir=tmp_path / "t", seed=5)
    counts = train[1].X.toarray()
    counts[:, :3] *= 4  # a batch effect on half the genes of one section
    train[1].X = sp.csr_matrix(counts)
    panel = [f"GENE{i:03d}" for i in range(4)]
    with pytest.raises(GR2STConfigError, match=r"^align 'zscore': expected one of none, center"):
        train_bundle(train, tmp_path / "bad", panel=panel, align="zscore")
    assert not (tmp_path / "bad").exists()

    folder = train_bundle(
        train, tmp_path / "bundle", panel=panel, align="standardize", nuclei="none",
        size_px=48, device="cpu", cache_dir=tmp_path / "cache", progress=False,
        overrides=["train.epochs=2", "model.proj_dim=16", "model.heads=2"],
    )  # fmt: skip
    model = GR2ST.load(folder, device="cpu")
    aligned = align_sections(
        prepare_sections(train, genes=panel, progress=False), how="standardize"
    )
    np.testing.assert_allclose(
        model.bank_values(panel).numpy(), stack_expression(aligned), rtol=1e-6, atol=1e-6
    )
    every = common_genes(train)
    aligned_all = align_sections(
        prepare_sections(train, genes=every, library_genes=panel, progress=False),
        how="standardize",
    )
    np.testing.assert_allclose(
        model.bank_values(every).numpy(), stack_expression(aligned_all), rtol=1e-5, atol=1e-5
    )
    plain = stack_expression(prepare_sections(train, genes=panel, progress=False))
    assert not np.allclose(model.bank_values(panel).numpy(), plain, atol=1e-2)
