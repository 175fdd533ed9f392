"""Self-contained HTML reports (Jinja2 page, Plotly figures) of benchmarks and predictions.

A report is one ``.html`` file that opens offline: Plotly's JavaScript, the figures and
the slide thumbnails are inside it. Each section gets a gene picker that redraws its
maps (measured, predicted, uncertainty) over the H&E thumbnail.

Examples
--------
>>> from gr2st.report import prediction_page, write_page
>>> write_page(prediction_page(pred, command="gr2st predict …", versions=""),
...            "slide.html")  # doctest: +SKIP
"""

from __future__ import annotations

from gr2st.report.html import Figure, Table, render_page, write_page
from gr2st.report.maps import SectionMaps
from gr2st.report.pages import benchmark_page, prediction_page

__all__ = [
    "Figure",
    "SectionMaps",
    "Table",
    "benchmark_page",
    "prediction_page",
    "render_page",
    "write_page",
]
