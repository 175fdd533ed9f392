"""Readers for legacy Spatial Transcriptomics (ST) tables and the HER2ST data set.

HER2ST (Andersson et al., Nat Commun 2021; GitHub ``almaan/her2st``) and cSCC
(GSE144240) share the legacy ST format: a spots × genes count table whose rows are
named ``"<x>x<y>"`` after the array position, and an ST spot-detector table with
columns ``x y new_x new_y pixel_x pixel_y selected``. :func:`read_st` reads one such
pair; :func:`read_her2st` resolves the HER2ST folder layout around it.

Spot geometry
-------------
The ST array has 100 µm spots on a square grid with a 200 µm centre-to-centre pitch
(Ståhl et al., Science 2016; the HER2ST paper uses the same slides). The image
resolution is measured per section from the spot table: the median pixel distance
between array neighbours divided by 200 µm. This gives ≈0.69 µm/px (≈290 px pitch,
≈145 px spot diameter) for HER2ST patients B-H, matching the data's README, and
≈0.92 µm/px for patient A, whose images were scanned at another scale, which is why a
single constant would be wrong.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
from anndata import AnnData

from gr2st._constants import (
    ARRAY_X,
    ARRAY_Y,
    IMAGE_PATH,
    MICRONS_PER_PIXEL,
    PATHOLOGY,
    PATIENT,
    SECTION,
    SOURCE_FORMAT,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNS,
)
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.io._validate import (
    examples,
    numeric_columns,
    pixels_per_grid_unit,
    read_count_table,
    read_table,
    spot_ids,
    unique_ids,
    validate_section,
)

log = logging.getLogger(__name__)

#: Centre-to-centre distance of neighbouring ST spots (µm).
ST_PITCH_UM: Final = 200.0
#: Diameter of an ST spot (µm).
ST_SPOT_DIAMETER_UM: Final = 100.0

_SPOT_COLUMNS = ("x", "y", "pixel_x", "pixel_y")
_LABEL_COLUMNS = ("x", "y", "label")
_HER2ST_NAME = re.compile(r"^[A-Z]\d+$")


def read_st(
    counts: str | Path,
    spots: str | Path,
    *,
    section: str,
    patient: str,
    image: str | Path | None = None,
    source_format: str = "st",
    pitch_um: float = ST_PITCH_UM,
    spot_diameter_um: float = ST_SPOT_DIAMETER_UM,
) -> AnnData:
    """Read one legacy-ST section from its count table and spot table.

    Count rows and spot-table rows are joined on ``f"{round(x)}x{round(y)}"`` (inner
    join, in count-table order); spots present in only one of the two files are
    dropped (logged at INFO level).

    Parameters
    ----------
    counts
        Spots × genes count table (tab-separated, optionally gzipped); first column =
        spot id ``"<x>x<y>"``, header = gene names.
    spots
        Spot table with at least the columns ``x y pixel_x pixel_y``.
    section, patient
        Names stored in ``obs``.
    image
        Full-resolution H&E image the pixel positions refer to, or ``None``.
    source_format
        Stored as ``uns["gr2st"]["source_format"]``.
    pitch_um, spot_diameter_um
        Physical spot pitch and diameter of the array, used to turn the measured pixel
        pitch into µm/px and the spot diameter in pixels.

    Returns
    -------
    AnnData
        One section in gr2st's shape: ``obs[array_x/array_y]`` = the spot table's
        ``x, y`` (as given), ``obsm["spatial"]`` = ``pixel_x, pixel_y``.

    Raises
    ------
    GR2STDataError
        Missing or unreadable file, missing column, duplicate or unmatched spot ids,
        non-numeric counts, or a spot centre outside the image.
    GR2STConfigError
        A non-positive ``pitch_um`` or ``spot_diameter_um``.

    Examples
    --------
    >>> import tempfile
    >>> from gr2st.datasets import synthetic, write_her2st_layout
    >>> sec = synthetic(n_sections=1, n_genes=5, grid=(3, 3))[0]
    >>> sec.obs["section"] = "A1"
    >>> root = write_her2st_layout([sec], tempfile.mkdtemp())
    >>> adata = read_st(root / "ST-cnts/A1.tsv.gz", root / "ST-spotfiles/A1_selection.tsv",
    ...                 section="A1", patient="A")
    >>> adata.shape
    (9, 5)
    """
    if not (pitch_um > 0 and spot_diameter_um > 0):
        raise GR2STConfigError(
            f"pitch_um and spot_diameter_um must be positive; got {pitch_um} and {spot_diameter_um}"
        )
    counts, spots = Path(counts), Path(spots)
    matrix, ids, genes = read_count_table(counts)
    table = read_table(spots, what="spot table", columns=_SPOT_COLUMNS)
    numeric_columns(table, _SPOT_COLUMNS, path=spots, what="spot table")
    table.index = spot_ids(table["x"], table["y"])
    unique_ids(table.index, path=spots, what="spot table")

    keep = ids.isin(table.index)
    if not keep.any():
        raise GR2STDataError(
            f"{counts}: none of its {len(ids)} spot ids matches the spot table {spots} "
            f"(count ids e.g. {examples(ids, n=2)}; spot-table ids e.g. "
            f"{examples(table.index, n=2)})"
        )
    if not keep.all() or len(table) > keep.sum():
        log.info(
            "%s: %d count rows lack a spot-table row, %d spot-table rows lack counts; dropped",
            section,
            int((~keep).sum()),
            len(table) - int(keep.sum()),
        )
    ids = ids[keep]
    joined = table.loc[ids]
    obs = pd.DataFrame(
        {
            SECTION: section,
            PATIENT: patient,
            ARRAY_X: joined["x"].to_numpy(dtype=float),
            ARRAY_Y: joined["y"].to_numpy(dtype=float),
        },
        index=ids,
    )
    adata = AnnData(X=matrix[np.flatnonzero(keep)], obs=obs, var=pd.DataFrame(index=genes))
    adata.obsm[SPATIAL] = joined[["pixel_x", "pixel_y"]].to_numpy(dtype=float)

    px_per_pitch = pixels_per_grid_unit(
        table[["x", "y"]].to_numpy(dtype=float),
        table[["pixel_x", "pixel_y"]].to_numpy(dtype=float),
        source=spots,
    )
    microns_per_pixel = pitch_um / px_per_pitch
    adata.uns[UNS] = {
        IMAGE_PATH: None if image is None else str(image),
        SPOT_DIAMETER_PX: spot_diameter_um / microns_per_pixel,
        MICRONS_PER_PIXEL: microns_per_pixel,
        SOURCE_FORMAT: source_format,
    }
    validate_section(adata, source=counts)
    return adata


def read_her2st(root: str | Path, section: str) -> AnnData:
    """Read one HER2ST section from the public ``almaan/her2st`` folder layout.

    Files used under ``root``: ``ST-cnts/<S>.tsv.gz`` (or ``.tsv``),
    ``ST-spotfiles/<S>_selection.tsv``, the single ``ST-imgs/<P>/<S>/*.jpg`` if present
    (else ``uns["gr2st"]["image_path"]`` is ``None``) and
    ``ST-pat/lbl/<S>_labeled_coordinates.tsv`` if present.

    Pathologist labels, where the label file exists, go to ``obs["pathology"]``
    (categorical): the label file's ``x, y`` are the spot table's refined ``new_x,
    new_y`` and are joined on the same rounded ``"<x>x<y>"`` id; label rows without
    coordinates are ignored, and spots without a label are ``NaN``. Sections without a
    label file have no ``pathology`` column.

    Parameters
    ----------
    root
        The HER2ST folder (holding ``ST-cnts/``, ``ST-spotfiles/``, …).
    section
        Section name, e.g. ``"B4"``; the patient is its letter.

    Returns
    -------
    AnnData
        See :func:`read_st`; ``source_format`` is ``"her2st"``.

    Examples
    --------
    >>> import tempfile
    >>> from gr2st.datasets import synthetic, write_her2st_layout
    >>> sec = synthetic(n_sections=1, n_genes=5, grid=(3, 3))[0]
    >>> sec.obs["section"] = "B4"
    >>> root = write_her2st_layout([sec], tempfile.mkdtemp())
    >>> adata = read_her2st(root, "B4")
    >>> adata.obs["patient"].iloc[0], adata.n_obs
    ('B', 9)
    """
    root = Path(root)
    if not _HER2ST_NAME.match(section):
        raise GR2STDataError(
            f"{root}: {section!r} is not a HER2ST section name (a letter and a number, e.g. B4)"
        )
    counts = root / "ST-cnts" / f"{section}.tsv.gz"
    if not counts.is_file() and counts.with_suffix("").is_file():
        counts = counts.with_suffix("")
    if not counts.is_file():
        known = _her2st_sections(root)
        raise GR2STDataError(
            f"{counts}: count table not found; sections under {root}: "
            f"{examples(known, n=8) if known else 'none (is this the HER2ST folder?)'}"
        )
    adata = read_st(
        counts,
        root / "ST-spotfiles" / f"{section}_selection.tsv",
        section=section,
        patient=section[0],
        image=_her2st_image(root, section),
        source_format="her2st",
    )
    labels = root / "ST-pat" / "lbl" / f"{section}_labeled_coordinates.tsv"
    if labels.is_file():
        adata.obs[PATHOLOGY] = _read_labels(labels).reindex(adata.obs_names).astype("category")
    return adata


def list_her2st(root: str | Path) -> pd.DataFrame:
    """List the HER2ST sections under ``root`` without reading their count tables.

    Returns
    -------
    pandas.DataFrame
        Columns ``section``, ``patient``, ``has_image``, ``has_labels``; one row per
        count table in ``ST-cnts/``, sorted by section name.

    Examples
    --------
    >>> import tempfile
    >>> from gr2st.datasets import synthetic, write_her2st_layout
    >>> secs = synthetic(n_sections=2, n_genes=5, grid=(3, 3))
    >>> for s, name in zip(secs, ["C2", "B4"]):
    ...     s.obs["section"] = name
    >>> list_her2st(write_her2st_layout(secs, tempfile.mkdtemp()))["section"].tolist()
    ['B4', 'C2']
    """
    root = Path(root)
    if not (root / "ST-cnts").is_dir():
        raise GR2STDataError(f"{root}: no ST-cnts/ folder; expected the HER2ST folder layout")
    names = _her2st_sections(root)
    return pd.DataFrame(
        {
            "section": names,
            "patient": [n[0] for n in names],
            "has_image": [_her2st_image(root, n) is not None for n in names],
            "has_labels": [
                (root / "ST-pat" / "lbl" / f"{n}_labeled_coordinates.tsv").is_file() for n in names
            ],
        }
    )


def _her2st_sections(root: Path) -> list[str]:
    stems = {p.name.split(".")[0] for p in (root / "ST-cnts").glob("*.tsv*")}
    return sorted(s for s in stems if _HER2ST_NAME.match(s))


def _her2st_image(root: Path, section: str) -> Path | None:
    images = sorted((root / "ST-imgs" / section[0] / section).glob("*.jpg"))
    if len(images) > 1:
        raise GR2STDataError(
            f"{images[0].parent}: {len(images)} images ({examples(p.name for p in images)}); "
            "expected one per section"
        )
    return images[0] if images else None


def _read_labels(path: Path) -> pd.Series:
    table = read_table(path, what="label table", columns=_LABEL_COLUMNS)
    xy = table[["x", "y"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    located = table[np.isfinite(xy).all(axis=1)]
    ids = spot_ids(located["x"], located["y"])
    unique_ids(ids, path=path, what="label table")
    return pd.Series(located["label"].astype(str).to_numpy(), index=ids, name=PATHOLOGY)
