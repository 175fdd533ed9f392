"""The documentation's tutorials run as written: every ``python`` and ``bash`` block.

``python`` blocks run in one namespace per page, in order; each line of a ``bash`` block
is a ``gr2st`` command, run in-process through the CLI app (exit code 0 required).
``console`` and ``text`` blocks are illustrations (real data, output) and are not run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gr2st.cli.main import app

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = [DOCS / "quickstart.md", *sorted((DOCS / "tutorials").glob("*.md"))]
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)


def blocks(page: Path) -> list[tuple[str, str]]:
    """(language, code) of each fenced block of a Markdown page, in order."""
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(page.read_text())]


def commands(code: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped."""
    joined = code.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        args = shlex.split(line, comments=True)
        if args:
            out.append(args)
    return out


def test_pages_have_runnable_blocks() -> None:
    assert len(PAGES) == 4
    for page in PAGES:
        kinds = {lang for lang, _ in blocks(page)}
        assert "python" in kinds, page.name
    # The command-line tutorials (adding a method is Python only).
    for page in (p for p in PAGES[1:] if p.stem != "add_a_method"):
        assert "bash" in {lang for lang, _ in blocks(page)}, page.name


def test_command_parsing() -> None:
    code = "gr2st a --x 1 \\\n    --y 'b c'  # note\n\n# only a comment\ngr2st info m\n"
    assert commands(code) == [["gr2st", "a", "--x", "1", "--y", "b c"], ["gr2st", "info", "m"]]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:section .* obs\\['cell_type'\\] is missing:UserWarning")
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.stem)
def test_page_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GR2ST_CACHE_DIR", str(tmp_path / "user-cache"))
    namespace: dict[str, object] = {"__name__": "__tutorial__"}
    for lang, code in blocks(page):
        if lang == "python":
            # dont_inherit: a page's classes get evaluated annotations, as in a user's
            # script (this module's `from __future__ import annotations` would leak in).
            exec(compile(code, f"{page.name}", "exec", dont_inherit=True), namespace)
        elif lang == "bash":
            for args in commands(code):
                assert args[0] == "gr2st", f"{page.name}: bash blocks run gr2st only: {args}"
                result = CliRunner().invoke(app, args[1:])
                assert result.exit_code == 0, f"{' '.join(args)}\n{result.output}"
        else:
            assert lang in ("console", "text"), f"{page.name}: unknown block {lang!r}"
