"""Checks and table readers shared by every reader in :mod:`gr2st.io`.

Every problem found here is raised as a one-line :class:`~gr2st.errors.GR2STDataError`
that starts with the offending file (or the ``source`` the caller names) and says what
was expected, so that a user can fix the input without reading a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import tifffile
from anndata import AnnData
from PIL import Image, UnidentifiedImageError
from scipy.spatial import cKDTree

from gr2st._constants import (
    ARRAY_X,
    ARRAY_Y,
    HAS_COUNTS,
    IMAGE_PATH,
    MICRONS_PER_PIXEL,
    PATIENT,
    SECTION,
    SOURCE_FORMAT,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNS,
)
from gr2st.errors import GR2STConfigError, GR2STDataError

_TIFF_SUFFIXES = frozenset({".tif", ".tiff", ".btf"})
_N_EXAMPLES = 5
#: Above this fraction of a section's spots dropped, a reader warns (else it logs INFO).
DROPPED_WARN_FRACTION = 0.2
#: What ``duplicate_genes`` of :func:`read_count_table` may be.
DUPLICATE_GENES = ("error", "sum")
#: A counts table and a spot table sharing less than this share of either is an error.
MIN_SPOT_OVERLAP = 0.5
#: Spot centres closer than this (px) are the same position.
_SAME_POSITION_PX = 0.5
#: Array (grid) coordinates beyond this are not grid positions.
_MAX_GRID = 1e7

log = logging.getLogger(__name__)


def examples(items: Iterable[Any], n: int = _N_EXAMPLES) -> str:
    """Format the first ``n`` items for an error message: ``'a', 'b', … (12 in all)``.

    Examples
    --------
    >>> examples(["a", "b", "c"], n=2)
    "'a', 'b', … (3 in all)"
    """
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:n])
    return shown if len(items) <= n else f"{shown}, … ({len(items)} in all)"


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (for wrapping it in a GR2STDataError)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def require_file(path: str | Path, *, what: str) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path`, or raise if it is not a readable file.

    Examples
    --------
    >>> require_file("/nonexistent.tsv", what="count table")
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STDataError: /nonexistent.tsv: count table not found
    """
    path = Path(path)
    if not path.is_file():
        raise GR2STDataError(f"{path}: {what} not found")
    return path


def read_text_file(path: str | Path, *, what: str, expected: str) -> str:
    """The content of a UTF-8 text file, or a one-line error for a binary or unreadable one.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "genes.txt"
    >>> _ = p.write_bytes(b"\\x89PNG\\r\\n\\x1a\\n\\x00\\x00")
    >>> read_text_file(p, what="gene panel", expected="one gene per line")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STDataError: ...: gene panel is not a text file (byte 0 is not UTF-8); ...
    """
    path = require_file(path, what=what)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GR2STDataError(f"{path}: cannot read {what} ({one_line(exc)})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GR2STDataError(
            f"{path}: {what} is not a text file (byte {exc.start} is not UTF-8); "
            f"expected {expected}"
        ) from None
    if "\x00" in text:
        raise GR2STDataError(
            f"{path}: {what} is not a text file (it holds NUL bytes); expected {expected}"
        )
    return text


