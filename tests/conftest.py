"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from range_server import RangeServer

# ../shared/data/her2st relative to the repository root.
_DEFAULT_HER2ST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "her2st"


@pytest.fixture(autouse=True)
def _restore_cli_output_setup() -> Iterator[None]:
    """Undo what a ``gr2st.cli.main.main()`` run sets up for its process.

    ``main()`` gives the ``gr2st`` logger its stderr handler and replaces
    ``warnings.showwarning``; left in place, they would change what later tests in the same
    worker see, depending on the order xdist hands tests out.
    """
    logger = logging.getLogger("gr2st")
    saved = logger.handlers[:], logger.level, logger.propagate, warnings.showwarning
    yield
    logger.handlers, logger.level, logger.propagate, warnings.showwarning = saved


@pytest.fixture
def range_server() -> Iterator[RangeServer]:
    """A local HTTP server with byte ranges and a request log (``tests/range_server.py``)."""
    server = RangeServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module's tests (``pytest.mark.usefixtures("one_thread")``).

    Tiny tensors: one thread is fastest and does not oversubscribe shared cores.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def her2st_root() -> Path:
    """The real HER2ST folder (``$GR2ST_DATA`` or ``../shared/data/her2st``), else skip.

    ``GR2ST_DATA`` may name the HER2ST folder itself or a data folder holding ``her2st/``.
    """
    env = os.environ.get("GR2ST_DATA")
    root = Path(env) if env else _DEFAULT_HER2ST
    if not (root / "ST-cnts").is_dir() and (root / "her2st" / "ST-cnts").is_dir():
        root = root / "her2st"
    if not (root / "ST-cnts").is_dir():
        pytest.skip(f"HER2ST data not found at {root}; set GR2ST_DATA")
    return root


