"""A prediction read for export: spot geometry and row-chunked access to its values.

A prediction (``gr2st predict``) or any section in gr2st's shape is read either from an
AnnData in memory or from an ``.h5ad`` file, where only the spot table (obs names,
centres, ``in_tissue``) and the gene names are loaded: the expression matrices are read
a block of spots at a time, so exporting a whole slide needs memory bounded by the
block, not the slide.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from gr2st._constants import (
    IMAGE_PATH,
    MEASURED_LAYER,
    MICRONS_PER_PIXEL,
    SECTION,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNCERTAINTY_LAYER,
    UNS,
)
from gr2st.errors import GR2STConfigError, GR2STDataError

#: ``obs`` column of a prediction telling whether a spot lies on the detected tissue.
IN_TISSUE = "in_tissue"
#: Bytes of one block of spots read at a time (all genes of the block's rows).
BLOCK_BYTES = 32 * 2**20
#: What the values of each matrix are called in the exports.
PREDICTED = "predicted"


@dataclass
class Prediction:
    """Spots, genes and the matrices (``predicted``, ``uncertainty``, ``measured``).

    The matrices are numpy/scipy arrays in memory or h5py datasets/groups of an open
    file; :meth:`blocks` reads them a block of spots at a time.
    """

    source: str
    section: str
    spot_ids: np.ndarray
    genes: pd.Index
    centres: np.ndarray
    diameter_px: float
    mpp: float | None
    image_path: str | None
    in_tissue: np.ndarray | None
    obs: pd.DataFrame
    matrices: dict[str, Any]
    uns: dict[str, Any] = field(default_factory=dict)
    _file: h5py.File | None = None

    @property
    def n_spots(self) -> int:
        return len(self.spot_ids)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Prediction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resolve_genes(self, spec: str | Sequence[str]) -> list[str]:
        """The genes named by ``spec``: ``"all"``, ``"top:N"`` or a list (or ``G1,G2``).

        ``top:N`` is the N genes whose predicted value varies most across the spots.
        """
        if isinstance(spec, str):
            text = spec.strip()
            if text == "all":
                return [str(g) for g in self.genes]
            if text.startswith("top:"):
                return self._top(text)
            spec = [g.strip() for g in text.split(",") if g.strip()]
        chosen = list(dict.fromkeys(str(g) for g in spec))
        if not chosen:
            raise GR2STConfigError("--genes: expected all, top:N or comma-separated gene names")
        unknown = [g for g in chosen if g not in self.genes]
        if unknown:
            raise GR2STConfigError(
                f"--genes: {', '.join(unknown[:5])}{' …' if len(unknown) > 5 else ''} not "
                f"among the {len(self.genes):,} genes of {self.source}"
            )
        return chosen

    def _top(self, text: str) -> list[str]:
        try:
            n = int(text.removeprefix("top:"))
        except ValueError:
            n = 0
        if n < 1:
            raise GR2STConfigError(f"--genes {text}: expected top:N with N a positive integer")
        columns = np.arange(len(self.genes))
        total = np.zeros(len(columns))
        squares = np.zeros(len(columns))
        for _, block in self.blocks([PREDICTED], columns):
            values = np.nan_to_num(block[PREDICTED].astype(np.float64))
            total += values.sum(axis=0)
            squares += (values**2).sum(axis=0)
        variance = squares / max(self.n_spots, 1) - (total / max(self.n_spots, 1)) ** 2
        order = np.argsort(-variance, kind="stable")[:n]
        return [str(self.genes[i]) for i in order]

    def blocks(
        self, names: Sequence[str], columns: np.ndarray
    ) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
        """Yield ``(rows, {name: float32 (rows, columns) values})`` block by block."""
        rows_per_block = max(1, BLOCK_BYTES // max(4 * len(self.genes), 1))
        for start in range(0, self.n_spots, rows_per_block):
            rows = slice(start, min(start + rows_per_block, self.n_spots))
            yield rows, {name: _read(self.matrices[name], rows, columns) for name in names}


def _read(matrix: Any, rows: slice, columns: np.ndarray) -> np.ndarray:
    if isinstance(matrix, h5py.Group):  # a sparse matrix stored by anndata
        matrix = _anndata_io().sparse_dataset(matrix)[rows]
    else:
        matrix = matrix[rows]
    if sp.issparse(matrix):
        return np.asarray(matrix[:, columns].toarray(), dtype=np.float32)
    return np.asarray(matrix, dtype=np.float32)[:, columns]


def read_prediction(data: AnnData | str | Path) -> Prediction:
    """Read what the exporters need from a prediction in memory or in an ``.h5ad`` file.

    Raises
    ------
    GR2STDataError
        Unreadable file, no spot centres (``obsm["spatial"]``) or no spot diameter.

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> pred = read_prediction(synthetic(n_sections=1, n_genes=3, grid=(2, 2))[0])
    >>> pred.n_spots, list(pred.genes), sorted(pred.matrices)
    (4, ['GENE000', 'GENE001', 'GENE002'], ['predicted'])
    """
    if isinstance(data, AnnData):
        return _from_anndata(data)
    path = Path(data)
    if not path.is_file():
        raise GR2STDataError(f"{path}: prediction file not found (expected an .h5ad file)")
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise GR2STDataError(f"{path}: cannot read as .h5ad ({exc})") from None
    try:
        return _from_file(fh, path)
    except BaseException:
        fh.close()
        raise


def _from_anndata(adata: AnnData) -> Prediction:
    matrices: dict[str, Any] = {PREDICTED: adata.X}
    for name in (UNCERTAINTY_LAYER, MEASURED_LAYER):
        if name in adata.layers:
            matrices[name] = adata.layers[name]
    spatial = adata.obsm.get(SPATIAL)
    return _assemble(
        source="the prediction",
        obs=adata.obs,
        genes=pd.Index(adata.var_names.astype(str)),
        spatial=spatial,
        uns=dict(adata.uns),
        matrices=matrices,
        fh=None,
    )


def _anndata_io() -> Any:
    """anndata's element readers: ``anndata.io`` from 0.11, ``anndata.experimental`` before."""
    try:
        import anndata.io as found
    except ImportError:
        import anndata.experimental as found
    return found


