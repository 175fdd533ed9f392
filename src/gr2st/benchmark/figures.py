"""Benchmark figures: per-section PCC boxplots and truth-vs-prediction spatial maps.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot), so they
render with the Agg canvas whatever backend the session has and leak no global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import EllipseCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy.spatial import cKDTree

from gr2st._constants import IMAGE_PATH, SPATIAL, SPOT_DIAMETER_PX, UNS
from gr2st._utils.files import atomic_path
from gr2st.image.slide import open_slide
from gr2st.sections import section_name

#: Longer side, in pixels, of the H&E thumbnail drawn under the spatial maps.
THUMBNAIL_PX = 1024
#: Width of one spatial-map panel, in inches.
PANEL_INCHES = 4.0


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fig.savefig(fh, format="png", bbox_inches="tight")


def plot_pcc_boxplots(
    per_gene: pd.DataFrame,
    *,
    methods: Sequence[str],
    sections: Sequence[str],
    path: str | Path,
    ceilings: Sequence[str] = (),
) -> Path:
    """Boxes of per-gene Pearson r: one group per section, one colour per method.

    Parameters
    ----------
    per_gene
        Columns ``method``, ``section``, ``gene``, ``pcc`` (NaN genes are left out).
    methods
        Methods in legend order; ceilings (hatched) are drawn last.
    sections
        Sections in axis order.
    path
        PNG file to write (atomically).
    ceilings
        Methods to hatch as ceilings.

    Examples
    --------
    >>> import tempfile, pathlib, pandas as pd
    >>> df = pd.DataFrame({"method": ["a"] * 4, "section": ["S0", "S0", "S1", "S1"],
    ...                    "gene": ["g1", "g2"] * 2, "pcc": [0.1, 0.3, 0.2, 0.4]})
    >>> p = plot_pcc_boxplots(df, methods=["a"], sections=["S0", "S1"],
    ...                       path=pathlib.Path(tempfile.mkdtemp()) / "box.png")
    >>> p.stat().st_size > 0
    True
    """
    path = Path(path)
    n_methods = max(1, len(methods))
    width = 0.8 / n_methods
    colours = matplotlib.colormaps["tab10" if n_methods <= 10 else "tab20"]
    fig = _figure(max(6.0, 0.9 * len(sections) * (1 + 0.25 * n_methods)), 4.5)
    ax = fig.subplots()
    handles = []
    grouped = per_gene.dropna(subset=["pcc"]).groupby(["method", "section"])["pcc"]
    values = {key: series.to_numpy() for key, series in grouped}
    for m, method in enumerate(methods):
        data, positions = [], []
        for s, section in enumerate(sections):
            v = values.get((method, section))
            if v is not None and v.size:
                data.append(v)
                positions.append(s - 0.4 + width * (m + 0.5))
        colour = colours(m % colours.N)
        hatch = "//" if method in ceilings else None
        if data:
            box = ax.boxplot(
                data,
                positions=positions,
                widths=width * 0.85,
                patch_artist=True,
                showfliers=False,
                medianprops={"color": "black", "linewidth": 1},
            )
            for patch in box["boxes"]:
                patch.set_facecolor(colour)
                patch.set_hatch(hatch)
        label = f"{method} (ceiling)" if method in ceilings else method
        if not data:
            label += " (no defined PCC)"
        handles.append(Patch(facecolor=colour, hatch=hatch, label=label))
    ax.set_xticks(range(len(sections)), list(sections))
    ax.set_xlim(-0.6, len(sections) - 0.4)
    ax.axhline(0.0, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("test section")
    ax.set_ylabel("Pearson r per gene")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    _save(fig, path)
    return path


def _pitch(xy: np.ndarray) -> float:
    """Median nearest-neighbour distance between spots (spot size when none is recorded)."""
    if len(xy) < 2:
        return 1.0
    distances, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(distances[:, 1])) * 0.8


def _background(adata: AnnData) -> tuple[np.ndarray | None, float]:
    image_path = adata.uns.get(UNS, {}).get(IMAGE_PATH)
    if not image_path or not Path(image_path).is_file():
        return None, 1.0
    with open_slide(image_path) as slide:
        return slide.thumbnail(THUMBNAIL_PX)


def plot_spatial_maps(
    adata: AnnData,
    *,
    truth: np.ndarray,
    pred: np.ndarray,
    genes: Sequence[str],
    pcc: Sequence[float],
    method: str,
    path: str | Path,
) -> Path:
    """Measured (top row) and predicted (bottom row) expression of a few genes.

    Spots are drawn at ``obsm[SPATIAL]`` over the section's H&E thumbnail when it has
    an image (``uns[UNS][IMAGE_PATH]``), each row of a gene sharing one colour scale.

    Parameters
    ----------
    adata
        The section (for positions, spot size and image).
    truth, pred
        ``(spots, len(genes))`` measured and predicted expression of the shown genes.
    genes, pcc
        Names and Pearson r of the shown genes (used in the titles).
    method
        Name of the predicting method (row label).
    path
        PNG file to write (atomically).

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from gr2st.datasets import synthetic
    >>> sec = synthetic(n_sections=1, n_genes=2, grid=(3, 3))[0]
    >>> t = np.random.default_rng(0).random((9, 2))
    >>> p = plot_spatial_maps(sec, truth=t, pred=t, genes=["a", "b"], pcc=[1.0, 1.0],
    ...                       method="m", path=pathlib.Path(tempfile.mkdtemp()) / "s.png")
    >>> p.exists()
    True
    """
    path = Path(path)
    image, scale = _background(adata)
    xy = np.asarray(adata.obsm[SPATIAL], dtype=np.float64) * scale
    diameter = float(adata.uns.get(UNS, {}).get(SPOT_DIAMETER_PX) or 0.0) * scale
    if diameter <= 0:
        diameter = _pitch(xy)
    margin = diameter
    span = np.ptp(xy, axis=0) + 2 * margin
    aspect = float(span[1] / span[0]) if span[0] > 0 else 1.0
    n = len(genes)
    # Panel height follows the tissue's aspect; ~80% of a panel's width is the map itself.
    map_inches = 0.8 * PANEL_INCHES
    fig = _figure(PANEL_INCHES * n, 2 * map_inches * min(max(aspect, 0.3), 3.0) + 0.8)
    axes = fig.subplots(2, n, squeeze=False)
    for j, gene in enumerate(genes):
        lo = float(min(truth[:, j].min(), pred[:, j].min()))
        hi = float(max(truth[:, j].max(), pred[:, j].max()))
        for i, (values, label) in enumerate(((truth[:, j], "measured"), (pred[:, j], method))):
            ax = axes[i, j]
            if image is not None:
                ax.imshow(image)
            # Spots as circles in data units, so they keep their true size on the slide.
            spots = EllipseCollection(
                diameter,
                diameter,
                0.0,
                units="xy",
                offsets=xy,
                offset_transform=ax.transData,
                cmap="viridis",
            )
            spots.set_array(values)
            spots.set_clim(lo, hi)
            ax.add_collection(spots)
            ax.set_xlim(xy[:, 0].min() - margin, xy[:, 0].max() + margin)
            ax.set_ylim(xy[:, 1].max() + margin, xy[:, 1].min() - margin)  # image rows down
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{gene} r={pcc[j]:.2f}" if i == 0 else "", fontsize=9)
            if j == 0:
                ax.set_ylabel(label)
        fig.colorbar(spots, ax=axes[:, j], shrink=0.6)
    fig.suptitle(f"{section_name(adata)}: measured vs {method} (best-predicted genes)")
    _save(fig, path)
    return path
