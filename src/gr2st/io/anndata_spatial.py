"""Reader for spatial AnnData in the scanpy/squidpy convention (``sc.read_visium`` & co.).

What is read (see :mod:`gr2st.io._spatial` for the convention):

- ``obsm["spatial"]``: spot centres in full-resolution pixels (required);
- ``uns["spatial"][library_id]``: scale factors and downscaled images (optional; with
  several libraries one is chosen, and an ``obs["library_id"]`` column, as
  ``anndata.concat`` writes it, selects that library's spots);
- array coordinates from ``obs["array_col"]/["array_row"]`` (or ``array_x/array_y``,
  or ``"<x>x<y>"`` ids); without them they are approximated from the pixel positions;
- counts from ``X``, ``layers["counts"]`` or ``.raw`` (the first that holds raw
  integer counts). Counts are needed only to train or to score: without them the
  section still reads (``X`` keeps its values, ``uns["gr2st"]["has_counts"]`` is
  False) unless ``require_counts=True``.

The image is, in this order: ``image`` when given (the full-resolution slide the
positions refer to); ``uns["spatial"][lib]["metadata"]["source_image_path"]`` when that
file exists (``sc.read_visium(source_image_path=…)`` stores it); else the largest
embedded downscaled image (``hires``…), written once to a PNG named by its content under
``image_cache`` and used with its scale factor (positions, spot size and resolution are
rescaled to it). Predictions from a downscaled image are coarse; a warning says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

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
from gr2st._utils.files import user_cache_dir
from gr2st.errors import GR2STDataError
from gr2st.io._spatial import (
    UNS_SPATIAL,
    Platform,
    approximate_grid,
    describe_values,
    embedded_image,
    find_counts,
    get_platform,
    grid_coordinates,
    infer_platform,
    rescale_library,
    resolve_mpp,
    scalefactor,
    spatial_library,
    spot_spacing,
    write_image_file,
)
from gr2st.io._validate import one_line, require_file, validate_section

log = logging.getLogger(__name__)

#: Resolution (µm/px) above which a warning says the image is too coarse to predict well.
COARSE_MPP = 2.0


def read_anndata_spatial(
    data: AnnData | str | Path,
    *,
    library_id: str | None = None,
    image: str | Path | None = None,
    mpp: float | None = None,
    platform: str | None = None,
    section: str | None = None,
    patient: str | None = None,
    require_counts: bool = False,
    image_cache: str | Path | None = None,
    source_format: str = "anndata",
) -> AnnData:
    """Convert a scanpy/squidpy spatial AnnData (or ``.h5ad``) to gr2st's shape.

    Parameters
    ----------
    data
        The AnnData, or a path to an ``.h5ad`` file.
    library_id
        Key of ``uns["spatial"]`` to use (needed when there are several).
    image
        The full-resolution image ``obsm["spatial"]`` refers to (see the module
        docstring for what is used without it).
    mpp
        Microns per full-resolution pixel; default: measured (spot pitch, else
        ``spot_diameter_fullres``; see :mod:`gr2st.io._spatial`), else unknown (None).
    platform
        ``"visium"`` or ``"st"``; default: inferred from Space Ranger metadata or the
        spot ids. Sets the pitch and spot size used to measure the resolution.
    section, patient
        Names stored in ``obs``; default: the single value of ``obs["section"]`` /
        ``obs["patient"]`` when present, else the library id (else the file name)
        for the section and the section for the patient.
    require_counts
        Raise when no raw counts are found (training and scoring need them).
    image_cache
        Folder for embedded images written as PNG; default
        ``~/.cache/gr2st/images`` (``$GR2ST_CACHE_DIR/images``).
    source_format
        Stored as ``uns["gr2st"]["source_format"]``.

    Returns
    -------
    AnnData
        One section in gr2st's shape; the chosen ``uns["spatial"]`` library and the
        other ``obs``/``obsm`` fields are kept.

    Raises
    ------
    GR2STDataError
        No ``obsm["spatial"]``, an ambiguous or unknown library, invalid scale factors,
        no counts when they are required, or spot centres outside the image.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> xy = np.array([[100.0, 100.0], [300.0, 100.0], [200.0, 273.2]])
    >>> adata = AnnData(np.array([[-0.3], [1.1], [0.2]]), obsm={"spatial": xy})
    >>> adata.obs_names = ["AAACAAGTATCTCCCA-1", "AAACACCAATAACTGC-1", "AAACAGAGCGACTCCT-1"]
    >>> adata.uns["spatial"] = {"V1": {"scalefactors": {"spot_diameter_fullres": 130.0}}}
    >>> section = read_anndata_spatial(adata)
    >>> section.obs["section"].iloc[0], section.uns["gr2st"]["microns_per_pixel"]
    ('V1', 0.5)
    >>> section.uns["gr2st"]["has_counts"]
    False
    """
    adata, source, stem = _load(data)
    return convert_spatial(
        adata,
        source=source,
        default_section=stem,
        library_id=library_id,
        image=image,
        mpp=mpp,
        platform=platform,
        section=section,
        patient=patient,
        require_counts=require_counts,
        image_cache=image_cache,
        source_format=source_format,
    )


def convert_spatial(
    adata: AnnData,
    *,
    source: str,
    default_section: str,
    library_id: str | None = None,
    image: str | Path | None = None,
    mpp: float | None = None,
    platform: str | None = None,
    section: str | None = None,
    patient: str | None = None,
    require_counts: bool = False,
    image_cache: str | Path | None = None,
    source_format: str = "anndata",
    spot_diameter_um: float | None = None,
    pitch_um: float | None = None,
) -> AnnData:
    """:func:`read_anndata_spatial` on an AnnData already read from ``source``.

    ``spot_diameter_um`` (e.g. from a HEST metadata file) replaces the platform's spot
    size when the resolution is known; ``pitch_um`` (HEST's ``inter_spot_dist`` of a
    technology gr2st has no platform for) replaces its pitch.
    """
    if SPATIAL not in adata.obsm:
        raise GR2STDataError(
            f"{source}: missing obsm[{SPATIAL!r}]; expected spot centres (x, y) in "
            "full-resolution image pixels"
        )
    lib_id, library = spatial_library(adata, library_id, source=source)
    adata = _library_spots(adata, lib_id, source=source)
    spatial = np.asarray(adata.obsm[SPATIAL], dtype=float)
    if spatial.ndim != 2 or spatial.shape[1] < 2 or not np.isfinite(spatial[:, :2]).all():
        raise GR2STDataError(
            f"{source}: obsm[{SPATIAL!r}] must hold finite (x, y) pixel positions; "
            f"got shape {spatial.shape}"
        )
    spatial = spatial[:, :2]
    chosen: Platform | None = (
        get_platform(platform) if platform is not None else infer_platform(adata, library)
    )
    if pitch_um is not None and chosen is not None:
        chosen = replace(chosen, pitch_um=float(pitch_um))
    grid = grid_coordinates(adata)
    diameter_sf = scalefactor(library, "spot_diameter_fullres", source=source)
    resolution, how = resolve_mpp(
        given=mpp,
        platform=chosen,
        grid=grid,
        spatial=spatial,
        spot_diameter_fullres=diameter_sf,
        source=source,
    )
    log.info("%s: %s µm/px (%s)", source, resolution, how)
    if spot_diameter_um is not None and resolution is not None:
        diameter = spot_diameter_um / resolution
    elif chosen is not None and resolution is not None:
        diameter = chosen.spot_um / resolution
    else:
        diameter = diameter_sf or 0.5 * (spot_spacing(spatial) or 1.0)

    counts = find_counts(adata, source=source)
    if counts is None and require_counts:
        raise GR2STDataError(
            f"{source}: no raw counts (X has {describe_values(adata.X)}, and neither "
            "layers['counts'] nor .raw holds integer counts); training and scoring need "
            "raw counts, prediction does not"
        )
    if counts is not None:
        matrix, genes, where = counts
        if where != "X":
            log.info("%s: raw counts taken from %s", source, where)
    else:
        matrix = adata.X if sp.issparse(adata.X) else np.asarray(adata.X, dtype=np.float32)
        genes = pd.Index(adata.var_names.astype(str))

    image_path, scale = _image(image, library, source=source, cache=image_cache)
    if resolution is not None and resolution / scale > COARSE_MPP:
        log.warning(
            "%s: the image used is %.2f µm/px (%s); predictions from so coarse an image "
            "are poor: give the full-resolution slide (image= / --image)",
            source,
            resolution / scale,
            image_path,
        )

    name = section or _single(adata.obs, SECTION) or lib_id or default_section
    obs = adata.obs.copy()
    obs[SECTION] = name
    obs[PATIENT] = patient or _single(adata.obs, PATIENT) or name
    array = grid if grid is not None else approximate_grid(spatial)
    obs[ARRAY_X], obs[ARRAY_Y] = array[:, 0], array[:, 1]
    out = AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=genes))
    out.obsm.update({k: v for k, v in adata.obsm.items() if k != SPATIAL})
    out.obsm[SPATIAL] = spatial * scale
    if lib_id is not None:
        out.uns[UNS_SPATIAL] = {lib_id: rescale_library(library, scale)}
    out.uns[UNS] = {
        IMAGE_PATH: None if image_path is None else str(image_path),
        SPOT_DIAMETER_PX: float(diameter * scale),
        MICRONS_PER_PIXEL: None if resolution is None else float(resolution / scale),
        SOURCE_FORMAT: source_format,
        HAS_COUNTS: counts is not None,
    }
    validate_section(out, source=source)
    return out


def _load(data: AnnData | str | Path) -> tuple[AnnData, str, str]:
    if isinstance(data, AnnData):
        return data, "AnnData", "section"
    path = require_file(data, what="AnnData file")
    try:
        adata = anndata.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise GR2STDataError(f"{path}: cannot read AnnData file ({one_line(exc)})") from None
    return adata, str(path), path.stem


def _library_spots(adata: AnnData, lib_id: str | None, *, source: str) -> AnnData:
    """The spots of one library when ``obs["library_id"]`` mixes several."""
    if lib_id is None or "library_id" not in adata.obs:
        return adata
    values = adata.obs["library_id"].astype(str)
    if values.nunique() == 1:
        return adata
    keep = (values == lib_id).to_numpy()
    if not keep.any():
        raise GR2STDataError(f"{source}: no spot has obs['library_id'] == {lib_id!r}")
    return adata[keep].copy()


def _single(obs: pd.DataFrame, key: str) -> str | None:
    if key not in obs or obs.empty:
        return None
    values = obs[key].astype(str).unique()
    return str(values[0]) if len(values) == 1 else None


def _image(
    image: str | Path | None,
    library: Mapping[str, Any],
    *,
    source: str,
    cache: str | Path | None,
) -> tuple[Path | None, float]:
    """The image file to use and the scale from full-resolution pixels to it."""
    if image is not None:
        return require_file(image, what="image"), 1.0
    recorded = (library.get("metadata") or {}).get("source_image_path")
    if recorded and Path(str(recorded)).is_file():
        return Path(str(recorded)), 1.0
    found = embedded_image(library, source=source)
    if found is None:
        return None, 1.0
    key, array, scale = found
    folder = Path(cache) if cache is not None else user_cache_dir() / "images"
    path = write_image_file(array, folder)
    log.warning(
        "%s: no full-resolution image given; using the embedded %r image (scale %.4g) "
        "written to %s",
        source,
        key,
        scale,
        path,
    )
    return path, scale