def squidpy_visium(
    image: Path,
    folder: Path,
    *,
    upscale: int = 4,
    image_mpp: float = 2.0,
    genes: list[str] | None = None,
    counts: bool = False,
    seed: int = 0,
) -> tuple[Path, Path]:
    """A Visium AnnData as ``sc.read_visium``/squidpy give it, over ``image``; written.

    ``image`` (``image_mpp`` µm/px) is the ``hires`` image; the full-resolution image is
    it upscaled ``upscale`` times (written too). Spots: Visium's hexagonal grid (100 µm
    pitch) in full-resolution pixels, 10x barcodes, ``array_row``/``array_col``,
    ``in_tissue``; scale factors as Space Ranger writes them (``spot_diameter_fullres``
    = 65 µm); ``X`` z-scored log counts (negative values, no counts) unless ``counts``.

    Returns
    -------
    h5ad, fullres
        The ``.h5ad`` file and the full-resolution PNG.
    """
    import numpy as np
    import pandas as pd
    from anndata import AnnData
    from PIL import Image

    rng = np.random.default_rng(seed)
    hires = np.asarray(Image.open(image).convert("RGB"))
    full_mpp = image_mpp / upscale
    height, width = hires.shape[0] * upscale, hires.shape[1] * upscale
    fullres = folder / "fullres.png"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(hires).resize((width, height), Image.Resampling.NEAREST).save(fullres)
    pitch = 100.0 / full_mpp
    xs, ys, cols, rows = [], [], [], []
    for r in range(int((height - pitch) // (pitch * np.sqrt(3) / 2)) + 1):
        y = pitch / 2 + r * pitch * np.sqrt(3) / 2
        for k in range(int((width - pitch / 2 * (1 + r % 2)) // pitch) + 1):
            x = pitch / 2 * (1 + r % 2) + k * pitch
            if x < width - 1 and y < height - 1:
                xs.append(x)
                ys.append(y)
                cols.append(2 * k + r % 2)
                rows.append(r)
    n = len(xs)
    genes = genes or [f"GENE{i:03d}" for i in range(10)]
    raw = rng.poisson(3.0, (n, len(genes))).astype(np.float32)
    logged = np.log1p(raw)
    z = (logged - logged.mean(axis=0)) / (logged.std(axis=0) + 1e-6)
    barcodes = ["".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in range(n)]
    adata = AnnData(
        X=(raw if counts else z).astype(np.float32),
        obs=pd.DataFrame({"in_tissue": 1, "array_row": rows, "array_col": cols}, index=barcodes),
        var=pd.DataFrame(index=genes),
    )
    adata.obsm["spatial"] = np.column_stack([xs, ys])
    adata.uns["spatial"] = {
        "V1": {
            "images": {
                "hires": hires.astype(np.float32) / 255.0,
                "lowres": hires[::4, ::4].astype(np.float32) / 255.0,
            },
            "scalefactors": {
                "tissue_hires_scalef": 1.0 / upscale,
                "tissue_lowres_scalef": 0.25 / upscale,
                "spot_diameter_fullres": 65.0 / full_mpp,
                "fiducial_diameter_fullres": 105.0 / full_mpp,
            },
            "metadata": {
                "chemistry_description": "Spatial 3' v1",
                "software_version": "spaceranger-1.3.1",
            },
        }
    }
    path = folder / "visium.h5ad"
    adata.write_h5ad(path)
    return path, fullres


@pytest.fixture
def make_squidpy_visium():
    """``make_squidpy_visium(image, folder, **options)``: see :func:`squidpy_visium`."""
    return squidpy_visium


def spatialdata_visium(
    image: Path,
    folder: Path,
    *,
    full_mpp: float = 0.5,
    hires: float = 0.25,
    polygons: bool = False,
    tables: int = 1,
) -> dict[str, Any]:
    """A SpatialData store as spatialdata-io writes Visium: ``image`` is its hires image.

    Circles (radius = Space Ranger's 65 µm ``spot_diameter_fullres`` / 2; or 55 µm
    squares with ``polygons``) on Visium's hexagonal grid in full-resolution pixels
    (``full_mpp``), the hires image at scale ``hires`` with its transformation to
    ``global``, a table of counts with barcodes and array coordinates (``tables``
    copies). Skips the test when spatialdata is not installed. Also writes the
    full-resolution image (``fullres.png``).
    """
    sd = pytest.importorskip("spatialdata", reason="optional extra gr2st[spatialdata]")
    import warnings

    import anndata
    import geopandas as gpd
    import numpy as np
    import pandas as pd
    from PIL import Image
    from shapely.geometry import Point, box
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    pixels = np.asarray(Image.open(image).convert("RGB"))
    height, width = (round(n / hires) for n in pixels.shape[:2])
    rng = np.random.default_rng(0)
    pitch = 100 / full_mpp
    rows, cols, xs, ys = [], [], [], []
    for r in range(int((height - pitch) // (pitch * np.sqrt(3) / 2)) + 1):
        for k in range(int((width - pitch / 2 * (1 + r % 2)) // pitch) + 1):
            rows.append(r)
            cols.append(2 * k + r % 2)
            xs.append(pitch / 2 * (1 + r % 2) + k * pitch)
            ys.append(pitch / 2 + r * pitch * np.sqrt(3) / 2)
    barcodes = ["".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in rows]
    if polygons:
        side = 55 / full_mpp
        half = side / 2
        geometry = [
            box(x - half, y - half, x + half, y + half) for x, y in zip(xs, ys, strict=True)
        ]
        shapes = gpd.GeoDataFrame(geometry=geometry, index=barcodes)
    else:
        shapes = gpd.GeoDataFrame(
            {"radius": np.full(len(xs), 65 / full_mpp / 2)},
            geometry=[Point(x, y) for x, y in zip(xs, ys, strict=True)],
            index=barcodes,
        )
    counts = rng.poisson(3, (len(rows), 6)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "in_tissue": 1,
            "array_row": rows,
            "array_col": cols,
            "spot_id": barcodes,
            "region": pd.Categorical(["V1"] * len(rows)),
        },
        index=barcodes,
    )
    table = anndata.AnnData(counts, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(6)]))
    table = TableModel.parse(table, region="V1", region_key="region", instance_key="spot_id")
    element = Image2DModel.parse(
        np.moveaxis(pixels, -1, 0),
        dims=("c", "y", "x"),
        transformations={"global": Scale([1 / hires, 1 / hires], axes=("x", "y"))},
    )
    fullres = folder / "fullres.png"
    Image.fromarray(pixels).resize((width, height), Image.Resampling.NEAREST).save(fullres)
    sdata = sd.SpatialData(
        images={"V1_hires_image": element},
        shapes={"V1": ShapesModel.parse(shapes, transformations={"global": Identity()})},
        tables={f"table{i}" if i else "table": table for i in range(tables)},
    )
    store = folder / "visium.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata.write(store)
    return {
        "store": store,
        "fullres": fullres,
        "hires": pixels,
        "xy": np.column_stack([xs, ys]),
        "counts": counts,
        "barcodes": barcodes,
    }


@pytest.fixture
def make_spatialdata_visium():
    """``make_spatialdata_visium(image, folder, **options)``: see :func:`spatialdata_visium`."""
    return spatialdata_visium


class MiniB4:
    """A one-section HER2ST folder made from the real B4: its spot table, its counts of
    the her2st-785 genes and ERBB2, and its H&E image, pixels downscaled ``SCALE`` times."""

    SCALE = 4

    def __init__(self, root: Path) -> None:
        import numpy as np
        import pandas as pd
        from PIL import Image

        from gr2st.genes import get_panel

        counts = pd.read_csv(root / "ST-cnts" / "B4.tsv.gz", sep="\t", index_col=0)
        keep = [g for g in [*get_panel("her2st-785"), "ERBB2"] if g in counts.columns]
        self.counts = counts[keep]
        spots = pd.read_csv(root / "ST-spotfiles" / "B4_selection.tsv", sep="\t")
        spots[["pixel_x", "pixel_y"]] /= self.SCALE
        self.spots = spots
        [image] = (root / "ST-imgs" / "B" / "B4").glob("*.jpg")
        with warnings.catch_warnings():
            # The 9k × 10k JPEG is above Pillow's decompression-bomb warning limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(image) as img:
                img.draft("RGB", (img.size[0] // self.SCALE, img.size[1] // self.SCALE))
                self.image = np.asarray(img.convert("RGB"))

    def write(
        self,
        folder: Path,
        *,
        spots: Any = None,
        counts: Any = None,
        image: Any = None,
        image_bytes: bytes | None = None,
    ) -> Path:
        """Write the folder; ``spots``/``counts``/``image`` replace the B4 tables/pixels."""
        from PIL import Image

        for sub in ("ST-cnts", "ST-spotfiles", "ST-imgs/B/B4"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        table = self.counts if counts is None else counts
        table.to_csv(folder / "ST-cnts" / "B4.tsv.gz", sep="\t")
        (self.spots if spots is None else spots).to_csv(
            folder / "ST-spotfiles" / "B4_selection.tsv", sep="\t", index=False
        )
        path = folder / "ST-imgs" / "B" / "B4" / "B4_HE.jpg"
        if image_bytes is not None:
            path.write_bytes(image_bytes)
        else:
            Image.fromarray(self.image if image is None else image).save(path, quality=90)
        (folder / "panel.txt").write_text("\n".join(self.counts.columns[:50]) + "\n")
        return folder


@pytest.fixture(scope="session")
def mini_b4(her2st_root: Path) -> MiniB4:
    """The real B4 downscaled 4× (see :class:`MiniB4`); skips without the real data."""
    return MiniB4(her2st_root)
