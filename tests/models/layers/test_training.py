from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData

from gr2st._constants import ARRAY_X, ARRAY_Y, COUNTS_LAYER, SECTION
from gr2st.errors import GR2STDataError
from gr2st.models.layers.training import (
    EpochCheckpoint,
    fingerprint,
    section_arrays,
    spot_positions,
)


def _section(n: int = 4) -> AnnData:
    obs = pd.DataFrame(
        {SECTION: "A1", ARRAY_X: np.arange(n) + 0.2, ARRAY_Y: np.arange(n) * 2.0 + 0.6},
        index=[f"s{i}" for i in range(n)],
    )
    adata = AnnData(np.arange(n * 3, dtype=np.float32).reshape(n, 3), obs=obs)
    adata.layers[COUNTS_LAYER] = sp.csr_matrix(np.ones((n, 3), np.int32))
    adata.obsm["X_f"] = np.full((n, 2), 0.5, np.float64)
    return adata


def test_section_arrays_reads_everything():
    s = section_arrays(_section(), feature_key="X_f", with_counts=True)
    assert s.name == "A1"
    assert s.positions.dtype == np.int64
    assert s.positions.tolist() == [[0, 1], [1, 3], [2, 5], [3, 7]]
    assert s.expression.dtype == s.features.dtype == s.counts.dtype == np.float32
    assert s.features.shape == (4, 2)
    assert s.counts.shape == (4, 3)
    assert float(s.counts.sum()) == 12.0
    bare = section_arrays(_section())
    assert bare.features.shape == (4, 0)
    assert bare.counts.shape == (4, 0)


def test_section_arrays_errors_name_the_field():
    adata = _section()
    with pytest.raises(GR2STDataError, match=r"section 'A1': obsm\['X_g'\] is missing"):
        section_arrays(adata, feature_key="X_g")
    del adata.layers[COUNTS_LAYER]
    with pytest.raises(GR2STDataError, match=r"layers\['counts'\]"):
        section_arrays(adata, with_counts=True)
    adata = _section()
    adata.layers[COUNTS_LAYER] = -adata.layers[COUNTS_LAYER]
    with pytest.raises(GR2STDataError, match="non-negative"):
        section_arrays(adata, with_counts=True)
    adata = _section()
    adata.X[0, 0] = np.nan
    with pytest.raises(GR2STDataError, match="NaN"):
        section_arrays(adata)
    adata = _section()
    adata.obs[ARRAY_X] = -3.0
    with pytest.raises(GR2STDataError, match="finite and >= 0"):
        spot_positions(adata)
    del adata.obs[ARRAY_Y]
    with pytest.raises(GR2STDataError, match="array_y"):
        spot_positions(adata)


def test_fingerprint_depends_on_settings_and_data():
    a = np.arange(6.0).reshape(2, 3)
    base = fingerprint({"lr": 1e-4}, [a])
    assert base == fingerprint({"lr": 1e-4}, [a.copy()])
    assert base != fingerprint({"lr": 2e-4}, [a])
    assert base != fingerprint({"lr": 1e-4}, [a + 1])
    assert base != fingerprint({"lr": 1e-4}, [a.reshape(3, 2)])
    assert base != fingerprint({"lr": 1e-4}, [a.astype(np.float32)])


def _train_state(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt


def test_checkpoint_round_trip_restores_state_and_rngs(tmp_path):
    model, opt = _train_state(0)
    rng = np.random.default_rng(5)
    rng.random(3)
    ckpt = EpochCheckpoint(tmp_path, run_fingerprint="run-a")
    torch.manual_seed(11)
    ckpt.save(model=model, optimizer=opt, epoch=3, history=[2.0, 1.5, 1.0], rng=rng)
    expected_torch = torch.rand(2)
    expected_numpy = rng.random(2)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp files left

    fresh_model, fresh_opt = _train_state(1)
    fresh_rng = np.random.default_rng(99)
    torch.manual_seed(12345)
    epoch, history = EpochCheckpoint(tmp_path, run_fingerprint="run-a").load(
        model=fresh_model, optimizer=fresh_opt, rng=fresh_rng
    )
    assert (epoch, history) == (3, [2.0, 1.5, 1.0])
    for a, b in zip(model.state_dict().values(), fresh_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    torch.testing.assert_close(torch.rand(2), expected_torch)
    np.testing.assert_array_equal(fresh_rng.random(2), expected_numpy)


def test_checkpoint_of_another_run_or_no_workdir_is_ignored(tmp_path):
    model, opt = _train_state(0)
    rng = np.random.default_rng(0)
    EpochCheckpoint(tmp_path, run_fingerprint="run-a").save(
        model=model, optimizer=opt, epoch=2, history=[1.0, 0.5], rng=rng
    )
    other, other_opt = _train_state(1)
    before = other.weight.detach().clone()
    got = EpochCheckpoint(tmp_path, run_fingerprint="run-b").load(
        model=other, optimizer=other_opt, rng=rng
    )
    assert got == (0, [])
    torch.testing.assert_close(other.weight, before)
    none = EpochCheckpoint(None, run_fingerprint="run-a")
    none.save(model=model, optimizer=opt, epoch=1, history=[1.0], rng=rng)
    assert none.load(model=model, optimizer=opt, rng=rng) == (0, [])
