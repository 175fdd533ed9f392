"""Reader for the legacy Spatial Transcriptomics (ST) layout (Ståhl et al., Science 2016).

A legacy-ST section is three files:

- a **count table**, tab-separated (optionally gzipped), spots × genes, rows named
  ``"<x>x<y>"`` after the spot's array position (the original ST pipeline writes
  fractional positions such as ``"16.92x9.015"``; they are rounded); a genes × spots
  table (spot ids in the header) is read transposed;
- a **spot-detector table** (the ST Spot Detector's alignment output), tab-separated,
  with at least the columns ``x y pixel_x pixel_y`` (array position and spot centre
  in full-resolution pixels), usually also ``new_x new_y`` (refined array position)
  and ``selected`` (1 = under the tissue; rows with 0 are dropped);
- the **H&E image** the pixel positions refer to.

HER2ST (:mod:`gr2st.io.her2st`) and cSCC (:mod:`gr2st.io.cscc`) are this layout with
their own file names.

Spot geometry
-------------
Inferred per section from the spot table by :func:`gr2st.io.geometry.infer_geometry`:
the array positions tell the platform (a square grid is the 1k array of Ståhl et al.,
Science 2016: 100 µm spots 200 µm apart, as in HER2ST; a checkerboard whose
neighbours are diagonal steps is the 2k array: 100 µm per array step), and the image
resolution is the median pixel distance between array neighbours divided into the
pitch. This gives ≈0.69 µm/px (≈290 px pitch, ≈145 px spot diameter) for HER2ST
patients B-H, matching the data's README, and ≈0.92 µm/px for patient A, whose images
were scanned at another scale, which is why a single constant would be wrong.
``platform``, ``pitch_um`` and ``mpp`` override and are cross-checked.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from gr2st._constants import (
    ARRAY_X,
    ARRAY_Y,
    GEOMETRY,
    IMAGE_PATH,
    MICRONS_PER_PIXEL,
    PATIENT,
    SECTION,
    SOURCE_FORMAT,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNS,
)
from gr2st.errors import GR2STDataError
from gr2st.io._validate import (
    MIN_SPOT_OVERLAP,
    examples,
    numeric_columns,
    read_count_table,
    read_table,
    report_dropped,
    spot_ids,
    unique_ids,
    validate_section,
)
from gr2st.io.geometry import infer_geometry

log = logging.getLogger(__name__)

_SPOT_COLUMNS = ("x", "y", "pixel_x", "pixel_y")
_ST_ID = re.compile(r"^(-?\d+(?:\.\d*)?)x(-?\d+(?:\.\d*)?)$")


def read_st_legacy(
    counts: str | Path,
    spots: str | Path,
    *,
    image: str | Path | None = None,
    section: str | None = None,
    patient: str | None = None,
    source_format: str = "st",
    platform: str | None = None,
    pitch_um: float | None = None,
    spot_diameter_um: float | None = None,
    mpp: float | None = None,
    duplicate_genes: str = "error",
) -> AnnData:
    """Read one legacy-ST section from its count table, spot-detector table and image.

    Count rows and spot-table rows are joined on ``f"{round(x)}x{round(y)}"`` (inner
    join, in count-table order); spots present in only one of the two files, and
    spot-table rows with ``selected == 0``, are dropped (logged at INFO level).

    Parameters
    ----------
    counts
        Count table (see the module docstring).
    spots
        Spot-detector table with at least the columns ``x y pixel_x pixel_y``.
    image
        Full-resolution H&E image the pixel positions refer to, or ``None``.
    section
        Section name; default: the count table's file name up to its first dot.
    patient
        Patient id; default: the section name.
    source_format
        Stored as ``uns["gr2st"]["source_format"]``.
    platform
        ``"st-1k"`` or ``"st-2k"`` (see :mod:`gr2st.io.geometry`); default: inferred from
        the array positions.
    pitch_um, spot_diameter_um
        Microns per array step and spot diameter; default: the platform's.
    mpp
        The image's microns per pixel; default: measured from the pitch (a given one
        must agree with it within 25 %).
    duplicate_genes
        ``"error"`` (a gene named in two columns is an error) or ``"sum"`` (add them up);
        see :func:`~gr2st.io._validate.read_count_table`.

    Returns
    -------
    AnnData
        One section in gr2st's shape: ``obs_names`` = the rounded ``"<x>x<y>"`` ids,
        ``obs[array_x/array_y]`` = the spot table's ``x, y`` (as given),
        ``obsm["spatial"]`` = ``pixel_x, pixel_y``.

    Raises
    ------
    GR2STDataError
        Missing or unreadable file, missing column, duplicate or unmatched spot ids,
        duplicate gene names, a count table and spot table that share less than half
        of either's spots, non-numeric counts, a spot centre outside the image, or a
        geometry whose sources disagree.
    GR2STConfigError
        A non-positive ``pitch_um``, ``spot_diameter_um`` or ``mpp``; an unknown
        ``platform``.

    Examples
    --------
    >>> import tempfile
    >>> from gr2st.datasets import synthetic, write_her2st_layout
    >>> sec = synthetic(n_sections=1, n_genes=5, grid=(3, 3))[0]
    >>> sec.obs["section"] = "A1"
    >>> root = write_her2st_layout([sec], tempfile.mkdtemp())
    >>> adata = read_st_legacy(root / "ST-cnts/A1.tsv.gz", root / "ST-spotfiles/A1_selection.tsv")
    >>> adata.shape, adata.obs["section"].iloc[0]
    ((9, 5), 'A1')
    """
    counts, spots = Path(counts), Path(spots)
    section = section or counts.name.split(".")[0]
    matrix, ids, genes = _read_st_counts(counts, duplicate_genes=duplicate_genes)
    table = read_table(spots, what="spot table", columns=_SPOT_COLUMNS)
    numeric_columns(table, _SPOT_COLUMNS, path=spots, what="spot table")
    # Count rows of spots off tissue (selected = 0) still belong to the spot table.
    listed = ids.isin(spot_ids(table["x"], table["y"], source=spots))
    off_tissue = pd.Index([])
    if "selected" in table.columns:
        selected = pd.to_numeric(table["selected"], errors="coerce").to_numpy(dtype=float) != 0
        if not selected.all():
            log.info(
                "%s: %d spot-table rows not selected; dropped", section, int((~selected).sum())
            )
            off_tissue = spot_ids(table["x"][~selected], table["y"][~selected], source=spots)
            table = table[selected]
    table.index = spot_ids(table["x"], table["y"], source=spots)
    unique_ids(table.index, path=spots, what="spot table")

    keep = ids.isin(table.index)
    if not keep.any():
        raise GR2STDataError(
            f"{counts}: none of its {len(ids)} spot ids matches the spot table {spots} "
            f"(count ids e.g. {examples(ids, n=2)}; spot-table ids e.g. "
            f"{examples(table.index, n=2)})"
        )
    swapped = int(ids.isin(spot_ids(table["y"], table["x"], source=spots)).sum())
    hint = (
        f"its x and y columns look swapped ({swapped} ids match that way)"
        if swapped > keep.sum()
        else ""
    )
    _check_overlap(counts, spots, listed=listed, keep=keep, n_table=len(table), hint=hint)
    if len(table) > keep.sum():
        log.info("%s: %d spot-table rows lack counts", section, len(table) - int(keep.sum()))
    if not keep.all():
        unselected = int((~keep & ids.isin(off_tissue)).sum())
        unmatched = int((~keep).sum()) - unselected
        reasons = [
            f"{unselected} are off tissue (selected = 0 in {spots.name})" if unselected else "",
            f"{unmatched} have no row in {spots.name}" if unmatched else "",
        ]
        report_dropped(
            section,
            int((~keep).sum()),
            len(ids),
            why=" and ".join(r for r in reasons if r),
            hint=hint,
        )
    ids = ids[keep]
    joined = table.loc[ids]
    obs = pd.DataFrame(
        {
            SECTION: section,
            PATIENT: patient or section,
            ARRAY_X: joined["x"].to_numpy(dtype=float),
            ARRAY_Y: joined["y"].to_numpy(dtype=float),
        },
        index=ids,
    )
    adata = AnnData(X=matrix[np.flatnonzero(keep)], obs=obs, var=pd.DataFrame(index=genes))
    adata.obsm[SPATIAL] = joined[["pixel_x", "pixel_y"]].to_numpy(dtype=float)

    geometry = infer_geometry(
        table[["x", "y"]].to_numpy(dtype=float),
        table[["pixel_x", "pixel_y"]].to_numpy(dtype=float),
        platform=platform,
        pitch_um=pitch_um,
        mpp=mpp,
        spot_diameter_um=spot_diameter_um,
        source=spots,
    )
    adata.uns[UNS] = {
        IMAGE_PATH: None if image is None else str(image),
        SPOT_DIAMETER_PX: geometry.spot_diameter_px,
        MICRONS_PER_PIXEL: geometry.microns_per_pixel,
        SOURCE_FORMAT: source_format,
        GEOMETRY: geometry.to_dict(),
    }
    validate_section(adata, source=counts)
    return adata


def _check_overlap(
    counts: Path, spots: Path, *, listed: np.ndarray, keep: np.ndarray, n_table: int, hint: str
) -> None:
    """Refuse a count table and a spot table that share too few spots to be one section.

    ``listed``: count rows with any spot-table row; ``keep``: with a selected one.
    """
    n_keep = int(keep.sum())
    shares = {
        f"{int(listed.sum())} of its {len(listed)} spots have a row in {spots.name}": (
            listed.mean() if len(listed) else 0.0
        ),
        f"{n_keep} of the {n_table} spots selected in {spots.name} have counts": (
            n_keep / n_table if n_table else 1.0
        ),
    }
    low = [text for text, share in shares.items() if share < MIN_SPOT_OVERLAP]
    if low:
        raise GR2STDataError(
            f"{counts}: {'; '.join(low)} (at least {100 * MIN_SPOT_OVERLAP:.0f} % expected); "
            + (hint or "check that the count table and the spot table are of the same section")
        )


def _read_st_counts(
    path: Path, *, duplicate_genes: str = "error"
) -> tuple[sp.csr_matrix, pd.Index, pd.Index]:
    """Counts with rounded ``"<x>x<y>"`` spot ids; a genes × spots table is transposed."""
    matrix, rows, columns = read_count_table(path, duplicate_genes=duplicate_genes)
    if not _all_st_ids(rows) and _all_st_ids(columns):
        matrix, rows, columns = sp.csr_matrix(matrix.T), columns, rows
    if not _all_st_ids(rows):
        bad = [r for r in rows if not _ST_ID.match(r)]
        raise GR2STDataError(
            f"{path}: {len(bad)} row name(s) are not ST spot ids '<x>x<y>' "
            f"(e.g. {examples(bad, n=3)}); expected one row (or column) per spot"
        )
    parts = rows.str.extract(_ST_ID).to_numpy(dtype=float)
    ids = spot_ids(parts[:, 0], parts[:, 1], source=path)
    unique_ids(ids, path=path, what="count table (after rounding the spot ids)")
    return matrix, ids, columns


def _all_st_ids(names: pd.Index) -> bool:
    return bool(len(names)) and all(_ST_ID.match(str(n)) for n in names)
