"""Where to predict on a slide: spots from a CSV, a section, or a grid over the tissue.

:func:`load_query` turns the command-line inputs (``--spots``, ``--visium``, ``--h5ad``,
``--spatialdata``, ``--grid``) into :class:`QuerySpots` and the image to read; every
input kind also gets the tissue check of :func:`check_tissue`.

Grid
----
``grid_spots`` tiles the tissue with spots on a **hexagonal** lattice (Visium's
geometry: each spot has six equidistant neighbours, rows ``pitch · √3/2`` apart, odd
rows shifted by half a pitch), which covers the tissue more evenly than a square
lattice of the same pitch. The tissue is found on a low-resolution thumbnail by
:func:`detect_tissue`; a lattice point is kept when the thumbnail pixel under it is
tissue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import ndimage

from gr2st._constants import (
    ARRAY_X,
    ARRAY_Y,
    HAS_COUNTS,
    IMAGE_PATH,
    MICRONS_PER_PIXEL,
    SECTION,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNS,
)
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.image.slide import Slide, open_slide
from gr2st.image.tissue import detect_tissue

log = logging.getLogger(__name__)

#: CSV columns of ``--spots``: centre in full-resolution pixels, optional spot id.
CSV_COLUMNS = ("x", "y")
CSV_ID_COLUMN = "id"
#: Default distance between neighbouring grid spots (Visium's pitch), in microns.
DEFAULT_PITCH_UM = 100.0
#: Longer side of the thumbnail used for tissue detection and for plots.
THUMBNAIL_PX = 2000


@dataclass(frozen=True)
class QuerySpots:
    """The spots to predict.

    Attributes
    ----------
    centers
        ``(N, 2)`` float64 spot centres ``(x, y)`` in full-resolution pixels.
    obs
        One row per spot, indexed by spot id (may hold array coordinates).
    source
        ``"spots"``, ``"visium"``, ``"h5ad"``, ``"hest"``, ``"spatialdata"`` or ``"grid"``.
    measured
        The section read from the input when it holds raw counts, else None.
    image
        The image the section names, else None.
    mpp
        Microns per pixel known from the input (its spot geometry or metadata, grid),
        else None.
    spot_diameter_px
        Spot diameter in full-resolution pixels when the input defines one.
    name
        The section's name when the input has one (the library id of the prediction).
    """

    centers: np.ndarray
    obs: pd.DataFrame
    source: str
    measured: AnnData | None = None
    image: Path | None = None
    mpp: float | None = None
    spot_diameter_px: float | None = None
    name: str | None = None

    @property
    def n_spots(self) -> int:
        """Number of spots."""
        return int(self.centers.shape[0])


def read_spots_csv(path: str | Path) -> QuerySpots:
    """Read spot centres from a CSV with columns ``x``, ``y`` (full-resolution pixels).

    An ``id`` column names the spots (unique); otherwise they are ``spot0``, ``spot1``, …
    Other columns are kept in ``obs``.

    Raises
    ------
    GR2STDataError
        Missing file or columns, non-numeric or non-finite coordinates, repeated ids,
        no rows.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "spots.csv"
    >>> _ = p.write_text("id,x,y\\na,10,20\\nb,30.5,40\\n")
    >>> q = read_spots_csv(p)
    >>> q.centers.tolist(), list(q.obs.index)
    ([[10.0, 20.0], [30.5, 40.0]], ['a', 'b'])
    """
    path = Path(path)
    if not path.is_file():
        raise GR2STDataError(f"{path}: no such spots file")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise GR2STDataError(f"{path}: cannot read CSV ({str(exc).splitlines()[0]})") from None
    expected = (
        f"expected columns {', '.join(CSV_COLUMNS)} (full-resolution pixels) and "
        f"optionally {CSV_ID_COLUMN}"
    )
    missing = [c for c in CSV_COLUMNS if c not in table.columns]
    if missing:
        raise GR2STDataError(
            f"{path}: missing column(s) {missing} (found {list(table.columns)}); {expected}"
        )
    if table.empty:
        raise GR2STDataError(f"{path}: no spots; {expected}")
    coords = table[list(CSV_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise GR2STDataError(
            f"{path}: row {row + 2} has a non-numeric or missing x/y "
            f"({table.iloc[row][list(CSV_COLUMNS)].tolist()}); {expected}"
        )
    if CSV_ID_COLUMN in table.columns:
        ids = pd.Index(table[CSV_ID_COLUMN].astype(str), name=None)
        if ids.has_duplicates:
            dup = ids[ids.duplicated()].unique()[:3].tolist()
            raise GR2STDataError(f"{path}: column {CSV_ID_COLUMN!r} repeats ids {dup}")
    else:
        ids = pd.Index([f"spot{i}" for i in range(len(table))])
    extra = [c for c in table.columns if c not in (*CSV_COLUMNS, CSV_ID_COLUMN)]
    obs = table[extra].set_axis(ids, axis=0)
    return QuerySpots(centers=coords, obs=obs, source="spots")


def spots_from_section(adata: AnnData, *, source: str) -> QuerySpots:
    """The spots of a section read by :mod:`gr2st.io`, with its counts when it has them.

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> q = spots_from_section(synthetic(n_sections=1, grid=(2, 3))[0], source="h5ad")
    >>> q.n_spots, q.measured.n_vars
    (6, 40)
    """
    if SPATIAL not in adata.obsm:
        raise GR2STDataError(f"{source}: obsm[{SPATIAL!r}] is missing; expected spot centres")
    meta = adata.uns.get(UNS, {})
    image = meta.get(IMAGE_PATH)
    mpp = meta.get(MICRONS_PER_PIXEL)
    diameter = meta.get(SPOT_DIAMETER_PX)
    names = adata.obs[SECTION].astype(str).unique() if SECTION in adata.obs else []
    return QuerySpots(
        centers=np.asarray(adata.obsm[SPATIAL], dtype=np.float64),
        obs=adata.obs.copy(),
        source=source,
        measured=adata if meta.get(HAS_COUNTS, True) else None,
        image=None if image is None else Path(str(image)),
        mpp=None if mpp is None else float(mpp),
        spot_diameter_px=None if diameter is None else float(diameter),
        name=str(names[0]) if len(names) == 1 else None,
    )


def hex_lattice(width: float, height: float, pitch: float) -> tuple[np.ndarray, np.ndarray]:
    """Hexagonal lattice points inside a ``width × height`` box.

    Returns
    -------
    centers : numpy.ndarray
        ``(N, 2)`` float64 ``(x, y)``, row by row, half a pitch from the left/top edges.
    array : numpy.ndarray
        ``(N, 2)`` int64 Visium-style array coordinates ``(col, row)``: columns step by
        2 within a row and odd rows use odd columns.

    Examples
    --------
    >>> c, a = hex_lattice(40, 40, 20)
    >>> c.round(2).tolist(), a.tolist()
    ([[10.0, 10.0], [30.0, 10.0], [20.0, 27.32]], [[0, 0], [2, 0], [1, 1]])
    """
    if not pitch > 0:
        raise GR2STConfigError(f"grid pitch must be positive, got {pitch}")
    dy = pitch * np.sqrt(3) / 2
    rows = np.arange(int(np.floor((height - pitch / 2) / dy)) + 1)
    rows = rows[pitch / 2 + rows * dy < height]
    xs, ys, cols, rr = [], [], [], []
    for r in rows:
        x0 = pitch / 2 * (1 + r % 2)
        k = np.arange(int(np.floor((width - x0) / pitch)) + 1)
        k = k[x0 + k * pitch < width]
        xs.append(x0 + k * pitch)
        ys.append(np.full(k.size, pitch / 2 + r * dy))
        cols.append(2 * k + r % 2)
        rr.append(np.full(k.size, r))
    if not xs:
        return np.zeros((0, 2)), np.zeros((0, 2), np.int64)
    centers = np.column_stack([np.concatenate(xs), np.concatenate(ys)])
    array = np.column_stack([np.concatenate(cols), np.concatenate(rr)]).astype(np.int64)
    return centers, array


def grid_spots(
    slide: Slide,
    *,
    pitch_um: float = DEFAULT_PITCH_UM,
    mpp: float | None = None,
    thumbnail: tuple[np.ndarray, float] | None = None,
) -> QuerySpots:
    """Spots on a hexagonal lattice of ``pitch_um`` over the tissue of ``slide``.

    Parameters
    ----------
    slide
        The open slide.
    pitch_um
        Centre-to-centre distance of neighbouring spots, in microns.
    mpp
        Microns per full-resolution pixel; default: the slide's metadata.
    thumbnail
        ``(image, scale)`` as returned by ``slide.thumbnail`` (computed when omitted).

    Raises
    ------
    GR2STConfigError
        Unknown microns per pixel, or a non-positive pitch.
    GR2STDataError
        No tissue found.

    Examples
    --------
    >>> import tempfile
    >>> from gr2st.datasets import synthetic
    >>> section = synthetic(n_sections=1, grid=(3, 3), image_dir=tempfile.mkdtemp())[0]
    >>> with open_slide(section.uns["gr2st"]["image_path"]) as slide:
    ...     spots = grid_spots(slide, pitch_um=100, mpp=2.0)
    >>> spots.n_spots, spots.source
    (14, 'grid')
    """
    resolution = mpp if mpp is not None else slide.mpp
    if resolution is None:
        raise GR2STConfigError(
            f"{slide.path}: microns per pixel unknown (no resolution metadata); a grid in "
            "microns needs it: pass --mpp"
        )
    if not (resolution > 0 and pitch_um > 0):
        raise GR2STConfigError(f"pitch ({pitch_um} µm) and mpp ({resolution}) must be positive")
    image, scale = thumbnail if thumbnail is not None else slide.thumbnail(THUMBNAIL_PX)
    mask = detect_tissue(image)
    if not mask.any():
        raise GR2STDataError(f"{slide.path}: no tissue detected on the thumbnail")
    width, height = slide.dimensions
    pitch_px = pitch_um / resolution
    centers, array = hex_lattice(width, height, pitch_px)
    ty = np.clip((centers[:, 1] * scale).astype(np.int64), 0, mask.shape[0] - 1)
    tx = np.clip((centers[:, 0] * scale).astype(np.int64), 0, mask.shape[1] - 1)
    keep = mask[ty, tx]
    if not keep.any():
        raise GR2STDataError(
            f"{slide.path}: no grid spot at pitch {pitch_um} µm falls on the detected tissue"
        )
    centers, array = centers[keep], array[keep]
    ids = pd.Index([f"{c}x{r}" for c, r in array])
    obs = pd.DataFrame({ARRAY_X: array[:, 0].astype(float), ARRAY_Y: array[:, 1].astype(float)})
    return QuerySpots(
        centers=centers,
        obs=obs.set_axis(ids, axis=0),
        source="grid",
        mpp=float(resolution),
        spot_diameter_px=float(pitch_px),
    )


def check_tissue(
    thumbnail: np.ndarray,
    scale: float,
    centers: np.ndarray,
    *,
    spot_diameter_px: float,
    image: str | Path,
) -> np.ndarray:
    """Which spots lie on tissue; raise when the image or every spot is blank.

    Tissue is found on the thumbnail by :func:`detect_tissue`; a spot is on tissue when
    tissue lies within its radius of its centre. A few off-tissue spots are allowed (a
    warning gives their number); none on tissue means the spots do not belong to the
    image, or the image is blank, and is an error, as is an image without tissue.

    Parameters
    ----------
    thumbnail, scale
        The slide's thumbnail and thumbnail pixels per full-resolution pixel.
    centers
        ``(N, 2)`` spot centres ``(x, y)`` in full-resolution pixels.
    spot_diameter_px
        Spot diameter in full-resolution pixels.
    image
        The slide, for messages.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` bool, True for spots on tissue.

    Examples
    --------
    >>> img = np.full((100, 100, 3), 245, np.uint8)
    >>> img[:, :50] = (200, 120, 170)
    >>> check_tissue(img, 1.0, np.array([[20.0, 50.0], [80.0, 50.0]]),
    ...              spot_diameter_px=10, image="he.png").tolist()
    [True, False]
    """
    mask = detect_tissue(thumbnail)
    if not mask.any():
        raise GR2STDataError(
            f"{image}: no tissue detected (the image is blank or glass only); "
            "check that --image is the H&E slide"
        )
    to_tissue = ndimage.distance_transform_edt(~mask)
    points = np.asarray(centers, dtype=np.float64) * scale
    ty = np.clip(points[:, 1].astype(np.int64), 0, mask.shape[0] - 1)
    tx = np.clip(points[:, 0].astype(np.int64), 0, mask.shape[1] - 1)
    on = to_tissue[ty, tx] <= max(1.0, 0.5 * spot_diameter_px * scale)
    if not on.any():
        raise GR2STDataError(
            f"{image}: none of the {len(on):,} spots lies on the detected tissue; check that "
            "the spots belong to this image (and are in its full-resolution pixels)"
        )
    if not on.all():
        log.warning(
            "%s: %d of %d spots lie off the detected tissue (obs['in_tissue'] is False); "
            "their predictions are extrapolations",
            image,
            int((~on).sum()),
            len(on),
        )
    return np.asarray(on, dtype=bool)


def load_query(
    *,
    spots: str | Path | None = None,
    visium: str | Path | None = None,
    h5ad: str | Path | None = None,
    spatialdata: str | Path | None = None,
    grid: bool = False,
    image: str | Path | None = None,
    mpp: float | None = None,
    pitch_um: float = DEFAULT_PITCH_UM,
    library_id: str | None = None,
    platform: str | None = None,
) -> tuple[QuerySpots, Path, tuple[np.ndarray, float] | None]:
    """The spots of exactly one input, the image to read, and the grid's thumbnail.

    ``h5ad`` may be a section in gr2st's shape, any scanpy/squidpy spatial AnnData
    (:func:`gr2st.io.read_anndata_spatial`), or ``st/<id>.h5ad`` of a HEST folder (read
    with its metadata and whole-slide image by :func:`gr2st.io.read_hest`). Counts are
    not required.

    Returns
    -------
    query, image, thumbnail
        The spots, the slide to read (``image`` or the one the input names) and, for the
        grid, the thumbnail it was computed on (else None).

    Raises
    ------
    GR2STConfigError
        Not exactly one input, or a grid without an image.
    """
    from gr2st.io import read_h5ad, read_hest, read_visium

    given = {"--spots": spots, "--visium": visium, "--h5ad": h5ad, "--spatialdata": spatialdata}
    chosen = [name for name, v in given.items() if v is not None] + (["--grid"] if grid else [])
    if len(chosen) != 1:
        raise GR2STConfigError(
            "give exactly one of --spots, --visium, --h5ad, --spatialdata, --grid "
            f"(got {chosen or 'none'})"
        )
    thumbnail = None
    if spots is not None:
        query = read_spots_csv(spots)
    elif visium is not None:
        query = spots_from_section(read_visium(visium, image=image), source="visium")
    elif h5ad is not None:
        path = Path(h5ad)
        hest_root = path.parent.parent
        if path.parent.name == "st" and (hest_root / "metadata" / f"{path.stem}.json").is_file():
            section = read_hest(hest_root, path.stem, require_counts=False)
            query = spots_from_section(section, source="hest")
        else:
            section = read_h5ad(
                path,
                require_counts=False,
                image=image,
                mpp=mpp,
                library_id=library_id,
                platform=platform,
            )
            query = spots_from_section(section, source="h5ad")
    elif spatialdata is not None:
        from gr2st.io.spatialdata import read_spatialdata

        section = read_spatialdata(
            spatialdata, image=image, mpp=mpp, table=library_id, platform=platform
        )
        query = spots_from_section(section, source="spatialdata")
    else:
        if image is None:
            raise GR2STConfigError("--grid needs --image SLIDE")
        with open_slide(image) as slide:
            thumbnail = slide.thumbnail(THUMBNAIL_PX)
            query = grid_spots(slide, pitch_um=pitch_um, mpp=mpp, thumbnail=thumbnail)
    return query, resolve_image(query, image), thumbnail


def resolve_image(spots: QuerySpots, image: str | Path | None) -> Path:
    """The image to read: the given one, else the one the input (Visium/h5ad) names."""
    chosen = Path(image) if image is not None else spots.image
    if chosen is None:
        raise GR2STDataError(f"{spots.source}: no image; pass --image SLIDE (the input names none)")
    return chosen
