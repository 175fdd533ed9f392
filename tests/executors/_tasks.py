"""Task functions and a test method that Ray workers import by name.

Ray ships a task's function by its import path, so these live in a module of their own;
the Ray tests put this folder on the workers' ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from anndata import AnnData

from gr2st.errors import GR2STDataError
from gr2st.methods import METHODS
from gr2st.methods.knn import KNNBaseline


def total(*, values: np.ndarray, offset: float) -> float:
    """Reads a shared array: fails if the worker may write to it (it must not)."""
    return float(values.sum()) + offset


def fail_once(*, marker: Path) -> int:
    """Raises an OSError on the first run (leaving ``marker``), then returns the pid."""
    if not marker.exists():
        marker.write_text("failed once")
        raise OSError("transient: stale file handle")
    return os.getpid()


def bad_input(*, name: str) -> None:
    raise GR2STDataError(f"{name}: not a section")


class Sleepy(KNNBaseline):
    """The knn baseline, holding its fit while ``<out>-control/hold-<fold>`` exists.

    Each fit appends its pid to ``<out>-control/pids-<fold>`` and, when held, writes
    ``<out>-control/held-<fold>`` so that a test knows which process to kill. The folder
    sits beside ``--out``: a benchmark refuses an ``--out`` that holds other files.
    """

    name = "test-sleepy"

    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        assert workdir is not None
        out = workdir.parents[2]
        control = out.with_name(f"{out.name}-control")
        fold = workdir.name
        with open(control / f"pids-{fold}", "a") as fh:
            fh.write(f"{os.getpid()}\n")
        deadline = time.monotonic() + 120
        while (control / f"hold-{fold}").exists() and time.monotonic() < deadline:
            (control / f"held-{fold}").write_text(str(os.getpid()))
            time.sleep(0.05)
        super().fit(train, workdir=workdir)


METHODS.register("test-sleepy")(Sleepy)


def die_once(*, marker: Path) -> int:
    """Kills its own process on the first run (leaving ``marker``), then returns the pid."""
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return os.getpid()
