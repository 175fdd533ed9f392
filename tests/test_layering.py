"""Which package may import which: data flows one way (see docs/architecture.md).

Every ``import gr2st.<package>`` in the source tree, module-level or inside a function,
is checked against :data:`ALLOWED`; a lower layer never reaches up (e.g. no method or
model imports the benchmark).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "gr2st"

#: The foundation every package may use.
BASE = frozenset({"_constants", "_registry", "_utils", "config", "errors", "sections"})
ALLOWED: dict[str, frozenset[str]] = {
    "_constants": frozenset(),
    "errors": frozenset(),
    "_utils": frozenset({"errors"}),
    "_registry": frozenset({"errors"}),
    "config": frozenset({"errors"}),
    "sections": frozenset({"_constants", "errors"}),
    # read, genes, pixels, graphs, retrieval, metrics, synthetic data, the training loop
    "io": BASE,
    "genes": BASE | {"io"},
    "image": BASE,
    "graph": BASE,
    "retrieval": BASE,
    "evaluation": BASE,
    "datasets": BASE,
    "training": BASE,
    # where tasks run (in process or on Ray)
    "executors": BASE,
    # features
    "encoders": BASE | {"image"},
    # models
    # (evaluation: early stopping scores a validation section)
    "models": BASE | {"evaluation", "graph", "retrieval", "training"},
    "methods": BASE
    | {"encoders", "evaluation", "graph", "image", "models", "retrieval", "training"},
    # what users see: exports to viewers, HTML reports
    "export": BASE | {"image"},
    "report": BASE,
    # what users run
    "benchmark": BASE
    | {"evaluation", "executors", "genes", "graph", "image", "methods", "report", "training"},
    "predict": BASE | {"encoders", "genes", "image", "io", "models", "retrieval"},
}


def _package(path: Path) -> str:
    parts = path.relative_to(SRC).parts
    return parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """Top-level gr2st subpackages imported anywhere in ``path``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "gr2st" and len(parts) > 1:
                found.add(parts[1])
    return found


MODULES = sorted(p for p in SRC.rglob("*.py") if _package(p) in ALLOWED)


def test_every_package_has_a_rule() -> None:
    packages = {_package(p) for p in SRC.rglob("*.py")} - {"__init__", "__main__", "cli"}
    assert packages <= set(ALLOWED), packages - set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_follow_the_layers(path: Path) -> None:
    package = _package(path)
    bad = _imports(path) - ALLOWED[package] - {package}
    assert not bad, f"{package} must not import {sorted(bad)}"
