"""``gr2st train``, ``gr2st predict`` and ``gr2st info``: bundles and new-slide prediction."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from gr2st.errors import GR2STConfigError

_TRAIN_HELP = """Train GR2ST on sections and write a self-contained bundle folder (--out):
weights, the reference bank (training spot embeddings with their panel and all-genes
expression) and bundle.json (encoder, patch size, stain, genes, sections, command).

Data (--data, else $GR2ST_DATA, else ../shared/data/her2st): a HER2ST folder, a
HEST-1k folder or a folder of .h5ad sections (with raw counts). Image features are
computed (and cached in --cache) with the chosen encoder, patch size and stain
normalisation; prediction reuses them. With --no-progress one line per stage step
(features, normalising, training epochs) shows where it is.
"""

_PREDICT_HELP = """Predict spatial expression on a new H&E slide with a bundle.

Spots come from exactly one of: --spots CSV (columns x, y in full-resolution pixels,
optional id), --visium DIR (Space Ranger folder), --h5ad FILE (a section in gr2st's
shape, any scanpy/squidpy spatial AnnData, or st/<id>.h5ad of a HEST folder; counts
optional), --spatialdata STORE (a SpatialData zarr store), or --grid (a hexagonal
lattice of --pitch-um over the automatically detected tissue).

The resolution (µm per pixel) sets the patch size so that patches cover the training
patches' microns: it is --mpp, else what the input gives (spot pitch, scale factors,
HEST metadata), else the slide's metadata (OpenSlide/TIFF); when none is known the
command stops and asks for --mpp. Spots off the detected tissue are counted in a
warning (obs["in_tissue"]); an image without tissue, or spots none of which lies on
it, is an error.

