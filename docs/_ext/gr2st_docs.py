"""Build helper: one Markdown page per ``gr2st`` command, generated from the Typer app.

The pages are written at build time from the command objects themselves (help text,
usage, every option with its default), so they never drift from ``gr2st CMD --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from gr2st.cli.main import app


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _option_rows(command: Any, ctx: Any) -> list[str]:
    """The options table, from the same help records that ``--help`` prints."""
    rows = ["| option | description |", "|---|---|"]
    for param in command.get_params(ctx):
        if param.param_type_name == "argument":
            name, text = (param.metavar or param.name.upper()), getattr(param, "help", "") or ""
        else:
            record = param.get_help_record(ctx)
            if record is None:  # hidden
                continue
            name, text = record
        rows.append(f"| `{_cell(name)}` | {_cell(text)} |")
    return rows


def _command_page(path: list[str], command: Any, parent: Any) -> list[str]:
    ctx = type(parent)(command, info_name=path[-1], parent=parent)
    usage = " ".join([*path, *command.collect_usage_pieces(ctx)])
    lines = [f"{'#' * (len(path) - 1)} {' '.join(path)}", "", "```text", usage, "```", ""]
    if command.help:
        lines += ["```text", command.help.strip("\n"), "```", ""]
    lines += [*_option_rows(command, ctx), ""]
    for name in sorted(getattr(command, "commands", {}) or {}):
        lines += _command_page([*path, name], command.commands[name], ctx)
    return lines


def write_cli_pages(folder: Path) -> None:
    """Write ``index.md`` and ``<command>.md`` for every ``gr2st`` command into ``folder``."""
    group = typer.main.get_command(app)
    root = group.make_context("gr2st", [], resilient_parsing=True)
    names = sorted(group.commands)  # type: ignore[attr-defined]
    index = [
        "# Command line",
        "",
        "Every step of the pipeline is a subcommand of `gr2st` (also `python -m gr2st`).",
        "These pages are generated from the commands themselves, as `gr2st COMMAND --help`",
        "prints them. `gr2st --version` prints the versions a bug report needs.",
        "",
        "```{toctree}",
        ":maxdepth: 2",
        "",
        *names,
        "```",
        "",
    ]
    pages = {"index.md": "\n".join(index)}
    for name in names:
        page = _command_page(["gr2st", name], group.commands[name], root)  # type: ignore[attr-defined]
        pages[f"{name}.md"] = "\n".join(page)
    folder.mkdir(exist_ok=True)
    for name, text in pages.items():
        path = folder / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