def read_table(
    path: str | Path,
    *,
    what: str,
    columns: Sequence[str],
    sep: str = "\t",
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read a delimited text table (optionally gzipped) that must hold ``columns``.

    Parameters
    ----------
    path
        The file; ``.gz`` is decompressed on the fly.
    what
        What the file is, for error messages (e.g. ``"spot table"``).
    columns
        Columns that must be present (others are kept).
    sep
        Field separator.
    names
        Column names of a file without a header line (``None``: the first line is
        the header).

    Returns
    -------
    pandas.DataFrame
        The table with a default integer index.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.tsv"
    >>> _ = p.write_text("x\\ty\\n1\\t2\\n")
    >>> read_table(p, what="spot table", columns=["x", "y"]).shape
    (1, 2)
    """
    path = require_file(path, what=what)
    try:
        table = pd.read_csv(path, sep=sep, header=None if names else "infer", names=names)
    except pd.errors.EmptyDataError:
        raise GR2STDataError(f"{path}: {what} is empty") from None
    except (ValueError, OSError, EOFError) as exc:
        raise GR2STDataError(f"{path}: cannot parse {what} ({one_line(exc)})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise GR2STDataError(
            f"{path}: {what} lacks column(s) {examples(missing)}; "
            f"found {examples(map(str, table.columns))}"
        )
    return table


def numeric_columns(
    table: pd.DataFrame, columns: Sequence[str], *, path: str | Path, what: str
) -> None:
    """Raise unless every value of ``columns`` is a finite number."""
    for col in columns:
        values = pd.to_numeric(table[col], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=float))
        if bad.any():
            raise GR2STDataError(
                f"{path}: {what} column {col!r} has {int(bad.sum())} missing or non-numeric "
                f"value(s) (e.g. {examples(table[col][bad].astype(str), n=3)})"
            )


def spot_ids(x: Any, y: Any, *, source: str | Path = "spot table") -> pd.Index:
    """Spot ids ``"<x>x<y>"`` from (possibly fractional) array coordinates, rounded.

    Rounding is half-to-even (:func:`numpy.rint`), like the published HER2ST/cSCC loaders.

    Raises
    ------
    GR2STDataError
        A coordinate that is not finite or too large to be an array position.

    Examples
    --------
    >>> list(spot_ids([9.02, 8.0], [12.994, 13.0]))
    ['9x13', '8x13']
    >>> spot_ids([1.0, 1e20], [2.0, 3.0], source="s.tsv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STDataError: s.tsv: 1 array coordinate(s) are not grid positions (e.g. ...
    """
    xf, yf = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    bad = ~(np.isfinite(xf) & np.isfinite(yf) & (np.abs(xf) < _MAX_GRID) & (np.abs(yf) < _MAX_GRID))
    if bad.any():
        shown = [f"({a:g}, {b:g})" for a, b in zip(xf[bad][:3], yf[bad][:3], strict=True)]
        raise GR2STDataError(
            f"{source}: {int(bad.sum())} array coordinate(s) are not grid positions (e.g. "
            f"{', '.join(shown)}); expected finite values below {_MAX_GRID:g}"
        )
    xi = np.rint(xf).astype(np.int64)
    yi = np.rint(yf).astype(np.int64)
    return pd.Index([f"{a}x{b}" for a, b in zip(xi, yi, strict=True)])


def unique_ids(ids: pd.Index, *, path: Path | str, what: str) -> None:
    """Raise if ``ids`` has duplicates."""
    dup = ids[ids.duplicated()]
    if len(dup):
        raise GR2STDataError(
            f"{path}: {len(dup)} duplicate spot id(s) in the {what} (e.g. "
            f"{examples(dup.unique())}); expected one row per spot"
        )


def as_counts(matrix: Any, *, source: str | Path) -> sp.csr_matrix:
    """Check that ``matrix`` holds raw counts and return it as a CSR integer matrix.

    Counts must be finite, non-negative and integral (floats such as ``3.0`` are
    accepted). The result is ``int32`` (``int64`` when a count does not fit).

    Examples
    --------
    >>> as_counts(np.array([[0, 2.0], [1, 0]]), source="x").toarray()
    array([[0, 2],
           [1, 0]], dtype=int32)
    """
    sparse = sp.issparse(matrix)
    values = sp.csr_matrix(matrix).data if sparse else np.asarray(matrix)
    if values.dtype.kind not in "iuf":
        raise GR2STDataError(f"{source}: counts have dtype {values.dtype}; expected numbers")
    if values.dtype.kind == "f":
        problems = {
            "non-finite": ~np.isfinite(values),
            "negative": values < 0,
            "non-integer": np.isfinite(values) & (values != np.round(values)),
        }
    else:
        problems = {"negative": values < 0}
    for name, mask in problems.items():
        if mask.any():
            raise GR2STDataError(
                f"{source}: {int(mask.sum())} {name} count(s) (e.g. "
                f"{examples(values[mask][:3].tolist(), n=3)}); expected raw integer counts"
            )
    top = values.max() if values.size else 0
    dtype = np.int32 if top <= np.iinfo(np.int32).max else np.int64
    if not sparse:
        # Cast before building the CSR matrix: half the memory traffic of int64/float64.
        return sp.csr_matrix(values.astype(dtype, copy=False))
    return sp.csr_matrix(matrix, dtype=dtype)


def read_count_table(
    path: str | Path, *, duplicate_genes: str = "error"
) -> tuple[sp.csr_matrix, pd.Index, pd.Index]:
    """Read a spots × genes count table (tab-separated, optionally gzipped).

    The first column holds the spot ids, the header the gene names. A gene named twice
    in the header is an error naming it (renaming one copy ``"<gene>.1"``, as pandas
    does, would leave a wrong column under the gene's name), unless
    ``duplicate_genes="sum"``: then the columns of each name are added up (a warning
    says which).

    Returns
    -------
    counts, spots, genes
        CSR integer counts, spot ids and gene names.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.tsv"
    >>> _ = p.write_text("\\tA\\tB\\n1x1\\t0\\t3\\n")
    >>> X, spots, genes = read_count_table(p)
    >>> X.toarray().tolist(), list(spots), list(genes)
    ([[0, 3]], ['1x1'], ['A', 'B'])
    """
    if duplicate_genes not in DUPLICATE_GENES:
        raise GR2STConfigError(
            f"--duplicate-genes: expected {' or '.join(DUPLICATE_GENES)}, got {duplicate_genes!r}"
        )
    path = require_file(path, what="count table")
    try:
        # low_memory=False parses the ~15k columns in one pass: about twice as fast here.
        table = pd.read_csv(path, sep="\t", index_col=0, engine="c", low_memory=False)
        header = pd.read_csv(path, sep="\t", header=None, nrows=1, dtype=str).iloc[0, 1:]
    except pd.errors.EmptyDataError:
        raise GR2STDataError(f"{path}: count table is empty") from None
    except (ValueError, OSError, EOFError) as exc:
        raise GR2STDataError(f"{path}: cannot parse count table ({one_line(exc)})") from None
    if table.shape[0] == 0 or table.shape[1] == 0:
        raise GR2STDataError(
            f"{path}: count table has {table.shape[0]} spots × {table.shape[1]} genes; "
            "expected at least one of each"
        )
    kinds = np.array([dt.kind for dt in table.dtypes])
    bad = np.flatnonzero(~np.isin(kinds, ["i", "u", "f"]))
    if bad.size:
        col = table.columns[bad[0]]
        values = table.iloc[:, bad[0]]
        first = values[pd.to_numeric(values, errors="coerce").isna()].iloc[0]
        raise GR2STDataError(
            f"{path}: {bad.size} gene column(s) hold non-numeric values (e.g. {first!r} "
            f"in column {col!r}); expected integer counts"
        )
    spots = table.index.astype(str)
    unique_ids(spots, path=path, what="count table")
    # The raw header: pandas renames a repeated name "<gene>.1".
    names = pd.Index(header.fillna("").astype(str).str.strip().to_numpy())
    if len(names) == table.shape[1] and names.duplicated().any():
        table.columns = names
        table = _duplicate_genes(table, path=path, mode=duplicate_genes)
    counts = as_counts(table.to_numpy(), source=path)
    return counts, spots, table.columns.astype(str)


def _duplicate_genes(table: pd.DataFrame, *, path: Path, mode: str) -> pd.DataFrame:
    """Refuse, or sum, the columns of gene names given more than once."""
    repeated = table.columns[table.columns.duplicated()].unique()
    times = table.columns.value_counts()
    shown = examples(f"{g} ×{times[g]}" for g in repeated)
    if mode != "sum":
        raise GR2STDataError(
            f"{path}: {len(repeated)} gene name(s) appear in more than one column "
            f"({shown}); expected one column per gene, or pass --duplicate-genes sum to "
            "add the columns of each name up"
        )
    log.warning(
        "%s: summed the counts of %d gene name(s) given in more than one column (%s) "
        "(--duplicate-genes sum)",
        path,
        len(repeated),
        shown,
    )
    return table.T.groupby(level=0, sort=False).sum().T


def pixels_per_grid_unit(grid_xy: np.ndarray, pixel_xy: np.ndarray, *, source: str | Path) -> float:
    """Median image distance (px) per grid unit between each spot and its nearest neighbour.

    ``grid_xy`` must be in a unit of known physical length (e.g. the ST array pitch),
    so that ``pitch_um / pixels_per_grid_unit`` is the image resolution in µm/px.
    The median over spots makes the estimate robust to a few misplaced spots.

    Examples
    --------
    >>> grid = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=float)
    >>> round(pixels_per_grid_unit(grid, 290 * grid + 7, source="x"), 3)
    290.0
    """
    grid_xy = np.asarray(grid_xy, dtype=float)
    pixel_xy = np.asarray(pixel_xy, dtype=float)
    keep = np.unique(grid_xy, axis=0, return_index=True)[1]
    if keep.size < 2:
        raise GR2STDataError(
            f"{source}: need spots at two or more array positions to measure the spot pitch"
        )
    grid_xy, pixel_xy = grid_xy[keep], pixel_xy[keep]
    dist, idx = cKDTree(grid_xy).query(grid_xy, k=2)
    px = np.linalg.norm(pixel_xy - pixel_xy[idx[:, 1]], axis=1)
    ratio = float(np.median(px / dist[:, 1]))
    if not np.isfinite(ratio) or ratio <= 0:
        raise GR2STDataError(
            f"{source}: spot pixel positions do not follow the array grid "
            f"(pixels per grid unit = {ratio}); check the pixel columns"
        )
    return ratio


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image, read from its header only.

    TIFF-family files (``.tif``, ``.tiff``, ``.btf``, BigTIFF included) are read with
    tifffile (first page = full resolution); other formats with Pillow, whose
    decompression-bomb limit is lifted for this call because whole-slide H&E images
    routinely exceed it.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.png"
    >>> Image.new("RGB", (30, 20)).save(p)
    >>> image_size(p)
    (30, 20)
    """
    path = require_file(path, what="image")
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                return int(page.imagewidth), int(page.imagelength)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path) as img:
                return img.size
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    except (UnidentifiedImageError, tifffile.TiffFileError, OSError, ValueError) as exc:
        raise GR2STDataError(f"{path}: cannot read image ({one_line(exc)})") from None


def check_inside_image(image: str | Path, spatial: np.ndarray, spots: pd.Index) -> None:
    """Raise if a spot centre (``spatial`` = x, y in pixels) lies outside ``image``."""
    width, height = image_size(image)
    x, y = spatial[:, 0], spatial[:, 1]
    outside = (x < 0) | (y < 0) | (x >= width) | (y >= height)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise GR2STDataError(
            f"{image}: {int(outside.sum())} spot centre(s) lie outside the {width}x{height} "
            f"image (e.g. {spots[first]!r} at ({x[first]:.1f}, {y[first]:.1f})); "
            "check that the spot table belongs to this image"
        )


def validate_section(adata: AnnData, *, source: str | Path) -> None:
    """Check that ``adata`` is one section in gr2st's AnnData shape.

    Checks, in order: required ``obs``/``obsm``/``uns`` fields (all missing ones are
    listed in one message), at least one spot and one gene, unique spot ids and gene
    names, raw integer counts in ``X`` (unless ``uns["gr2st"]["has_counts"]`` is False:
    a section read for prediction only), a single section and patient, finite grid
    coordinates and spot centres, no two spots at one pixel position, a positive spot
    diameter and resolution, and, when
    the section has an image, that the image is readable and every spot centre lies
    inside it.

    Parameters
    ----------
    adata
        The section.
    source
        Where it came from (a file path), used as the prefix of error messages.

    Raises
    ------
    GR2STDataError
        On the first problem found.

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> validate_section(synthetic(n_sections=1, n_genes=5, grid=(3, 3))[0], source="demo")
    """
    missing = [f"obs[{k!r}]" for k in (SECTION, PATIENT, ARRAY_X, ARRAY_Y) if k not in adata.obs]
    if SPATIAL not in adata.obsm:
        missing.append(f"obsm[{SPATIAL!r}]")
    meta = adata.uns.get(UNS)
    if isinstance(meta, Mapping):
        fields = (IMAGE_PATH, SPOT_DIAMETER_PX, MICRONS_PER_PIXEL, SOURCE_FORMAT)
        missing += [f"uns[{UNS!r}][{k!r}]" for k in fields if k not in meta]
    else:
        missing.append(f"uns[{UNS!r}]")
    if missing or not isinstance(meta, Mapping):
        raise GR2STDataError(f"{source}: missing {', '.join(missing)}")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise GR2STDataError(
            f"{source}: section has {adata.n_obs} spots × {adata.n_vars} genes; "
            "expected at least one of each"
        )
    unique_ids(adata.obs_names, path=source, what="section")
    dup_genes = adata.var_names[adata.var_names.duplicated()]
    if len(dup_genes):
        raise GR2STDataError(
            f"{source}: duplicate gene name(s) {examples(dup_genes.unique())}; "
            "expected unique var_names"
        )
    if meta.get(HAS_COUNTS, True):
        as_counts(adata.X, source=source)
    for key in (SECTION, PATIENT):
        values = adata.obs[key].astype(str).unique()
        if len(values) != 1:
            raise GR2STDataError(
                f"{source}: obs[{key!r}] has {len(values)} values ({examples(values)}); "
                "expected one section per AnnData"
            )
    numeric_columns(adata.obs, [ARRAY_X, ARRAY_Y], path=source, what="obs")
    spatial = np.asarray(adata.obsm[SPATIAL], dtype=float)
    if spatial.shape != (adata.n_obs, 2):
        raise GR2STDataError(
            f"{source}: obsm[{SPATIAL!r}] must be (x, y) pixel positions of shape "
            f"({adata.n_obs}, 2); got shape {spatial.shape}"
        )
    finite = np.isfinite(spatial).all(axis=1)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise GR2STDataError(
            f"{source}: obsm[{SPATIAL!r}] has {int((~finite).sum())} spot(s) without finite "
            f"pixel positions (e.g. spot {adata.obs_names[first]!r} at "
            f"({spatial[first, 0]:g}, {spatial[first, 1]:g})); expected finite x, y"
        )
    same = cKDTree(spatial).query_pairs(_SAME_POSITION_PX, output_type="ndarray")
    if len(same):
        a, b = (adata.obs_names[i] for i in same[0])
        raise GR2STDataError(
            f"{source}: {len(same)} pair(s) of spots share one pixel position (e.g. {a!r} "
            f"and {b!r} at ({spatial[same[0, 0], 0]:g}, {spatial[same[0, 0], 1]:g})); "
            "expected one position per spot: check the spot table's pixel columns"
        )
    diameter = meta[SPOT_DIAMETER_PX]
    mpp = meta[MICRONS_PER_PIXEL]
    if not _positive(diameter) or not (mpp is None or _positive(mpp)):
        raise GR2STDataError(
            f"{source}: uns[{UNS!r}] needs a positive {SPOT_DIAMETER_PX} and a positive "
            f"or None {MICRONS_PER_PIXEL}; got {_show(diameter)} and {_show(mpp)}"
        )
    if meta[IMAGE_PATH] is not None:
        check_inside_image(str(meta[IMAGE_PATH]), spatial, adata.obs_names)


def _show(value: object) -> str:
    """A value for a message: numbers as ``nan``/``1.5``, not ``np.float64(nan)``."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return f"{float(value):g}"
    return repr(value)


def report_dropped(section: str, dropped: int, total: int, *, why: str, hint: str = "") -> None:
    """Log how many of a section's spots a reader dropped: a warning when more than
    :data:`DROPPED_WARN_FRACTION` of them (a sign of a wrong file or swapped columns),
    else INFO.

    Examples
    --------
    >>> report_dropped("B4", 0, 10, why="off the image")
    """
    if dropped <= 0:
        return
    share = dropped / max(total, 1)
    level = logging.WARNING if share > DROPPED_WARN_FRACTION else logging.INFO
    log.log(
        level,
        "%s: %d of %d spots (%.0f %%) dropped: %s%s",
        section,
        dropped,
        total,
        100 * share,
        why,
        f"; {hint}" if hint else "",
    )


def _positive(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return False
    return bool(np.isfinite(value) and value > 0)
