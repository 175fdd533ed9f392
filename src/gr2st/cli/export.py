"""``gr2st export qupath|spatialdata`` and ``gr2st report``: see predictions where people look."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from gr2st.cli._guard import overwrite_option, prepare_output
from gr2st.errors import GR2STConfigError

if TYPE_CHECKING:
    from anndata import AnnData

_QUPATH_HELP = """Write a prediction's spots as QuPath detections (GeoJSON).

Each spot is a circle of its diameter in the slide's full-resolution pixels, with one
measurement per gene (the predicted value), "<gene> uncertainty", "<gene> measured"
(where the input had counts) and in_tissue. In QuPath: open the slide, drag the file
onto it (or File > Import objects from file), then Measure > Show measurement maps.
"""

_SPATIALDATA_HELP = """Write a prediction as a SpatialData store (.zarr): the slide as a
multiscale image, the spots as circles and the values as a table annotating them, all
in the slide's pixels ("global"), for napari-spatialdata. Needs gr2st[spatialdata].
"""

_REPORT_HELP = """Write the HTML report of a benchmark folder (DIR/report.html) or of a
prediction (.h5ad; default: <stem>.html next to it). One self-contained file that
opens offline.
"""

export_app = typer.Typer(
    name="export",
    help="Export a prediction to QuPath (GeoJSON) or napari (SpatialData).",
    no_args_is_help=True,
)


@export_app.command("qupath", help=_QUPATH_HELP)
def qupath_command(
    prediction: Path = typer.Argument(
        ..., dir_okay=False, metavar="PRED.h5ad", help="A prediction (gr2st predict)."
    ),
    out: Path = typer.Option(..., "--out", metavar="FILE.geojson", help="Output file."),
    genes: str = typer.Option(
        "all", "--genes", help="all, top:N (most variable predictions) or GENE,GENE,…"
    ),
    overwrite: bool = overwrite_option(),
) -> None:
    from gr2st.export import write_qupath

    prepare_output(out, overwrite=overwrite)
    path = write_qupath(prediction, out, genes=genes)
    typer.echo(f"QuPath detections: {path}")


@export_app.command("spatialdata", help=_SPATIALDATA_HELP)
def spatialdata_command(
    prediction: Path = typer.Argument(
        ..., dir_okay=False, metavar="PRED.h5ad", help="A prediction (gr2st predict)."
    ),
    out: Path = typer.Option(..., "--out", metavar="STORE.zarr", help="Output store."),
    image: Path | None = typer.Option(
        None, "--image", dir_okay=False, metavar="SLIDE", help="The slide (default: recorded)."
    ),
    overwrite: bool = overwrite_option(),
) -> None:
    from gr2st.export import write_spatialdata

    prepare_output(out, overwrite=overwrite, folder=True)
    path = write_spatialdata(prediction, out, image=image, overwrite=overwrite)
    typer.echo(f"SpatialData store: {path}")


def report_command(
    source: Path = typer.Argument(
        ..., metavar="DIR_OR_PRED", help="Benchmark folder, or a prediction .h5ad."
    ),
    out: Path | None = typer.Option(
        None, "--out", metavar="FILE.html", help="For a prediction: the page's file."
    ),
) -> None:
    path = write_prediction_report(source, out) if source.is_file() else _benchmark(source, out)
    typer.echo(f"Report: {path} ({path.stat().st_size / 1e6:.1f} MB)")


def _benchmark(folder: Path, out: Path | None) -> Path:
    from gr2st.benchmark.html import write_report

    if out is not None:
        raise GR2STConfigError("--out: a benchmark's report is always DIR/report.html")
    return write_report(folder)


def write_prediction_report(prediction: Path, out: Path | None = None) -> Path:
    """The report of a prediction ``.h5ad`` (default ``<stem>.html`` next to it)."""
    import anndata

    from gr2st._utils.versions import version_report
    from gr2st.errors import GR2STDataError
    from gr2st.io._validate import one_line
    from gr2st.report import prediction_page, write_page

    if prediction.suffix != ".h5ad":
        raise GR2STConfigError(f"{prediction}: expected a benchmark folder or a .h5ad prediction")
    try:
        adata = anndata.read_h5ad(prediction)
    except (OSError, KeyError, ValueError) as exc:
        raise GR2STDataError(f"{prediction}: cannot read as .h5ad ({one_line(exc)})") from None
    from gr2st.export import read_prediction

    read_prediction(adata)  # one-line errors for a file without spots
    target = out or prediction.with_suffix(".html")
    command = adata.uns.get("gr2st", {}).get("command", sys.argv)
    page = prediction_page(adata, command=list(command), versions=version_report())
    return write_page(page, target)


def register(app: typer.Typer) -> None:
    """Add ``export`` (qupath, spatialdata) and ``report`` to ``app``."""
    app.add_typer(export_app, name="export")
    app.command("report", help=_REPORT_HELP)(report_command)


def check_extra_outputs(
    *, qupath: Path | None, spatialdata_out: Path | None, overwrite: bool
) -> None:
    """Refuse ``gr2st predict``'s extra outputs before the prediction runs (one line)."""
    if qupath is not None:
        if qupath.suffix.lower() not in (".geojson", ".json"):
            raise GR2STConfigError(f"--qupath {qupath}: expected a .geojson file name")
        prepare_output(qupath, overwrite=overwrite)
    if spatialdata_out is not None:
        prepare_output(spatialdata_out, overwrite=overwrite, folder=True)


def write_extra_outputs(
    prediction: AnnData,
    out: Path,
    *,
    qupath: Path | None,
    spatialdata_out: Path | None,
    report: bool,
    overwrite: bool,
) -> list[str]:
    """Write ``gr2st predict``'s extra outputs of ``prediction``; lines to print."""
    from gr2st._utils.versions import version_report
    from gr2st.export import write_qupath, write_spatialdata
    from gr2st.report import prediction_page, write_page

    lines = []
    if qupath is not None:
        lines.append(f"QuPath detections: {write_qupath(prediction, qupath)}")
    if spatialdata_out is not None:
        store = write_spatialdata(prediction, spatialdata_out, overwrite=overwrite)
        lines.append(f"SpatialData store: {store}")
    if report:
        page = prediction_page(prediction, command=sys.argv, versions=version_report())
        lines.append(f"Report: {write_page(page, out.with_suffix('.html'))}")
    return lines
