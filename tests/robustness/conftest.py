"""Fixtures of the robustness suite: the command line as a user runs it (exit status,
stderr), and small inputs made on the fly from the synthetic generator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from gr2st._constants import feature_key
from gr2st.cli.main import main
from gr2st.datasets import synthetic

FEATURES = feature_key("toy")


@dataclass
class Outcome:
    """What a user sees: the exit status and the lines on stderr (and stdout)."""

    code: int
    err: list[str]
    out: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.err if line.startswith("error:")]

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.err if line.startswith("warning:")]

    def one_error(self) -> str:
        """The single ``error:`` line (and assert there is no traceback)."""
        text = "\n".join(self.err)
        assert "Traceback" not in text, text
        assert len(self.errors) == 1, text
        return self.errors[0]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Outcome]:
    """Run ``gr2st ARGS`` through :func:`gr2st.cli.main.main` (the real error boundary).

    What ``main()`` sets up for its process is undone after each test by
    ``tests/conftest.py``.
    """

    def run(*args: str) -> Outcome:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        return Outcome(code=int(stop.value.code or 0), err=lines, out=captured.out)

    return run


def toy_sections(image_dir: Path | None, *, n: int = 3) -> list:
    """Small synthetic sections with stand-in ``toy`` features (no encoder needed)."""
    secs = synthetic(n_sections=n, n_genes=12, grid=(6, 6), signal=2.0, image_dir=image_dir, seed=1)
    rng = np.random.default_rng(0)
    for adata in secs:
        onehot = 2.0 * np.eye(5)[adata.obs["latent_state"].to_numpy()]
        noise = rng.normal(scale=0.3, size=onehot.shape)
        adata.obsm[FEATURES] = (onehot + noise).astype(np.float32)
    return secs


@pytest.fixture
def h5ad_dir(tmp_path: Path) -> Path:
    """Three synthetic sections with stand-in features, one ``.h5ad`` each, and
    ``panel.txt`` (6 of their 12 genes) next to the folder."""
    folder = tmp_path / "data"
    folder.mkdir()
    for adata in toy_sections(folder):
        adata.write_h5ad(folder / f"{adata.obs['section'].iloc[0]}.h5ad")
    (tmp_path / "panel.txt").write_text("\n".join(f"GENE{i:03d}" for i in range(6)) + "\n")
    return folder


@pytest.fixture
def bench_args() -> Callable[[Path, Path], list[str]]:
    """Arguments of a fast benchmark (knn on the stand-in features) of DATA into OUT."""

    def build(data: Path, out: Path) -> list[str]:
        return [
            "benchmark", "--data", str(data), "--methods", "knn", "--encoder", "toy",
            "--panel", str(data.parent / "panel.txt"), "--no-progress", "--no-figures",
            "--out", str(out),
        ]  # fmt: skip

    return build
