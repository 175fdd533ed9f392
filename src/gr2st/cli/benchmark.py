"""Subcommands of the benchmark step (filled in by its owner)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this step's subcommands to ``app``."""
