"""Spot maps of one section for the HTML report: thumbnail, panels of values, gene picker.

Each panel (measured, a method's prediction, the uncertainty …) is a Plotly scatter of
the spots over the section's H&E thumbnail, coloured by one gene. The values of every
gene travel in the page quantised to one byte per spot (0–254 between the gene's
minimum and maximum in that panel, 255 for a missing value), base64-encoded; the page's
gene picker decodes the chosen gene and hands the colours to ``Plotly.restyle``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Longer side of the thumbnail embedded per section, in pixels.
THUMBNAIL_PX = 640
#: Quantisation levels of a value (255 marks a missing one).
LEVELS = 254
MISSING = 255
#: Side of one map panel on the page, in CSS pixels.
PANEL_PX = 360


@dataclass
class SectionMaps:
    """What the report draws for one section.

    Attributes
    ----------
    name
        The section's name.
    centres
        Spot centres ``(n, 2)`` in full-resolution pixels.
    diameter_px
        Spot diameter in full-resolution pixels.
    genes
        The genes of the picker, in its order (the first is shown first).
    panels
        Title → values ``(n, len(genes))``, one map each (e.g. ``"measured"``,
        ``"predicted: knn"``, ``"uncertainty"``).
    thumbnail, scale
        The H&E thumbnail (uint8 RGB) and its pixels per full-resolution pixel; None
        when the section has no image (the spots are drawn alone).
    categories
        Title → labels ``(n,)`` of a fixed map (e.g. tissue / off tissue).
    note
        A line shown above the maps (e.g. what was left out to keep the page small).
    """

    name: str
    centres: np.ndarray
    diameter_px: float
    genes: list[str]
    panels: dict[str, np.ndarray]
    thumbnail: np.ndarray | None = None
    scale: float = 1.0
    categories: dict[str, np.ndarray] = field(default_factory=dict)
    note: str | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the quantised panels the page will carry (before base64)."""
        return len(self.panels) * len(self.centres) * len(self.genes)


def quantise(values: np.ndarray) -> tuple[bytes, list[float | None], list[float | None]]:
    """One byte per value, gene by gene: ``(bytes, minima, maxima)``.

    ``values`` is ``(spots, genes)``; the bytes hold gene 0's spots, then gene 1's …
    A gene with no finite value has ``None`` bounds and every byte 255.

    Examples
    --------
    >>> data, lo, hi = quantise(np.array([[0.0, 1.0], [2.0, np.nan]]))
    >>> list(data), lo, hi
    ([0, 254, 0, 255], [0.0, 1.0], [2.0, 1.0])
    """
    matrix = np.asarray(values, dtype=np.float64).T
    finite = np.isfinite(matrix)
    any_finite = finite.any(axis=1)
    lo = np.where(any_finite, np.nanmin(np.where(finite, matrix, np.inf), axis=1), np.nan)
    hi = np.where(any_finite, np.nanmax(np.where(finite, matrix, -np.inf), axis=1), np.nan)
    span = np.where(hi > lo, hi - lo, 1.0)
    with np.errstate(invalid="ignore"):
        scaled = np.rint((matrix - lo[:, None]) / span[:, None] * LEVELS)
    codes = np.where(finite, np.clip(np.nan_to_num(scaled), 0, LEVELS), MISSING).astype(np.uint8)

    def bounds(a: np.ndarray) -> list[float | None]:
        return [float(v) if np.isfinite(v) else None for v in a]

    return codes.tobytes(), bounds(lo), bounds(hi)


