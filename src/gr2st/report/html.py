"""One self-contained HTML page: Jinja2 template, Plotly figures, Plotly's JS inlined.

Everything the page shows travels inside it (Plotly's JavaScript, the figures as JSON,
thumbnails as data URIs), so it opens offline and asks for nothing over the network.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from gr2st._utils.files import atomic_path
from gr2st.errors import GR2STConfigError
from gr2st.report.maps import SectionMaps, section_payload


@dataclass
class Table:
    """A table of the page: the first ``text_columns`` columns are left-aligned text."""

    id: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    text_columns: int = 1
    note: str | None = None
    #: CSS class per row (e.g. ``"ceiling"``); empty for none.
    css: list[str] = field(default_factory=list)


@dataclass
class Figure:
    """A Plotly figure of the page (any ``plotly.graph_objects.Figure``)."""

    id: str
    title: str
    figure: Any


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("gr2st.report", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def render_page(
    *,
    title: str,
    subtitle: str,
    tables: Sequence[Table] = (),
    figures: Sequence[Figure] = (),
    sections: Sequence[SectionMaps] = (),
    after_tables: Sequence[Table] = (),
    command: Sequence[str] | str = "",
    versions: str = "",
) -> str:
    """The page as a string (see :func:`write_page`).

    Examples
    --------
    >>> page = render_page(title="t", subtitle="s", command=["gr2st", "report", "out"])
    >>> page.startswith("<!DOCTYPE html>"), "gr2st report out" in page
    (True, True)
    """
    from plotly.offline import get_plotlyjs
    from plotly.utils import PlotlyJSONEncoder

    section_data = [section_payload(s, key=f"section{i}") for i, s in enumerate(sections)]
    payload = {
        "figures": [{"id": f.id, "figure": f.figure.to_plotly_json()} for f in figures],
        "sections": section_data,
    }
    # A "</script>" inside the JSON would end the script element early.
    text = json.dumps(payload, cls=PlotlyJSONEncoder).replace("</", "<\\/")
    return str(
        _environment()
        .get_template("report.html.j2")
        .render(
            title=title,
            subtitle=subtitle,
            tables=[_table(t) for t in tables],
            after_tables=[_table(t) for t in after_tables],
            figures=figures,
            sections=section_data,
            command=command if isinstance(command, str) else shlex.join(command),
            versions=versions,
            payload=text,
            plotly_js=get_plotlyjs().replace("</script", "<\\/script"),
        )
    )


def _table(table: Table) -> dict[str, Any]:
    css = table.css or [""] * len(table.rows)
    return {
        "id": table.id,
        "title": table.title,
        "note": table.note,
        "columns": table.columns,
        "text_columns": table.text_columns,
        "rows": [{"cells": row, "css": c} for row, c in zip(table.rows, css, strict=True)],
    }


def write_page(page: str, path: str | Path) -> Path:
    """Write ``page`` to ``path`` atomically (no half-written report under that name).

    Raises
    ------
    GR2STConfigError
        ``path`` is a folder.
    """
    final = Path(path)
    if final.is_dir():
        raise GR2STConfigError(f"{final}: is a folder; expected an .html file name")
    with atomic_path(final) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return final
