"""``gr2st train``, ``gr2st predict`` and ``gr2st info``: bundles and new-slide prediction."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from gr2st.cli._guard import (
    locked_output,
    overwrite_option,
    prepare_output,
    refuse_existing,
    wait_option,
)
from gr2st.cli._inputs import (
    InputChecks,
    allow_grey_option,
    allow_off_tissue_option,
    duplicate_genes_option,
)
from gr2st.cli.export import check_extra_outputs, write_extra_outputs
from gr2st.cli.scale import (
    ADDRESS_OPTION,
    CPUS_PER_TASK_OPTION,
    EXECUTOR_OPTION,
    GPUS_PER_TASK_OPTION,
    MAX_RETRIES_OPTION,
    RAY_CPUS_OPTION,
    InputResult,
    list_inputs,
    make_executor,
    run_inputs,
)
from gr2st.errors import GR2STConfigError, GR2STDataError

if TYPE_CHECKING:
    from gr2st.executors import Executor
    from gr2st.predict import Bundle

#: ``uns["gr2st"]`` field of a prediction made over many inputs: what it was made from,
#: so that running the command again skips the inputs whose output is up to date.
REQUEST_FIELD = "request"

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

Many slides: --inputs names a folder of .h5ad sections (each naming its image) or a
list file (one .h5ad per line), and --out a folder that receives <stem>.h5ad per input.
Each input is one task (--executor ray: a Ray task; the bundle, inputs and --out must
be on storage every Ray node sees). An output already made from the same bundle, input
and options is skipped; a failed input is retried (--max-retries) and reported while
the others finish.
"""


