"""On-disk record of finished folds, so an interrupted benchmark resumes where it stopped.

Each (method, fold) pair is saved as ``folds/<method>/<fold>.npz`` (predictions and
per-gene Pearson r of every test section) followed by ``folds/<method>/<fold>.json``
(metrics, timing, seed, resolved config and a fingerprint of everything the result
depends on). Both are written atomically and the JSON last, so a fold counts as done
only once both are complete; a fold whose fingerprint no longer matches the request
(other data, genes, seed, profile or overrides) is recomputed.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gr2st._utils.files import atomic_path


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays to Python and non-finite floats to ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> to_jsonable({"a": np.float32(0.5), "b": [float("nan"), np.int64(3)]})
    {'a': 0.5, 'b': [None, 3]}
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as strict JSON (NaN → null), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_jsonable(payload), indent=2, allow_nan=False) + "\n")


@dataclass
class FoldRecord:
    """Everything a finished (method, fold) pair produced.

    Attributes
    ----------
    meta
        JSON part: ``method``, ``fold``, ``train``, ``test``, ``seed``, ``seconds``,
        ``fingerprint``, ``config`` and ``sections`` (scalar metrics per test section).
    predictions
        Test section → predicted expression ``(spots, genes)``, float32.
    pcc
        Test section → per-gene Pearson r ``(genes,)``.
    """

    meta: dict[str, Any]
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    pcc: dict[str, np.ndarray] = field(default_factory=dict)


class FoldStore:
    """Finished folds of one benchmark output folder.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> store = FoldStore(tempfile.mkdtemp())
    >>> rec = FoldRecord({"fingerprint": "f", "test": ["S0"]},
    ...                  {"S0": np.ones((2, 3), np.float32)}, {"S0": np.zeros(3)})
    >>> store.save("knn", "S0", rec)
    >>> store.load("knn", "S0", fingerprint="f").predictions["S0"].shape
    (2, 3)
    >>> store.load("knn", "S0", fingerprint="other") is None
    True
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.root = Path(out_dir) / "folds"

    def paths(self, method: str, fold: str) -> tuple[Path, Path]:
        base = self.root / method / fold
        return base.with_suffix(".npz"), base.with_suffix(".json")

    def save(self, method: str, fold: str, record: FoldRecord) -> None:
        npz_path, json_path = self.paths(method, fold)
        arrays: dict[str, np.ndarray] = {}
        for i, section in enumerate(record.meta["test"]):
            arrays[f"pred_{i}"] = np.asarray(record.predictions[section], dtype=np.float32)
            arrays[f"pcc_{i}"] = np.asarray(record.pcc[section], dtype=np.float64)
        # A file object stops numpy from appending ".npz" to the temporary name.
        with atomic_path(npz_path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)
        write_json(json_path, record.meta)

    def load(self, method: str, fold: str, *, fingerprint: str) -> FoldRecord | None:
        """The saved fold, or ``None`` when absent, incomplete, unreadable or stale."""
        npz_path, json_path = self.paths(method, fold)
        if not (npz_path.exists() and json_path.exists()):
            return None
        try:
            meta = json.loads(json_path.read_text())
            if meta.get("fingerprint") != fingerprint:
                return None
            with np.load(npz_path) as data:
                predictions = {s: data[f"pred_{i}"] for i, s in enumerate(meta["test"])}
                pcc = {s: data[f"pcc_{i}"] for i, s in enumerate(meta["test"])}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            # A damaged record is recomputed rather than trusted.
            return None
        return FoldRecord(meta=meta, predictions=predictions, pcc=pcc)
