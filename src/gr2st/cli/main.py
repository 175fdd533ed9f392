"""Entry point of the ``gr2st`` command; each pipeline step adds its subcommands."""

from __future__ import annotations

import sys

import typer

from gr2st.cli import benchmark, data, features, image, predict
from gr2st.errors import GR2STError

app = typer.Typer(
    name="gr2st",
    help="Predict spatial gene expression from H&E histology.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from gr2st._utils.versions import version_report

        typer.echo(version_report())
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Show the versions of gr2st, Python, torch (CUDA) and key libraries, and exit.",
    ),
) -> None:
    """Predict spatial gene expression from H&E histology."""


for _module in (data, image, features, benchmark, predict):
    _module.register(app)


def main() -> None:
    """Run the CLI, turning gr2st's own errors into one-line messages."""
    try:
        app(standalone_mode=False)
    except GR2STError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except Exception as err:  # click usage errors
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise
