"""SpatialData store of a prediction: the slide, the spot circles and the values.

Elements (``<name>`` is the section's name, made safe for SpatialData):

- ``<name>_image``: the H&E slide as a multiscale image (``c, y, x`` uint8 RGB), read
  from the slide a tile at a time (memory bounded by the chunks being written), with
  levels halving down to about 1,000 pixels;
- ``<name>``: the spots as circles (points with a ``radius`` column) of the spot
  diameter, indexed by spot id;
- ``table``: an AnnData annotating the circles (``region`` / ``spot_id``) with the
  predicted values in ``X``, ``layers["uncertainty"]`` (and ``layers["measured"]``
  when the input had counts), the spot's ``obs`` (``in_tissue``, the provenance
  shares) and the prediction's record in ``uns["gr2st"]`` (bundle, command,
  resolution, spot diameter).

The image and the circles are both in full-resolution slide pixels and map to the
``global`` coordinate system by the identity, so napari-spatialdata overlays the spots
on the tissue; :func:`gr2st.io.read_spatialdata` reads the store back (spots, values
and µm/px). The store is written to a temporary folder next to ``out`` and renamed at
the end, so an interrupted export leaves nothing under the final name.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from gr2st._constants import MEASURED_LAYER, SPOT_DIAMETER_PX, UNCERTAINTY_LAYER, UNS
from gr2st.errors import GR2STConfigError, GR2STDataError, GR2STDependencyError
from gr2st.export._prediction import PREDICTED, read_prediction
from gr2st.image import open_slide

#: The optional extra that installs SpatialData.
EXTRA = "gr2st[spatialdata]"
#: Name of the table element.
TABLE = "table"
#: ``obs`` columns of the table naming the annotated element and the spot.
REGION_KEY = "region"
INSTANCE_KEY = "spot_id"
#: Side of the image chunks read from the slide and written to the store.
CHUNK_PX = 1024
#: The coarsest level of the image pyramid has about this many pixels on its long side.
COARSEST_PX = 1000


def write_spatialdata(
    prediction: AnnData | str | Path,
    out: str | Path,
    *,
    image: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a prediction as a SpatialData ``.zarr`` store (slide, spot circles, table).

    Parameters
    ----------
    prediction
        A prediction (:func:`gr2st.predict.predict_spots`) or a section in gr2st's
        shape, in memory or as an ``.h5ad`` file.
    out
        The store to create (a ``.zarr`` folder).
    image
        The slide the spots are on; default: the one the prediction records
        (``uns["gr2st"]["image_path"]``).
    overwrite
        Replace an existing store.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    GR2STDependencyError
        SpatialData is not installed (``pip install "gr2st[spatialdata]"``).
    GR2STConfigError
        ``out`` exists (without ``overwrite``) or is a file.
    GR2STDataError
        No slide, no spot centres or spot diameter.

    Examples
    --------
    >>> write_spatialdata("slide.h5ad", "slide.zarr")  # doctest: +SKIP
    """
    sd, models, transformations = _import_spatialdata()
    final = Path(out)
    if final.exists() and not final.is_dir():
        raise GR2STConfigError(f"--out {final}: is a file; expected a .zarr folder name")
    if final.exists() and not overwrite:
        raise GR2STConfigError(f"--out {final}: already exists (pass --overwrite to replace it)")
    identity = {"global": transformations.Identity()}
    with read_prediction(prediction) as pred:
        slide_path = Path(image) if image is not None else None
        if slide_path is None and pred.image_path is not None:
            slide_path = Path(pred.image_path)
        if slide_path is None or not slide_path.is_file():
            raise GR2STDataError(
                f"{pred.source}: slide {slide_path or '(none recorded)'} not found; give the "
                "slide the spots are on (--image)"
            )
        name = _element_name(pred.section)
        columns = np.arange(len(pred.genes))
        names = [n for n in (PREDICTED, UNCERTAINTY_LAYER, MEASURED_LAYER) if n in pred.matrices]
        values: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for _, block in pred.blocks(names, columns):
            for n in names:
                values[n].append(block[n])
        obs = _table_obs(pred.obs, pred.spot_ids, name)
        table = AnnData(
            X=np.concatenate(values[PREDICTED]),
            obs=obs,
            var=pd.DataFrame(index=pd.Index(pred.genes)),
            layers={n: np.concatenate(values[n]) for n in names if n != PREDICTED},
        )
        table.uns[UNS] = {**_plain(pred.uns), SPOT_DIAMETER_PX: pred.diameter_px}
        table = models.TableModel.parse(
            table, region=name, region_key=REGION_KEY, instance_key=INSTANCE_KEY
        )
        shapes = models.ShapesModel.parse(
            pred.centres,
            geometry=0,
            radius=np.full(pred.n_spots, pred.diameter_px / 2.0),
            index=pd.Index(pred.spot_ids, name=INSTANCE_KEY),
            transformations=identity,
        )
        with open_slide(slide_path) as slide:
            pixels = _slide_array(slide)
            raster = models.Image2DModel.parse(
                pixels,
                dims=("c", "y", "x"),
                c_coords=["r", "g", "b"],
                scale_factors=_scale_factors(slide.dimensions),
                transformations=identity,
                chunks=(3, CHUNK_PX, CHUNK_PX),
            )
            sdata = sd.SpatialData(
                images={f"{name}_image": raster}, shapes={name: shapes}, tables={TABLE: table}
            )
            _write_atomically(sdata, final, overwrite=overwrite)
    return final


