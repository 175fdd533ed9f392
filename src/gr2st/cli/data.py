"""``gr2st data``: get the public datasets into the layout gr2st reads."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import typer

from gr2st.cli._guard import locked_output, missing_bytes, wait_option
from gr2st.cli._inputs import (
    InputChecks,
    allow_grey_option,
    allow_off_tissue_option,
    duplicate_genes_option,
)
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.io import download

data_app = typer.Typer(
    name="data",
    help="Download the public datasets into the layout gr2st reads.",
    no_args_is_help=True,
)


_FETCH_HELP = "\n\n".join(
    [
        "Download DATASET from its original public location, checking every file.",
        "her2st: raw files of github.com/almaan/her2st at commit 85df741 (its data/ folder): "
        "counts and spot files of the 36 sections A1..H3, their H&E images and the "
        "pathologist labels. Files are checked by sha256, except 30 image names that are "
        "read from GitHub's tree listing of that commit and checked by git blob id. If "
        "api.github.com cannot be reached, clone the repository at that commit and copy "
        "data/ST-imgs into DEST/ST-imgs.",
        "cscc: GEO GSE144240_RAW.tar from NCBI; the counts, spot files and images of the "
        "12 sections P2_ST_rep1..P10_ST_rep3 are extracted flat into DEST and the tar is "
        "removed. GEO publishes no checksum, so completeness is what is checked.",
        "hest: the HEST-1k samples given with --ids (e.g. TENX95,NCBI783), from the "
        "Hugging Face dataset MahmoodLab/hest: st/<id>.h5ad, wsis/<id>.tif, "
        "metadata/<id>.json (and patches/<id>.h5 with --patches), checked against the "
        "sizes and sha256 the hub lists (needs the hest extra: pip install 'gr2st[hest]'). "
        "The dataset is gated: accept its terms on the hub and set HF_TOKEN to a read token "
        "(or run hf auth login). --mirror names another hub endpoint. Train and benchmark on "
        "the folder with --data DEST.",
        "Interrupted downloads resume when the same command is run again (hest: a transfer "
        "cut mid-way resumes within the run); files already present and correct are skipped.",
    ]
)


@data_app.command("fetch", help=_FETCH_HELP)
def fetch_command(
    dataset: str = typer.Argument(
        ...,
        metavar="DATASET",
        help="Dataset to download: " + ", ".join(sorted([*download.dataset_names(), "hest"])) + ".",
    ),
    dest: Path = typer.Option(
        ..., "--dest", file_okay=False, help="Folder to fill; created if missing."
    ),
    sections: str = typer.Option(
        "all",
        "--sections",
        metavar="NAMES",
        help="Sections to fetch: all, imaged (her2st: B4, C2-C6, the benchmark's six, "
        "27 MiB), or comma-separated names.",
    ),
    mirror: str | None = typer.Option(
        None,
        "--mirror",
        metavar="URL",
        help="Base URL holding the same files under the same relative paths, used "
        "instead of the original host (hest: a Hugging Face hub endpoint).",
    ),
    ids: str | None = typer.Option(
        None, "--ids", metavar="ID,ID", help="hest only: the sample ids to fetch."
    ),
    patches: bool = typer.Option(
        False, "--patches", help="hest only: also fetch HEST's patches/<id>.h5."
    ),
    revision: str = typer.Option(
        "main", "--revision", help="hest only: dataset branch, tag or commit."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
    wait: float = wait_option(),
) -> None:
    """Download DATASET from its original public location, checking every file."""
    from gr2st._utils.preflight import check_writable

    known = sorted([*download.dataset_names(), "hest"])
    if dataset not in known:
        raise GR2STConfigError(f"unknown dataset {dataset!r}; known: {', '.join(known)}")
    chosen = _sections(dataset, sections)
    root = dest.expanduser().resolve()
    if dataset == "hest":
        sample_ids = [i.strip() for i in (ids or "").split(",") if i.strip()]
        hub = download.hest_manifest(
            sample_ids, patches=patches, revision=revision, endpoint=mirror
        )
        name, files = hub.name, [(root / f.path, f.size or 0) for f in hub.files]
    else:
        if ids is not None or patches or revision != "main":
            raise GR2STConfigError(f"--ids, --patches and --revision are for hest, not {dataset}")
        manifest = download.get_manifest(dataset, sections=chosen)
        name, files = manifest.name, [(root / f.path, f.size or 0) for f in manifest.files]
        # An archive is downloaded, then its members extracted next to it: twice its size.
        files += [(root / a.path, 2 * (a.size or 0)) for a in manifest.archives]
    check_writable(root, what="--dest", need_bytes=missing_bytes(files))
    typer.echo(f"Fetching {name} into {root}")
    # Two fetches into one folder would append to the same partial files.
    with locked_output(root, wait=wait, folder=True):
        if dataset == "hest":
            report = download.fetch_hest(hub, root, progress=progress, log=typer.echo)
        else:
            report = download.fetch(
                manifest, root, mirror=mirror, progress=progress, log=typer.echo
            )
    megabytes = report.bytes_downloaded / 2**20
    typer.echo(
        f"Done: {len(report.downloaded)} downloaded ({megabytes:.1f} MiB), "
        f"{len(report.skipped)} already present, {len(report.extracted)} extracted."
    )
    typer.echo(f"Use it with: gr2st benchmark --data {shlex.quote(str(report.dest))}")


def _sections(dataset: str, spec: str) -> list[str] | None:
    """``--sections``: None for all, the imaged HER2ST sections, or the names given."""
    if spec.strip() == "all":
        return None
    if spec.strip() == "imaged":
        if dataset != "her2st":
            raise GR2STConfigError("--sections imaged applies to her2st only")
        return list(download.HER2ST_IMAGED)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise GR2STConfigError("--sections: expected all, imaged or comma-separated names")
    return names


@data_app.command("check")
def check_command(
    data: Path | None = typer.Option(
        None,
        "--data",
        metavar="DIR",
        help="HER2ST folder, HEST folder or folder of .h5ad sections, as for benchmark "
        "(default: $GR2ST_DATA, else ../shared/data/her2st).",
    ),
    panel: str = typer.Option("her2st-785", "--panel", help="Gene panel every section needs."),
    allow_off_tissue: bool = allow_off_tissue_option(),
    allow_grey: bool = allow_grey_option(),
    duplicate_genes: str = duplicate_genes_option(),
) -> None:
    """Load every section of --data, check the panel genes and images, and say what can run.

    Prints one line per section (spots, image and the share of spots on its tissue,
    resolution, zero-panel spots) and exits with an error naming the first section that
    does not read, or whose image is unreadable or does not match its spots. A HER2ST
    folder is read whole (all its sections); a HEST folder or a folder of .h5ad files as
    benchmark reads it.
    """
    from gr2st._constants import IMAGE_PATH, MICRONS_PER_PIXEL, UNS
    from gr2st.cli.benchmark import load_sections, resolve_data_dir
    from gr2st.genes import check_genes, get_panel
    from gr2st.image.tissue import check_section_image
    from gr2st.io import list_her2st, read_her2st
    from gr2st.io._validate import report_dropped
    from gr2st.sections import section_name

    root = resolve_data_dir(data)
    genes = get_panel(panel)
    if (root / "ST-cnts").is_dir():
        names = list_her2st(root)["section"].tolist()
        if not names:
            raise GR2STDataError(f"{root}: no HER2ST section found (expected ST-cnts/<S>.tsv.gz)")
        sections = (
            (read_her2st(root, n, duplicate_genes=duplicate_genes), f"{root}/ST-cnts/{n}.tsv.gz")
            for n in names
        )
    else:
        checks = InputChecks(
            allow_off_tissue=allow_off_tissue,
            allow_grey=allow_grey,
            duplicate_genes=duplicate_genes,
        )
        _, loaded = load_sections(root, None, checks=checks)
        sections = ((a, f"{root}: section {section_name(a)}") for a in loaded)
    imaged, count = [], 0
    for adata, source in sections:
        name = section_name(adata)
        count += 1
        image_check = check_section_image(
            adata, allow_off_tissue=allow_off_tissue, allow_grey=allow_grey
        )
        check_genes(adata, genes, source=source)
        library = np.asarray(adata[:, genes].X.sum(axis=1)).ravel()
        report_dropped(
            name,
            int((library == 0).sum()),
            adata.n_obs,
            why=f"zero {panel} counts (training and scoring leave them out)",
        )
        image = adata.uns[UNS][IMAGE_PATH]
        if image is not None:
            imaged.append(name)
        on_tissue = (
            f" ({100 * image_check.on_tissue:.0f} % of spots on tissue)" if image_check else ""
        )
        mpp = adata.uns[UNS][MICRONS_PER_PIXEL]
        typer.echo(
            f"{name}: {adata.n_obs} spots, image {'yes' if image else 'no '}{on_tissue}, "
            f"{'resolution unknown' if mpp is None else f'{mpp:.3g} µm/px'}, "
            f"{int((library == 0).sum())} spot(s) with zero {panel} counts"
        )
    typer.echo(f"{count} sections read; all contain the {len(genes)} {panel} genes.")
    typer.echo(f"Sections with an image (the benchmark's default): {', '.join(imaged) or 'none'}")


@data_app.command("import")
def import_command(
    kind: str = typer.Argument(..., metavar="KIND", help="Input layout: st (legacy ST)."),
    counts: Path = typer.Option(
        ..., "--counts", metavar="FILE", help="Count table (spots × genes, rows '<x>x<y>')."
    ),
    spots: Path = typer.Option(
        ...,
        "--spots",
        metavar="FILE",
        help="Spot-detector table: x y pixel_x pixel_y [selected].",
    ),
    image: Path | None = typer.Option(
        None, "--image", metavar="FILE", help="The H&E image the pixel positions refer to."
    ),
    out: Path = typer.Option(..., "--out", metavar="S.h5ad", help="Section file to write."),
    section: str | None = typer.Option(
        None, "--section", help="Section name (default: the count table's name)."
    ),
    patient: str | None = typer.Option(
        None, "--patient", help="Patient id (default: the section name)."
    ),
    platform: str | None = typer.Option(
        None,
        "--platform",
        help="st-1k or st-2k (default: inferred from the array positions).",
    ),
    pitch_um: float | None = typer.Option(
        None, "--pitch-um", help="Microns per array step (default: the platform's)."
    ),
    mpp: float | None = typer.Option(
        None,
        "--mpp",
        help="Image microns per pixel (default: measured from the spot pitch; a given one "
        "must agree with it).",
    ),
) -> None:
    """Read loose legacy-ST files into one gr2st section (.h5ad) for --data folders.

    The platform, pitch and image resolution are inferred and cross-checked (see
    gr2st.io.geometry); the section's geometry is printed and stored in the file.
    """
    from gr2st._constants import GEOMETRY, IMAGE_PATH, UNS
    from gr2st._utils.files import atomic_path
    from gr2st.io import read_st_legacy
    from gr2st.io.geometry import Geometry

    if kind != "st":
        raise GR2STConfigError(f"data import {kind!r}: expected st")
    if out.suffix != ".h5ad":
        raise GR2STConfigError(f"--out {out}: expected a .h5ad file")
    adata = read_st_legacy(
        counts,
        spots,
        image=None if image is None else image.resolve(),
        section=section,
        patient=patient,
        platform=platform,
        pitch_um=pitch_um,
        mpp=mpp,
    )
    geometry = Geometry.from_dict(adata.uns[UNS][GEOMETRY])
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    typer.echo(
        f"{out}: {adata.n_obs} spots × {adata.n_vars} genes; {geometry.platform} "
        f"({geometry.pitch_um:g} µm per array step), {geometry.microns_per_pixel:.4g} µm/px "
        f"(x {geometry.microns_per_pixel_x:.4g}, y {geometry.microns_per_pixel_y:.4g}), "
        f"spot {geometry.spot_diameter_px:.1f} px; image "
        f"{adata.uns[UNS][IMAGE_PATH] or 'none'}"
    )


def panel_command(
    data: Path | None = typer.Option(
        None,
        "--data",
        metavar="DIR",
        help="HER2ST folder, HEST folder or folder of .h5ad sections, as for benchmark.",
    ),
    sections: str | None = typer.Option(
        None,
        "--sections",
        metavar="NAMES",
        help="Comma-separated sections to choose the genes from: only the training "
        "sections (default: those benchmark uses).",
    ),
    n_top: int = typer.Option(
        300, "--n-top", min=1, help="Highly variable genes chosen per section."
    ),
    min_sections: int | None = typer.Option(
        None,
        "--min-sections",
        min=1,
        help="A gene enters the panel when chosen in this many sections (default 1).",
    ),
    out: Path = typer.Option(..., "--out", metavar="FILE", help="Panel file: one gene a line."),
) -> None:
    """Choose a gene panel: each section's most variable genes, pooled (scanpy's
    highly_variable_genes, gr2st.genes.hvg_panel), written for --panel FILE.

    Choose it from the training sections only: a panel chosen with a test section's
    expression leaks it into the score.
    """
    from gr2st._utils.files import atomic_path
    from gr2st.cli.benchmark import load_sections, resolve_data_dir
    from gr2st.genes import hvg_panel
    from gr2st.sections import section_name

    root = resolve_data_dir(data)
    names = None if sections is None else [n.strip() for n in sections.split(",") if n.strip()]
    _, loaded = load_sections(root, names)
    genes = hvg_panel(loaded, n_top=n_top, min_sections=min_sections)
    if not genes:
        raise GR2STDataError(
            f"{root}: no gene is chosen in {min_sections} of the {len(loaded)} sections; "
            "lower --min-sections"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(genes) + "\n")
    typer.echo(
        f"{out}: {len(genes)} genes from {len(loaded)} section(s) "
        f"({', '.join(section_name(a) for a in loaded)}), {n_top} per section"
    )


def register(app: typer.Typer) -> None:
    """Add the ``data`` subcommands and ``panel`` to ``app``."""
    app.add_typer(data_app, name="data")
    app.command("panel")(panel_command)
