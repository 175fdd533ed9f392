"""Import nuclei typed by HoVer-Net (run elsewhere, e.g. on a GPU) as a nuclei source.

Accepted layouts (``path`` is what the user points at):

- A folder of **per-spot files** named by spot id (``obs_names``), directly inside it or
  in HoVer-Net's tile-mode sub-folders ``json/`` and ``qupath/``:

  - ``<spot>.json``: HoVer-Net's JSON, ``{"mag": ..., "nuc": {id: {"bbox", "centroid",
    "contour", "type_prob", "type"}}}``; ``type`` is HoVer-Net's PanNuke integer.
  - ``<spot>.tsv`` / ``<spot>.csv``: one row per nucleus with its type *name* in a
    ``name`` or ``class`` column (any case), as written by HoVer-Net's QuPath export
    (``x y class name color``) or exported from QuPath (``Class``).

  When a spot has both, the JSON wins (it carries contours). A spot without a file is a
  *missing record*: type 0 with zero counts, as in the reference, and reported.
- A single **whole-slide / tile JSON** (same format) whose coordinates are
  full-resolution pixels of the section image: each nucleus goes to every spot whose
  patch square contains its centroid (the square of :func:`gr2st.image.patch_origins`).

HoVer-Net's PanNuke integers differ from our order (``type_info.json`` of HoVer-Net):
0 nolabe, 1 neopla, 2 inflam, 3 connec, 4 necros, 5 no-neo; :data:`HOVERNET_PANNUKE_TYPES`
holds them and :func:`hovernet_type_ids` maps them to ``NUCLEAR_TYPES`` ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.spatial import cKDTree

from gr2st._constants import MICRONS_PER_PIXEL, NUCLEAR_TYPES, SPATIAL, UNS
from gr2st.errors import GR2STDataError
from gr2st.image.nuclei.summary import NucleiTable
from gr2st.image.patches import patch_origins

#: HoVer-Net's PanNuke type names, indexed by its integer ``type`` (type_info.json).
HOVERNET_PANNUKE_TYPES: tuple[str, ...] = (
    "nolabe",
    "neopla",
    "inflam",
    "connec",
    "necros",
    "no-neo",
)

_HOVERNET_TO_ID = np.array([NUCLEAR_TYPES.index(n) for n in HOVERNET_PANNUKE_TYPES])

#: Type names accepted in TSV/CSV files (lower-cased): HoVer-Net's short names and the
#: PanNuke class names.
TYPE_NAME_ALIASES: dict[str, int] = {
    **{name: i for i, name in enumerate(NUCLEAR_TYPES)},
    "no label": NUCLEAR_TYPES.index("nolabe"),
    "dead": NUCLEAR_TYPES.index("necros"),
    "necrosis": NUCLEAR_TYPES.index("necros"),
    "neoplastic": NUCLEAR_TYPES.index("neopla"),
    "inflammatory": NUCLEAR_TYPES.index("inflam"),
    "connective": NUCLEAR_TYPES.index("connec"),
    "epithelial": NUCLEAR_TYPES.index("no-neo"),
    "non-neoplastic epithelial": NUCLEAR_TYPES.index("no-neo"),
}

# Column names (lower-cased) that may hold the type name, in order of preference.
_NAME_COLUMNS = ("name", "class")
_SUBFOLDERS = ("", "json", "qupath")
_SUFFIXES = (".json", ".tsv", ".csv")


def hovernet_type_ids(types: Iterable[Any], *, where: str = "HoVer-Net output") -> np.ndarray:
    """Map HoVer-Net PanNuke integers (0 nolabe, 1 neopla, 2 inflam, 3 connec, 4 necros,
    5 no-neo) to ``NUCLEAR_TYPES`` ids.

    Raises
    ------
    GR2STDataError
        A type is null (HoVer-Net run without a type head) or outside 0..5.

    Examples
    --------
    >>> hovernet_type_ids([0, 1, 2, 3, 4, 5]).tolist()
    [0, 2, 3, 4, 1, 5]
    """
    values = list(types)
    if any(v is None for v in values):
        raise GR2STDataError(
            f"{where}: nuclei without a type; run HoVer-Net with its PanNuke type head (nr_types=6)"
        )
    arr = np.asarray(values)
    if arr.size and (
        not np.issubdtype(arr.dtype, np.integer)
        or arr.min() < 0
        or arr.max() >= len(_HOVERNET_TO_ID)
    ):
        raise GR2STDataError(
            f"{where}: nuclear type must be a HoVer-Net PanNuke integer 0..5, got "
            f"{sorted({str(v) for v in values})[:5]}"
        )
    return _HOVERNET_TO_ID[arr.astype(np.int64)] if arr.size else np.empty(0, np.int64)


def type_ids_from_names(names: Sequence[str], *, where: str) -> np.ndarray:
    """Map type names (``NUCLEAR_TYPES`` or :data:`TYPE_NAME_ALIASES`, any case) to ids.

    Examples
    --------
    >>> type_ids_from_names(["neopla", "Inflammatory", "no-neo"], where="demo").tolist()
    [2, 3, 5]
    """
    lowered = [str(n).strip().lower() for n in names]
    unknown = sorted({n for n in lowered if n not in TYPE_NAME_ALIASES})
    if unknown:
        raise GR2STDataError(
            f"{where}: unknown nuclear type name(s) {unknown[:5]}; expected one of "
            f"{list(NUCLEAR_TYPES)}"
        )
    return np.array([TYPE_NAME_ALIASES[n] for n in lowered], dtype=np.int64)


class HoVerNetImport:
    """Nuclei source reading HoVer-Net results from ``path`` (see the module doc).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "s1.tsv").write_text("x\\ty\\tclass\\tname\\n3\\t4\\t\\tinflam\\n")
    >>> section = AnnData(obs=pd.DataFrame(index=["s1", "s2"]))
    >>> table = HoVerNetImport(d).detect(section, size_px=224, progress=False)
    >>> table.type_id.tolist(), table.missing.tolist()
    ([3], [False, True])
    """

    name = "hovernet"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise GR2STDataError(f"{self.path}: HoVer-Net results not found")

    def detect(self, adata: AnnData, *, size_px: int, progress: bool) -> NucleiTable:
        """Read the nuclei of every spot of ``adata`` (``progress`` is unused: reading
        is I/O-bound and quick)."""
        mpp = adata.uns.get(UNS, {}).get(MICRONS_PER_PIXEL)
        if self.path.is_file():
            return _slide_json(self.path, adata, size_px=size_px, mpp=mpp)
        return _per_spot_files(self.path, [str(s) for s in adata.obs_names], mpp=mpp)


def _per_spot_files(folder: Path, spot_ids: list[str], *, mpp: float | None) -> NucleiTable:
    found: dict[str, Path] = {}
    for sub in _SUBFOLDERS:
        base = folder / sub
        if not base.is_dir():
            continue
        for path in base.iterdir():
            if path.suffix.lower() not in _SUFFIXES or not path.is_file():
                continue
            previous = found.get(path.stem)
            # JSON beats TSV/CSV (contours give morphology); otherwise the first found.
            if previous is None or (
                path.suffix.lower() == ".json" and previous.suffix.lower() != ".json"
            ):
                found[path.stem] = path
    n = len(spot_ids)
    missing = np.array([sid not in found for sid in spot_ids], dtype=bool)
    if n and missing.all():
        raise GR2STDataError(
            f"{folder}: no HoVer-Net file named by a spot id (e.g. '{spot_ids[0]}.json' or "
            f"'{spot_ids[0]}.tsv'), here or in json/ or qupath/"
        )
    tables = []
    for row, sid in enumerate(spot_ids):
        if missing[row]:
            continue
        path = found[sid]
        if path.suffix.lower() == ".json":
            nuclei = _read_json(path)
            type_id = hovernet_type_ids((v.get("type") for v in nuclei.values()), where=str(path))
            area, ecc = _contour_morphology(
                [v.get("contour") for v in nuclei.values()], mpp=mpp, where=path
            )
            tables.append(
                NucleiTable(
                    n_spots=n,
                    spot=np.full(len(type_id), row, dtype=np.int64),
                    type_id=type_id,
                    area_um2=area,
                    eccentricity=ecc,
                )
            )
        else:
            type_id = _read_table(path)
            tables.append(
                NucleiTable(n_spots=n, spot=np.full(len(type_id), row, np.int64), type_id=type_id)
            )
    return replace(NucleiTable.concat(tables, n_spots=n), missing=missing)


def _slide_json(path: Path, adata: AnnData, *, size_px: int, mpp: float | None) -> NucleiTable:
    nuclei = _read_json(path)
    n = adata.n_obs
    centers = np.asarray(adata.obsm[SPATIAL], dtype=np.float64)
    try:
        centroids = np.array([v["centroid"] for v in nuclei.values()], dtype=np.float64).reshape(
            -1, 2
        )
    except (KeyError, TypeError, ValueError):
        raise GR2STDataError(f"{path}: every nucleus needs a 'centroid' [x, y]") from None
    type_id = hovernet_type_ids((v.get("type") for v in nuclei.values()), where=str(path))
    area, ecc = _contour_morphology(
        [v.get("contour") for v in nuclei.values()], mpp=mpp, where=path
    )
    # Pixel j spans [j - 0.5, j + 0.5) in centroid coordinates (moments of pixel centres);
    # the patch of a spot spans origin .. origin + size_px - 1.
    box_centres = patch_origins(centers, size_px) - 0.5 + size_px / 2
    spot_parts: list[np.ndarray] = []
    nucleus_parts: list[np.ndarray] = []
    if len(centroids):
        tree = cKDTree(centroids)
        hits = tree.query_ball_point(box_centres, r=size_px / 2, p=np.inf)
        for row, members in enumerate(hits):
            spot_parts.append(np.full(len(members), row, dtype=np.int64))
            nucleus_parts.append(np.asarray(members, dtype=np.int64))
    spot = np.concatenate([np.empty(0, np.int64), *spot_parts])
    which = np.concatenate([np.empty(0, np.int64), *nucleus_parts])
    return NucleiTable(
        n_spots=n,
        spot=spot,
        type_id=type_id[which],
        area_um2=area[which] if len(area) else area,
        eccentricity=ecc[which] if len(ecc) else ecc,
        missing=np.zeros(n, dtype=bool),
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GR2STDataError(f"{path}: not a readable HoVer-Net JSON ({err})") from None
    nuclei = data.get("nuc") if isinstance(data, dict) else None
    if not isinstance(nuclei, dict) or not all(isinstance(v, dict) for v in nuclei.values()):
        raise GR2STDataError(f"{path}: expected HoVer-Net JSON with a 'nuc' object of nuclei")
    return nuclei


def _read_table(path: Path) -> np.ndarray:
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise GR2STDataError(f"{path}: not a readable nuclei table ({err})") from None
    columns = {str(c).strip().lower(): c for c in frame.columns}
    candidates = [columns[c] for c in _NAME_COLUMNS if c in columns]
    if not candidates:
        raise GR2STDataError(
            f"{path}: needs a 'name' or 'class' column with nuclear type names, has "
            f"{list(frame.columns)}"
        )
    if frame.empty:
        return np.empty(0, np.int64)
    for column in candidates:
        values = frame[column].str.strip()
        if (values != "").all() and values.str.lower().isin(TYPE_NAME_ALIASES.keys()).all():
            return type_ids_from_names(list(values), where=str(path))
    # No column is fully valid: report the unknown names of the most plausible one.
    column = max(
        candidates, key=lambda c: frame[c].str.strip().str.lower().isin(TYPE_NAME_ALIASES).sum()
    )
    return type_ids_from_names(list(frame[column]), where=f"{path} column {column!r}")


def _contour_morphology(
    contours: list[Any], *, mpp: float | None, where: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Area (µm²) and eccentricity of polygon contours ``[[x, y], ...]``, vectorised.

    Empty arrays when any contour is absent (the measures are all-or-nothing). Areas
    are NaN when the pixel size is unknown. Moments follow Green's theorem over the
    polygon (contour through boundary pixel centres, so slightly smaller than the
    pixel count).
    """
    if not contours or any(c is None or len(c) < 3 for c in contours):
        return np.empty(0), np.empty(0)
    try:
        points = [np.asarray(c, dtype=np.float64).reshape(-1, 2) for c in contours]
    except (TypeError, ValueError):
        raise GR2STDataError(f"{where}: a contour is not a list of [x, y] points") from None
    lengths = np.array([len(p) for p in points])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    xy = np.concatenate(points)
    # Moments relative to each polygon's first vertex keep E[x²] - E[x]² well
    # conditioned at whole-slide coordinates (up to ~1e5 px).
    xy -= np.repeat(xy[starts], lengths, axis=0)
    # Next vertex of each vertex, closing every polygon on its own first vertex.
    nxt = np.arange(len(xy)) + 1
    nxt[starts + lengths - 1] = starts
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = xy[nxt, 0], xy[nxt, 1]
    cross = x0 * y1 - x1 * y0

    def per_polygon(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, starts)

    a = per_polygon(cross) / 2
    safe = np.where(a == 0, 1.0, a)
    cx = per_polygon((x0 + x1) * cross) / (6 * safe)
    cy = per_polygon((y0 + y1) * cross) / (6 * safe)
    sxx = per_polygon((x0 * x0 + x0 * x1 + x1 * x1) * cross) / (12 * safe) - cx**2
    syy = per_polygon((y0 * y0 + y0 * y1 + y1 * y1) * cross) / (12 * safe) - cy**2
    sxy = per_polygon((x0 * y1 + 2 * x0 * y0 + 2 * x1 * y1 + x1 * y0) * cross) / (24 * safe)
    sxy -= cx * cy
    half_diff = np.sqrt(((sxx - syy) / 2) ** 2 + sxy**2)
    l1 = (sxx + syy) / 2 + half_diff
    l2 = (sxx + syy) / 2 - half_diff
    ratio = np.divide(l2, l1, out=np.ones_like(l1), where=l1 > 0)
    eccentricity = np.where(a == 0, np.nan, np.sqrt(np.clip(1 - ratio, 0.0, 1.0)))
    area = np.abs(a) * mpp**2 if mpp else np.full(len(a), np.nan)
    return area, eccentricity