def _import_spatialdata() -> tuple[Any, Any, Any]:
    try:
        import spatialdata
        import spatialdata.models as models
        import spatialdata.transformations as transformations
    except ImportError:
        raise GR2STDependencyError(
            f"writing SpatialData stores needs the optional package spatialdata: "
            f"pip install '{EXTRA}'"
        ) from None
    return spatialdata, models, transformations


def _element_name(section: str) -> str:
    """A SpatialData element name (letters, digits, ``_``, ``-``, ``.``) for ``section``.

    Examples
    --------
    >>> _element_name("C2"), _element_name("slide 1/a")
    ('C2', 'slide_1_a')
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", section).lstrip("_.") or "spots"
    return name


def _table_obs(obs: pd.DataFrame, spot_ids: np.ndarray, name: str) -> pd.DataFrame:
    obs = obs.copy()
    obs.index = pd.Index(spot_ids.astype(str))
    obs[REGION_KEY] = pd.Categorical([name] * len(obs))
    obs[INSTANCE_KEY] = spot_ids.astype(str)
    return obs


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    """The prediction's record without ``None`` (which zarr attributes cannot hold)."""
    return {k: v for k, v in meta.items() if v is not None}


def _scale_factors(dimensions: tuple[int, int]) -> list[int]:
    """Halvings from the full resolution down to about :data:`COARSEST_PX` pixels.

    Examples
    --------
    >>> _scale_factors((8000, 5000)), _scale_factors((900, 900))
    ([2, 2, 2], [])
    """
    levels = 0
    side = float(max(dimensions))
    while side / 2 >= COARSEST_PX:
        side /= 2
        levels += 1
    return [2] * levels


def _slide_array(slide: Any) -> Any:
    """The slide as a lazy ``(3, height, width)`` dask array read a chunk at a time."""
    import dask.array as da
    from dask import delayed

    width, height = slide.dimensions
    rows = []
    for y in range(0, height, CHUNK_PX):
        h = min(CHUNK_PX, height - y)
        row = []
        for x in range(0, width, CHUNK_PX):
            w = min(CHUNK_PX, width - x)
            tile = delayed(_chw)(slide, x, y, w, h)
            row.append(da.from_delayed(tile, shape=(3, h, w), dtype=np.uint8))
        rows.append(da.concatenate(row, axis=2))
    return da.concatenate(rows, axis=1)


def _chw(slide: Any, x: int, y: int, w: int, h: int) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(slide.read_region(x, y, w, h), -1, 0))


def _write_atomically(sdata: Any, final: Path, *, overwrite: bool) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        # Dask reads the slide from threads; one reader at a time keeps its handle safe.
        import dask

        with dask.config.set(scheduler="synchronous"), warnings.catch_warnings():
            # anndata announces a future zarr default once per array written.
            warnings.filterwarnings("ignore", message="zarr v3 autosharding")
            sdata.write(staging / final.name)
        if overwrite and final.exists():
            shutil.rmtree(final)
        os.replace(staging / final.name, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
