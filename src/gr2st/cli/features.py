"""``gr2st features``: compute and cache the image inputs (features, nuclear types)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer

from gr2st.cli._inputs import (
    InputChecks,
    allow_grey_option,
    allow_off_tissue_option,
    duplicate_genes_option,
)
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
    from anndata import AnnData

    from gr2st.encoders import Encoder
    from gr2st.executors import Executor

_HELP = "\n\n".join(
    [
        "Compute the frozen image features and nuclear cell types of every spot and store "
        "them in the feature cache, where `gr2st benchmark` (same --cache) finds them.",
        "Data (--data, else $GR2ST_DATA, else ../shared/data/her2st): a HER2ST folder "
        "(default sections: those with an image), a HEST-1k folder or a folder of .h5ad "
        "sections.",
        "A second run with the same settings only reads the cache; changing the encoder, "
        "patch size, stain normalisation or nuclei source computes new entries.",
        "Many inputs: --inputs names a folder of .h5ad sections or a list file (one .h5ad "
        "per line). With --inputs or --executor ray every section is one task, which reads "
        "its section and writes the cache itself (so --cache must be storage every Ray "
        "node sees); sections already cached are skipped, a failed one is retried and "
        "reported while the others finish. With an .h5ad folder as --data, --sections "
        "then names files by their stem.",
    ]
)


@dataclass(frozen=True)
class SectionSource:
    """Where a task reads one section: a HER2ST or HEST folder and a name, or a file."""

    kind: Literal["her2st", "hest", "h5ad"]
    path: Path
    name: str

    def read(self, *, duplicate_genes: str = "error") -> AnnData:
        from gr2st.io import read_h5ad, read_her2st, read_hest

        if self.kind == "her2st":
            return read_her2st(self.path, self.name, duplicate_genes=duplicate_genes)
        if self.kind == "hest":
            return read_hest(self.path, self.name)
        return read_h5ad(self.path)


def section_sources(root: Path, names: list[str] | None) -> list[SectionSource]:
    """The sections of a HER2ST, HEST or ``.h5ad`` folder, without reading them.

    Defaults as for ``gr2st benchmark``: the sections (samples) with an image; every
    ``.h5ad`` file, whose stem is its name here.
    """
    from gr2st.io import is_hest_folder, list_her2st, list_hest

    root = root.absolute()
    if is_hest_folder(root):
        table = list_hest(root)
        known, imaged = table["id"].tolist(), table.loc[table["has_image"], "id"].tolist()
        kind: Literal["her2st", "hest", "h5ad"] = "hest"
    elif (root / "ST-cnts").is_dir():
        table = list_her2st(root)
        known = table["section"].tolist()
        imaged = table.loc[table["has_image"], "section"].tolist()
        kind = "her2st"
    else:
        files = list_inputs(root, suffixes=[".h5ad"], what=".h5ad sections")
        by_stem = {f.stem: f for f in files}
        chosen = list(by_stem) if names is None else names
        missing = [n for n in chosen if n not in by_stem]
        if missing:
            raise GR2STDataError(f"{root}: no .h5ad file named {missing}; found {list(by_stem)}")
        return [SectionSource("h5ad", by_stem[n], n) for n in chosen]
    if names == ["all"]:
        names = known
    chosen = imaged if names is None else names
    missing = [n for n in chosen if n not in known]
    if missing:
        raise GR2STDataError(f"{root}: no section named {missing}")
    if not chosen:
        raise GR2STDataError(f"{root}: no section has an image")
    return [SectionSource(kind, root, n) for n in chosen]


@lru_cache(maxsize=2)
def _worker_encoder(name: str, device: str, backend: str) -> Encoder:
    """The encoder, loaded once per worker process (its tasks reuse it)."""
    from gr2st.encoders import get_encoder

    options = {} if "hf:" in name else {"backend": backend}
    return get_encoder(name, device=device, **options)


def featurize_section(
    source: SectionSource,
    *,
    encoder: str,
    backend: str,
    device: str,
    nuclei: str,
    stain: str,
    size: int,
    cache_dir: Path,
    batch_size: int,
    checks: InputChecks,
) -> InputResult:
    """One task: read and check ``source``, compute its features and nuclei into the cache."""
    from gr2st.encoders import prepare_image_inputs

    adata = source.read(duplicate_genes=checks.duplicate_genes)
    checks.check_images([adata])
    [report] = prepare_image_inputs(
        [adata],
        encoder=_worker_encoder(encoder, device, backend),
        nuclei=nuclei,
        size_px=size,
        stain=stain,
        cache_dir=cache_dir,
        batch_size=batch_size,
        progress=False,
    )
    cached = report.features_cached and (nuclei == "none" or report.nuclei_cached)
    return InputResult(
        "skipped" if cached else "done", f"{report.n_spots} spots in {report.total_s:.1f} s"
    )


def _sections(value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise GR2STConfigError("--sections: expected names like B4,C2")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise GR2STConfigError(f"--sections: {', '.join(repeated)} given more than once")
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
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=0,
        help="Worker processes reading, stain-normalising and measuring nuclei while the "
        "encoder runs here (default: one per CPU core, none on 2 cores or fewer; 0: all in "
        "this process).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    inputs: Path | None = typer.Option(
        None,
        "--inputs",
        metavar="DIR_OR_LIST",
        help="Folder of .h5ad sections, or a file listing one .h5ad per line (instead of --data).",
    ),
    executor: str = EXECUTOR_OPTION,
    jobs: int | None = typer.Option(
        None,
        "--jobs",
        "-j",
        min=1,
        metavar="N",
        help="Sections encoded at once, each in a worker process with cores/N threads "
        "(default: one process using every core, with --workers reading the images; "
        "with --inputs: one per core).",
    ),
    address: str | None = ADDRESS_OPTION,
    ray_cpus: int | None = RAY_CPUS_OPTION,
    cpus_per_task: int | None = CPUS_PER_TASK_OPTION,
    gpus_per_task: float = GPUS_PER_TASK_OPTION,
    max_retries: int = MAX_RETRIES_OPTION,
    allow_off_tissue: bool = allow_off_tissue_option(),
    allow_grey: bool = allow_grey_option(),
    duplicate_genes: str = duplicate_genes_option(),
) -> None:
    from gr2st._utils.device import check_device
    from gr2st._utils.preflight import check_patch_memory, check_writable
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

    check_device(device)
    checks = InputChecks(
        allow_off_tissue=allow_off_tissue, allow_grey=allow_grey, duplicate_genes=duplicate_genes
    )
    cache_dir = cache or user_cache_dir() / "features"
    check_writable(cache_dir, what="--cache")
    check_patch_memory(size, batch_size)
    if inputs is not None or executor != "local" or (jobs or 1) > 1:
        _features_many(
            data=data,
            inputs=inputs,
            names=_sections(sections),
            options={
                "encoder": encoder_name(
                    encoder or DEFAULT_ENCODER, tta=tta, context_px=context, size_px=size
                ),
                "backend": backend,
                "device": device,
                "nuclei": nuclei,
                "stain": stain,
                "size": size,
                "cache_dir": cache_dir.absolute(),
                "batch_size": batch_size,
                "checks": checks,
            },
            executor=lambda: make_executor(
                executor,
                address=address,
                ray_cpus=ray_cpus,
                cpus_per_task=cpus_per_task,
                gpus_per_task=gpus_per_task,
                max_retries=max_retries,
                jobs=jobs,
            ),
            progress=progress,
        )
        return
    root = resolve_data_dir(data)
    _, adatas = load_sections(root, _sections(sections), checks=checks)
    name = encoder_name(encoder or DEFAULT_ENCODER, tta=tta, context_px=context, size_px=size)
    options = {} if "hf:" in name else {"backend": backend}
    enc = get_encoder(name, device=device, **options)
    # Features (float32) and nuclei summaries of every spot.
    n_spots = sum(a.n_obs for a in adatas)
    check_writable(cache_dir, what="--cache", need_bytes=n_spots * (enc.dim * 4 + 2_000))
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


def _features_many(
    *,
    data: Path | None,
    inputs: Path | None,
    names: list[str] | None,
    options: dict[str, Any],
    executor: Callable[[], Executor],
    progress: bool,
) -> None:
    """One task per section on the executor (started once the inputs are known)."""
    from gr2st.cli.benchmark import resolve_data_dir
    from gr2st.executors import Task

    if inputs is not None:
        if data is not None or names is not None:
            raise GR2STConfigError("--inputs replaces --data and --sections")
        files = list_inputs(inputs, suffixes=[".h5ad"], what=".h5ad sections")
        sources = [SectionSource("h5ad", f, f.stem) for f in files]
    else:
        sources = section_sources(resolve_data_dir(data), names)
    labels = [s.path.name if s.kind == "h5ad" else s.name for s in sources]
    if len(set(labels)) < len(labels):
        raise GR2STDataError(f"--inputs: an input is named twice ({labels})")
    with executor() as runner:
        options = {**options, "device": runner.device(options["device"])}
        typer.echo(
            f"{len(sources)} sections; encoder {options['encoder']}; cache "
            f"{options['cache_dir']}; executor {runner.describe()}"
        )
        start = time.perf_counter()
        tasks = [
            Task(label, featurize_section, {"source": source, **options})
            for label, source in zip(labels, sources, strict=True)
        ]
        run_inputs(runner, tasks, desc="features", progress=progress)
        typer.echo(f"Done in {time.perf_counter() - start:.1f} s. Cache: {options['cache_dir']}")


def register(app: typer.Typer) -> None:
    """Add the ``features`` command to ``app``."""
    app.command("features", help=_HELP)(features_command)
