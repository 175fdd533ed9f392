"""Reader for the HER2ST data set (Andersson et al., Nat Commun 2021; ``almaan/her2st``).

HER2ST is the legacy-ST layout (see :mod:`gr2st.io.st`, which also gives the spot
geometry) with its own folder and file names; :func:`read_her2st` resolves them and
adds the pathologist labels.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from gr2st._constants import PATHOLOGY
from gr2st.errors import GR2STDataError
from gr2st.io._validate import examples, read_table, spot_ids, unique_ids
from gr2st.io.st import read_st_legacy

_LABEL_COLUMNS = ("x", "y", "label")
_HER2ST_NAME = re.compile(r"^[A-Z]\d+$")


def read_her2st(root: str | Path, section: str, *, duplicate_genes: str = "error") -> AnnData:
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
    duplicate_genes
        ``"error"`` or ``"sum"``: what to do with a gene named in two count columns
        (see :func:`gr2st.io.read_st_legacy`).

    Returns
    -------
    AnnData
        See :func:`gr2st.io.st.read_st_legacy`; ``source_format`` is ``"her2st"``.

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
    adata = read_st_legacy(
        counts,
        root / "ST-spotfiles" / f"{section}_selection.tsv",
        section=section,
        patient=section[0],
        image=_her2st_image(root, section),
        source_format="her2st",
        duplicate_genes=duplicate_genes,
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
    ids = spot_ids(located["x"], located["y"], source=path)
    unique_ids(ids, path=path, what="label table")
    return pd.Series(located["label"].astype(str).to_numpy(), index=ids, name=PATHOLOGY)
