"""The README's real example: predict a HER2ST section from its image alone, then check.

1. ``spots``: write the section's spot centres (the ``ST-spotfiles`` selection, in
   full-resolution pixels) as the CSV ``gr2st predict --spots`` reads, and print the
   image's resolution (measured from the spot grid; a JPEG does not record it) for
   ``--mpp``: nothing else of the section goes to the model.
2. Train and predict with the CLI (see the README).
3. ``compare``: score the prediction against the section's measured expression
   (log-normalised over the bundle's panel, as in training), print the best-predicted
   genes, and draw the measured and predicted maps of one gene side by side.

Usage::

    python examples/her2st_new_slide.py spots --data DIR --section C6 --out C6_spots.csv
    python examples/her2st_new_slide.py compare --data DIR --section C6 \\
        --pred C6.h5ad --out docs/img/C6_prediction.png [--gene GENE]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import read_h5ad
from matplotlib.collections import EllipseCollection
from matplotlib.figure import Figure

from gr2st import MICRONS_PER_PIXEL, SPATIAL, UNS, pearson_per_gene, prepare_section, read_her2st


def _replace(tmp: Path, out: Path) -> Path:
    """Move a finished file onto its final name (never a half-written output)."""
    os.replace(tmp, out)
    return out


def write_spots(data: Path, section: str, out: Path) -> None:
    adata = read_her2st(data, section)
    xy = np.asarray(adata.obsm[SPATIAL])
    table = pd.DataFrame({"id": adata.obs_names, "x": xy[:, 0], "y": xy[:, 1]})
    tmp = out.with_name(f".{out.name}.tmp")
    table.to_csv(tmp, index=False)
    _replace(tmp, out)
    mpp = adata.uns[UNS][MICRONS_PER_PIXEL]
    print(f"{out}: {len(table)} spot centres of {section}; image {mpp:.3f} µm/px (--mpp)")


def compare(data: Path, section: str, pred_path: Path, out: Path, gene: str | None) -> None:
    pred = read_h5ad(pred_path)
    panel = [str(g) for g in pred.var_names]
    measured = prepare_section(read_her2st(data, section), genes=panel)
    spots = pred.obs_names.intersection(measured.obs_names)
    p = np.asarray(pred[spots].X, dtype=np.float64)
    m = np.asarray(measured[spots].X, dtype=np.float64)
    pcc = pd.Series(pearson_per_gene(p, m), index=panel).dropna().sort_values(ascending=False)
    print(f"{section}: {len(spots)} spots, {len(pcc)} genes scored, mean PCC {pcc.mean():.4f}")
    print("best predicted:", ", ".join(f"{g} {v:.3f}" for g, v in pcc.head(8).items()))
    gene = gene or str(pcc.index[0])
    column = panel.index(gene)
    library = next(iter(pred.uns[SPATIAL].values()))
    thumb = library["images"]["hires"]
    scale = float(library["scalefactors"]["tissue_hires_scalef"])
    diameter = float(library["scalefactors"]["spot_diameter_fullres"]) * scale
    xy = np.asarray(pred[spots].obsm[SPATIAL]) * scale
    fig = Figure(figsize=(11, 5), layout="constrained")
    panels = [
        (m[:, column], f"{gene}: measured"),
        (p[:, column], f"{gene}: predicted (PCC {pcc[gene]:.2f})"),
    ]
    for ax, (values, title) in zip(fig.subplots(1, 2), panels, strict=True):
        ax.imshow(thumb)
        dots = EllipseCollection(
            widths=diameter, heights=diameter, angles=0, units="xy", offsets=xy,
            offset_transform=ax.transData, array=values, cmap="viridis",
        )  # fmt: skip
        # Each map on its own colour scale: the prediction is a shrunk average.
        dots.set_clim(np.percentile(values, 1), np.percentile(values, 99))
        ax.add_collection(dots)
        # Zoom on the spots: the section covers a small part of the scanned image.
        margin = 2 * diameter
        ax.set_xlim(xy[:, 0].min() - margin, xy[:, 0].max() + margin)
        ax.set_ylim(xy[:, 1].max() + margin, xy[:, 1].min() - margin)
        fig.colorbar(dots, ax=ax, shrink=0.8, label="log-normalised expression")
        ax.set_title(title)
        ax.set_axis_off()
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    _replace(tmp, out)
    print(f"map: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    for name in ("spots", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--data", type=Path, default=Path("../shared/data/her2st"))
        p.add_argument("--section", default="C6")
        p.add_argument("--out", type=Path, required=True)
        if name == "compare":
            p.add_argument("--pred", type=Path, required=True)
            p.add_argument("--gene")
    args = parser.parse_args()
    if args.step == "spots":
        write_spots(args.data, args.section, args.out)
    else:
        compare(args.data, args.section, args.pred, args.out, args.gene)


if __name__ == "__main__":
    main()