def _split(value: str | None, option: str) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise GR2STConfigError(f"{option}: expected comma-separated names")
    repeated = sorted({v for v in items if items.count(v) > 1})
    if repeated:
        raise GR2STConfigError(f"{option}: {', '.join(repeated)} given more than once")
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
    align: str = typer.Option(
        "none",
        "--align",
        help="Per-section alignment of the training expression: none, center or standardize.",
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
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    overwrite: bool = overwrite_option(),
    wait: float = wait_option(),
    allow_off_tissue: bool = allow_off_tissue_option(),
    allow_grey: bool = allow_grey_option(),
    duplicate_genes: str = duplicate_genes_option(),
) -> None:
    from gr2st._utils.device import check_device
    from gr2st._utils.preflight import check_patch_memory, check_writable
    from gr2st.cli.benchmark import load_sections, resolve_data_dir
    from gr2st.encoders import DEFAULT_ENCODER
    from gr2st.encoders.efficientnet import user_cache_dir
    from gr2st.genes import get_panel
    from gr2st.image import get_stain_normalizer
    from gr2st.predict import train_bundle

    check_device(device)
    if stain_reference is not None and stain != "reinhard":
        raise GR2STConfigError(
            "--stain-reference: bundles store a fitted reference for reinhard only"
        )
    prepare_output(out, overwrite=overwrite, folder=True)
    check_patch_memory(size, batch_size)
    genes = get_panel(panel)
    normalizer = (
        get_stain_normalizer(stain, reference=stain_reference) if stain_reference else stain
    )
    chosen = _split(sections, "--sections")
    root = resolve_data_dir(data, sections=chosen, progress=progress)
    checks = InputChecks(
        allow_off_tissue=allow_off_tissue, allow_grey=allow_grey, duplicate_genes=duplicate_genes
    )
    _, adatas = load_sections(root, chosen, checks=checks)
    cache_dir = cache or user_cache_dir() / "features"
    n_spots = sum(a.n_obs for a in adatas)
    n_all = max((a.n_vars for a in adatas), default=0)
    # Bank: embeddings and panel expression (float32), all-genes CSR (8 bytes per
    # non-zero: about a quarter of them, all once aligned), plus the weights.
    per_value = 2 if align == "none" else 8
    bundle_bytes = n_spots * (256 + len(genes)) * 4 + n_spots * n_all * per_value + 50_000_000
    prepare_output(out, overwrite=overwrite, need_bytes=bundle_bytes, folder=True)
    check_writable(cache_dir, what="--cache", need_bytes=n_spots * 8_000)
    if not progress:
        typer.echo(f"read {len(adatas)} sections from {root}")
    start = time.perf_counter()
    with locked_output(out, wait=wait):
        refuse_existing(out, overwrite=overwrite)  # written meanwhile by the run we waited for
        folder = train_bundle(
            adatas,
            out,
            panel=genes,
            method=method,
            profile=profile,
            overrides=overrides,
            align=align,
            encoder=encoder or DEFAULT_ENCODER,
            nuclei=nuclei,
            stain=normalizer,
            size_px=size,
            seed=seed,
            device=device,
            cache_dir=cache_dir,
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
    out: Path = typer.Option(
        ..., "--out", metavar="OUT.h5ad", help="Output (a folder with --inputs)."
    ),
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
    qupath: Path | None = typer.Option(
        None,
        "--qupath",
        dir_okay=False,
        metavar="FILE.geojson",
        help="Also write the spots as QuPath detections (one measurement per gene).",
    ),
    spatialdata_out: Path | None = typer.Option(
        None,
        "--spatialdata-out",
        metavar="STORE.zarr",
        help="Also write a SpatialData store: slide, spot circles, values (napari).",
    ),
    report: bool = typer.Option(False, "--report", help="Also write OUT.html, an HTML report."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Patches encoded at once."),
    max_output_gb: float = typer.Option(
        4.0,
        "--max-output-gb",
        min=0.0,
        help="Refuse before reading the slide when the dense outputs would exceed this.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    overwrite: bool = overwrite_option(),
    wait: float = wait_option(),
    inputs: Path | None = typer.Option(
        None,
        "--inputs",
        metavar="DIR_OR_LIST",
        help="Folder of .h5ad sections, or a file listing one per line; --out is a folder.",
    ),
    executor: str = EXECUTOR_OPTION,
    address: str | None = ADDRESS_OPTION,
    ray_cpus: int | None = RAY_CPUS_OPTION,
    cpus_per_task: int | None = CPUS_PER_TASK_OPTION,
    gpus_per_task: float = GPUS_PER_TASK_OPTION,
    max_retries: int = MAX_RETRIES_OPTION,
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        help="Worker processes reading and stain-normalising patches while the encoder "
        "runs here (default: one per CPU core, none on 2 cores or fewer; 0: a background "
        "thread).",
    ),
    allow_off_tissue: bool = allow_off_tissue_option(),
    allow_grey: bool = allow_grey_option(),
) -> None:
    from gr2st._utils.device import check_device
    from gr2st._utils.preflight import check_memory
    from gr2st.image.workers import default_workers
    from gr2st.predict import load_bundle, load_query, plot_genes, predict_spots, write_prediction
    from gr2st.predict.spots import THUMBNAIL_PX

    check_device(device)
    checks = InputChecks(allow_off_tissue=allow_off_tissue, allow_grey=allow_grey)
    if inputs is not None or executor != "local":
        given = {
            "--image": image,
            "--spots": spots,
            "--visium": visium,
            "--h5ad": h5ad,
            "--spatialdata": spatialdata,
            "--grid": grid or None,
            "--qupath": qupath,
            "--spatialdata-out": spatialdata_out,
            "--report": report or None,
        }
        clash = [name for name, value in given.items() if value is not None]
        if inputs is None or clash:
            raise GR2STConfigError(
                "--executor ray predicts the slides of --inputs (each with its image); "
                + (f"not with {', '.join(clash)}" if clash else "give --inputs")
            )
        _predict_many(
            inputs=inputs,
            out=out,
            options={
                "model": model.absolute(),
                "genes": genes,
                "mpp": mpp,
                "library": library,
                "platform": platform,
                "plot": _split(plot, "--plot") or [],
                "batch_size": batch_size,
                "max_output_gb": max_output_gb,
                "device": device,
                "checks": checks,
            },
            executor=lambda: make_executor(
                executor,
                address=address,
                ray_cpus=ray_cpus,
                cpus_per_task=cpus_per_task,
                gpus_per_task=gpus_per_task,
                max_retries=max_retries,
            ),
            progress=progress,
        )
        return
    if out.suffix != ".h5ad":
        raise GR2STConfigError(f"--out {out}: expected a .h5ad file name")
    prepare_output(out, overwrite=overwrite)
    check_extra_outputs(qupath=qupath, spatialdata_out=spatialdata_out, overwrite=overwrite)
    plot_genes_list = _split(plot, "--plot") or []
    # Every cheap check first: the encoder and the slide's pixels come last.
    bundle = load_bundle(model, device=device, check_encoder=False)
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
    checks.check_query(query, slide)
    # X and the uncertainty (float32), the measured layer, the thumbnail.
    n_layers = 3 if query.measured is not None else 2
    out_bytes = query.n_spots * len(chosen_genes) * 4 * n_layers + 3 * THUMBNAIL_PX**2
    prepare_output(out, overwrite=overwrite, need_bytes=out_bytes)
    # The outputs exist twice at most while the AnnData is assembled and written.
    check_memory(
        2 * out_bytes,
        what=f"predicting {len(chosen_genes):,} genes at {query.n_spots:,} spots",
        hint="predict the panel or a gene list (--genes), or fewer spots",
    )
    bundle.load_encoder()
    with locked_output(out, wait=wait):
        refuse_existing(out, overwrite=overwrite)  # written meanwhile by the run we waited for
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
    for line in write_extra_outputs(
        pred, out, qupath=qupath, spatialdata_out=spatialdata_out, report=report,
        overwrite=overwrite,
    ):  # fmt: skip
        typer.echo(line)


@lru_cache(maxsize=2)
def _worker_bundle(model: Path, device: str) -> Bundle:
    """The bundle, loaded once per worker process (its tasks reuse it)."""
    from gr2st.predict import load_bundle

    return load_bundle(model, device=device)


def _request(source: Path, bundle: Bundle, options: dict[str, Any]) -> str:
    """Fingerprint of what a prediction is made from: input file, bundle and options."""
    stat = source.stat()
    request = {
        "input": [str(source), stat.st_size, stat.st_mtime_ns],
        "bundle": bundle.fingerprint,
        **{k: v for k, v in options.items() if k in ("genes", "mpp", "library", "platform")},
    }
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def _up_to_date(path: Path, request: str) -> bool:
    import h5py

    from gr2st._constants import UNS

    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as fh:
            found = fh.get(f"uns/{UNS}/{REQUEST_FIELD}")
            return found is not None and found[()].decode() == request
    except (OSError, AttributeError):  # unreadable or not ours: made again
        return False


def predict_input(
    source: Path,
    *,
    out: Path,
    model: Path,
    genes: str,
    mpp: float | None,
    library: str | None,
    platform: str | None,
    plot: list[str],
    batch_size: int,
    max_output_gb: float,
    device: str,
    checks: InputChecks,
) -> InputResult:
    """One task: predict the slide of ``source`` into ``out`` (skipped when up to date)."""
    from gr2st._constants import UNS
    from gr2st.predict import load_query, plot_genes, predict_spots, write_prediction

    bundle = _worker_bundle(model, device)
    options = {"genes": genes, "mpp": mpp, "library": library, "platform": platform}
    request = _request(source, bundle, options)
    if _up_to_date(out, request):
        return InputResult("skipped")
    start = time.perf_counter()
    query, slide, thumbnail = load_query(
        h5ad=source, mpp=mpp, library_id=library, platform=platform
    )
    checks.check_query(query, slide)
    pred = predict_spots(
        bundle,
        slide,
        query,
        genes=bundle.resolve_genes(genes),
        mpp=mpp,
        batch_size=batch_size,
        thumbnail=thumbnail,
        progress=False,
        max_output_gb=max_output_gb,
    )
    pred.uns[UNS][REQUEST_FIELD] = request
    write_prediction(pred, out)
    plot_genes(pred, plot, out=out)
    return InputResult("done", f"{pred.n_obs} spots in {time.perf_counter() - start:.1f} s")


def _predict_many(
    *,
    inputs: Path,
    out: Path,
    options: dict[str, Any],
    executor: Callable[[], Executor],
    progress: bool,
) -> None:
    """One task per input slide on the executor; outputs ``out/<stem>.h5ad``."""
    from gr2st.executors import Task
    from gr2st.predict import load_bundle

    if out.suffix == ".h5ad" or out.is_file():
        raise GR2STConfigError(f"--out {out}: with --inputs, expected a folder")
    files = list_inputs(inputs, suffixes=[".h5ad"], what=".h5ad sections")
    stems = [f.stem for f in files]
    if len(set(stems)) < len(stems):
        raise GR2STDataError(f"--inputs {inputs}: two inputs share a file name ({stems})")
    # Checked here, once, rather than failing in every task.
    chosen = load_bundle(options["model"], device="cpu", check_encoder=False).resolve_genes(
        options["genes"]
    )
    unknown = [g for g in options["plot"] if g not in chosen]
    if unknown:
        raise GR2STConfigError(f"--plot: {unknown} are not among the predicted genes")
    out = out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    with executor() as runner:
        options = {**options, "device": runner.device(options["device"])}
        typer.echo(f"{len(files)} slides → {out}; executor {runner.describe()}")
        start = time.perf_counter()
        tasks = [
            Task(f.name, predict_input, {"source": f, "out": out / f"{f.stem}.h5ad", **options})
            for f in files
        ]
        run_inputs(runner, tasks, desc="predict", progress=progress)
        typer.echo(f"Done in {time.perf_counter() - start:.1f} s: {out}")


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
