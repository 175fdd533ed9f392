"""``gr2st features``: compute and cache the image inputs (features, nuclear types)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from gr2st.errors import GR2STConfigError

_HELP = "\n\n".join(
    [
        "Compute the frozen image features and nuclear cell types of every spot and store "
        "them in the feature cache, where `gr2st benchmark` (same --cache) finds them.",
        "Data (--data, else $GR2ST_DATA, else ../shared/data/her2st): a HER2ST folder "
        "(default sections: those with an image), a HEST-1k folder or a folder of .h5ad "
        "sections.",
        "A second run with the same settings only reads the cache; changing the encoder, "
        "patch size, stain normalisation or nuclei source computes new entries.",
    ]
)


def _sections(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise GR2STConfigError("--sections: expected names like B4,C2")
    return names


def features_command(
    data: Path | None = typer.Option(
        None, "--data", file_okay=False, help="HER2ST, HEST or .h5ad folder."
    ),
    sections: str | None = typer.Option(
        None, "--sections", help="Comma-separated sections, e.g. B4,C2 (default: all imaged)."
    ),
    encoder: str | None = typer.Option(
        None,
        "--encoder",
        help="efficientnet-lite0 (default), efficientnet-lite1, efficientnet-lite2, or "
        "hf:DIR_OR_HUB_ID[?pooling=mean] for a transformers backbone; A+B concatenates the "
        "features of several encoders.",
    ),
    tta: int = typer.Option(
        1, "--tta", metavar="VIEWS", help="Average the features of 1, 2, 4 or 8 flips/rotations."
    ),
    context: int | None = typer.Option(
        None,
        "--context",
        min=1,
        metavar="PX",
        help="Also encode a larger patch of this side around each spot (e.g. 448) and "
        "concatenate its features.",
    ),
    backend: str = typer.Option(
        "auto", "--backend", help="EfficientNet backend: auto (ONNX on CPU), torch or onnx."
    ),
    nuclei: str = typer.Option(
        "classical", "--nuclei", help="classical, hovernet:DIR or none (nuclear cell types)."
    ),
    stain: str = typer.Option("reinhard", "--stain", help="reinhard, macenko or none."),
    size: int = typer.Option(224, "--size", min=1, help="Patch side in full-resolution pixels."),
    cache: Path | None = typer.Option(
        None, "--cache", file_okay=False, help="Feature cache (default ~/.cache/gr2st/features)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Patches encoded at once."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        help="Worker processes reading, stain-normalising and measuring nuclei while the "
        "encoder runs here (default: one per CPU core, none on 2 cores or fewer; 0: all in "
        "this process).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    from gr2st.cli.benchmark import load_sections, resolve_data_dir
    from gr2st.encoders import (
        DEFAULT_ENCODER,
        SectionReport,
        encoder_name,
        get_encoder,
        prepare_image_inputs,
    )
    from gr2st.encoders.efficientnet import user_cache_dir
    from gr2st.image.workers import default_workers

    root = resolve_data_dir(data)
    _, adatas = load_sections(root, _sections(sections))
    name = encoder_name(encoder or DEFAULT_ENCODER, tta=tta, context_px=context, size_px=size)
    options = {} if "hf:" in name else {"backend": backend}
    enc = get_encoder(name, device=device, **options)
    cache_dir = cache or user_cache_dir() / "features"
    n_workers = default_workers() if workers is None else workers
    typer.echo(
        f"{len(adatas)} sections from {root}; encoder {enc.name}; cache {cache_dir}; "
        f"{n_workers} worker processes"
    )

    def report(r: SectionReport) -> None:
        hits = [
            what
            for what, hit in (("features", r.features_cached), ("nuclei", r.nuclei_cached))
            if hit
        ]
        typer.echo(
            f"{r.section}: {r.n_spots} spots in {r.total_s:.1f} s (waiting for the image "
            f"{r.wait_s:.1f} s, encoding {r.encode_s:.1f} s, nuclei {r.nuclei_s:.1f} s)"
            + (f"; from cache: {', '.join(hits)}" if hits else "")
        )

    start = time.perf_counter()
    reports = prepare_image_inputs(
        adatas,
        encoder=enc,
        nuclei=nuclei,
        size_px=size,
        stain=stain,
        cache_dir=cache_dir,
        batch_size=batch_size,
        progress=progress,
        on_section=report,
        workers=n_workers,
    )
    n_spots = sum(r.n_spots for r in reports)
    typer.echo(f"Done: {n_spots} spots in {time.perf_counter() - start:.1f} s. Cache: {cache_dir}")


def register(app: typer.Typer) -> None:
    """Add the ``features`` command to ``app``."""
    app.command("features", help=_HELP)(features_command)