def _from_file(fh: h5py.File, path: Path) -> Prediction:
    read_elem = _anndata_io().read_elem
    missing = [key for key in ("obs", "var", "X") if key not in fh]
    if missing:
        raise GR2STDataError(f"{path}: not an AnnData .h5ad file (no {', '.join(missing)})")
    obs = read_elem(fh["obs"])
    genes = pd.Index(read_elem(fh["var"]).index.astype(str))
    spatial = read_elem(fh[f"obsm/{SPATIAL}"]) if f"obsm/{SPATIAL}" in fh else None
    uns = {key: read_elem(fh[f"uns/{key}"]) for key in (UNS, SPATIAL) if f"uns/{key}" in fh}
    matrices: dict[str, Any] = {PREDICTED: fh["X"]}
    for name in (UNCERTAINTY_LAYER, MEASURED_LAYER):
        if f"layers/{name}" in fh:
            matrices[name] = fh[f"layers/{name}"]
    return _assemble(
        source=str(path), obs=obs, genes=genes, spatial=spatial, uns=uns, matrices=matrices, fh=fh
    )


def _assemble(
    *,
    source: str,
    obs: pd.DataFrame,
    genes: pd.Index,
    spatial: Any,
    uns: dict[str, Any],
    matrices: dict[str, Any],
    fh: h5py.File | None,
) -> Prediction:
    if spatial is None:
        raise GR2STDataError(
            f"{source}: missing obsm[{SPATIAL!r}]; expected spot centres in full-resolution "
            "slide pixels (a gr2st prediction or a section in gr2st's shape)"
        )
    centres = np.asarray(spatial, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[1] < 2 or not np.isfinite(centres[:, :2]).all():
        raise GR2STDataError(
            f"{source}: obsm[{SPATIAL!r}] must hold finite (x, y) positions; "
            f"got shape {centres.shape}"
        )
    meta = dict(uns.get(UNS) or {})
    diameter = _diameter(meta, uns, source=source)
    mpp = meta.get(MICRONS_PER_PIXEL)
    section = str(obs[SECTION].iloc[0]) if SECTION in obs and len(obs) else Path(source).stem
    in_tissue = obs[IN_TISSUE].to_numpy(dtype=bool) if IN_TISSUE in obs else None
    return Prediction(
        source=source,
        section=section,
        spot_ids=np.asarray(obs.index.astype(str)),
        genes=genes,
        centres=centres[:, :2],
        diameter_px=diameter,
        mpp=None if mpp is None else float(mpp),
        image_path=None if meta.get(IMAGE_PATH) is None else str(meta[IMAGE_PATH]),
        in_tissue=in_tissue,
        obs=obs,
        matrices=matrices,
        uns=meta,
        _file=fh,
    )


def _diameter(meta: dict[str, Any], uns: dict[str, Any], *, source: str) -> float:
    """The spot diameter in full-resolution pixels: gr2st's field, else scanpy's."""
    value = meta.get(SPOT_DIAMETER_PX)
    if value is None:
        for library in (uns.get(SPATIAL) or {}).values():
            found = (library.get("scalefactors") or {}).get("spot_diameter_fullres")
            if found is not None:
                value = found
                break
    if value is None or not np.isfinite(float(value)) or float(value) <= 0:
        raise GR2STDataError(
            f"{source}: no spot diameter (uns[{UNS!r}][{SPOT_DIAMETER_PX!r}] or "
            "uns['spatial'][…]['scalefactors']['spot_diameter_fullres']); expected a gr2st "
            "prediction or a section in gr2st's shape"
        )
    return float(value)
