"""Reader for SpatialData zarr stores (scverse; needs the extra ``gr2st[spatialdata]``).

What is read: one **table** (an AnnData whose ``uns["spatialdata_attrs"]`` names the
shapes element it annotates, its ``region_key`` and ``instance_key``), the **shapes**
it annotates (circles: points with a ``radius`` column, as ``spatialdata-io`` writes
Visium spots; polygons such as Visium HD bins are read as their centroids with a
diameter of ``√area``), and an **image** in a coordinate system the shapes share.

Coordinates: spot centres are mapped through the elements' coordinate
transformations into the pixels of the image used. That image is ``image`` when given
(a slide file in the pixel units of the chosen coordinate system, e.g. the
full-resolution H&E image of a Visium run), else the store's highest-resolution image
element in that coordinate system, exported once to a tiled TIFF under ``image_cache``
(named after the store, element and shape; gr2st's slide readers need a file).

The resolution is ``mpp`` (µm per unit of the coordinate system) when given, else it
is the one the table records in ``uns["gr2st"]`` with the spot diameter (a store
written by :func:`gr2st.export.write_spatialdata`), else it is measured as for any
spatial AnnData (:mod:`gr2st.io._spatial`: spot pitch from ``array_row``/``array_col``,
else the circles' diameter, which ``spatialdata-io`` sets to Space Ranger's
``spot_diameter_fullres``); counts come from the table (``X``,
``layers["counts"]`` or ``.raw``) and are optional as in
:func:`gr2st.io.read_anndata_spatial`. A prediction's ``layers["uncertainty"]`` and
``layers["measured"]`` are kept.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from gr2st._constants import (
    IMAGE_PATH,
    MEASURED_LAYER,
    MICRONS_PER_PIXEL,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNCERTAINTY_LAYER,
    UNS,
)
from gr2st._utils.files import atomic_path, user_cache_dir
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.io._spatial import rescale_library
from gr2st.io._validate import examples, one_line, validate_section
from gr2st.io.anndata_spatial import COARSE_MPP, convert_spatial

log = logging.getLogger(__name__)

#: The optional extra that installs SpatialData.
EXTRA = "gr2st[spatialdata]"
_TILE = 256


def read_spatialdata(
    store: str | Path,
    *,
    table: str | None = None,
    image: str | Path | None = None,
    coordinate_system: str | None = None,
    mpp: float | None = None,
    platform: str | None = None,
    section: str | None = None,
    patient: str | None = None,
    require_counts: bool = False,
    image_cache: str | Path | None = None,
) -> AnnData:
    """Read one table of a SpatialData store, its spots and an image, in gr2st's shape.

    Parameters
    ----------
    store
        The ``.zarr`` store.
    table
        Name of the table (needed when the store has several).
    image
        A slide file in the pixel units of ``coordinate_system`` (see the module
        docstring); default: the store's own image.
    coordinate_system
        Coordinate system shared by the shapes and the image; default: the shapes'
        first one (``"global"`` for ``spatialdata-io`` readers).
    mpp
        Microns per unit of the coordinate system (full-resolution pixels for Visium);
        default: measured.
    platform, section, patient, require_counts
        As in :func:`gr2st.io.read_anndata_spatial`; the section defaults to the
        shapes element's name.
    image_cache
        Folder of exported images; default ``~/.cache/gr2st/images``.

    Returns
    -------
    AnnData
        One section in gr2st's shape, ``source_format`` ``"spatialdata"``.

    Raises
    ------
    GR2STConfigError
        SpatialData is not installed (install the extra ``gr2st[spatialdata]``).
    GR2STDataError
        Unreadable store, no or several tables, a table that annotates no shapes, no
        image, or any problem :func:`gr2st.io.read_anndata_spatial` finds.

    Examples
    --------
    >>> adata = read_spatialdata("visium.zarr")  # doctest: +SKIP
    """
    sd = _import_spatialdata()
    store = Path(store)
    if not store.exists():
        raise GR2STDataError(f"{store}: SpatialData store not found")
    try:
        sdata = sd.read_zarr(store)
    except Exception as exc:
        raise GR2STDataError(f"{store}: cannot read SpatialData store ({one_line(exc)})") from None
    name, tab = _table(sdata, table, store=store)
    region, region_key, instance_key = _annotation(tab, name, store=store)
    if region not in sdata.shapes:
        raise GR2STDataError(
            f"{store}: table {name!r} annotates {region!r}, which is not a shapes element "
            f"(shapes: {examples(list(sdata.shapes)) if sdata.shapes else 'none'})"
        )
    shapes = sdata.shapes[region]
    from spatialdata.transformations import get_transformation

    systems = list(get_transformation(shapes, get_all=True))
    cs = coordinate_system or (str(systems[0]) if systems else "global")
    if cs not in systems:
        raise GR2STDataError(
            f"{store}: shapes {region!r} are not in coordinate system {cs!r} "
            f"(theirs: {examples(systems)})"
        )
    rows = tab.obs[region_key].astype(str).to_numpy() == region if region_key in tab.obs else None
    tab = tab[rows].copy() if rows is not None and not rows.all() else tab
    centres, diameters = _spot_geometry(shapes, tab.obs[instance_key], store=store, region=region)
    to_cs = _affine(get_transformation(shapes, to_coordinate_system=cs))
    centres = _apply(to_cs, centres)
    diameters = diameters * float(np.sqrt(abs(np.linalg.det(to_cs[:2, :2]))))

    scale = 1.0
    exported: Path | None = None
    if image is None:
        element, scale = _best_image(sdata, cs, store=store)
        exported = _export_image(
            sdata.images[element], store=store, element=element, cache=image_cache
        )
    # A store gr2st wrote records its resolution and spot size (coordinates: slide pixels).
    recorded = tab.uns.get(UNS) or {}
    diameter_um = None
    if mpp is None and recorded.get(MICRONS_PER_PIXEL) is not None:
        mpp = float(recorded[MICRONS_PER_PIXEL])
        if recorded.get(SPOT_DIAMETER_PX) is not None:
            diameter_um = float(recorded[SPOT_DIAMETER_PX]) * mpp
    adata = AnnData(X=tab.X, obs=tab.obs.copy(), var=tab.var.copy(), layers=dict(tab.layers))
    if tab.raw is not None:
        adata.raw = tab.raw.to_adata()
    adata.obsm[SPATIAL] = centres
    library = {"scalefactors": {"spot_diameter_fullres": float(np.median(diameters))}}
    adata.uns["spatial"] = {region: library}
    out = convert_spatial(
        adata,
        source=str(store),
        default_section=region,
        library_id=region,
        image=image,
        mpp=mpp,
        platform=platform,
        section=section,
        patient=patient,
        require_counts=require_counts,
        source_format="spatialdata",
        spot_diameter_um=diameter_um,
    )
    for name in (UNCERTAINTY_LAYER, MEASURED_LAYER):
        if name in tab.layers and out.n_obs == tab.n_obs:
            out.layers[name] = tab.layers[name]  # a prediction's (gr2st.export)
    if exported is not None:
        # Coordinates, spot size and resolution were in coordinate-system units.
        meta = out.uns[UNS]
        out.obsm[SPATIAL] = np.asarray(out.obsm[SPATIAL]) * scale
        meta[SPOT_DIAMETER_PX] = float(meta[SPOT_DIAMETER_PX] * scale)
        if meta[MICRONS_PER_PIXEL] is not None:
            meta[MICRONS_PER_PIXEL] = float(meta[MICRONS_PER_PIXEL] / scale)
        meta[IMAGE_PATH] = str(exported)
        out.uns["spatial"] = {region: rescale_library(out.uns["spatial"][region], scale)}
        validate_section(out, source=store)
        if meta[MICRONS_PER_PIXEL] is not None and meta[MICRONS_PER_PIXEL] > COARSE_MPP:
            log.warning(
                "%s: the store's finest image is %.2f µm/px; predictions from so coarse an "
                "image are poor: give the full-resolution slide (image= / --image)",
                store,
                meta[MICRONS_PER_PIXEL],
            )
    return out


def _import_spatialdata() -> Any:
    try:
        import spatialdata
    except ImportError:
        raise GR2STConfigError(
            f"reading SpatialData stores needs the optional package spatialdata: "
            f"pip install '{EXTRA}'"
        ) from None
    return spatialdata


def _table(sdata: Any, table: str | None, *, store: Path) -> tuple[str, AnnData]:
    names = list(sdata.tables)
    if not names:
        raise GR2STDataError(f"{store}: the store has no table (expected one with the spots)")
    if table is None:
        if len(names) > 1:
            raise GR2STDataError(
                f"{store}: {len(names)} tables ({examples(names)}); choose one (table= / --library)"
            )
        table = names[0]
    if table not in sdata.tables:
        raise GR2STDataError(f"{store}: no table {table!r} (tables: {examples(names)})")
    return table, sdata.tables[table]


def _annotation(tab: AnnData, name: str, *, store: Path) -> tuple[str, str, str]:
    attrs = tab.uns.get("spatialdata_attrs") or {}
    region = attrs.get("region")
    if isinstance(region, list | tuple | np.ndarray):
        regions = [str(r) for r in region]
        if len(regions) != 1:
            raise GR2STDataError(
                f"{store}: table {name!r} annotates {len(regions)} elements "
                f"({examples(regions)}); expected one shapes element (one section)"
            )
        region = regions[0]
    if region is None or "instance_key" not in attrs:
        raise GR2STDataError(
            f"{store}: table {name!r} has no spatialdata_attrs region/instance_key; "
            "expected a table that annotates the spot shapes"
        )
    return str(region), str(attrs.get("region_key", "region")), str(attrs["instance_key"])


def _spot_geometry(
    shapes: Any, instances: pd.Series, *, store: Path, region: str
) -> tuple[np.ndarray, np.ndarray]:
    """Centres ``(N, 2)`` and diameters ``(N,)`` of the table's spots, in shape units."""
    index = pd.Index(shapes.index)
    position = index.get_indexer(pd.Index(instances.to_numpy()))
    if (position < 0).any():
        missing = instances.to_numpy()[position < 0]
        raise GR2STDataError(
            f"{store}: {len(missing)} table row(s) name no spot of shapes {region!r} "
            f"(e.g. {examples(missing.tolist(), n=3)})"
        )
    geometry = shapes.geometry.iloc[position]
    kinds = set(geometry.geom_type)
    if kinds == {"Point"}:
        if "radius" not in shapes.columns:
            raise GR2STDataError(
                f"{store}: shapes {region!r} are points without a 'radius' column; expected circles"
            )
        centres = np.column_stack([geometry.x.to_numpy(), geometry.y.to_numpy()])
        diameters = 2.0 * shapes["radius"].iloc[position].to_numpy(dtype=float)
    elif kinds <= {"Polygon", "MultiPolygon"}:
        centroids = geometry.centroid
        centres = np.column_stack([centroids.x.to_numpy(), centroids.y.to_numpy()])
        diameters = np.sqrt(geometry.area.to_numpy(dtype=float))
    else:
        raise GR2STDataError(
            f"{store}: shapes {region!r} are {sorted(kinds)}; expected circles or polygons"
        )
    return centres.astype(float), diameters.astype(float)


