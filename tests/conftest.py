"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ../shared/data/her2st relative to the repository root.
_DEFAULT_HER2ST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "her2st"


@pytest.fixture(scope="session")
def her2st_root() -> Path:
    """The real HER2ST folder (``$GR2ST_DATA`` or ``../shared/data/her2st``), else skip.

    ``GR2ST_DATA`` may name the HER2ST folder itself or a data folder holding ``her2st/``.
    """
    env = os.environ.get("GR2ST_DATA")
    root = Path(env) if env else _DEFAULT_HER2ST
    if not (root / "ST-cnts").is_dir() and (root / "her2st" / "ST-cnts").is_dir():
        root = root / "her2st"
    if not (root / "ST-cnts").is_dir():
        pytest.skip(f"HER2ST data not found at {root}; set GR2ST_DATA")
    return root
