"""Sphinx configuration of gr2st's documentation (``make docs``; warnings are errors)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

from gr2st_docs import write_cli_pages  # noqa: E402

import gr2st  # noqa: E402

project = "gr2st"
author = "gr2st developers"
release = gr2st.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

templates_path = ["_templates"]
autosummary_generate = True
# A subpackage's __all__ is its public API (functions re-exported from its modules).
autosummary_ignore_module_all = False
autodoc_typehints = "none"  # numpydoc sections carry the types; signatures stay readable
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "furo"
html_title = f"gr2st {release}"
html_static_path: list[str] = []

# One page per command, generated from the Typer app so the help text never drifts.
write_cli_pages(HERE / "cli")