def _affine(transformation: Any) -> np.ndarray:
    matrix = transformation.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    return np.asarray(matrix, dtype=float)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def _best_image(sdata: Any, cs: str, *, store: Path) -> tuple[str, float]:
    """The finest image in ``cs`` and its pixels per coordinate-system unit."""
    from spatialdata.transformations import get_transformation

    found = []
    for name, element in sdata.images.items():
        systems = get_transformation(element, get_all=True)
        if cs not in systems:
            continue
        matrix = _affine(systems[cs])
        if not np.allclose(matrix[0, 1], 0) or not np.allclose(matrix[1, 0], 0):
            continue  # rotated images are not supported: their pixels are not axis-aligned
        units_per_px = float(np.sqrt(abs(np.linalg.det(matrix[:2, :2]))))
        found.append((1.0 / units_per_px, name, matrix))
    if not found:
        raise GR2STDataError(
            f"{store}: no image in coordinate system {cs!r}; pass the slide with image= (--image)"
        )
    scale, name, matrix = max(found, key=lambda item: item[0])
    if not np.allclose(matrix[:2, 2], 0, atol=1e-6):
        raise GR2STDataError(
            f"{store}: image {name!r} is translated in {cs!r}; pass the slide with image= (--image)"
        )
    return name, scale


def _export_image(image: Any, *, store: Path, element: str, cache: str | Path | None) -> Path:
    """Write an image element's full resolution once as a tiled RGB TIFF; return its path."""
    array = _full_resolution(image)
    if tuple(array.dims) != ("c", "y", "x") or array.shape[0] not in (1, 3, 4):
        raise GR2STDataError(
            f"{store}: image {element!r} has dims {tuple(array.dims)} and shape "
            f"{tuple(array.shape)}; expected an RGB (c, y, x) image"
        )
    folder = Path(cache) if cache is not None else user_cache_dir() / "images"
    marker = store / "images" / element
    stamp = marker.stat().st_mtime_ns if marker.exists() else 0
    key = f"{store.resolve()}|{element}|{tuple(array.shape)}|{array.dtype}|{stamp}"
    path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.tif"
    if path.is_file():
        return path
    import tifffile

    _, height, width = (int(n) for n in array.shape)
    log.warning("%s: exporting image %r (%dx%d) to %s", store, element, width, height, path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            _tiles(array, height, width),
            shape=(height, width, 3),
            dtype=np.uint8,
            tile=(_TILE, _TILE),
            photometric="rgb",
            compression="zlib",
        )
    return path


