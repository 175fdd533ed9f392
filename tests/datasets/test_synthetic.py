from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gr2st._constants import CELL_TYPE, IMAGE_PATH, PATIENT, SECTION, SPATIAL, UNS
from gr2st.datasets import synthetic, write_her2st_layout


def test_shape_and_keys(tmp_path):
    secs = synthetic(n_sections=3, n_genes=12, grid=(5, 6), image_dir=tmp_path, seed=1)
    assert [s.shape for s in secs] == [(30, 12)] * 3
    assert [s.obs[SECTION].iloc[0] for s in secs] == ["S0", "S1", "S2"]
    assert [s.obs[PATIENT].iloc[0] for s in secs] == ["P0", "P0", "P1"]
    for s in secs:
        assert s.X.format == "csr"
        assert np.issubdtype(s.X.dtype, np.integer)
        assert s.obsm[SPATIAL].shape == (30, 2)
        w, h = Image.open(s.uns[UNS][IMAGE_PATH]).size
        assert (s.obsm[SPATIAL] > 0).all()
        assert (s.obsm[SPATIAL][:, 0] < w).all()
        assert (s.obsm[SPATIAL][:, 1] < h).all()
        assert set(np.unique(s.obs[CELL_TYPE])) <= set(range(6))


def test_seeded():
    a = synthetic(n_sections=2, n_genes=8, grid=(4, 4), seed=3)
    b = synthetic(n_sections=2, n_genes=8, grid=(4, 4), seed=3)
    c = synthetic(n_sections=2, n_genes=8, grid=(4, 4), seed=4)
    assert (a[1].X != b[1].X).nnz == 0
    assert (a[1].X != c[1].X).nnz > 0


def test_state_drives_expression_and_image(tmp_path):
    (s,) = synthetic(n_sections=1, n_genes=20, grid=(12, 12), image_dir=tmp_path, seed=0)
    counts = np.asarray(s.X.todense(), dtype=float)
    logx = np.log1p(counts / counts.sum(1, keepdims=True) * 100)
    state = s.obs["latent_state"].to_numpy()
    # Between-state variance of the strongest gene dominates its within-state variance.
    df = pd.DataFrame({"g": logx[:, 0], "k": state})
    between = df.groupby("k")["g"].mean().var()
    within = df.groupby("k")["g"].var().mean()
    assert between > within
    # Mean patch colour differs between states.
    img = np.asarray(Image.open(s.uns[UNS][IMAGE_PATH]), dtype=float)
    xy = np.round(s.obsm[SPATIAL]).astype(int)
    colours = np.stack([img[y - 8 : y + 8, x - 8 : x + 8].mean((0, 1)) for x, y in xy])
    means = np.stack([colours[state == k].mean(0) for k in np.unique(state)])
    assert np.abs(means[:, None] - means[None]).max() > 5


def test_bad_states():
    with pytest.raises(ValueError, match="n_states"):
        synthetic(n_states=9)


def test_her2st_layout(tmp_path):
    secs = synthetic(n_sections=2, n_genes=6, grid=(3, 3), image_dir=tmp_path / "img", seed=0)
    for name, s in zip(["A1", "B2"], secs, strict=True):
        s.obs[SECTION] = name
    root = write_her2st_layout(secs, tmp_path / "her2st")
    assert (root / "ST-cnts" / "A1.tsv.gz").exists()
    spots = pd.read_csv(root / "ST-spotfiles" / "B2_selection.tsv", sep="\t")
    assert list(spots.columns) == ["x", "y", "new_x", "new_y", "pixel_x", "pixel_y", "selected"]
    assert (root / "ST-imgs" / "B" / "B2" / "B2.jpg").exists()
    counts = pd.read_csv(root / "ST-cnts" / "A1.tsv.gz", sep="\t", index_col=0)
    np.testing.assert_array_equal(counts.to_numpy(), secs[0].X.toarray())
