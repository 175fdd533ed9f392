"""Predict a whole slide with a bundle, in memory linear in the number of spots.

Pipeline (:func:`~gr2st.encoders.encode_spots`): patches are read and stain-normalised
in batches (a background thread prepares the next batch, or with ``workers`` a pool of
worker processes the next few), each batch is encoded and projected to image
embeddings right away, so only the
``(spots, embedding)`` matrix is kept; the retrieval then runs over chunks of spots
against the reference bank. Nothing is ever ``spots × spots`` and at most three patch
batches (with workers, ``2 · workers + 1``) are in memory.

The output AnnData is in gr2st's shape plus the prediction: ``X`` the predicted
log-normalised expression (float32), ``layers[UNCERTAINTY_LAYER]`` the weighted
standard deviation of the retrieved expression, ``obs["provenance_<section>"]`` the
weight share of each training section (rows sum to 1), ``obs["in_tissue"]`` whether the
spot lies on the tissue detected on the slide, ``obsm[SPATIAL]`` the centres,
``layers[MEASURED_LAYER]`` the measured expression when the input has counts, and
``uns["spatial"][library_id]`` the thumbnail and scale factors that
``scanpy.pl.spatial`` reads.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from gr2st._constants import (
    IMAGE_PATH,
    MEASURED_LAYER,
    MICRONS_PER_PIXEL,
    SECTION,
    SOURCE_FORMAT,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNCERTAINTY_LAYER,
    UNS,
)
from gr2st._utils.files import atomic_path
from gr2st.encoders import encode_spots
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.genes import log_normalize
from gr2st.image.slide import Slide, open_slide
from gr2st.image.workers import PatchWorkers
from gr2st.io.geometry import AGREEMENT_TOLERANCE, check_spot_spacing
from gr2st.predict.spots import THUMBNAIL_PX, QuerySpots, check_tissue

if TYPE_CHECKING:  # the bundle's predict() calls predict_spots: the import goes that way
    from gr2st.predict.bundle import Bundle

log = logging.getLogger(__name__)

#: Prefix of the ``obs`` columns holding each training section's weight share.
PROVENANCE_PREFIX = "provenance_"
#: ``uns[UNS]`` fields recording where a prediction came from.
BUNDLE_FIELD = "bundle"
FINGERPRINT_FIELD = "bundle_fingerprint"
COMMAND_FIELD = "command"
PATCH_FIELD = "patch_size_px"
MISSING_MEASURED_FIELD = "genes_not_measured"
#: ``obs`` column of the prediction: the spot lies on the tissue detected on the image.
IN_TISSUE = "in_tissue"
#: Default memory limit of the dense outputs of one prediction (float32 mean + sd).
DEFAULT_MAX_OUTPUT_GB = 4.0


def predict_spots(
    bundle: Bundle,
    image: str | Path,
    spots: QuerySpots,
    *,
    genes: str | Sequence[str] = "panel",
    mpp: float | None = None,
    batch_size: int = 32,
    library_id: str | None = None,
    thumbnail: tuple[np.ndarray, float] | None = None,
    command: Sequence[str] | None = None,
    progress: bool = True,
    max_output_gb: float = DEFAULT_MAX_OUTPUT_GB,
    workers: int = 0,
) -> AnnData:
    """Predict the expression of ``spots`` on ``image`` with a loaded bundle.

    Parameters
    ----------
    bundle
        From :func:`~gr2st.predict.load_bundle` (with its encoder checked).
    image
        The H&E slide (any format :func:`~gr2st.image.open_slide` reads).
    spots
        Where to predict (:func:`read_spots_csv`, :func:`spots_from_section`,
        :func:`grid_spots`).
    genes
        ``"panel"``, ``"all"`` (every gene measured in all training sections) or names.
    mpp
        Microns per pixel of the slide, overriding the input's and the image's metadata
        (used in that order). It sets the patch size: the patch covers the training
        patch's side in microns. When no resolution is known and the bundle knows its
        training one, prediction stops (no silent fallback to the training side in
        pixels).
    batch_size
        Patches read and encoded at once.
    library_id
        Key of ``uns["spatial"]`` (default: the input's section name, else the image's
        file stem).
    thumbnail
        ``(image, scale)`` of the slide when already computed (e.g. for the grid).
    command
        Command line recorded in ``uns[UNS]`` (default ``sys.argv``).
    progress
        Show a progress bar.
    max_output_gb
        Refuse (before reading any patch) when the dense prediction and uncertainty
        matrices would exceed this many gigabytes: ``genes="all"`` on a whole slide
        (100,000 spots × the 13,891 genes of a HER2ST-6 bundle) is 11.1 GB.
    workers
        Worker processes that read and stain-normalise the patches while this process
        encodes them (same output); 0 reads in a background thread here.

    Returns
    -------
    AnnData
        See the module docstring; ``obs["in_tissue"]`` tells which spots lie on the
        tissue detected on the thumbnail (see :func:`~gr2st.predict.check_tissue`).

    Raises
    ------
    GR2STConfigError
        Unknown resolution (pass ``mpp``), or outputs above ``max_output_gb``.
    GR2STDataError
        No tissue on the image, or no spot on the tissue.

    Examples
    --------
    >>> bundle = load_bundle("models/her2st")  # doctest: +SKIP
    >>> pred = predict_spots(bundle, "slide.svs", read_spots_csv("spots.csv"))  # doctest: +SKIP
    """
    if bundle.encoder is None:
        raise GR2STConfigError("predict_spots: load the bundle with check_encoder=True")
    chosen = bundle.resolve_genes(genes)
    check_output_size(spots.n_spots, len(chosen), max_output_gb=max_output_gb)
    image = Path(image)
    stain = bundle.stain_normalizer()
    with open_slide(image) as slide, ExitStack() as stack:
        resolution = _resolution(mpp, spots, slide, bundle)
        size = bundle.patch_px(resolution)
        thumb, scale = thumbnail if thumbnail is not None else slide.thumbnail(THUMBNAIL_PX)
        diameter = spots.spot_diameter_px or _spacing(spots.centers, default=float(size))
        in_tissue = check_tissue(
            thumb, scale, spots.centers, spot_diameter_px=diameter, image=image
        )
        pool = stack.enter_context(PatchWorkers(workers)) if workers > 0 else None
        embeddings = encode_spots(
            slide if pool is None else pool.open(image),
            spots.centers,
            encoder=bundle.encoder,
            size_px=size,
            stain=stain,
            batch_size=batch_size,
            pool=pool,
            transform=bundle.embed,
            dim=int(bundle.meta["bank"]["embedding_dim"]),
            progress=progress,
            desc="predict",
        )
    assert embeddings is not None
    result = bundle.retrieve(embeddings, genes=chosen)
    del embeddings
    assert result.provenance is not None
    obs = spots.obs.copy()
    obs.index = obs.index.astype(str)
    lib = library_id or spots.name or image.stem
    obs[SECTION] = lib
    obs[IN_TISSUE] = in_tissue
    for j, name in enumerate(bundle.train_sections):
        obs[f"{PROVENANCE_PREFIX}{name}"] = result.provenance[:, j]
    adata = AnnData(X=result.mean, obs=obs, var=pd.DataFrame(index=pd.Index(chosen)))
    adata.layers[UNCERTAINTY_LAYER] = result.std
    adata.obsm[SPATIAL] = np.asarray(spots.centers, dtype=np.float64)
    adata.uns[SPATIAL] = {
        lib: {
            "images": {"hires": np.ascontiguousarray(thumb, dtype=np.uint8)},
            "scalefactors": {
                "tissue_hires_scalef": float(scale),
                "spot_diameter_fullres": float(diameter),
            },
        }
    }
    adata.uns[UNS] = {
        IMAGE_PATH: str(image.resolve()),
        SPOT_DIAMETER_PX: float(diameter),
        MICRONS_PER_PIXEL: resolution,
        SOURCE_FORMAT: f"prediction:{spots.source}",
        BUNDLE_FIELD: str(bundle.path.resolve()),
        FINGERPRINT_FIELD: bundle.fingerprint,
        COMMAND_FIELD: list(sys.argv if command is None else command),
        PATCH_FIELD: size,
    }
    if spots.measured is not None:
        measured, missing = measured_expression(
            spots.measured, genes=chosen, library=bundle.panel_genes
        )
        adata.layers[MEASURED_LAYER] = measured
        adata.uns[UNS][MISSING_MEASURED_FIELD] = missing
    return adata


def check_output_size(n_spots: int, n_genes: int, *, max_output_gb: float) -> None:
    """Raise when the float32 prediction and uncertainty matrices exceed ``max_output_gb``.

    Examples
    --------
    >>> check_output_size(1_000, 785, max_output_gb=1.0)
    >>> check_output_size(100_000, 15_000, max_output_gb=4.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STConfigError: 100,000 spots × 15,000 genes need 12.0 GB for the ...
    """
    need = 2 * 4 * n_spots * n_genes / 1e9
    if need > max_output_gb:
        raise GR2STConfigError(
            f"{n_spots:,} spots × {n_genes:,} genes need {_gb(need)} GB for the predictions "
            f"and their uncertainty (limit {_gb(max_output_gb)} GB, --max-output-gb); predict "
            "the panel or a gene list (--genes), fewer spots, or raise the limit"
        )


def _gb(value: float) -> str:
    """Gigabytes with one decimal from 1 GB on, two significant digits below.

    Examples
    --------
    >>> _gb(12.0), _gb(0.0225), _gb(0.01)
    ('12.0', '0.022', '0.01')
    """
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def _resolution(mpp: float | None, spots: QuerySpots, slide: Slide, bundle: Bundle) -> float | None:
    """Microns per pixel: given, else the input's, else the image metadata's; checked."""
    if mpp is not None:
        # The input's own spot geometry outranks a typed number; image metadata may be wrong.
        if spots.mpp is not None and abs(mpp / spots.mpp - 1) > AGREEMENT_TOLERANCE:
            raise GR2STDataError(
                f"{slide.path}: --mpp {mpp:.4g} µm/px disagrees with the {spots.source} "
                f"input's {spots.mpp:.4g} µm/px (its spot geometry); drop --mpp or fix the input"
            )
        if slide.mpp is not None and abs(mpp / slide.mpp - 1) > AGREEMENT_TOLERANCE:
            log.warning(
                "%s: --mpp %.4g µm/px, but the image's metadata gives %.4g; using --mpp",
                slide.path,
                mpp,
                slide.mpp,
            )
        check_spot_spacing(spots.centers, mpp, how="--mpp", source=slide.path)
        return mpp
    if spots.mpp is not None and slide.mpp is not None and abs(spots.mpp / slide.mpp - 1) > 0.1:
        log.warning(
            "%s: the %s input gives %.4g µm/px, the image's metadata %.4g; using the input's "
            "(--mpp chooses)",
            slide.path,
            spots.source,
            spots.mpp,
            slide.mpp,
        )
    resolution = spots.mpp if spots.mpp is not None else slide.mpp
    if resolution is None and bundle.size_um is not None:
        raise GR2STConfigError(
            f"{slide.path}: microns per pixel unknown (neither the {spots.source} input nor the "
            f"image's metadata gives it); pass --mpp, which sets the patch size (the bundle's "
            f"patches cover {bundle.size_um:.0f} µm)"
        )
    if resolution is not None:
        check_spot_spacing(
            spots.centers, resolution, how=f"the {spots.source} input's", source=slide.path
        )
    if resolution is None:
        log.warning(
            "%s: the bundle does not know its training resolution; patches are its %d px "
            "whatever this slide's resolution",
            bundle.path,
            bundle.size_px,
        )
    return resolution


def measured_expression(
    adata: AnnData, *, genes: Sequence[str], library: Sequence[str]
) -> tuple[np.ndarray, list[str]]:
    """Measured counts log-normalised like the bundle's bank, aligned to ``genes``.

    ``log10(1 + 1e4 · counts / library size)`` with the library size summed over the
    ``library`` genes present in ``adata``. Genes not measured are NaN columns and spots
    with a zero library NaN rows.

    Returns
    -------
    values : numpy.ndarray
        float32 ``(n_obs, len(genes))``.
    missing : list of str
        The genes not measured.

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> sec = synthetic(n_sections=1, n_genes=4, grid=(2, 2))[0]
    >>> values, missing = measured_expression(sec, genes=["GENE000", "X"],
    ...                                       library=["GENE000", "GENE001"])
    >>> values.shape, missing, bool(np.isnan(values[:, 1]).all())
    ((4, 2), ['X'], True)
    """
    var = pd.Index(adata.var_names.astype(str))
    lib_genes = [g for g in library if g in var]
    out = np.full((adata.n_obs, len(genes)), np.nan, np.float32)
    missing = [g for g in genes if g not in var]
    if not lib_genes:
        log.warning("measured expression: none of the library genes is measured; left as NaN")
        return out, list(genes)
    if len(lib_genes) < len(library):
        log.warning(
            "measured expression: %d of %d library (panel) genes are not measured; library "
            "sizes use the %d present",
            len(library) - len(lib_genes),
            len(library),
            len(lib_genes),
        )
    x = adata.X if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    x = sp.csr_matrix(x)
    size = np.asarray(x[:, var.get_indexer(lib_genes)].sum(axis=1)).ravel()
    rows = np.flatnonzero(size > 0)
    cols = [i for i, g in enumerate(genes) if g in var]
    if cols and rows.size:
        counts = x[rows][:, var.get_indexer([genes[i] for i in cols])]
        out[np.ix_(rows, np.asarray(cols, dtype=np.int64))] = log_normalize(
            counts, library_size=size[rows]
        )
    return out, missing


def _spacing(centers: np.ndarray, *, default: float) -> float:
    """Median nearest-neighbour distance of the spots (``default`` for one spot)."""
    if len(centers) < 2:
        return default
    distance, _ = cKDTree(centers).query(centers, k=2)
    return float(np.median(distance[:, 1]))


def write_prediction(adata: AnnData, path: str | Path) -> Path:
    """Write a prediction as ``.h5ad``, atomically.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from gr2st.datasets import synthetic
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "slide.h5ad"
    >>> write_prediction(synthetic(n_sections=1, grid=(2, 2))[0], out) == out
    True
    >>> write_prediction(synthetic(n_sections=1, grid=(2, 2))[0], "slide.csv")
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STConfigError: --out slide.csv: expected a .h5ad file name
    """
    final = Path(path)
    if final.suffix != ".h5ad":
        raise GR2STConfigError(f"--out {final}: expected a .h5ad file name")
    with atomic_path(final) as tmp:
        adata.write_h5ad(tmp)
    return final


def plot_genes(adata: AnnData, genes: Sequence[str], *, out: str | Path) -> list[Path]:
    """Draw each gene's prediction and uncertainty over the slide thumbnail as a PNG.

    Files are named ``<out stem>_<gene>.png`` next to ``out``. Spots are drawn as
    circles of the spot diameter on the thumbnail of ``uns["spatial"]`` (the same
    picture ``scanpy.pl.spatial`` gives), with matplotlib's object API so that no pyplot
    state is left behind.

    Examples
    --------
    >>> plot_genes(pred, ["ERBB2"], out="out/slide.h5ad")  # doctest: +SKIP
    [PosixPath('out/slide_ERBB2.png')]
    """
    from matplotlib.collections import EllipseCollection
    from matplotlib.figure import Figure

    unknown = [g for g in genes if g not in adata.var_names]
    if unknown:
        raise GR2STConfigError(
            f"--plot: {unknown} are not among the predicted genes (choose them with --genes)"
        )
    library = next(iter(adata.uns[SPATIAL].values()))
    thumb = library["images"]["hires"]
    scale = float(library["scalefactors"]["tissue_hires_scalef"])
    diameter = float(library["scalefactors"]["spot_diameter_fullres"]) * scale
    xy = np.asarray(adata.obsm[SPATIAL], dtype=np.float64) * scale
    out = Path(out)
    paths = []
    for gene in genes:
        column = adata.var_names.get_loc(gene)
        layers = [
            (np.asarray(adata.X[:, column]).ravel(), f"{gene}: predicted log-expression"),
            (adata.layers[UNCERTAINTY_LAYER][:, column], f"{gene}: uncertainty (neighbour sd)"),
        ]
        fig = Figure(figsize=(11, 5), layout="constrained")
        for ax, (values, title) in zip(fig.subplots(1, 2), layers, strict=True):
            ax.imshow(thumb)
            spots = EllipseCollection(
                widths=diameter,
                heights=diameter,
                angles=0,
                units="xy",
                offsets=xy,
                offset_transform=ax.transData,
                array=values,
                cmap="viridis",
            )
            ax.add_collection(spots)
            fig.colorbar(spots, ax=ax, shrink=0.8)
            ax.set_title(title)
            ax.set_axis_off()
        path = out.with_name(f"{out.stem}_{_safe(gene)}.png")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        paths.append(path)
    return paths


def _safe(name: str) -> str:
    """A gene name usable in a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