def _full_resolution(image: Any) -> Any:
    """The DataArray of a single-scale image, or the finest scale of a multiscale one."""
    if hasattr(image, "dims") and hasattr(image, "shape"):
        return image
    node = image["scale0"]
    return next(iter(node.values()))


def _tiles(array: Any, height: int, width: int) -> Iterator[np.ndarray]:
    """``(256, 256, 3)`` uint8 tiles in TIFF order, band by band (bounded memory)."""
    for y0 in range(0, height, _TILE):
        band = _to_uint8(np.asarray(array[:, y0 : y0 + _TILE, :]))
        band = np.moveaxis(band, 0, -1)
        if band.shape[2] == 1:
            band = np.repeat(band, 3, axis=2)
        band = band[..., :3]
        padded = np.zeros((_TILE, -(-width // _TILE) * _TILE, 3), np.uint8)
        padded[: band.shape[0], :width] = band
        for x0 in range(0, width, _TILE):
            yield padded[:, x0 : x0 + _TILE]


def _to_uint8(block: np.ndarray) -> np.ndarray:
    if block.dtype == np.uint8:
        return block
    if block.dtype.kind == "f":
        block = np.nan_to_num(block) * 255.0  # float images are in [0, 1]
    return np.clip(block, 0, 255).round().astype(np.uint8)
