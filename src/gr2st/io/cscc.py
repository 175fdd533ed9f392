"""Reader for the cSCC spatial transcriptomics data set (Ji et al., Cell 2020; GSE144240).

Expected layout: the files of the GEO supplementary archive, flat in one folder, per
section ``S`` (e.g. ``P2_ST_rep1``; patient ``P2``)::

    GSM<id>_<S>_stdata.tsv.gz                 counts, spots × genes, rows "<x>x<y>"
    GSM<id>_spot_data-selection-<S>.tsv.gz    x y new_x new_y pixel_x pixel_y selected
    GSM<id>_<S>.jpg                           full-resolution H&E image (optional)

The ``GSM<id>_`` prefix is optional and files may be decompressed (``.tsv``). Gene
columns are gene symbols, the names the published cSCC benchmark panel
(``cscc-171``) uses; a table keyed by Ensembl ids loads as-is, and a later panel
check then names the symbols it lacks. The spot geometry follows the ST array (see
:mod:`gr2st.io.st`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd
from anndata import AnnData

from gr2st.errors import GR2STDataError
from gr2st.io._validate import examples
from gr2st.io.st import read_st_legacy

log = logging.getLogger(__name__)

_SECTION = re.compile(r"^(P\d+)_ST_rep(\d+)$")
_COUNTS = re.compile(r"^(?:GSM\d+_)?(P(\d+)_ST_rep(\d+))_stdata\.tsv(?:\.gz)?$")
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{11}")


def read_cscc(root: str | Path, section: str) -> AnnData:
    """Read one cSCC (GSE144240) section.

    Parameters
    ----------
    root
        Folder holding the GEO files of the data set.
    section
        Section name such as ``"P2_ST_rep1"``; the patient is the part before the
        first underscore (``"P2"``).

    Returns
    -------
    AnnData
        One section in gr2st's shape (see :func:`gr2st.io.st.read_st_legacy`);
        ``source_format`` is ``"cscc"`` and ``image_path`` is ``None`` when the
        section's ``.jpg`` is absent.

    Raises
    ------
    GR2STDataError
        Unknown section name, missing or ambiguous file, or any problem found by
        :func:`gr2st.io.st.read_st_legacy`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "GSM1_P2_ST_rep1_stdata.tsv").write_text("\\tKRT5\\n1x1\\t3\\n2x1\\t0\\n")
    >>> _ = (root / "GSM1_spot_data-selection-P2_ST_rep1.tsv").write_text(
    ...     "x\\ty\\tpixel_x\\tpixel_y\\n1\\t1\\t100\\t100\\n2\\t1\\t300\\t100\\n")
    >>> adata = read_cscc(root, "P2_ST_rep1")
    >>> adata.obs["patient"].iloc[0], adata.shape
    ('P2', (2, 1))
    """
    root = Path(root)
    match = _SECTION.match(section)
    if match is None:
        raise GR2STDataError(
            f"{root}: {section!r} is not a cSCC section name (expected e.g. 'P2_ST_rep1')"
        )
    if not root.is_dir():
        raise GR2STDataError(f"{root}: folder not found; expected the GSE144240 files")
    name = re.escape(section)
    counts = _find(root, rf"^(?:GSM\d+_)?{name}_stdata\.tsv(?:\.gz)?$", what="count table")
    spots = _find(
        root, rf"^(?:GSM\d+_)?spot_data-selection-{name}\.tsv(?:\.gz)?$", what="spot table"
    )
    if counts is None or spots is None:
        missing = "count table" if counts is None else "spot table"
        known = _sections(root)
        raise GR2STDataError(
            f"{root}: no {missing} for section {section!r}; sections found: "
            f"{examples(known, n=12) if known else 'none'}"
        )
    image = _find(root, rf"^(?:GSM\d+_)?{name}\.jpg$", what="image")
    adata = read_st_legacy(
        counts,
        spots,
        section=section,
        patient=match.group(1),
        image=image,
        source_format="cscc",
    )
    n_ensembl = sum(bool(_ENSEMBL.match(g)) for g in adata.var_names)
    if n_ensembl > adata.n_vars // 2:
        log.warning(
            "%s: %d of %d gene columns are Ensembl ids; gene panels use symbols",
            counts,
            n_ensembl,
            adata.n_vars,
        )
    return adata


def list_cscc(root: str | Path) -> pd.DataFrame:
    """List the cSCC sections under ``root`` without reading their count tables.

    Returns
    -------
    pandas.DataFrame
        Columns ``section``, ``patient``, ``has_image``; sorted by patient number and
        replicate (``P2 < P5 < P9 < P10``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for s in ["P10_ST_rep1", "P2_ST_rep2", "P2_ST_rep1"]:
    ...     _ = (root / f"GSM1_{s}_stdata.tsv.gz").write_bytes(b"")
    >>> list_cscc(root)["section"].tolist()
    ['P2_ST_rep1', 'P2_ST_rep2', 'P10_ST_rep1']
    """
    root = Path(root)
    if not root.is_dir():
        raise GR2STDataError(f"{root}: folder not found; expected the GSE144240 files")
    rows = []
    for section in _sections(root):
        name = re.escape(section)
        image = _find(root, rf"^(?:GSM\d+_)?{name}\.jpg$", what="image")
        rows.append((section, section.split("_")[0], image is not None))
    return pd.DataFrame(rows, columns=["section", "patient", "has_image"])


def _sections(root: Path) -> list[str]:
    order: dict[str, tuple[int, int]] = {}
    for path in root.iterdir():
        if m := _COUNTS.match(path.name):
            order[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return sorted(order, key=order.__getitem__)


def _find(root: Path, pattern: str, *, what: str) -> Path | None:
    regex = re.compile(pattern)
    hits = sorted(p for p in root.iterdir() if regex.match(p.name))
    if len(hits) > 1:
        raise GR2STDataError(
            f"{root}: {len(hits)} files could be the {what} ({examples(p.name for p in hits)}); "
            "keep one"
        )
    return hits[0] if hits else None
