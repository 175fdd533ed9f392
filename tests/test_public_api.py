"""What ``import gr2st`` gives a notebook user, and the examples that rely on it."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gr2st

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_every_public_name_resolves() -> None:
    for name in gr2st.__all__:
        assert getattr(gr2st, name) is not None, name
    assert gr2st.feature_key("efficientnet-lite0") == "X_efficientnet-lite0"
    assert gr2st.benchmark.run_benchmark is gr2st.run_benchmark
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        gr2st.nope  # noqa: B018


def test_import_is_lazy() -> None:
    code = "import sys, gr2st; print('torch' in sys.modules, 'anndata' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda p: p.name)
def test_examples_use_only_public_names(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gr2st"):
            assert not any(part.startswith("_") for part in node.module.split(".")), node.module
            if node.module == "gr2st":
                for alias in node.names:
                    assert alias.name in gr2st.__all__, alias.name
        is_name = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        if is_name and node.value.id == "gr2st":  # type: ignore[union-attr]
            assert node.attr in gr2st.__all__, node.attr  # type: ignore[union-attr]


@pytest.mark.slow
def test_quickstart_trains_and_predicts_from_public_names(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("quickstart", EXAMPLES / "quickstart.py")
    assert spec is not None
    assert spec.loader is not None
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    pcc = quickstart.main(None, tmp_path / "bundle", epochs=20)
    assert np.isfinite(pcc)
    assert (tmp_path / "bundle" / "bundle.json").is_file()
    assert (tmp_path / "bundle" / "prediction.h5ad").is_file()
