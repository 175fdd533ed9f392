"""Atomic training checkpoints that resume to bit-identical weights.

A checkpoint holds the network and optimizer state, the running weight average (when
the loop keeps one), the completed epochs, the loss history, every RNG the loop draws
from (torch CPU and CUDA, the NumPy generator ordering batches) and the run's
fingerprint. A checkpoint written by another run (other settings or data) is ignored
and later overwritten.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gr2st._utils.files import atomic_path, sha256_bytes

log = logging.getLogger(__name__)

#: Bumped whenever the checkpoint's content changes, so older files are never resumed.
_FORMAT = 2


def fingerprint(settings: Mapping[str, Any], arrays: Sequence[np.ndarray]) -> str:
    """Hash of JSON-serialisable ``settings`` and the arrays a fit depends on.

    Examples
    --------
    >>> fingerprint({"epochs": 3}, [np.zeros(3)]) == fingerprint({"epochs": 3}, [np.zeros(3)])
    True
    >>> fingerprint({"epochs": 3}, [np.zeros(3)]) == fingerprint({"epochs": 4}, [np.zeros(3)])
    False
    """
    parts = [json.dumps(dict(settings), sort_keys=True, default=str).encode()]
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        parts.append(f"{contiguous.dtype.str}{contiguous.shape}".encode())
        parts.append(contiguous.tobytes())
    return sha256_bytes(*parts)


@dataclass
class Restored:
    """What :meth:`Checkpoint.load` found: completed epochs and the loss history."""

    epoch: int
    history: list[float]


class Checkpoint:
    """The training state of one run in ``workdir / name``.

    Parameters
    ----------
    workdir
        Folder of the checkpoint; ``None`` disables checkpointing.
    run_fingerprint
        :func:`fingerprint` of this run's settings and data.
    name
        File name inside ``workdir``.

    Examples
    --------
    >>> import tempfile
    >>> net = nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> ckpt = Checkpoint(Path(tempfile.mkdtemp()), run_fingerprint="abc")
    >>> rng = np.random.default_rng(0)
    >>> ckpt.save(net=net, optimizer=opt, epoch=1, history=[0.5], rng=rng)
    >>> ckpt.load(net=net, optimizer=opt, rng=rng)
    Restored(epoch=1, history=[0.5])
    """

    def __init__(
        self, workdir: Path | None, *, run_fingerprint: str, name: str = "checkpoint.pt"
    ) -> None:
        self.path = None if workdir is None else Path(workdir) / name
        self.run_fingerprint = f"{_FORMAT}:{run_fingerprint}"

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def save(
        self,
        *,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        epoch: int,
        history: Sequence[float],
        rng: np.random.Generator,
        average: nn.Module | None = None,
    ) -> None:
        """Write the state after ``epoch`` completed epochs (no-op without a workdir)."""
        if self.path is None:
            return
        state = {
            "fingerprint": self.run_fingerprint,
            "epoch": epoch,
            "history": list(history),
            "model": net.state_dict(),
            "average": None if average is None else average.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_rng": rng.bit_generator.state,
        }
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def load(
        self,
        *,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        rng: np.random.Generator,
        average: nn.Module | None = None,
    ) -> Restored:
        """Restore a matching checkpoint in place.

        Returns ``Restored(0, [])`` and leaves everything untouched when there is no
        checkpoint or it belongs to another run.
        """
        if self.path is None or not self.path.is_file():
            return Restored(0, [])
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file is recomputed, never trusted
            log.warning("ignoring unreadable checkpoint %s (%s)", self.path, exc)
            return Restored(0, [])
        if not isinstance(state, dict) or state.get("fingerprint") != self.run_fingerprint:
            log.warning("ignoring %s: written by a run with other data or settings", self.path)
            return Restored(0, [])
        net.load_state_dict(state["model"])
        if average is not None and state["average"] is not None:
            average.load_state_dict(state["average"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        rng.bit_generator.state = state["numpy_rng"]
        return Restored(int(state["epoch"]), [float(v) for v in state["history"]])