Writes OUT.h5ad: X = predicted log-normalised expression, layers["uncertainty"] = the
spread of the retrieved expression, obs["provenance_<section>"] = weight share of each
training section, layers["measured"] when the input has raw counts, and the thumbnail
in uns["spatial"] for scanpy.pl.spatial. --plot GENE,… draws PNG maps next to OUT.
"""


def _split(value: str | None, option: str) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise GR2STConfigError(f"{option}: expected comma-separated names")
    return items


def train_command(
    out: Path = typer.Option(
        ..., "--out", file_okay=False, metavar="BUNDLE", help="Bundle folder."
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        file_okay=False,
        metavar="DIR",
        help="HER2ST, HEST or .h5ad folder; 'auto': find HER2ST or download it.",
    ),
    sections: str | None = typer.Option(
        None,
        "--sections",
        metavar="NAMES",
        help="Comma-separated sections, or 'all' (default: all imaged ones).",
    ),
    method: str = typer.Option("gr2st", "--method", help="Method (only gr2st is bundled)."),
    profile: str = typer.Option("default", "--profile", help="GR2ST profile: default or paper."),
    overrides: list[str] = typer.Option(
        [], "--set", metavar="KEY=VALUE", help="Config override, e.g. train.epochs=50; repeatable."
    ),
    panel: str = typer.Option(
        "her2st-785", "--panel", help="Built-in panel name or gene-list file."
    ),
    encoder: str | None = typer.Option(
        None, "--encoder", help="Frozen encoder (default efficientnet-lite0) or hf:DIR."
    ),
    nuclei: str = typer.Option("classical", "--nuclei", help="classical, hovernet:DIR or none."),
    stain: str = typer.Option("reinhard", "--stain", help="reinhard, macenko or none."),
    stain_reference: Path | None = typer.Option(
        None, "--stain-reference", dir_okay=False, help="Fit Reinhard on this image instead."
    ),
    size: int = typer.Option(224, "--size", min=1, help="Patch side in full-resolution pixels."),
    seed: int = typer.Option(0, "--seed", help="Training seed."),
    cache: Path | None = typer.Option(
        None, "--cache", file_okay=False, help="Feature cache (default ~/.cache/gr2st/features)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Patches encoded at once."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    from gr2st.cli.benchmark import load_sections, resolve_data_dir
    from gr2st.encoders import DEFAULT_ENCODER
    from gr2st.encoders.efficientnet import user_cache_dir
    from gr2st.image import get_stain_normalizer
    from gr2st.predict import train_bundle

    if stain_reference is not None and stain != "reinhard":
        raise GR2STConfigError(
            "--stain-reference: bundles store a fitted reference for reinhard only"
        )
    normalizer = (
        get_stain_normalizer(stain, reference=stain_reference) if stain_reference else stain
    )
    chosen = _split(sections, "--sections")
    root = resolve_data_dir(data, sections=chosen, progress=progress)
    _, adatas = load_sections(root, chosen)
    if not progress:
        typer.echo(f"read {len(adatas)} sections from {root}")
    start = time.perf_counter()
    folder = train_bundle(
        adatas,
        out,
        panel=panel,
        method=method,
        profile=profile,
        overrides=overrides,
        encoder=encoder or DEFAULT_ENCODER,
        nuclei=nuclei,
        stain=normalizer,
        size_px=size,
        seed=seed,
        device=device,
        cache_dir=cache or user_cache_dir() / "features",
        batch_size=batch_size,
        progress=progress,
        report=None if progress else typer.echo,
    )
    typer.echo(
        f"Trained on {len(adatas)} sections in {time.perf_counter() - start:.1f} s; "
        f"bundle: {folder}"
    )


def predict_command(
    model: Path = typer.Option(..., "--model", file_okay=False, metavar="BUNDLE", help="Bundle."),
    out: Path = typer.Option(..., "--out", dir_okay=False, metavar="OUT.h5ad", help="Output."),
    image: Path | None = typer.Option(
        None, "--image", dir_okay=False, metavar="SLIDE", help="H&E slide (any format)."
    ),
    spots: Path | None = typer.Option(
        None, "--spots", dir_okay=False, metavar="CSV", help="Spot centres: x, y[, id]."
    ),
    visium: Path | None = typer.Option(
        None, "--visium", file_okay=False, metavar="DIR", help="Space Ranger output folder."
    ),
    h5ad: Path | None = typer.Option(
        None,
        "--h5ad",
        dir_okay=False,
        metavar="FILE",
        help="Spatial AnnData: gr2st's shape, scanpy/squidpy, or HEST st/<id>.h5ad.",
    ),
    spatialdata: Path | None = typer.Option(
        None, "--spatialdata", metavar="STORE", help="SpatialData zarr store (gr2st[spatialdata])."
    ),
    grid: bool = typer.Option(False, "--grid", help="Hexagonal grid over the detected tissue."),
    pitch_um: float = typer.Option(100.0, "--pitch-um", min=0.0, help="Grid pitch in microns."),
    mpp: float | None = typer.Option(
        None,
        "--mpp",
        min=0.0,
        help="Microns per pixel of the slide; sets the patch size (patches cover the "
        "bundle's training microns). Default: from the input, else the slide's metadata.",
    ),
    library: str | None = typer.Option(
        None, "--library", metavar="ID", help="uns['spatial'] library (or SpatialData table)."
    ),
    platform: str | None = typer.Option(
        None, "--platform", help="visium or st, when the input does not tell (spot geometry)."
    ),
    genes: str = typer.Option("panel", "--genes", help="panel, all, or GENE,GENE,…"),
    plot: str | None = typer.Option(None, "--plot", metavar="GENES", help="Genes to draw as PNG."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Patches encoded at once."),
    max_output_gb: float = typer.Option(
        4.0,
        "--max-output-gb",
        min=0.0,
        help="Refuse before reading the slide when the dense outputs would exceed this.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        help="Worker processes reading and stain-normalising patches while the encoder "
        "runs here (default: one per CPU core, none on 2 cores or fewer; 0: a background "
        "thread).",
    ),
) -> None:
    from gr2st.image.workers import default_workers
    from gr2st.predict import load_bundle, load_query, plot_genes, predict_spots, write_prediction

    if out.suffix != ".h5ad":
        raise GR2STConfigError(f"--out {out}: expected a .h5ad file name")
    plot_genes_list = _split(plot, "--plot") or []
    bundle = load_bundle(model, device=device)
    chosen_genes = bundle.resolve_genes(genes)
    unknown = [g for g in plot_genes_list if g not in chosen_genes]
    if unknown:
        raise GR2STConfigError(
            f"--plot: {unknown} are not among the predicted genes ({len(chosen_genes)} with "
            f"--genes {genes}); choose them with --genes"
        )
    start = time.perf_counter()
    query, slide, thumbnail = load_query(
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
    pred = predict_spots(
        bundle,
        slide,
        query,
        genes=chosen_genes,
        mpp=mpp,
        batch_size=batch_size,
        thumbnail=thumbnail,
        progress=progress,
        max_output_gb=max_output_gb,
        workers=default_workers() if workers is None else workers,
    )
    write_prediction(pred, out)
    elapsed = time.perf_counter() - start
    typer.echo(
        f"Predicted {pred.n_vars} genes at {pred.n_obs} spots in {elapsed:.1f} s "
        f"({pred.n_obs / max(elapsed, 1e-9):.1f} spots/s): {out}"
    )
    for path in plot_genes(pred, plot_genes_list, out=out):
        typer.echo(f"Map: {path}")


def info_command(
    bundle: Path = typer.Argument(..., file_okay=False, metavar="BUNDLE", help="Bundle folder."),
) -> None:
    """Show what a bundle holds and whether this installation can use it."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from gr2st.encoders import get_encoder
    from gr2st.errors import GR2STError
    from gr2st.predict import load_bundle

    loaded = load_bundle(bundle, device="cpu", check_encoder=False)
    meta = loaded.meta
    try:
        loaded.check_encoder(get_encoder(meta["encoder"]["name"], device="cpu"))
        encoder_status = "matches the installed weights"
    except GR2STError as err:
        encoder_status = f"[red]{escape(str(err))}[/red]"
    cfg = loaded.config
    sections = ", ".join(f"{s['name']} ({s['n_spots']})" for s in meta["train_sections"])
    size_um = meta["patch"]["size_um"]
    stain = meta["stain"]
    rows = [
        ("bundle", str(loaded.path)),
        ("schema / gr2st", f"{meta['schema_version']} / {meta['gr2st_version']}"),
        ("method / profile", f"{meta['method']} / {meta['profile']}"),
        ("model", f"proj_dim {cfg.model.proj_dim}, heads {cfg.model.heads}, "
                  f"top_k {cfg.predict.top_k}, epochs {cfg.train.epochs}, seed {meta['seed']}"),
        ("encoder", f"{meta['encoder']['name']} ({meta['encoder']['dim']} features), "
                    f"weights {meta['encoder']['weights_hash'][:12]}…: {encoder_status}"),
        ("patch", f"{meta['patch']['size_px']} px"
                  + ("" if size_um is None else f" = {size_um:.1f} µm")),
        ("stain", f"{stain['name']} ({stain['key']})"
                  + (", fitted reference" if stain.get("reference") else "")),
        ("nuclei", str(meta["nuclei"])),
        ("training sections", sections),
        ("genes", f"panel {len(meta['genes']['panel'])}, all {len(meta['genes']['all'])}"),
        ("bank", f"{loaded.n_bank_spots} spots × {meta['bank']['embedding_dim']} dims; "
                 f"all-genes CSR {meta['bank']['all_nnz']} non-zeros"),
        ("files", ", ".join(f"{name} {(loaded.path / name).stat().st_size / 1e6:.1f} MB"
                            for name in meta["files"])),
        ("fingerprint", meta["fingerprint"][:16]),
        ("created", str(meta.get("created"))),
        ("command", " ".join(meta.get("command", []))),
    ]  # fmt: skip
    table = Table(title="gr2st bundle", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for field, value in rows:
        table.add_row(field, value)
    Console(width=120).print(table)


def register(app: typer.Typer) -> None:
    """Add the ``train``, ``predict`` and ``info`` commands to ``app``."""
    app.command("train", help=_TRAIN_HELP)(train_command)
    app.command("predict", help=_PREDICT_HELP)(predict_command)
    app.command("info")(info_command)
