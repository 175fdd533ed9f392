"""Reader for sections already stored in gr2st's AnnData shape (e.g. HEST-style ``.h5ad``)."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path

import anndata
from anndata import AnnData

from gr2st._constants import IMAGE_PATH, UNS
from gr2st.errors import GR2STDataError
from gr2st.io._validate import as_counts, one_line, require_file, validate_section


def read_h5ad(path: str | Path) -> AnnData:
    """Read and validate one section stored as ``.h5ad``.

    The file must already follow gr2st's shape (see :func:`gr2st.io.validate_section`);
    everything missing is listed in a single error. A relative
    ``uns["gr2st"]["image_path"]`` is resolved against the file's folder, so a folder
    holding sections and their images can be moved as a whole. ``X`` is returned as a
    CSR integer matrix.

    Parameters
    ----------
    path
        The ``.h5ad`` file.

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
    if isinstance(meta, MutableMapping) and meta.get(IMAGE_PATH) is not None:
        image = Path(str(meta[IMAGE_PATH]))
        if not image.is_absolute():
            meta[IMAGE_PATH] = str(path.parent / image)
    validate_section(adata, source=path)
    adata.X = as_counts(adata.X, source=path)
    return adata
