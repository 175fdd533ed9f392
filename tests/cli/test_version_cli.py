"""``gr2st --version`` and ``python -m gr2st``: what a bug report needs."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import gr2st
from gr2st._utils import versions
from gr2st.cli.main import app


def _report() -> dict[str, str]:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    first, *rest = result.output.strip().splitlines()
    assert first == f"gr2st {gr2st.__version__}"
    return dict(line.split(": ", 1) for line in rest)


def test_version_lists_python_torch_cuda_and_key_libraries() -> None:
    report = _report()
    assert list(report) == [
        "python",
        "torch",
        "numpy",
        "anndata",
        "scanpy",
        "torch_geometric",
        "onnxruntime",
        "openslide-python",
        "transformers",
    ]
    assert report["python"].startswith(platform.python_version() + " (")
    cuda = "CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
    assert report["torch"].startswith(f"{torch.__version__} (")
    assert cuda in report["torch"]
    assert report["numpy"] == np.__version__
    assert report["anndata"] == version("anndata")
    assert report["torch_geometric"] == version("torch_geometric")


def test_a_missing_optional_library_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    real = versions.version

    def fake(name: str) -> str:
        if name in ("scanpy", "onnxruntime"):
            raise versions.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(versions, "version", fake)
    report = _report()
    assert report["scanpy"] == "not installed"
    assert report["onnxruntime"] == "not installed"
    assert report["numpy"] == np.__version__


@pytest.mark.slow
def test_python_dash_m_runs_the_cli() -> None:
    src = Path(gr2st.__file__).parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "gr2st", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"gr2st {gr2st.__version__}"
    assert lines[2].startswith(f"torch: {torch.__version__} (")
    helped = subprocess.run(
        [sys.executable, "-m", "gr2st", "data", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert helped.returncode == 0, helped.stderr
    assert "fetch" in helped.stdout
