"""Seeded synthetic spatial-transcriptomics sections with matching H&E-like images.

Each spot has a hidden ``latent_state`` (spatially smooth). The state drives both the
expression (state-specific gene programmes) and the image around the spot (nuclear
density, size, shape and stain hue), so a working image→expression model can learn
something and a broken one cannot. This is the fixture of the fast tests of every step.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from PIL import Image
from scipy.ndimage import gaussian_filter, zoom
from scipy.spatial import cKDTree
from skimage.draw import ellipse

from gr2st._constants import (
    ARRAY_X,
    ARRAY_Y,
    CELL_TYPE,
    IMAGE_PATH,
    MICRONS_PER_PIXEL,
    PATIENT,
    SECTION,
    SOURCE_FORMAT,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNS,
)
from gr2st._utils.files import atomic_path

# Per latent state: nuclei per spot area, nucleus radii (px), elongation, darkness, and
# the dominant PanNuke type id it imitates (inflam, neopla, connec, no-neo, necros).
_STATE_LOOK = (
    {"density": 2.0, "radius": 2.5, "elong": 1.0, "dark": 0.85, "type": 3},
    {"density": 0.9, "radius": 5.0, "elong": 1.2, "dark": 0.55, "type": 2},
    {"density": 0.5, "radius": 2.5, "elong": 3.0, "dark": 0.7, "type": 4},
    {"density": 1.2, "radius": 3.5, "elong": 1.1, "dark": 0.65, "type": 5},
    {"density": 0.7, "radius": 1.8, "elong": 1.0, "dark": 0.95, "type": 1},
)
_MARGIN_PX = 40
_MPP = 2.0


def synthetic(
    *,
    n_sections: int = 3,
    sections_per_patient: int = 2,
    n_genes: int = 40,
    grid: tuple[int, int] = (10, 10),
    n_states: int = 3,
    signal: float = 1.5,
    pitch_px: int = 48,
    state_scale: float = 1.5,
    depth: float = 40.0,
    image_dir: str | Path | None = None,
    seed: int = 0,
) -> list[AnnData]:
    """Generate ``n_sections`` sections in gr2st's AnnData shape.

    Parameters
    ----------
    n_sections
        Number of sections; named ``S0``, ``S1``, …
    sections_per_patient
        Consecutive sections share a patient id ``P0``, ``P1``, …
    n_genes
        Number of genes (``GENE000``…); the first ones carry the strongest signal.
    grid
        Spots per section as (rows, columns) of a square grid.
    n_states
        Number of latent spot states (at most 5).
    signal
        Strength of the state → expression link (log-fold scale); 0 gives pure noise.
    pitch_px
        Distance between neighbouring spot centres in image pixels.
    state_scale
        Spatial scale, in spots, of the latent state's patches (the smoothing width of
        the random fields they come from); smaller values mix states more finely.
    depth
        Median total count of a spot (sequencing depth): lower means noisier counts.
    image_dir
        Folder where one PNG per section is written; ``None`` writes no image.
    seed
        Seed of every random choice.

    Returns
    -------
    list of AnnData
        Raw integer counts in ``X`` (CSR), ``obs`` with section, patient, grid
        coordinates, ``latent_state`` and a ``cell_type`` derived from the state.

    Examples
    --------
    >>> secs = synthetic(n_sections=2, n_genes=10, grid=(4, 5))
    >>> secs[0].shape
    (20, 10)
    """
    if not 1 <= n_states <= len(_STATE_LOOK):
        raise ValueError(f"n_states must be in 1..{len(_STATE_LOOK)}, got {n_states}")
    rng = np.random.default_rng(seed)
    genes = [f"GENE{i:03d}" for i in range(n_genes)]
    # Programmes shared by all sections so that training sections inform the test one.
    base = rng.normal(0.5, 1.0, n_genes)
    strength = signal * np.linspace(1.0, 0.2, n_genes)
    loadings = rng.normal(0.0, 1.0, (n_states, n_genes)) * strength
    out = []
    for s in range(n_sections):
        states = _latent_states(rng, grid, n_states, state_scale)
        rows, cols = np.indices(grid)
        ax, ay = cols.ravel() + 1, rows.ravel() + 1
        px = _MARGIN_PX + (ax - 1) * pitch_px + rng.normal(0, 0.5, ax.size)
        py = _MARGIN_PX + (ay - 1) * pitch_px + rng.normal(0, 0.5, ay.size)
        state = states.ravel()
        library = rng.lognormal(np.log(depth), 0.3, state.size)
        rate = np.exp(base[None, :] + loadings[state]) * library[:, None] / n_genes
        # Gamma-Poisson (negative binomial, dispersion 5) counts.
        counts = rng.poisson(rng.gamma(5.0, rate / 5.0))
        name = f"S{s}"
        ids = [f"{x}x{y}" for x, y in zip(ax, ay, strict=True)]
        obs = pd.DataFrame(
            {
                SECTION: name,
                PATIENT: f"P{s // sections_per_patient}",
                ARRAY_X: ax.astype(float),
                ARRAY_Y: ay.astype(float),
                "latent_state": state,
                CELL_TYPE: np.array([_STATE_LOOK[k]["type"] for k in state], dtype=np.int64),
            },
            index=ids,
        )
        adata = AnnData(
            X=sp.csr_matrix(counts.astype(np.int32)),
            obs=obs,
            var=pd.DataFrame(index=genes),
        )
        adata.obsm[SPATIAL] = np.column_stack([px, py])
        image_path = None
        if image_dir is not None:
            size = (
                2 * _MARGIN_PX + (grid[1] - 1) * pitch_px,
                2 * _MARGIN_PX + (grid[0] - 1) * pitch_px,
            )
            image = _render(rng, states, size, pitch_px)
            path = Path(image_dir) / f"{name}.png"
            with atomic_path(path) as tmp:
                Image.fromarray(image).save(tmp, format="PNG")
            image_path = str(path)
        adata.uns[UNS] = {
            IMAGE_PATH: image_path,
            SPOT_DIAMETER_PX: 0.8 * pitch_px,
            MICRONS_PER_PIXEL: _MPP,
            SOURCE_FORMAT: "synthetic",
        }
        out.append(adata)
    return out


def _latent_states(
    rng: np.random.Generator, grid: tuple[int, int], n_states: int, scale: float
) -> np.ndarray:
    fields = np.stack(
        [gaussian_filter(rng.normal(size=grid), sigma=scale, mode="wrap") for _ in range(n_states)]
    )
    return np.asarray(fields.argmax(axis=0), dtype=np.int64)


def _render(
    rng: np.random.Generator, states: np.ndarray, size: tuple[int, int], pitch: int
) -> np.ndarray:
    """Paint an H&E-like RGB image: pink stroma plus state-dependent purple nuclei."""
    width, height = size
    # State of every pixel = state of the nearest spot (grid upsampled, margins clamped).
    grid_h, grid_w = states.shape
    ys = np.clip(np.round((np.arange(height) - _MARGIN_PX) / pitch).astype(int), 0, grid_h - 1)
    xs = np.clip(np.round((np.arange(width) - _MARGIN_PX) / pitch).astype(int), 0, grid_w - 1)
    pixel_state = states[np.ix_(ys, xs)]
    eosin = np.array([236.0, 170.0, 200.0])
    hue_shift = np.array([[0, 0, 0], [-15, 5, 10], [5, -10, -20], [-5, 10, 0], [10, -5, 5]])
    img = eosin + hue_shift[pixel_state]
    noise = zoom(rng.normal(0, 6, (height // 4 + 1, width // 4 + 1, 1)), (4, 4, 1), order=1)
    img = img + noise[:height, :width]
    haem = np.array([70.0, 40.0, 120.0])
    for k in np.unique(states):
        look = _STATE_LOOK[int(k)]
        mask_area = float((pixel_state == k).sum())
        n_nuclei = rng.poisson(look["density"] * mask_area / (pitch * pitch) * 12)
        cand_y = rng.integers(0, height, n_nuclei)
        cand_x = rng.integers(0, width, n_nuclei)
        keep = pixel_state[cand_y, cand_x] == k
        for cy, cx in zip(cand_y[keep], cand_x[keep], strict=True):
            r = look["radius"] * rng.uniform(0.8, 1.2)
            rr, cc = ellipse(
                cy,
                cx,
                r,
                r * look["elong"],
                shape=(height, width),
                rotation=rng.uniform(0, np.pi),
            )
            alpha = look["dark"]
            img[rr, cc] = (1 - alpha) * img[rr, cc] + alpha * haem
    return np.clip(img, 0, 255).astype(np.uint8)


def write_her2st_layout(sections: list[AnnData], root: str | Path) -> Path:
    """Write sections in the public HER2ST folder layout (for end-to-end tests).

    Counts go to ``ST-cnts/<S>.tsv.gz``, spot tables to ``ST-spotfiles/<S>_selection.tsv``
    and each image (when the section has one) to ``ST-imgs/<patient>/<S>/<S>.jpg``.
    Section names must look like HER2ST's (a patient letter and a digit, e.g. ``A1``).

    Examples
    --------
    >>> import tempfile
    >>> secs = synthetic(n_sections=1, n_genes=5, grid=(3, 3))
    >>> secs[0].obs["section"] = "A1"
    >>> root = write_her2st_layout(secs, tempfile.mkdtemp())
    >>> sorted(p.name for p in (root / "ST-cnts").iterdir())
    ['A1.tsv.gz']
    """
    root = Path(root)
    for adata in sections:
        name = str(adata.obs[SECTION].iloc[0])
        counts = pd.DataFrame(
            np.asarray(adata.X.todense()), index=adata.obs_names, columns=adata.var_names
        )
        cnt_path = root / "ST-cnts" / f"{name}.tsv.gz"
        with atomic_path(cnt_path) as tmp, gzip.open(tmp, "wt") as fh:
            counts.to_csv(fh, sep="\t")
        spots = pd.DataFrame(
            {
                "x": adata.obs[ARRAY_X].to_numpy(),
                "y": adata.obs[ARRAY_Y].to_numpy(),
                "new_x": adata.obs[ARRAY_X].to_numpy(),
                "new_y": adata.obs[ARRAY_Y].to_numpy(),
                "pixel_x": adata.obsm[SPATIAL][:, 0],
                "pixel_y": adata.obsm[SPATIAL][:, 1],
                "selected": 1,
            }
        )
        with atomic_path(root / "ST-spotfiles" / f"{name}_selection.tsv") as tmp:
            spots.to_csv(tmp, sep="\t", index=False)
        image_path = adata.uns[UNS][IMAGE_PATH]
        if image_path is not None:
            dest = root / "ST-imgs" / name[0] / name / f"{name}.jpg"
            with atomic_path(dest) as tmp:
                Image.open(image_path).convert("RGB").save(tmp, format="JPEG", quality=95)
    return root


def write_hest_layout(sections: list[AnnData], root: str | Path) -> Path:
    """Write sections in the HEST-1k folder layout (for end-to-end tests).

    Per section ``S`` (its ``obs["section"]``): ``st/S.h5ad`` (a scanpy spatial AnnData
    as HEST stores it: raw counts, ``obs`` ``in_tissue``, ``array_col``, ``array_row``,
    ``pxl_col_in_fullres``, ``pxl_row_in_fullres``, ``obsm["spatial"]`` and
    ``uns["spatial"]["ST"]`` with a downscaled image and its scale factors),
    ``wsis/S.tif`` (the section's image as a tiled TIFF with its resolution) and
    ``metadata/S.json`` (``pixel_size_um_estimated``, ``spot_diameter``,
    ``inter_spot_dist``, ``patient``, ``dataset_title`` ``"synthetic"``). Every section
    needs an image.

    Examples
    --------
    >>> import tempfile
    >>> secs = synthetic(n_sections=1, n_genes=5, grid=(3, 3), image_dir=tempfile.mkdtemp())
    >>> root = write_hest_layout(secs, tempfile.mkdtemp())
    >>> sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*"))
    ['metadata/S0.json', 'st/S0.h5ad', 'wsis/S0.tif']
    """
    import json

    import tifffile

    root = Path(root)
    for adata in sections:
        name = str(adata.obs[SECTION].iloc[0])
        meta = adata.uns[UNS]
        if meta[IMAGE_PATH] is None:
            raise ValueError(f"section {name}: write_hest_layout needs an image")
        mpp = float(meta[MICRONS_PER_PIXEL])
        with Image.open(meta[IMAGE_PATH]) as img:
            pixels = np.asarray(img.convert("RGB"))
        xy = np.asarray(adata.obsm[SPATIAL], dtype=float)
        scale = 0.5
        thumb = np.asarray(
            Image.fromarray(pixels).resize(
                (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale))
            )
        )
        st = AnnData(
            X=sp.csr_matrix(adata.X),
            obs=pd.DataFrame(
                {
                    "in_tissue": 1,
                    "array_col": adata.obs[ARRAY_X].to_numpy(),
                    "array_row": adata.obs[ARRAY_Y].to_numpy(),
                    "pxl_col_in_fullres": xy[:, 0],
                    "pxl_row_in_fullres": xy[:, 1],
                },
                index=adata.obs_names,
            ),
            var=pd.DataFrame(index=adata.var_names),
        )
        st.obsm[SPATIAL] = xy
        st.uns["spatial"] = {
            "ST": {
                "images": {"downscaled_fullres": thumb},
                "scalefactors": {
                    "tissue_downscaled_fullres_scalef": scale,
                    "spot_diameter_fullres": float(meta[SPOT_DIAMETER_PX]),
                },
            }
        }
        with atomic_path(root / "st" / f"{name}.h5ad") as tmp:
            st.write_h5ad(tmp)
        with atomic_path(root / "wsis" / f"{name}.tif") as tmp:
            tifffile.imwrite(
                tmp,
                pixels,
                photometric="rgb",
                tile=(64, 64),
                resolution=(1e4 / mpp, 1e4 / mpp),
                resolutionunit="CENTIMETER",
            )
        pitch = float(np.median(cKDTree(xy).query(xy, k=2)[0][:, 1])) if len(xy) > 1 else 0.0
        record = {
            "id": name,
            "dataset_title": "synthetic",
            "patient": str(adata.obs[PATIENT].iloc[0]),
            "st_technology": "synthetic",
            "pixel_size_um_estimated": mpp,
            "spot_diameter": float(meta[SPOT_DIAMETER_PX]) * mpp,
            "inter_spot_dist": pitch * mpp,
            "spots_under_tissue": adata.n_obs,
        }
        with atomic_path(root / "metadata" / f"{name}.json") as tmp:
            tmp.write_text(json.dumps(record, indent=1))
    return root
