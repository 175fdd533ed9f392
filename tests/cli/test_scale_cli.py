"""``gr2st features`` and ``gr2st predict`` over many inputs: one task per input."""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pytest
from typer.testing import CliRunner

from gr2st._constants import SECTION
from gr2st.cli.main import app
from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.predict import train_bundle


def _invoke(*args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output, result.exception


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic sections, one .h5ad each (naming its image), and a broken file."""
    root = tmp_path_factory.mktemp("slides")
    secs = synthetic(n_sections=3, n_genes=6, grid=(3, 4), image_dir=root / "img", seed=4)
    for adata in secs:
        adata.write_h5ad(root / f"{adata.obs[SECTION].iloc[0]}.h5ad")
    return root


@pytest.mark.slow
def test_features_over_many_inputs(slides: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for name in ("S0", "S1"):
        (tmp_path / "in" / f"{name}.h5ad").symlink_to(slides / f"{name}.h5ad")
    (tmp_path / "in" / "broken.h5ad").write_text("not hdf5")
    cache = tmp_path / "cache"
    args = ["features", "--cache", str(cache), "--size", "48", "--no-progress"]
    code, output, exc = _invoke(*args, "--inputs", str(tmp_path / "in"))
    assert isinstance(exc, GR2STDataError)
    assert "1 of 3 inputs failed (first: broken.h5ad:" in str(exc)
    assert "broken.h5ad: failed" in output
    assert "S0.h5ad: done (12 spots in" in output
    assert "S1.h5ad: done" in output
    assert "Summary: 2 done, 0 skipped, 1 failed (of 3)." in output
    assert len(list(cache.rglob("*.npz"))) == 4  # features + nuclei of the two good ones
    assert not [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".npz"]

    (tmp_path / "in" / "broken.h5ad").unlink()
    (tmp_path / "list.txt").write_text(f"# two\nin/S0.h5ad\n{slides / 'S2.h5ad'}\n")
    code, output, exc = _invoke(*args, "--inputs", str(tmp_path / "list.txt"))
    assert code == 0, exc
    assert "S0.h5ad: skipped" in output
    assert "S2.h5ad: done" in output
    assert "Summary: 1 done, 1 skipped, 0 failed (of 2)." in output


def test_features_many_option_errors(slides: Path, tmp_path: Path) -> None:
    base = ["features", "--cache", str(tmp_path / "c"), "--no-progress"]
    _, _, exc = _invoke(*base, "--inputs", str(slides), "--data", str(slides))
    assert isinstance(exc, GR2STConfigError)
    assert str(exc) == "--inputs replaces --data and --sections"
    _, _, exc = _invoke(*base, "--inputs", str(tmp_path / "nothing"))
    assert isinstance(exc, GR2STDataError)
    assert "no such folder or list file" in str(exc)
    _, _, exc = _invoke(*base, "--inputs", str(slides), "--executor", "spark")
    assert isinstance(exc, GR2STConfigError)
    assert "--executor: expected local or ray, got 'spark'" in str(exc)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:section .* obs\\['cell_type'\\] is missing:UserWarning")
def test_predict_over_many_inputs(slides: Path, tmp_path: Path) -> None:
    train = synthetic(n_sections=2, n_genes=6, grid=(4, 4), image_dir=tmp_path / "t", seed=5)
    bundle = train_bundle(
        train, tmp_path / "bundle", panel=[f"GENE{i:03d}" for i in range(4)], nuclei="none",
        size_px=48, device="cpu", cache_dir=tmp_path / "cache", progress=False,
        overrides=["train.epochs=2", "model.proj_dim=16", "model.heads=2"],
    )  # fmt: skip
    common = ["predict", "--model", str(bundle), "--device", "cpu", "--no-progress"]
    code, output, exc = _invoke(*common, "--inputs", str(slides), "--out", str(tmp_path / "p"))
    assert code == 0, exc
    assert "Summary: 3 done, 0 skipped, 0 failed (of 3)." in output
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "S0.h5ad", "S1.h5ad", "S2.h5ad",
    ]  # fmt: skip
    # The same prediction as one slide at a time.
    code, _, exc = _invoke(
        *common, "--h5ad", str(slides / "S1.h5ad"), "--out", str(tmp_path / "one.h5ad")
    )
    assert code == 0, exc
    many, one = (
        anndata.read_h5ad(tmp_path / "p" / "S1.h5ad"),
        anndata.read_h5ad(tmp_path / "one.h5ad"),
    )
    np.testing.assert_array_equal(many.X, one.X)
    assert list(many.var_names) == list(one.var_names)

    # Up-to-date outputs are skipped; another gene choice makes them again.
    stamp = (tmp_path / "p" / "S0.h5ad").stat().st_mtime_ns
    code, output, exc = _invoke(*common, "--inputs", str(slides), "--out", str(tmp_path / "p"))
    assert code == 0, exc
    assert "Summary: 0 done, 3 skipped, 0 failed (of 3)." in output
    assert (tmp_path / "p" / "S0.h5ad").stat().st_mtime_ns == stamp
    code, output, exc = _invoke(
        *common, "--inputs", str(slides), "--genes", "all", "--out", str(tmp_path / "p")
    )
    assert code == 0, exc
    assert "Summary: 3 done, 0 skipped, 0 failed (of 3)." in output
    assert anndata.read_h5ad(tmp_path / "p" / "S0.h5ad").n_vars == 6

    _, _, exc = _invoke(*common, "--inputs", str(slides), "--grid", "--out", str(tmp_path / "q"))
    assert isinstance(exc, GR2STConfigError)
    assert "not with --grid" in str(exc)
    _, _, exc = _invoke(*common, "--inputs", str(slides), "--out", str(tmp_path / "x.h5ad"))
    assert isinstance(exc, GR2STConfigError)
    assert "with --inputs, expected a folder" in str(exc)
