"""Subcommands of the image step: ``gr2st patches`` (a contact sheet of spot patches)."""

from __future__ import annotations

from pathlib import Path

import typer

from gr2st._constants import DEFAULT_PATCH_PX, IMAGE_PATH, SPATIAL, SPOT_DIAMETER_PX, UNS
from gr2st.errors import GR2STDataError


def patches(
    data: Path = typer.Option(
        ..., "--data", help="HER2ST folder (ST-cnts, ST-spotfiles, ST-imgs)."
    ),
    section: str = typer.Option(..., "--section", help="Section name, e.g. C2."),
    n: int = typer.Option(36, "--n", min=1, help="Number of spots shown."),
    size: int = typer.Option(DEFAULT_PATCH_PX, "--size", min=1, help="Patch side in pixels."),
    stain: str = typer.Option("reinhard", "--stain", help="reinhard, macenko or none."),
    reference: Path | None = typer.Option(
        None, "--reference", help="Stain reference image (default: the method's own)."
    ),
    out: Path = typer.Option(..., "--out", help="PNG file to write."),
) -> None:
    """Write a PNG grid of a section's spot patches with their ids, to check alignment."""
    from gr2st.image import contact_sheet, get_stain_normalizer
    from gr2st.io import read_her2st

    normalizer = get_stain_normalizer(stain, reference=reference)
    adata = read_her2st(data, section)
    meta = adata.uns[UNS]
    if meta.get(IMAGE_PATH) is None:
        raise GR2STDataError(f"{data}: section {section} has no H&E image")
    contact_sheet(
        meta[IMAGE_PATH],
        adata.obsm[SPATIAL],
        list(adata.obs_names),
        size_px=size,
        n=n,
        out_path=out,
        stain=normalizer,
        spot_diameter_px=meta.get(SPOT_DIAMETER_PX),
    )
    typer.echo(f"wrote {out} ({min(n, adata.n_obs)} spots of {section})")


def register(app: typer.Typer) -> None:
    """Add this step's subcommands to ``app``."""
    app.command("patches")(patches)
