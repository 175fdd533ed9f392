"""Reader for 10x Genomics Visium (Space Ranger) output folders.

Spot geometry
-------------
Visium spots are 55 µm wide on a hexagonal grid with a 100 µm centre-to-centre pitch
(10x Genomics). The image resolution is measured per section as the median pixel
distance between grid neighbours divided by 100 µm
(:func:`gr2st.io.geometry.infer_geometry`). Space Ranger's ``scalefactors_json.json``
is not needed; when present its ``spot_diameter_fullres`` (the pixels spanning "a
theoretical 65 µm spot" per 10x's documentation, not the physical spot) cross-checks it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Final

import pandas as pd
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
from gr2st._utils.optional import require
from gr2st.errors import GR2STDataError
from gr2st.io._validate import (
    as_counts,
    examples,
    numeric_columns,
    one_line,
    read_table,
    require_file,
    unique_ids,
    validate_section,
)
from gr2st.io.geometry import infer_geometry

#: The spot size that Space Ranger's ``spot_diameter_fullres`` measures (µm).
SCALEFACTOR_SPOT_UM: Final = 65.0
#: Suffixes of full-resolution images looked for next to a Space Ranger folder.
IMAGE_SUFFIXES: Final = (".btf", ".tif", ".tiff", ".jpg", ".jpeg", ".png")

_POSITION_COLUMNS = (
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
)


def read_visium(
    path: str | Path,
    *,
    image: str | Path | None = None,
    section: str | None = None,
    patient: str | None = None,
    mpp: float | None = None,
) -> AnnData:
    """Read the in-tissue spots of one Space Ranger output folder.

    Files used under ``path``: the counts in ``filtered_feature_bc_matrix.h5`` (or a
    single ``*filtered_feature_bc_matrix.h5``, as GEO names them, or the
    ``filtered_feature_bc_matrix/`` folder of ``.mtx``/``.tsv`` files), and the spot
    positions in ``spatial/tissue_positions.csv`` (Space Ranger ≥ 2.0, with header)
    or ``spatial/tissue_positions_list.csv`` (older, no header). Only gene-expression
    features are kept; duplicated gene symbols are made unique by anndata (``"-1"``,
    ``"-2"``, … suffixes).

    The full-resolution image is, in this order: ``image`` when given; else the
    single image file (``.btf .tif .tiff .jpg .jpeg .png``) directly in ``path``
    (when there are several, the one whose name contains the section name); else the
    image in the parent folder whose name contains the section name; else none
    (``image_path`` is ``None``). Several equally good candidates are an error.

    Parameters
    ----------
    path
        The Space Ranger ``outs`` folder (or a copy of it).
    image
        Full-resolution H&E image the positions refer to.
    section
        Section name; default: the folder's name.
    patient
        Patient id; default: the section name.
    mpp
        The image's microns per pixel; default: measured from the spot pitch. A given
        one, and Space Ranger's ``spot_diameter_fullres`` when
        ``spatial/scalefactors_json.json`` has it, must agree with the pitch within 25 %.

    Returns
    -------
    AnnData
        One section in gr2st's shape: ``obs_names`` = barcodes, ``obs[array_x]`` =
        ``array_col``, ``obs[array_y]`` = ``array_row``, ``obsm["spatial"]`` =
        (``pxl_col_in_fullres``, ``pxl_row_in_fullres``); ``source_format`` is
        ``"visium"``.

    Raises
    ------
    GR2STDataError
        Missing or unreadable files, missing columns, barcodes without a position,
        no spot in tissue, spot centres outside the image, or a resolution whose
        sources disagree.

    Examples
    --------
    >>> adata = read_visium("outs", image="slide.tif", section="V1", patient="P1")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_dir():
        raise GR2STDataError(f"{path}: folder not found; expected a Space Ranger output folder")
    section = section or path.name
    adata, matrix_file = _read_matrix(path)
    positions, positions_file = _read_positions(path)

    unplaced = ~adata.obs_names.isin(positions.index)
    if unplaced.any():
        raise GR2STDataError(
            f"{matrix_file}: {int(unplaced.sum())} barcode(s) have no row in {positions_file} "
            f"(e.g. {examples(adata.obs_names[unplaced], n=3)})"
        )
    placed = positions.loc[adata.obs_names]
    in_tissue = placed["in_tissue"].to_numpy(dtype=float) == 1
    if not in_tissue.any():
        raise GR2STDataError(f"{positions_file}: no barcode of {matrix_file} is in tissue")
    adata = adata[in_tissue].copy()
    placed = placed[in_tissue]

    adata.obs = pd.DataFrame(
        {
            SECTION: section,
            PATIENT: patient or section,
            ARRAY_X: placed["array_col"].to_numpy(dtype=float),
            ARRAY_Y: placed["array_row"].to_numpy(dtype=float),
        },
        index=adata.obs_names,
    )
    adata.obsm[SPATIAL] = placed[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float)
    geometry = infer_geometry(
        positions[["array_col", "array_row"]].to_numpy(dtype=float),
        positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float),
        platform="visium",
        mpp=mpp,
        evidence=_scalefactor_mpp(path),
        source=positions_file,
    )
    image_path = require_file(image, what="image") if image is not None else None
    if image_path is None:
        image_path = _find_image(path, section)
    adata.uns[UNS] = {
        IMAGE_PATH: None if image_path is None else str(image_path),
        SPOT_DIAMETER_PX: geometry.spot_diameter_px,
        MICRONS_PER_PIXEL: geometry.microns_per_pixel,
        SOURCE_FORMAT: "visium",
        GEOMETRY: geometry.to_dict(),
    }
    validate_section(adata, source=matrix_file)
    return adata


