"""``gr2st data``: get the public datasets into the layout gr2st reads."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import typer

from gr2st.cli._guard import locked_output, missing_bytes, wait_option
from gr2st.cli._inputs import allow_grey_option, allow_off_tissue_option, duplicate_genes_option
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
        help="HER2ST folder (default: $GR2ST_DATA, else ../shared/data/her2st).",
    ),
    panel: str = typer.Option("her2st-785", "--panel", help="Gene panel every section needs."),
    allow_off_tissue: bool = allow_off_tissue_option(),
    allow_grey: bool = allow_grey_option(),
    duplicate_genes: str = duplicate_genes_option(),
) -> None:
    """Load every HER2ST section, check the panel genes and images, and say what can run.

    Prints one line per section (spots, image and the share of spots on its tissue,
    zero-panel spots) and exits with an error naming the first section that does not
    read, or whose image is unreadable or does not match its spots.
    """
    from gr2st._constants import IMAGE_PATH, UNS
    from gr2st.cli.benchmark import resolve_data_dir
    from gr2st.genes import check_genes, get_panel
    from gr2st.image.tissue import check_section_image
    from gr2st.io import list_her2st, read_her2st
    from gr2st.io._validate import report_dropped

    root = resolve_data_dir(data)
    genes = get_panel(panel)
    table = list_her2st(root)
    if table.empty:
        raise GR2STDataError(f"{root}: no HER2ST section found (expected ST-cnts/<S>.tsv.gz)")
    imaged = []
    for name in table["section"]:
        adata = read_her2st(root, name, duplicate_genes=duplicate_genes)
        image_check = check_section_image(
            adata, allow_off_tissue=allow_off_tissue, allow_grey=allow_grey
        )
        check_genes(adata, genes, source=f"{root}/ST-cnts/{name}.tsv.gz")
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
        typer.echo(
            f"{name}: {adata.n_obs} spots, image {'yes' if image else 'no '}{on_tissue}, "
            f"{int((library == 0).sum())} spot(s) with zero {panel} counts"
        )
    typer.echo(f"{len(table)} sections read; all contain the {len(genes)} {panel} genes.")
    typer.echo(f"Sections with an image (the benchmark's default): {', '.join(imaged) or 'none'}")


def register(app: typer.Typer) -> None:
    """Add the ``data`` subcommands to ``app``."""
    app.add_typer(data_app, name="data")
