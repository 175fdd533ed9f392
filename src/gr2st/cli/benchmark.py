"""``gr2st benchmark``: cross-validate methods on a dataset and report the ranking.

One file (about 600 lines): the command itself (``benchmark_command``, half of it typer
option declarations) and the data lookup and section loading ``gr2st features`` shares.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from anndata import AnnData
from rich.console import Console

from gr2st._constants import (
    CELL_TYPE,
    DEFAULT_CHECKPOINT_SECONDS,
    DEFAULT_PANEL,
    DEFAULT_PATCH_PX,
    feature_key,
)
from gr2st._utils.preflight import check_memory
from gr2st.cli._guard import say, wait_option
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
    JOBS_OPTION,
    RAY_CPUS_OPTION,
    make_executor,
)
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.executors import DEFAULT_MAX_RETRIES

if TYPE_CHECKING:
    from gr2st.benchmark.selection import Choice

#: Default data folder, relative to the working directory (the project's shared data).
DEFAULT_DATA = Path("../shared/data/her2st")
#: Where ``--data auto`` downloads HER2ST when no data is found (relative to the cwd).
FETCH_DEST = Path("data/her2st")

_HELP = """Cross-validate METHODS on a dataset: fit on the training sections of each fold,
predict the held-out section(s) from the image, score per section, and write
results.json, per_gene.csv, summary.txt and figures to --out.

