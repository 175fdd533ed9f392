"""Reader for ``.h5ad`` sections: gr2st's own shape, or any scanpy/squidpy spatial AnnData."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path

import anndata
from anndata import AnnData

from gr2st._constants import HAS_COUNTS, IMAGE_PATH, MICRONS_PER_PIXEL, UNS
from gr2st.errors import GR2STDataError
from gr2st.io._validate import as_counts, one_line, require_file, validate_section
from gr2st.io.anndata_spatial import convert_spatial


def read_h5ad(
    path: str | Path,
    *,
    require_counts: bool = True,
    library_id: str | None = None,
    image: str | Path | None = None,
    mpp: float | None = None,
    platform: str | None = None,
    image_cache: str | Path | None = None,
) -> AnnData:
    """Read and validate one section stored as ``.h5ad``.

    A file with ``uns["gr2st"]`` is a section in gr2st's shape (see
    :func:`gr2st.io.validate_section`; everything missing is listed in a single error),
    read as it is: a relative ``uns["gr2st"]["image_path"]`` is resolved against the
    file's folder, so a folder holding sections and their images can be moved as a
    whole, and ``X`` is returned as a CSR integer matrix. Any other file is read as a
    scanpy/squidpy spatial AnnData by :func:`gr2st.io.read_anndata_spatial` (the
    keyword options are passed to it; they are ignored for gr2st-shaped files, except
    ``image`` and ``mpp``, which replace the stored ones).

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    require_counts
        Raise unless the section holds raw integer counts (needed to train or to score,
        not to predict). With False, a section without counts is returned with
        ``uns["gr2st"]["has_counts"] = False`` and its ``X`` as stored.
    library_id, image, mpp, platform, image_cache
        See :func:`gr2st.io.read_anndata_spatial`.

    Returns
    -------
    AnnData
        The section, in memory.

    Raises
    ------
    GR2STDataError
        Missing or unreadable file, or a section that does not follow the shape.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from gr2st.datasets import synthetic
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "S0.h5ad"
    >>> synthetic(n_sections=1, n_genes=5, grid=(3, 3))[0].write_h5ad(path)
    >>> read_h5ad(path).shape
    (9, 5)
    """
    path = require_file(path, what="AnnData file")
    try:
        adata = anndata.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise GR2STDataError(f"{path}: cannot read AnnData file ({one_line(exc)})") from None
    meta = adata.uns.get(UNS)
    if not isinstance(meta, MutableMapping):
        return convert_spatial(
            adata,
            source=str(path),
            default_section=path.stem,
            library_id=library_id,
            image=image,
            mpp=mpp,
            platform=platform,
            require_counts=require_counts,
            image_cache=image_cache,
        )
    if image is not None:
        meta[IMAGE_PATH] = str(require_file(image, what="image"))
    elif meta.get(IMAGE_PATH) is not None:
        stored = Path(str(meta[IMAGE_PATH]))
        if not stored.is_absolute():
            meta[IMAGE_PATH] = str(path.parent / stored)
    if mpp is not None:
        meta[MICRONS_PER_PIXEL] = float(mpp)
    if not require_counts:
        try:
            as_counts(adata.X, source=path)
            meta[HAS_COUNTS] = True
        except GR2STDataError:
            meta[HAS_COUNTS] = False
    elif meta.get(HAS_COUNTS) is False:
        raise GR2STDataError(
            f"{path}: uns['gr2st']['has_counts'] is False (a section kept for prediction); "
            "training and scoring need raw counts"
        )
    validate_section(adata, source=path)
    if meta.get(HAS_COUNTS, True):
        adata.X = as_counts(adata.X, source=path)
    return adata
