"""Training-loop plumbing shared by the learned methods: inputs and resume.

- :func:`section_arrays` reads and checks what a method needs from a prepared section.
- :func:`fingerprint` hashes the settings and the training arrays, so that a checkpoint
  is only resumed by the run that wrote it.
- :class:`EpochCheckpoint` writes model, optimiser, epoch, loss history and every RNG
  state atomically after each epoch, so an interrupted fit resumes to the
  same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from torch import nn

from gr2st._constants import ARRAY_X, ARRAY_Y, COUNTS_LAYER
from gr2st._utils.files import atomic_path, sha256_bytes
from gr2st.benchmark.data import section_name
from gr2st.errors import GR2STDataError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SectionArrays:
    """Dense arrays of one prepared section.

    Attributes
    ----------
    name
        Section name (``obs[SECTION]``).
    expression
        ``(n_spots, n_genes)`` float32 log-normalised expression (``X``).
    positions
        ``(n_spots, 2)`` int64 array coordinates (``array_x``, ``array_y`` rounded).
    features
        ``(n_spots, d)`` float32 frozen image features (``d = 0`` when not requested).
    counts
        ``(n_spots, n_genes)`` float32 raw panel counts (no columns when not requested).
    """

    name: str
    expression: np.ndarray
    positions: np.ndarray
    features: np.ndarray
    counts: np.ndarray


def section_arrays(
    adata: AnnData, *, feature_key: str | None = None, with_counts: bool = False
) -> SectionArrays:
    """Read and check the arrays of a prepared section.

    Parameters
    ----------
    adata
        A prepared section (log-normalised ``X``, grid coordinates in ``obs``).
    feature_key
        ``obsm`` key of the image features to read; ``None`` reads none.
    with_counts
        Also read raw panel counts from ``layers[COUNTS_LAYER]``.

    Raises
    ------
    GR2STDataError
        A required field is missing, has the wrong shape, or holds non-finite or
        negative coordinates.

    Examples
    --------
    >>> import pandas as pd
    >>> obs = pd.DataFrame({"section": "A1", "array_x": [1.0, 2.2], "array_y": [3.0, 4.6]})
    >>> ad = AnnData(np.ones((2, 3), np.float32), obs=obs)
    >>> section_arrays(ad).positions.tolist()
    [[1, 3], [2, 5]]
    """
    name = section_name(adata)
    where = f"section {name!r}"
    expression = _dense(adata.X, f"{where}: X")
    features = np.zeros((adata.n_obs, 0), np.float32)
    if feature_key is not None:
        if feature_key not in adata.obsm:
            raise GR2STDataError(
                f"{where}: obsm[{feature_key!r}] is missing; compute the features first"
            )
        features = _dense(adata.obsm[feature_key], f"{where}: obsm[{feature_key!r}]")
    counts = np.zeros((adata.n_obs, 0), np.float32)
    if with_counts:
        if COUNTS_LAYER not in adata.layers:
            raise GR2STDataError(f"{where}: layers[{COUNTS_LAYER!r}] (raw panel counts) is missing")
        counts = _dense(adata.layers[COUNTS_LAYER], f"{where}: layers[{COUNTS_LAYER!r}]")
        if counts.shape != expression.shape or (counts < 0).any():
            raise GR2STDataError(
                f"{where}: layers[{COUNTS_LAYER!r}] must be non-negative counts shaped like X"
            )
    return SectionArrays(
        name=name,
        expression=expression,
        positions=spot_positions(adata),
        features=features,
        counts=counts,
    )


def spot_positions(adata: AnnData) -> np.ndarray:
    """Array coordinates ``(array_x, array_y)`` rounded to ``int64``, shape ``(n, 2)``.

    Examples
    --------
    >>> import pandas as pd
    >>> obs = pd.DataFrame({"section": "A1", "array_x": [1.0, 2.2], "array_y": [3.0, 4.6]})
    >>> spot_positions(AnnData(np.ones((2, 1), np.float32), obs=obs)).tolist()
    [[1, 3], [2, 5]]
    """
    where = f"section {section_name(adata)!r}"
    for column in (ARRAY_X, ARRAY_Y):
        if column not in adata.obs:
            raise GR2STDataError(f"{where}: obs[{column!r}] is missing (grid coordinates)")
    coords = adata.obs[[ARRAY_X, ARRAY_Y]].to_numpy(dtype=np.float64)
    if not np.isfinite(coords).all() or (coords < -0.5).any():
        raise GR2STDataError(f"{where}: obs[{ARRAY_X!r}/{ARRAY_Y!r}] must be finite and >= 0")
    return np.rint(coords).astype(np.int64)


def _dense(matrix: Any, where: str) -> np.ndarray:
    array = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    if array.ndim != 2:
        raise GR2STDataError(f"{where}: expected a 2-D matrix, got shape {array.shape}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise GR2STDataError(f"{where}: contains NaN or infinite values")
    return array


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


class EpochCheckpoint:
    """Atomic per-epoch training state in ``workdir / name``.

    The state holds the model and optimiser state dicts, the number of completed
    epochs, the per-epoch loss history, the torch (CPU and CUDA) RNG states, the NumPy
    generator that orders batches (when the loop has one), and the run's fingerprint.
    A checkpoint written by another run (different fingerprint) is ignored and later
    overwritten.

    Parameters
    ----------
    workdir
        Folder of the checkpoint; ``None`` disables checkpointing.
    run_fingerprint
        Output of :func:`fingerprint` for this run.
    name
        File name inside ``workdir``.

    Examples
    --------
    >>> import tempfile
    >>> model = nn.Linear(2, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> ckpt = EpochCheckpoint(Path(tempfile.mkdtemp()), run_fingerprint="abc")
    >>> rng = np.random.default_rng(0)
    >>> ckpt.save(model=model, optimizer=opt, epoch=1, history=[0.5], rng=rng)
    >>> ckpt.load(model=model, optimizer=opt, rng=rng)
    (1, [0.5])
    """

    def __init__(
        self, workdir: Path | None, *, run_fingerprint: str, name: str = "checkpoint.pt"
    ) -> None:
        self.path = None if workdir is None else Path(workdir) / name
        self.run_fingerprint = run_fingerprint

    def save(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        epoch: int,
        history: Sequence[float],
        rng: np.random.Generator | None = None,
    ) -> None:
        """Write the state after ``epoch`` completed epochs (no-op without a workdir)."""
        if self.path is None:
            return
        state = {
            "fingerprint": self.run_fingerprint,
            "epoch": epoch,
            "history": list(history),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_rng": None if rng is None else rng.bit_generator.state,
        }
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def load(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        rng: np.random.Generator | None = None,
    ) -> tuple[int, list[float]]:
        """Restore a matching checkpoint in place; return ``(completed_epochs, history)``.

        Returns ``(0, [])`` and leaves everything untouched when there is no checkpoint
        or it belongs to another run.
        """
        if self.path is None or not self.path.is_file():
            return 0, []
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") != self.run_fingerprint:
            log.warning("ignoring %s: written by a run with other data or settings", self.path)
            return 0, []
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if rng is not None and state["numpy_rng"] is not None:
            rng.bit_generator.state = state["numpy_rng"]
        return int(state["epoch"]), [float(v) for v in state["history"]]
