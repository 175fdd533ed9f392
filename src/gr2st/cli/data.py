"""``gr2st data``: get the public datasets into the layout gr2st reads."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

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
        "Interrupted downloads resume when the same command is run again; files already "
        "present and correct are skipped.",
    ]
)


@data_app.command("fetch", help=_FETCH_HELP)
def fetch_command(
    dataset: str = typer.Argument(
        ...,
        metavar="DATASET",
        help="Dataset to download: " + ", ".join(download.dataset_names()) + ".",
    ),
    dest: Path = typer.Option(
        ..., "--dest", file_okay=False, help="Folder to fill; created if missing."
    ),
    mirror: str | None = typer.Option(
        None,
        "--mirror",
        metavar="URL",
        help="Base URL holding the same files under the same relative paths, used "
        "instead of the original host.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Download DATASET from its original public location, checking every file."""
    manifest = download.get_manifest(dataset)
    root = dest.expanduser().resolve()
    typer.echo(f"Fetching {manifest.name} into {root}")
    report = download.fetch(manifest, root, mirror=mirror, progress=progress)
    megabytes = report.bytes_downloaded / 2**20
    typer.echo(
        f"Done: {len(report.downloaded)} downloaded ({megabytes:.1f} MiB), "
        f"{len(report.skipped)} already present, {len(report.extracted)} extracted."
    )
    typer.echo(f"Use it with: gr2st benchmark --data {shlex.quote(str(report.dest))}")


def register(app: typer.Typer) -> None:
    """Add the ``data`` subcommands to ``app``."""
    app.add_typer(data_app, name="data")
