"""A content-keyed disk cache of per-section arrays (features, nuclear types).

One ``.npz`` file per (section, key). The key is a JSON-able mapping of everything the
arrays depend on (image content hash, spot coordinates, patch size, stain setting, encoder
name and weights hash, …); its sha256 names the file. Inside, next to the arrays, a
``__meta__`` record stores the full key, each array's shape, dtype and sha256, so that a
truncated, damaged or mismatched file is detected on load, reported with a warning and
recomputed: a cache file is never used unless it is exactly what was asked for.
Files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gr2st._utils.files import atomic_path
from gr2st.errors import GR2STConfigError

log = logging.getLogger(__name__)

_META = "__meta__"
_FORMAT = 1
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _canonical(key: Mapping[str, Any]) -> str:
    try:
        return json.dumps(key, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise GR2STConfigError(f"cache key must be JSON-serialisable: {err}") from err


def _contiguous(array: np.ndarray) -> np.ndarray:
    # Unlike np.ascontiguousarray, keeps 0-d arrays 0-d.
    array = np.asarray(array)
    return array if array.flags.c_contiguous else array.copy(order="C")


def _checksum(array: np.ndarray) -> str:
    return hashlib.sha256(_contiguous(array).tobytes()).hexdigest()


class ArrayCache:
    """Store and fetch named arrays per (section, kind, key).

    Parameters
    ----------
    root
        Cache folder (created on first write).

    Examples
    --------
    >>> import tempfile
    >>> cache = ArrayCache(tempfile.mkdtemp())
    >>> key = {"image": "abc", "size_px": 224}
    >>> _ = cache.save("B4", "features", key, {"x": np.ones((3, 2), np.float32)})
    >>> cache.load("B4", "features", key)["x"].shape
    (3, 2)
    >>> cache.load("B4", "features", {**key, "size_px": 112}) is None
    True
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()

    def path(self, section: str, kind: str, key: Mapping[str, Any]) -> Path:
        """File that holds (or would hold) the arrays of ``section`` under ``key``."""
        digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:20]
        return self.root / (_SAFE.sub("_", section) or "_") / f"{_SAFE.sub('_', kind)}-{digest}.npz"

    def load(
        self,
        section: str,
        kind: str,
        key: Mapping[str, Any],
        *,
        n_rows: int | None = None,
    ) -> dict[str, np.ndarray] | None:
        """Return the cached arrays, or None when absent or not trustworthy.

        Parameters
        ----------
        n_rows
            When given, every array must have this many rows (one per spot).
        """
        path = self.path(section, kind, key)
        if not path.is_file():
            return None
        try:
            arrays = self._read(path, key, n_rows)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            log.warning("ignoring cache file %s (%s); recomputing", path, err)
            return None
        return arrays

    def save(
        self,
        section: str,
        kind: str,
        key: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
    ) -> Path:
        """Write ``arrays`` atomically and return the file path."""
        if not arrays or _META in arrays:
            raise GR2STConfigError(f"cache: need at least one array, none named {_META!r}")
        arrays = {name: _contiguous(a) for name, a in arrays.items()}
        for name, a in arrays.items():
            if a.dtype.hasobject:
                raise GR2STConfigError(f"cache: array {name!r} has dtype object; not cacheable")
        meta = {
            "format": _FORMAT,
            "section": section,
            "kind": kind,
            "key": json.loads(_canonical(key)),
            "arrays": {
                name: {"shape": list(a.shape), "dtype": a.dtype.str, "sha256": _checksum(a)}
                for name, a in arrays.items()
            },
        }
        blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
        path = self.path(section, kind, key)
        payload = {_META: blob, **arrays}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, allow_pickle=False, **payload)
        return path

    @staticmethod
    def _read(path: Path, key: Mapping[str, Any], n_rows: int | None) -> dict[str, np.ndarray]:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(npz[_META].tobytes().decode())
            if meta.get("format") != _FORMAT:
                raise ValueError(f"cache format {meta.get('format')!r}, expected {_FORMAT}")
            if meta.get("key") != json.loads(_canonical(key)):
                raise ValueError("stored key differs from the requested one")
            arrays: dict[str, np.ndarray] = {}
            for name, info in meta["arrays"].items():
                a = npz[name]
                if list(a.shape) != info["shape"] or a.dtype.str != info["dtype"]:
                    raise ValueError(
                        f"array {name!r} is {a.dtype.str}{a.shape}, header says otherwise"
                    )
                if n_rows is not None and (a.ndim == 0 or a.shape[0] != n_rows):
                    raise ValueError(f"array {name!r} has shape {a.shape}, expected {n_rows} rows")
                if _checksum(a) != info["sha256"]:
                    raise ValueError(f"array {name!r} checksum mismatch")
                arrays[name] = a
        return arrays
