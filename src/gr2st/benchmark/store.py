"""On-disk record of finished folds, so an interrupted benchmark resumes where it stopped.

Each (method, fold) pair is saved as ``folds/<method>/<fold>.npz`` (predictions and
per-gene Pearson r of every test section) followed by ``folds/<method>/<fold>.json``
(metrics, timing, seed, resolved config and a fingerprint of everything the result
depends on). Both are written atomically and the JSON last, so a fold counts as done
only once both are complete; a fold whose fingerprint no longer matches the request
(other data, genes, seed, profile or overrides) is recomputed.

Integrity: the JSON carries the sha256 of its own content and of the ``.npz`` next to
it; a record that fails either check (edited by hand, damaged, or written by a gr2st
without checksums) is reported with a warning and recomputed, never reused. The scores
of a reused record are recomputed from its stored predictions and the truth
(:func:`rescore`), so the report never rests on stored summary numbers.

``request.json`` records what a benchmark folder was asked for (:func:`claim_output`):
the same request resumes, another one needs ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gr2st._utils.files import atomic_path, sha256_file
from gr2st._utils.lock import LOCK_NAME, lock_folder
from gr2st.errors import GR2STConfigError
from gr2st.evaluation.metrics import section_metrics

log = logging.getLogger(__name__)

#: JSON field of a fold record holding its checksums.
CHECKSUMS = "checksums"
#: File of a benchmark folder recording the request it holds.
REQUEST_FILE = "request.json"
#: Report files a new request replaces (the figures of sections match ``spatial_*.png``).
REPORT_FILES = (
    "results.json",
    "per_gene.csv",
    "summary.txt",
    "pcc_boxplots.png",
    "report.html",
)


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
        """Write the record (``.npz`` then ``.json``, atomically) with its checksums."""
        npz_path, json_path = self.paths(method, fold)
        arrays: dict[str, np.ndarray] = {}
        for i, section in enumerate(record.meta["test"]):
            arrays[f"pred_{i}"] = np.asarray(record.predictions[section], dtype=np.float32)
            arrays[f"pcc_{i}"] = np.asarray(record.pcc[section], dtype=np.float64)
        # A file object stops numpy from appending ".npz" to the temporary name.
        with atomic_path(npz_path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, allow_pickle=False, **arrays)
            npz_sha = sha256_file(tmp)
        meta = to_jsonable({k: v for k, v in record.meta.items() if k != CHECKSUMS})
        meta[CHECKSUMS] = {"json_sha256": _meta_digest(meta), "npz_sha256": npz_sha}
        write_json(json_path, meta)
        record.meta = meta

    def load(self, method: str, fold: str, *, fingerprint: str) -> FoldRecord | None:
        """The saved fold, or ``None`` when absent, incomplete, unreadable or stale.

        A record that exists but fails its checksums is reported with a warning.
        """
        npz_path, json_path = self.paths(method, fold)
        if not (npz_path.exists() and json_path.exists()):
            return None
        try:
            meta = json.loads(json_path.read_text())
            problem = _integrity_problem(meta, npz_path)
            if problem is None and meta.get("fingerprint") != fingerprint:
                return None  # another request's fold: recomputed, nothing wrong with it
            if problem is None:
                with np.load(npz_path) as data:
                    predictions = {s: data[f"pred_{i}"] for i, s in enumerate(meta["test"])}
                    pcc = {s: data[f"pcc_{i}"] for i, s in enumerate(meta["test"])}
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
            problem = f"unreadable ({' '.join(str(err).split())})"
        if problem is not None:
            log.warning("%s: %s; recomputing this fold", json_path, problem)
            return None
        return FoldRecord(meta=meta, predictions=predictions, pcc=pcc)


def _meta_digest(meta: Mapping[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != CHECKSUMS}
    text = json.dumps(to_jsonable(body), sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _integrity_problem(meta: Any, npz_path: Path) -> str | None:
    """Why a fold record cannot be trusted, or None."""
    if not isinstance(meta, dict):
        return "not a fold record"
    sums = meta.get(CHECKSUMS)
    if not isinstance(sums, dict):
        return "no checksums (written by an older gr2st)"
    if sums.get("json_sha256") != _meta_digest(meta):
        return "content does not match its checksum (edited or damaged)"
    if sums.get("npz_sha256") != sha256_file(npz_path):
        return f"{npz_path.name} does not match its checksum (edited or damaged)"
    return None


def rescore(
    record: FoldRecord, truths: Mapping[str, np.ndarray], genes: Sequence[str]
) -> FoldRecord | None:
    """``record`` with every score recomputed from its predictions and ``truths``.

    Returns None (recompute the fold) when a prediction does not fit its truth. Scores
    that differ from the stored ones are reported with a warning; the recomputed ones
    are used.

    Examples
    --------
    >>> truth = {"S0": np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 5.0]])}
    >>> rec = FoldRecord({"test": ["S0"], "sections": {}}, {"S0": truth["S0"] * 2}, {})
    >>> rescore(rec, truth, ["A", "B"]).meta["sections"]["S0"]["mean_pcc"]
    1.0
    """
    sections: dict[str, Any] = {}
    pcc: dict[str, np.ndarray] = {}
    for section in record.meta["test"]:
        pred, truth = record.predictions.get(section), truths.get(section)
        if pred is None or truth is None or pred.shape != truth.shape:
            log.warning(
                "fold %s of %s: stored predictions of %s do not fit its expression; "
                "recomputing this fold",
                record.meta.get("fold"),
                record.meta.get("method"),
                section,
            )
            return None
        metrics = section_metrics(pred, truth, genes)
        pcc[section] = metrics.pop("pcc").to_numpy()
        sections[section] = to_jsonable(metrics)
    stored = record.meta.get("sections")
    if stored is not None and to_jsonable(stored) != sections:
        log.warning(
            "fold %s of %s: stored scores differ from those recomputed from its predictions; "
            "using the recomputed ones",
            record.meta.get("fold"),
            record.meta.get("method"),
        )
    return FoldRecord(
        meta={**record.meta, "sections": sections}, predictions=record.predictions, pcc=pcc
    )


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def claim_output(out_dir: str | Path, request: Mapping[str, Any], *, overwrite: bool) -> None:
    """Check that ``out_dir`` may hold a benchmark of ``request``, and record it there.

    An empty or missing folder, or one holding the same request (an interrupted or
    finished run of the same command: it resumes) is fine. A folder holding another
    request, a benchmark whose request is not recorded, or unrelated files is refused
    unless ``overwrite``; then its report files are removed (a half-finished new run
    never shows the old report) while finished folds stay, to be reused when they
    match.

    Raises
    ------
    GR2STConfigError
        The folder holds something else and ``overwrite`` is False.

    Examples
    --------
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> claim_output(out, {"methods": ["knn"]}, overwrite=False)
    >>> claim_output(out, {"methods": ["knn"]}, overwrite=False)
    >>> claim_output(out, {"methods": ["ridge"]}, overwrite=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STConfigError: --out ...: holds a benchmark of another request (methods ...
    """
    out = Path(out_dir)
    wanted = to_jsonable(dict(request))
    record = out / REQUEST_FILE
    previous: Any = None
    if record.is_file():
        try:
            previous = json.loads(record.read_text())
        except (OSError, ValueError):
            previous = None
    if previous == wanted:
        return
    entries = [p for p in out.iterdir() if p.name != LOCK_NAME] if out.is_dir() else []
    if entries and not overwrite:
        hint = "pass --overwrite to replace its report (finished folds that still match are reused)"
        if isinstance(previous, dict):
            changed = [
                f"{key} {_short(previous.get(key))} → {_short(wanted.get(key))}"
                for key in sorted(set(previous) | set(wanted))
                if previous.get(key) != wanted.get(key)
            ]
            raise GR2STConfigError(
                f"--out {out}: holds a benchmark of another request ({'; '.join(changed)}); "
                f"{hint}, or choose another --out"
            )
        if (out / "results.json").exists() or (out / "folds").is_dir():
            raise GR2STConfigError(
                f"--out {out}: holds a benchmark whose request is not recorded (an older "
                f"gr2st or a damaged {REQUEST_FILE}); {hint}"
            )
        raise GR2STConfigError(
            f"--out {out}: is not empty and holds no gr2st benchmark; choose another --out "
            "or pass --overwrite to write into it"
        )
    for name in REPORT_FILES:
        (out / name).unlink(missing_ok=True)
    for figure in out.glob("spatial_*.png") if out.is_dir() else ():
        figure.unlink()
    write_json(record, wanted)


@contextmanager
def claimed_output(
    out_dir: str | Path,
    request: Mapping[str, Any],
    *,
    overwrite: bool,
    wait: float | None = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Hold the lock of ``out_dir`` and claim it for ``request`` (:func:`claim_output`)
    for the duration of the ``with`` block.

    A run that fails before writing anything else leaves neither its request record
    nor the folder behind.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "bench"
    >>> with claimed_output(out, {"methods": ["knn"]}, overwrite=False):
    ...     (out / REQUEST_FILE).exists()
    True
    """
    out = Path(out_dir)
    with lock_folder(out, what=f"--out {out}", wait=wait, on_wait=on_wait):
        fresh = not (out / REQUEST_FILE).exists()
        claim_output(out, request, overwrite=overwrite)
        try:
            yield out
        except BaseException:
            if fresh and set(os.listdir(out)) <= {REQUEST_FILE, LOCK_NAME}:
                (out / REQUEST_FILE).unlink(missing_ok=True)
            raise
