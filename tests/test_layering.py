"""Which package may import which: data flows one way (see docs/architecture.md).

Every ``import gr2st.<package>`` in the source tree, module-level or inside a function,
is checked against :data:`ALLOWED`; a lower layer never reaches up (e.g. no method or
model imports the benchmark). Within the tree, no module imports itself back through
others (no import cycle, function-level imports included; an import under
``if TYPE_CHECKING:`` never runs and does not count), and every import is absolute.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
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


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` that can run (not under ``if TYPE_CHECKING:``)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def module_name(path: Path, root: Path) -> str:
    """``root/pkg/a/b.py`` → ``pkg.a.b`` (a package's ``__init__.py`` is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module → the modules of ``package`` it imports anywhere (under ``root``).

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to ``a.b``.
    Importing a submodule runs its packages' ``__init__`` first; those implicit edges are
    left out (a package re-exporting its modules is not a cycle).
    """
    paths = sorted((root / package).rglob("*.py"))
    modules = {module_name(p, root): p for p in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif node.module is not None and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        graph[name] = {t for t in targets if t in modules}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, …, a]``, or None when it has none."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        todo = [iter(sorted(graph[start]))]
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                done.add(path.pop())
                todo.pop()
            elif nxt in path:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in done:
                path.append(nxt)
                todo.append(iter(sorted(graph[nxt])))
    return None


def relative_imports(path: Path) -> list[int]:
    """Line numbers of the relative imports (``from . import x``) in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]


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


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph(SRC.parent, "gr2st"))
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_are_absolute(path: Path) -> None:
    assert not relative_imports(path), f"relative import on lines {relative_imports(path)}"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_a_planted_cycle(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import f\n",
            "pkg/a.py": "def f():\n    from pkg.sub import b\n    return b\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/b.py": "import os\nfrom pkg.sub.c import g\n",
            "pkg/sub/c.py": "from pkg import a\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg"] == {"pkg.a"}
    assert graph["pkg.sub.b"] == {"pkg.sub.c"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]


def test_checker_finds_a_self_import_and_a_cycle_through_init(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"pkg/__init__.py": "import pkg.a\n", "pkg/a.py": "import pkg\n"})
    assert find_cycle(import_graph(root, "pkg")) == ["pkg", "pkg.a", "pkg"]
    root = _tree(tmp_path / "self", {"pkg/__init__.py": "", "pkg/a.py": "from pkg import a\n"})
    assert find_cycle(import_graph(root, "pkg")) == ["pkg.a", "pkg.a"]


def test_checker_ignores_type_checking_imports_and_reexports(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            # the package re-exports its modules, which import each other one way
            "pkg/__init__.py": "from pkg.a import A\nfrom pkg.b import B\n",
            "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from pkg.b import B\nelse:\n    import json\nclass A: ...\n",
            "pkg/b.py": "from pkg.a import A\nclass B(A): ...\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == set()
    assert find_cycle(graph) is None
    # the same import, run: a cycle
    (root / "pkg/a.py").write_text("from pkg.b import B\n")
    assert find_cycle(import_graph(root, "pkg")) == ["pkg.a", "pkg.b", "pkg.a"]


def test_checker_finds_relative_imports(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text("import os\nfrom . import a\n\ndef f():\n    from ..b import c\n")
    assert relative_imports(path) == [2, 5]
