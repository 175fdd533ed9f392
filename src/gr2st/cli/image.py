"""Subcommands of the image step: ``gr2st patches`` (a contact sheet of spot patches)."""

from __future__ import annotations

from pathlib import Path

import typer

from gr2st._constants import DEFAULT_PATCH_PX
from gr2st._utils.preflight import check_patch_memory
from gr2st.cli._guard import overwrite_option, prepare_output
from gr2st.cli._inputs import (
    InputChecks,
    allow_grey_option,
    allow_off_tissue_option,
    duplicate_genes_option,
)
from gr2st.errors import GR2STConfigError

_HELP = """Write a PNG grid of N random spot patches with their ids, to check by eye that
spots and image line up before training or predicting.

Spots come from --data DIR --section NAME (a HER2ST, HEST or .h5ad folder, as
`gr2st benchmark` reads it) or from any input `gr2st predict` takes: --spots CSV with
--image, --visium DIR, --h5ad FILE, --spatialdata STORE, or --grid with --image.

Patch size: --size in pixels; else, with --model BUNDLE, the patch `gr2st predict` cuts
(the bundle's microns at the slide's resolution) and the bundle's stain normaliser;
else 224 px.
"""


def patches(
    out: Path = typer.Option(..., "--out", dir_okay=False, help="PNG file to write."),
    data: Path | None = typer.Option(
        None, "--data", file_okay=False, help="HER2ST, HEST or .h5ad folder (with --section)."
    ),
    section: str | None = typer.Option(None, "--section", help="Section name, e.g. C2."),
    spots: Path | None = typer.Option(
        None, "--spots", dir_okay=False, help="Spot CSV: x, y[, id]."
    ),
    visium: Path | None = typer.Option(
        None, "--visium", file_okay=False, help="Space Ranger folder."
    ),
    h5ad: Path | None = typer.Option(None, "--h5ad", dir_okay=False, help="Spatial AnnData file."),
    spatialdata: Path | None = typer.Option(None, "--spatialdata", help="SpatialData zarr store."),
    grid: bool = typer.Option(False, "--grid", help="Hexagonal grid over the detected tissue."),
    image: Path | None = typer.Option(None, "--image", dir_okay=False, help="H&E slide."),
    pitch_um: float = typer.Option(100.0, "--pitch-um", min=0.0, help="Grid pitch in microns."),
    mpp: float | None = typer.Option(
        None, "--mpp", min=0.0, help="Microns per pixel (sets the patch size with --model)."
    ),
    library: str | None = typer.Option(None, "--library", help="uns['spatial'] library / table."),
    platform: str | None = typer.Option(None, "--platform", help="visium or st."),
    model: Path | None = typer.Option(
        None, "--model", file_okay=False, help="Bundle: its patch size and stain."
    ),
    n: int = typer.Option(36, "--n", min=1, help="Number of spots shown."),
    size: int | None = typer.Option(None, "--size", min=1, help="Patch side in pixels."),
    stain: str | None = typer.Option(
        None, "--stain", help="reinhard, macenko or none (default: the bundle's, else reinhard)."
    ),
    reference: Path | None = typer.Option(
        None, "--reference", help="Stain reference image (default: the method's own)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random choice of spots."),
    overwrite: bool = overwrite_option(),
    allow_off_tissue: bool = allow_off_tissue_option(),
    allow_grey: bool = allow_grey_option(),
    duplicate_genes: str = duplicate_genes_option(),
) -> None:
    from gr2st.cli.benchmark import load_sections
    from gr2st.image import contact_sheet, get_stain_normalizer, open_slide
    from gr2st.predict import load_bundle, load_query, resolve_image, spots_from_section
    from gr2st.predict.spots import QuerySpots

    if out.suffix.lower() != ".png":
        raise GR2STConfigError(f"--out {out}: expected a .png file name")
    # A contact sheet is a few MB at most.
    prepare_output(out, overwrite=overwrite, need_bytes=20_000_000)
    normalizer = get_stain_normalizer(stain, reference=reference) if stain else None
    checks = InputChecks(
        allow_off_tissue=allow_off_tissue, allow_grey=allow_grey, duplicate_genes=duplicate_genes
    )
    query: QuerySpots
    if data is not None or section is not None:
        if data is None or section is None:
            raise GR2STConfigError("--data and --section go together")
        other = [spots, visium, h5ad, spatialdata, image]
        if any(v is not None for v in other) or grid:
            raise GR2STConfigError("give either --data/--section or one predict input, not both")
        _, (adata,) = load_sections(data, [section], checks=checks)
        query = spots_from_section(adata, source=section)
        slide_path = resolve_image(query, None)
    else:
        query, slide_path, _ = load_query(
            spots=spots,
            visium=visium,
            h5ad=h5ad,
            spatialdata=spatialdata,
            grid=grid,
            image=image,
            mpp=mpp,
            pitch_um=pitch_um,
            library_id=library,
            platform=platform,
        )
        checks.check_query(query, slide_path)
    with open_slide(slide_path) as slide:
        resolution = next((v for v in (mpp, query.mpp, slide.mpp) if v is not None), None)
        side = size
        if model is not None:
            bundle = load_bundle(model, device="cpu", check_encoder=False)
            if side is None:
                if resolution is None and bundle.size_um is not None:
                    raise GR2STConfigError(
                        f"{slide_path}: microns per pixel unknown; pass --mpp (or --size)"
                    )
                side = bundle.patch_px(resolution)
            if stain is None:
                normalizer = bundle.stain_normalizer()
        elif stain is None:
            normalizer = get_stain_normalizer("reinhard", reference=reference)
        side = side or DEFAULT_PATCH_PX
        check_patch_memory(side, min(n, query.n_spots))
        contact_sheet(
            slide,
            query.centers,
            [str(i) for i in query.obs.index],
            size_px=side,
            n=n,
            out_path=out,
            stain=normalizer,
            spot_diameter_px=query.spot_diameter_px,
            seed=seed,
        )
    label = query.name or query.source
    typer.echo(
        f"wrote {out} ({min(n, query.n_spots)} of {query.n_spots} spots of {label}, "
        f"{side} px patches)"
    )


def register(app: typer.Typer) -> None:
    """Add this step's subcommands to ``app``."""
    app.command("patches", help=_HELP)(patches)