def _read_matrix(path: Path) -> tuple[AnnData, Path]:
    # scanpy takes ~2 s to import; only this reader and HVG selection need it.
    sc = require("scanpy", feature="reading Space Ranger (Visium) folders", extra="scanpy")

    h5 = path / "filtered_feature_bc_matrix.h5"
    if not h5.is_file():
        prefixed = sorted(path.glob("*filtered_feature_bc_matrix.h5"))
        if len(prefixed) > 1:
            raise GR2STDataError(
                f"{path}: {len(prefixed)} count matrices ({examples(p.name for p in prefixed)}); "
                "keep one"
            )
        h5 = prefixed[0] if prefixed else h5
    mtx = path / "filtered_feature_bc_matrix"
    if not h5.is_file() and not mtx.is_dir():
        raise GR2STDataError(
            f"{path}: no filtered_feature_bc_matrix.h5 or filtered_feature_bc_matrix/ folder; "
            "expected a Space Ranger output folder"
        )
    source = h5 if h5.is_file() else mtx
    try:
        with warnings.catch_warnings():
            # Duplicated symbols are made unique right below; anndata's warning is noise.
            warnings.filterwarnings("ignore", "Variable names are not unique", UserWarning)
            if source == h5:
                adata = sc.read_10x_h5(h5)
                adata.var_names_make_unique()
            else:
                adata = sc.read_10x_mtx(mtx, var_names="gene_symbols", make_unique=True)
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise GR2STDataError(f"{source}: cannot read count matrix ({one_line(exc)})") from None
    adata.X = as_counts(adata.X, source=source)
    return adata, source


def _read_positions(path: Path) -> tuple[pd.DataFrame, Path]:
    with_header = path / "spatial" / "tissue_positions.csv"
    without_header = path / "spatial" / "tissue_positions_list.csv"
    if with_header.is_file():
        source = with_header
        table = read_table(source, what="position table", columns=_POSITION_COLUMNS, sep=",")
    else:
        source = require_file(without_header, what="position table")
        table = read_table(
            source,
            what="position table",
            columns=_POSITION_COLUMNS,
            sep=",",
            names=_POSITION_COLUMNS,
        )
    numeric_columns(table, _POSITION_COLUMNS[1:], path=source, what="position table")
    table.index = pd.Index(table["barcode"].astype(str))
    unique_ids(table.index, path=source, what="position table")
    return table, source


def _find_image(path: Path, section: str) -> Path | None:
    def images(folder: Path) -> list[Path]:
        return sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )

    here = images(path)
    if len(here) > 1:
        here = [p for p in here if section in p.name]
        if len(here) != 1:
            raise GR2STDataError(
                f"{path}: several candidate images and {len(here)} named after section "
                f"{section!r}; pass image= to choose one"
            )
    if here:
        return here[0]
    above = [p for p in images(path.parent) if section in p.name]
    if len(above) > 1:
        raise GR2STDataError(
            f"{path.parent}: {len(above)} candidate images for section {section!r} "
            f"({examples(p.name for p in above)}); pass image= to choose one"
        )
    return above[0] if above else None


def _scalefactor_mpp(path: Path) -> dict[str, float]:
    """µm/px implied by ``spot_diameter_fullres`` of ``scalefactors_json.json``, if any."""
    file = path / "spatial" / "scalefactors_json.json"
    if not file.is_file():
        return {}
    try:
        value = float(json.loads(file.read_text())["spot_diameter_fullres"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # optional: the pitch determines the resolution without it
    return {f"{file.name} spot_diameter_fullres": SCALEFACTOR_SPOT_UM / value} if value > 0 else {}
