from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gr2st.cli.main import app
from gr2st.datasets import synthetic, write_her2st_layout
from gr2st.errors import GR2STConfigError, GR2STDataError


@pytest.fixture
def synthetic_her2st(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two synthetic sections (B4, C2) in the HER2ST folder layout; private user cache."""
    monkeypatch.setenv("GR2ST_CACHE_DIR", str(tmp_path / "user-cache"))
    sections = synthetic(n_sections=2, n_genes=5, grid=(2, 3), image_dir=tmp_path / "img")
    for adata, name in zip(sections, ["B4", "C2"], strict=True):
        adata.obs["section"] = name
    return write_her2st_layout(sections, tmp_path / "her2st")


def _run(*args: str):
    return CliRunner().invoke(app, ["features", *args])


@pytest.mark.slow
def test_cold_then_warm(synthetic_her2st: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    args = ["--data", str(synthetic_her2st), "--size", "48", "--cache", str(cache), "--no-progress"]
    cold = _run(*args)
    assert cold.exit_code == 0, cold.output
    lines = cold.output.splitlines()
    assert lines[0].startswith(
        f"2 sections from {synthetic_her2st}; encoder efficientnet-lite0; cache"
    )
    assert lines[1].startswith("B4: 6 spots in ")
    assert lines[2].startswith("C2: 6 spots in ")
    assert "from cache" not in cold.output
    assert lines[-1].startswith("Done: 12 spots in ")
    assert lines[-1].endswith(f"Cache: {cache}")
    # features + nuclei for each section
    assert len(list(cache.rglob("*.npz"))) == 4

    warm = _run(*args, "--sections", "C2")
    assert warm.exit_code == 0, warm.output
    assert "C2: 6 spots in " in warm.output
    assert "from cache: features, nuclei" in warm.output
    assert "B4" not in warm.output

    other = _run(*args, "--stain", "none", "--nuclei", "none", "--backend", "torch")
    assert other.exit_code == 0, other.output
    assert "from cache" not in other.output
    assert len(list(cache.rglob("*.npz"))) == 6


@pytest.mark.slow
def test_bad_options(synthetic_her2st: Path, tmp_path: Path):
    base = ["--data", str(synthetic_her2st), "--cache", str(tmp_path / "c"), "--no-progress"]
    result = _run(*base, "--nuclei", "cellpose")
    assert isinstance(result.exception, GR2STConfigError)
    assert "nuclei must be 'classical', 'hovernet:<path>' or 'none'" in str(result.exception)
    result = _run(*base, "--encoder", "resnet")
    assert isinstance(result.exception, GR2STConfigError)
    result = _run(*base, "--sections", " , ")
    assert isinstance(result.exception, GR2STConfigError)
    result = _run("--data", str(tmp_path / "missing"))
    assert isinstance(result.exception, GR2STDataError)


@pytest.mark.slow
def test_worker_processes_write_the_in_process_results(synthetic_her2st: Path, tmp_path: Path):
    import numpy as np

    base = ["--data", str(synthetic_her2st), "--size", "48", "--no-progress"]
    serial = _run(*base, "--cache", str(tmp_path / "serial"), "--workers", "0")
    assert serial.exit_code == 0, serial.output
    assert "0 worker processes" in serial.output.splitlines()[0]
    parallel = _run(*base, "--cache", str(tmp_path / "parallel"), "--workers", "2")
    assert parallel.exit_code == 0, parallel.output
    assert "2 worker processes" in parallel.output.splitlines()[0]
    files = sorted(p.relative_to(tmp_path / "serial") for p in (tmp_path / "serial").rglob("*.npz"))
    assert len(files) == 4
    # Same keys (file names) and the same arrays, bit for bit.
    assert files == sorted(
        p.relative_to(tmp_path / "parallel") for p in (tmp_path / "parallel").rglob("*.npz")
    )
    for name in files:
        with np.load(tmp_path / "serial" / name) as a, np.load(tmp_path / "parallel" / name) as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.slow
def test_feature_options_compose_the_encoder_and_its_cache_entries(
    synthetic_her2st: Path, tmp_path: Path
):
    cache = tmp_path / "cache"
    base = ["--data", str(synthetic_her2st), "--size", "32", "--cache", str(cache)]
    base += ["--nuclei", "none", "--backend", "torch", "--no-progress"]
    result = _run(*base, "--tta", "2", "--context", "64")
    assert result.exit_code == 0, result.output
    assert "encoder efficientnet-lite0-tta2-ctx2x;" in result.output.splitlines()[0]
    assert len(list(cache.rglob("features-*.npz"))) == 2
    again = _run(*base, "--tta", "2", "--context", "64", "--sections", "C2")
    assert "from cache: features" in again.output
    bad = _run(*base, "--context", "16")
    assert isinstance(bad.exception, GR2STConfigError)
    assert "--context 16: expected a side larger than the patch (32 px)" in str(bad.exception)