def image_uri(image: np.ndarray, *, max_px: int = THUMBNAIL_PX) -> str:
    """A JPEG data URI of ``image`` resized to at most ``max_px`` on its longer side."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    factor = min(1.0, max_px / max(picture.size))
    if factor < 1.0:
        size = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def section_payload(maps: SectionMaps, *, key: str) -> dict[str, Any]:
    """The section's figures (Plotly JSON) and quantised values, for the template."""
    import plotly.graph_objects as go

    extent = _extent(maps)
    background: dict[str, Any] | None = None
    if maps.thumbnail is not None:
        uri = image_uri(maps.thumbnail)
        h, w = maps.thumbnail.shape[:2]
        background = {
            "source": uri,
            "xref": "x",
            "yref": "y",
            "x": 0,
            "y": 0,
            "sizex": w / maps.scale,
            "sizey": h / maps.scale,
            "xanchor": "left",
            "yanchor": "top",
            "sizing": "stretch",
            "layer": "below",
        }
    span = max(extent[1] - extent[0], extent[3] - extent[2], 1.0)
    marker_px = max(2.0, 0.9 * maps.diameter_px / span * (PANEL_PX - 40))
    panels = []
    for i, (title, values) in enumerate(maps.panels.items()):
        data, lo, hi = quantise(values)
        first = _decode(data, lo, hi, gene=0, n=len(maps.centres))
        figure = go.Figure(
            go.Scatter(
                x=maps.centres[:, 0],
                y=maps.centres[:, 1],
                mode="markers",
                marker={
                    "size": marker_px,
                    "color": first,
                    "colorscale": "Viridis",
                    "cmin": lo[0],
                    "cmax": hi[0],
                    "showscale": True,
                    "colorbar": {"thickness": 10},
                    "opacity": 0.85,
                },
                text=[f"{maps.genes[0]}: {v:.3g}" if v is not None else "n/a" for v in first],
                hoverinfo="text",
            )
        )
        _layout(figure, title=f"{title}: {maps.genes[0]}", extent=extent, image=background)
        panels.append(
            {
                "id": f"{key}-panel{i}",
                "title": title,
                "figure": figure.to_plotly_json(),
                "data": base64.b64encode(data).decode(),
                "lo": lo,
                "hi": hi,
            }
        )
    fixed = []
    for i, (title, labels) in enumerate(maps.categories.items()):
        figure = go.Figure()
        for label in dict.fromkeys(str(v) for v in labels):
            where = np.asarray([str(v) == label for v in labels])
            figure.add_trace(
                go.Scatter(
                    x=maps.centres[where, 0],
                    y=maps.centres[where, 1],
                    mode="markers",
                    name=label,
                    marker={"size": marker_px, "opacity": 0.85},
                    hoverinfo="name",
                )
            )
        _layout(figure, title=title, extent=extent, image=background)
        fixed.append({"id": f"{key}-fixed{i}", "figure": figure.to_plotly_json()})
    return {
        "key": key,
        "name": maps.name,
        "genes": maps.genes,
        "n_spots": len(maps.centres),
        "panels": panels,
        "fixed": fixed,
        "note": maps.note,
    }


def _decode(
    data: bytes, lo: Sequence[float | None], hi: Sequence[float | None], *, gene: int, n: int
) -> list[float | None]:
    """The values of ``gene`` as the page decodes them (the first map is drawn here)."""
    codes = np.frombuffer(data, dtype=np.uint8)[gene * n : (gene + 1) * n]
    low, high = lo[gene], hi[gene]
    if low is None or high is None:
        return [None] * n
    span = high - low if high > low else 1.0
    return [None if c == MISSING else low + c / LEVELS * span for c in codes.tolist()]


def _extent(maps: SectionMaps) -> tuple[float, float, float, float]:
    """``(x0, x1, y0, y1)`` shown: the spots with a margin (within the image, if any)."""
    pad = 2 * maps.diameter_px
    x, y = maps.centres[:, 0], maps.centres[:, 1]
    x0, x1, y0, y1 = x.min() - pad, x.max() + pad, y.min() - pad, y.max() + pad
    if maps.thumbnail is not None:
        h, w = maps.thumbnail.shape[:2]
        x0, x1 = max(x0, 0.0), min(x1, w / maps.scale)
        y0, y1 = max(y0, 0.0), min(y1, h / maps.scale)
    return float(x0), float(x1), float(y0), float(y1)


def _layout(
    figure: Any,
    *,
    title: str,
    extent: tuple[float, float, float, float],
    image: Mapping[str, Any] | None,
) -> None:
    x0, x1, y0, y1 = extent
    figure.update_layout(
        title={"text": title, "font": {"size": 13}},
        width=PANEL_PX + 60,
        height=PANEL_PX,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        showlegend=bool(len(figure.data) > 1),
        legend={"orientation": "h"},
        images=[dict(image)] if image is not None else [],
        plot_bgcolor="white",
    )
    figure.update_xaxes(range=[x0, x1], visible=False, constrain="domain")
    # Image rows grow downwards: the y axis is reversed, one pixel as wide as tall.
    figure.update_yaxes(range=[y1, y0], visible=False, scaleanchor="x", scaleratio=1)