Data (--data, else $GR2ST_DATA, else ../shared/data/her2st): a HER2ST folder
(ST-cnts/, ST-spotfiles/, ST-imgs/; default sections: those with an image), a HEST-1k
folder (st/, wsis/, metadata/, as `gr2st data fetch hest` writes it; default: the
samples with a whole-slide image; --split patient uses HEST's patient field), or a
folder of .h5ad sections (gr2st's shape or scanpy/squidpy spatial AnnData with raw
counts; one section per file; default: all).
--data auto uses the first of $GR2ST_DATA, ../shared/data/her2st and data/her2st
that holds the sections (default: the six imaged ones, B4 and C2-C6; --sections all:
all 36), and otherwise downloads them into data/her2st (checked, resumable).
Sections that already carry the encoder's features (obsm["X_<encoder>"]) and
obs["cell_type"] are used as they are; otherwise features and nuclear types are
computed and cached in --cache.

Finished folds are saved under --out/folds, so running the same command again
after an interruption resumes where it stopped (--no-resume recomputes). An --out
holding a benchmark of another request is refused unless --overwrite; a second run
on the same --out stops at once naming the first (or waits --wait SECONDS).

Every fit is one task: each inner-selection fit (per inner fold and candidate group)
and each outer fold. By default they run --jobs at a time (one per core) in worker
processes, each with cores/--jobs torch/BLAS threads; --jobs 1 runs them one after the
other in this process. The numbers do not depend on --jobs when each fit uses the same
threads (e.g. --jobs 1 --cpus-per-task 1 and --jobs 2 on two cores give identical
results). The progress bar is weighted by the estimated cost of each fit; with
--no-progress one line per finished fit says how much is done and the time left.

--executor ray runs the same tasks as Ray tasks (a Ray instance started here, or the
cluster at --address) with --cpus-per-task cores and --gpus-per-task GPUs; this
process saves the folds and writes the same report.
"""


def resolve_data_dir(
    data: Path | None, *, sections: Sequence[str] | None = None, progress: bool = True
) -> Path:
    """``--data``, else ``$GR2ST_DATA``, else ``../shared/data/her2st`` if it exists.

    ``$GR2ST_DATA`` may also name a folder holding ``her2st/``. ``--data auto`` finds
    HER2ST or downloads it (see :func:`find_or_fetch_her2st`; ``sections`` are the
    sections it must hold).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> resolve_data_dir(d) == d
    True
    """
    if data is not None and str(data) == "auto":
        return find_or_fetch_her2st(sections, progress=progress)
    if data is not None:
        if not data.is_dir():
            raise GR2STDataError(f"--data {data}: no such folder")
        return data
    env = _env_data()
    if env is not None:
        return env
    if DEFAULT_DATA.is_dir():
        return DEFAULT_DATA
    raise GR2STDataError(
        f"no data: pass --data DIR, set GR2ST_DATA, or use --data auto (finds HER2ST or "
        f"downloads it into {FETCH_DEST})"
    )


def _env_data() -> Path | None:
    env = os.environ.get("GR2ST_DATA")
    if not env:
        return None
    root = Path(env).expanduser()
    if not (root / "ST-cnts").is_dir() and (root / "her2st" / "ST-cnts").is_dir():
        root = root / "her2st"
    if not root.is_dir():
        raise GR2STDataError(f"GR2ST_DATA={env}: no such folder")
    return root


def _her2st_holds(root: Path, sections: Sequence[str]) -> bool:
    """Counts, spot file and an image of every section (final names: checked downloads)."""
    return all(
        (root / "ST-cnts" / f"{s}.tsv.gz").is_file()
        and (root / "ST-spotfiles" / f"{s}_selection.tsv").is_file()
        and any((root / "ST-imgs" / s[0] / s).glob("*.jpg"))
        for s in sections
    )


def find_or_fetch_her2st(
    sections: Sequence[str] | None = None, *, progress: bool = True, mirror: str | None = None
) -> Path:
    """The first HER2ST folder holding ``sections``, else download them into ``data/her2st``.

    Looks in ``$GR2ST_DATA``, ``../shared/data/her2st`` and :data:`FETCH_DEST`; a folder
    counts when every section has its counts, spot file and image. Otherwise the missing
    files are fetched into :data:`FETCH_DEST` with :func:`gr2st.io.download.fetch`
    (checked, resumable; files already there are kept), printing what is downloaded.

    Parameters
    ----------
    sections
        HER2ST section names, ``["all"]`` for the 36, or None for the six imaged ones
        (:data:`gr2st.io.download.HER2ST_IMAGED`).
    progress
        Show progress bars while downloading.
    mirror
        Base URL to download from instead of the original host.

    Raises
    ------
    gr2st.io.download.DownloadError
        The download failed (one line naming the URL and the manual alternative).

    Examples
    --------
    >>> find_or_fetch_her2st(["B4", "C2"])  # doctest: +SKIP
    PosixPath('../shared/data/her2st')
    """
    from gr2st.io import download

    if sections is None:
        wanted = list(download.HER2ST_IMAGED)
    elif list(sections) == ["all"]:
        wanted = list(download.HER2ST_SECTIONS)
    else:
        wanted = list(sections)
    candidates = [c for c in (_env_data(), DEFAULT_DATA, FETCH_DEST) if c is not None]
    for root in candidates:
        if _her2st_holds(root, wanted):
            return root
    typer.echo(
        f"HER2ST sections {_span(wanted)} not found in {', '.join(map(str, candidates))}; "
        f"fetching them into {FETCH_DEST}"
    )
    from gr2st._utils.lock import lock_folder
    from gr2st._utils.preflight import check_writable

    check_writable(FETCH_DEST, what="--data auto: download folder")
    try:
        # Another run fetching into the same folder: wait for it, then find its files.
        with lock_folder(FETCH_DEST, what=f"download folder {FETCH_DEST}", wait=None):
            download.fetch(
                download.get_manifest("her2st", sections=wanted),
                FETCH_DEST,
                mirror=mirror,
                progress=progress,
                log=typer.echo,
            )
    except download.DownloadError as err:
        raise download.DownloadError(
            f"{err}; without network access, copy the data/ folder of "
            f"https://github.com/almaan/her2st at commit {download.HER2ST_COMMIT[:7]} into "
            f"{FETCH_DEST} (or anywhere, then pass --data DIR)"
        ) from None
    return FETCH_DEST


def _span(names: Sequence[str]) -> str:
    return "all 36" if len(names) > 12 else ", ".join(names)


def _split_list(value: str | None, *, option: str | None = None) -> list[str] | None:
    """Comma-separated names; with ``option``, a name given twice is an error."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    repeated = sorted({v for v in items if items.count(v) > 1})
    if option is not None and repeated:
        raise GR2STConfigError(f"{option}: {', '.join(repeated)} given more than once")
    return items or None


def _output_bytes(
    sections: Sequence[AnnData], methods: Sequence[str], genes: str, panel: str | None
) -> int:
    """Rough size of a benchmark's outputs: fold predictions (float32) and per-gene
    table for every method, figures, and one method's training checkpoints."""
    n_spots = sum(a.n_obs for a in sections)
    if genes == "all":
        n_genes = max((a.n_vars for a in sections), default=0)
    elif genes == "panel":
        from gr2st.genes import get_panel

        n_genes = len(get_panel(panel or DEFAULT_PANEL))
    else:
        n_genes = len(genes.split(","))
    per_method = n_spots * n_genes * (4 + 8) + len(sections) * n_genes * 40
    return len(methods) * per_method + 20_000_000 + 200_000_000


def _cache_bytes(sections: Sequence[AnnData], dim: int) -> int:
    """Rough size of the feature cache entries of ``sections`` (features and nuclei)."""
    return sum(a.n_obs for a in sections) * (dim * 4 + 2_000)


def load_sections(
    root: Path, names: Sequence[str] | None, *, checks: InputChecks | None = None
) -> tuple[str, list[AnnData]]:
    """Read the sections of a HER2ST folder, a HEST folder or a folder of ``.h5ad`` files.

    ``names`` None means the samples with an image (HER2ST's imaged sections, HEST's
    samples with a whole-slide image, every ``.h5ad`` file); ``["all"]`` means every
    HER2ST section. Every section with an image then gets the spot-on-image check
    (``checks`` relaxes it). Returns the dataset name recorded in ``results.json`` and
    the sections.
    """
    checks = checks or InputChecks()
    dataset, adatas = _read_sections(root, names, duplicate_genes=checks.duplicate_genes)
    checks.check_images(adatas)
    return dataset, adatas


def _read_sections(
    root: Path, names: Sequence[str] | None, *, duplicate_genes: str
) -> tuple[str, list[AnnData]]:
    from gr2st.io import is_hest_folder, list_her2st, list_hest, read_h5ad, read_her2st, read_hest
    from gr2st.sections import section_name

    if is_hest_folder(root):
        samples = list_hest(root)
        if names is None:
            names = samples.loc[samples["has_image"], "id"].tolist()
            if not names:
                raise GR2STDataError(f"{root}: no HEST sample has a whole-slide image under wsis/")
        return root.name, [read_hest(root, n) for n in names]
    if names is not None and list(names) == ["all"]:
        names = None if not (root / "ST-cnts").is_dir() else list_her2st(root)["section"].tolist()
    if (root / "ST-cnts").is_dir():
        table = list_her2st(root)
        if names is None:
            names = table.loc[table["has_image"], "section"].tolist()
            if not names:
                raise GR2STDataError(f"{root}: no HER2ST section has an image under ST-imgs/")
        return "her2st", [read_her2st(root, n, duplicate_genes=duplicate_genes) for n in names]
    files = sorted(root.glob("*.h5ad"))
    if not files:
        raise GR2STDataError(
            f"{root}: neither a HER2ST folder (ST-cnts/), a HEST folder (st/, metadata/) "
            "nor a folder of .h5ad sections"
        )
    sections: dict[str, AnnData] = {}
    origin: dict[str, Path] = {}
    for path in files:
        adata = read_h5ad(path)
        name = section_name(adata)
        if name in sections:
            raise GR2STDataError(
                f"{path}: section {name!r} again (also in {origin[name].name}); give each "
                "file its own obs['section'] (or uns['spatial'] library id)"
            )
        sections[name], origin[name] = adata, path
    if names is None:
        return root.name, list(sections.values())
    missing = [n for n in names if n not in sections]
    if missing:
        raise GR2STDataError(f"{root}: no .h5ad section named {missing}; found {list(sections)}")
    return root.name, [sections[n] for n in names]


def resolve_methods(spec: str) -> list[str]:
    """``"all"`` → every registered method; else the comma-separated names (checked).

    Examples
    --------
    >>> resolve_methods("knn, ridge")
    ['knn', 'ridge']
    """
    import gr2st.methods  # noqa: F401  (registers every method)
    from gr2st.methods.base import METHODS

    if spec.strip() == "all":
        return METHODS.names()
    names = _split_list(spec)
    if not names:
        raise GR2STConfigError("--methods: expected method names or 'all'")
    for name in names:
        METHODS.get(name)
    return names


def resolve_genes(
    spec: str, panel: str | None, sections: Sequence[AnnData]
) -> tuple[list[str], list[str] | None, str]:
    """(model panel, genes to score instead of the panel or None, label for the report)."""
    from gr2st.genes import common_genes, get_panel

    panel_name = panel or DEFAULT_PANEL
    if spec == "panel":
        return get_panel(panel_name), None, panel_name
    if spec == "all":
        genes = common_genes(sections)
        label = f"all {len(genes)} genes measured in every section (library: {panel_name})"
        return get_panel(panel_name), genes, label
    chosen = _split_list(spec)
    if not chosen:
        raise GR2STConfigError("--genes: expected 'panel', 'all' or GENE,GENE,…")
    return chosen, None, f"{len(chosen)} chosen genes"


def _with_views(choice: Choice, *, tta: int, context: int | None, size: int | None) -> Choice:
    """A grid candidate's encoder with the run's ``--tta`` and ``--context``."""
    from gr2st.encoders import encoder_name

    if choice.encoder is None:
        return choice
    name = encoder_name(
        choice.encoder, tta=tta, context_px=context, size_px=size or DEFAULT_PATCH_PX
    )
    return replace(choice, encoder=name)


def _check_panel(spec: str, panel: str | None, sections: Sequence[AnnData]) -> None:
    """Fail before the image work when a section lacks the genes the run needs."""
    from gr2st.genes import check_genes
    from gr2st.sections import section_name

    wanted, _, label = resolve_genes(spec, panel, sections)
    for adata in sections:
        check_genes(adata, wanted, source=f"section {section_name(adata)} ({label})")


def _has_inputs(sections: Sequence[AnnData], key: str, nuclei: str) -> bool:
    return all(key in a.obsm and (nuclei == "none" or CELL_TYPE in a.obs.columns) for a in sections)


def benchmark_command(
    ctx: typer.Context,
    data: Path | None = typer.Option(
        None,
        "--data",
        file_okay=False,
        metavar="DIR",
        help="HER2ST folder, HEST folder or folder of .h5ad sections; 'auto': find HER2ST "
        "or download it into data/her2st.",
    ),
    methods: str = typer.Option(
        "gr2st", "--methods", metavar="NAMES", help="Comma-separated method names, or 'all'."
    ),
    profile: str | None = typer.Option(
        None,
        "--profile",
        metavar="NAME",
        help="Profile of the learned methods: default (ours) or paper (as published); "
        "knn, ridge, mean and oracle have one set of settings.",
    ),
    split: str = typer.Option(
        "section", "--split", metavar="SPLIT", help="section or patient (leave one out)."
    ),
    sections: str | None = typer.Option(
        None,
        "--sections",
        metavar="NAMES",
        help="Comma-separated sections, or 'all' (default: all imaged ones).",
    ),
    encoder: str | None = typer.Option(
        None,
        "--encoder",
        metavar="NAME",
        help="Frozen image encoder (default efficientnet-lite0); A+B concatenates encoders.",
    ),
    tta: int = typer.Option(
        1, "--tta", metavar="VIEWS", help="Average the features of 1, 2, 4 or 8 flips/rotations."
    ),
    context: int | None = typer.Option(
        None,
        "--context",
        min=1,
        metavar="PX",
        help="Also encode a larger patch of this side around each spot (e.g. 448).",
    ),
    size: int | None = typer.Option(
        None,
        "--size",
        min=1,
        metavar="PX",
        help="Patch side in full-resolution pixels for the features (default 224).",
    ),
    nuclei: str = typer.Option(
        "classical",
        "--nuclei",
        metavar="SOURCE",
        help="classical, hovernet:DIR or none (nuclear cell types).",
    ),
    genes: str = typer.Option(
        "panel",
        "--genes",
        metavar="GENES",
        help="panel (the --panel genes), all (every gene measured in all sections, "
        "normalised with the panel's library size), or GENE,GENE,…",
    ),
    panel: str | None = typer.Option(
        None,
        "--panel",
        metavar="PANEL",
        help=f"Built-in panel name or gene-list file (default {DEFAULT_PANEL}).",
    ),
    seed: int = typer.Option(
        0, "--seed", metavar="N", help="Global seed; each method and fold derives its own."
    ),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=VALUE",
        help="Override key=value (every method) or method:key=value (one method); repeatable.",
    ),
    grid: list[str] = typer.Option(
        [],
        "--grid",
        metavar="[METHOD:]KEY=V1,V2",
        help="Candidate values (repeatable): smooth.weight=0,0.5 and smooth.k=6 smooth every "
        "method's predictions over each spot's nearest spots; expression.align=none,center,"
        "standardize aligns each training section's genes to the pooled level (and spread) "
        "before the fit; features.encoder=A,B reads the features of other encoders (with "
        "this run's --tta and --context); other keys are overrides. Without --select inner "
        "the first value is used.",
    ),
    select: str = typer.Option(
        "none",
        "--select",
        metavar="MODE",
        help="inner: each fold picks every method's --grid values by leave-one-section-out "
        "on its training sections only (a lone training section: over three stripes of "
        "its spots; recorded in results.json); none: first values.",
    ),
    inner_folds: int | None = typer.Option(
        None,
        "--inner-folds",
        min=1,
        metavar="N",
        help="With --select inner: at most N inner folds per outer fold (default: all).",
    ),
    cache: Path | None = typer.Option(
        None,
        "--cache",
        file_okay=False,
        metavar="DIR",
        help="Feature cache (default ~/.cache/gr2st/features).",
    ),
    out: Path = typer.Option(
        Path("results/benchmark"), "--out", file_okay=False, metavar="DIR", help="Output folder."
    ),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Reuse finished folds found in --out."
    ),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu or cuda."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Draw the PNG figures."),
    figure_section: str | None = typer.Option(
        None,
        "--figure-section",
        metavar="SECTION",
        help="Section of the spatial-map figure (default: best).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    checkpoint_every: float = typer.Option(
        DEFAULT_CHECKPOINT_SECONDS,
        "--checkpoint-every",
        min=0.0,
        metavar="SECONDS",
        help="Seconds between training checkpoints of a fold (0: every epoch); the end of "
        "a fit and an interrupted one (Ctrl-C) are always saved.",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Run into an --out that holds a benchmark of another request, replacing its "
        "report (finished folds that still match are reused).",
    ),
    wait: float = wait_option(),
    executor: str = EXECUTOR_OPTION,
    jobs: int | None = JOBS_OPTION,
    address: str | None = ADDRESS_OPTION,
    ray_cpus: int | None = RAY_CPUS_OPTION,
    cpus_per_task: int | None = CPUS_PER_TASK_OPTION,
    gpus_per_task: float = GPUS_PER_TASK_OPTION,
    allow_off_tissue: bool = allow_off_tissue_option(),
    allow_grey: bool = allow_grey_option(),
    duplicate_genes: str = duplicate_genes_option(),
) -> None:
    from gr2st._utils.device import check_device
    from gr2st._utils.preflight import check_patch_memory, check_writable
    from gr2st.benchmark import render_table, run_benchmark
    from gr2st.benchmark.runner import check_profile
    from gr2st.benchmark.selection import SELECTIONS, parse_grid
    from gr2st.benchmark.store import claimed_output
    from gr2st.encoders import (
        DEFAULT_ENCODER,
        encoder_name,
        extract_patches,
        get_encoder,
        prepare_image_inputs,
    )
    from gr2st.encoders.efficientnet import user_cache_dir
    from gr2st.methods.base import METHODS

    check_device(device)
    method_names = resolve_methods(methods)
    check_profile(profile, {m: METHODS.get(m) for m in method_names})
    if select not in SELECTIONS:
        raise GR2STConfigError(f"--select: expected one of {', '.join(SELECTIONS)}, got {select!r}")
    candidates = parse_grid(grid, method_names)
    chosen = _split_list(sections, option="--sections")
    check_writable(out)
    check_patch_memory(size or DEFAULT_PATCH_PX, 32)
    root = resolve_data_dir(data, sections=chosen, progress=progress)
    dataset, adatas = load_sections(
        root,
        chosen,
        checks=InputChecks(
            allow_off_tissue=allow_off_tissue,
            allow_grey=allow_grey,
            duplicate_genes=duplicate_genes,
        ),
    )
    _check_panel(genes, panel, adatas)
    name = encoder_name(
        encoder or DEFAULT_ENCODER,
        tta=tta,
        context_px=context,
        size_px=size or DEFAULT_PATCH_PX,
    )
    key = feature_key(name)
    candidates = {
        method: [_with_views(c, tta=tta, context=context, size=size) for c in choices]
        for method, choices in candidates.items()
    }
    grid_encoders = sorted(
        {c.encoder for choices in candidates.values() for c in choices if c.encoder} - {name}
    )
    check_writable(out, need_bytes=_output_bytes(adatas, method_names, genes, panel))
    request = {
        "data": str(root.resolve()),
        "sections": chosen,
        "methods": method_names,
        "profile": profile,
        "split": split,
        "encoder": name,
        "size": size,
        "nuclei": nuclei,
        "genes": genes,
        "panel": panel,
        "seed": seed,
        "overrides": list(overrides),
        "grid": list(grid),
        "select": select,
        "inner_folds": inner_folds,
    }
    # Held until the command ends (the click context closes it, also on errors).
    ctx.with_resource(claimed_output(out, request, overwrite=overwrite, wait=wait, on_wait=say))
    cache_dir = cache or user_cache_dir() / "features"
    if not _has_inputs(adatas, key, nuclei):
        enc = get_encoder(name)
        key = feature_key(enc.name)
        check_writable(cache_dir, what="--cache", need_bytes=_cache_bytes(adatas, enc.dim))
        prepare_image_inputs(
            adatas,
            encoder=enc,
            size_px=size,
            nuclei=nuclei,
            cache_dir=cache_dir,
            progress=progress,
        )
    for other in grid_encoders:
        if not _has_inputs(adatas, feature_key(other), "none"):
            enc = get_encoder(other)
            check_writable(cache_dir, what="--cache", need_bytes=_cache_bytes(adatas, enc.dim))
            prepare_image_inputs(
                adatas,
                encoder=enc,
                size_px=size,
                nuclei="none",
                cache_dir=cache_dir,
                progress=progress,
            )
    pixel_sides = {
        int(cls.patch_px or 0)
        for cls in (METHODS.get(name) for name in method_names)
        if cls.input == "pixels"
    }
    if pixel_sides:
        # Methods learning from pixels share one uint8 patch stack (the largest side asked
        # for; a method wanting a smaller side resizes it once when it reads it).
        side, n_spots = max(pixel_sides), sum(a.n_obs for a in adatas)
        check_memory(
            n_spots * side * side * 3 * 2,
            what=f"the {side} px patches of {n_spots:,} spots",
            hint="use fewer sections or leave the pixel methods out",
        )
        check_writable(cache_dir, what="--cache", need_bytes=n_spots * side * side * 3)
        extract_patches(adatas, out_px=side, cache_dir=cache_dir, progress=progress)
    panel_genes, target_genes, label = resolve_genes(genes, panel, adatas)
    results = run_benchmark(
        adatas,
        methods=method_names,
        genes=panel_genes,
        target_genes=target_genes,
        feature_key=key,
        out_dir=out,
        profile=profile,
        overrides=overrides,
        split=split,
        seed=seed,
        resume=resume,
        progress=progress,
        device=device,
        dataset=dataset,
        genes_label=label,
        figures=figures,
        figure_section=figure_section,
        checkpoint_every=checkpoint_every,
        grid=candidates,
        select=select,
        inner_folds=inner_folds,
        executor=partial(
            make_executor,
            executor,
            address=address,
            ray_cpus=ray_cpus,
            cpus_per_task=cpus_per_task,
            gpus_per_task=gpus_per_task,
            max_retries=DEFAULT_MAX_RETRIES,
            jobs=jobs,
        ),
        # Without a progress bar, a line per finished task shows that the run advances.
        report=None if progress else typer.echo,
    )
    console = Console()
    if not console.is_terminal:
        # Logs and pipes get the full table instead of rich's 80-column default.
        console = Console(width=120)
    console.print(render_table(results))
    console.print(f"Results in {out}/ (results.json, per_gene.csv, summary.txt, figures)")


def register(app: typer.Typer) -> None:
    """Add the ``benchmark`` command to ``app``."""
    app.command("benchmark", help=_HELP)(benchmark_command)
