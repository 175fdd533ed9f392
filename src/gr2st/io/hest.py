"""Reader for HEST-1k samples (Jaume et al., NeurIPS 2024; ``MahmoodLab/hest`` on Hugging Face).

Layout of a HEST folder (the hub's, and what ``gr2st data fetch hest`` writes), per
sample id ``<id>`` (e.g. ``TENX95``, ``SPA154``)::

    st/<id>.h5ad          expression: a scanpy spatial AnnData, raw counts in X,
                          obsm["spatial"] = spot centres in pixels of the WSI
    wsis/<id>.tif         the whole-slide image (pyramidal generic TIFF), full resolution
    metadata/<id>.json    pixel_size_um_estimated (µm/px of the WSI), spot_diameter and
                          inter_spot_dist (µm), st_technology, patient, dataset_title, …
    patches/<id>.h5       optional: HEST's own 224-px patches at 0.5 µm/px (gr2st cuts
                          its patches from the WSI and does not read them)

The resolution is HEST's ``pixel_size_um_estimated`` (measured by HEST from the spot
grid; the value embedded in the TIFF is not always right), the spot size its
``spot_diameter`` (else the platform's; Xenium and Visium HD pseudo-spots without one
use the spot spacing).

Patients
--------
``--split patient`` needs one id per patient. HEST's ``patient`` field is only unique
within a study ("Patient A" occurs in several), so the patient is
``"<patient> (<dataset_title>)"``; samples whose patient is not recorded are grouped
per study as ``"unknown patient (<dataset_title>)"`` (as HEST-Benchmark groups them),
which never puts one patient on both sides of a split. Without a dataset title the
patient field alone, else the sample id, is used. Slashes become ``-`` (patient names
name the folds' folders).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Final

import anndata
import pandas as pd
from anndata import AnnData

from gr2st.errors import GR2STDataError
from gr2st.io._validate import examples, one_line
from gr2st.io.anndata_spatial import convert_spatial

#: Folders of a HEST sample and the suffix of its file in each.
HEST_FILES: Final = {"st": ".h5ad", "wsis": ".tif", "metadata": ".json", "patches": ".h5"}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# HEST's st_technology values → gr2st platforms (others: geometry from the metadata).
_TECHNOLOGY = {"visium": "visium", "spatial transcriptomics": "st"}


def is_hest_folder(root: str | Path) -> bool:
    """True when ``root`` has HEST's ``st/`` and ``metadata/`` folders.

    Examples
    --------
    >>> import tempfile
    >>> is_hest_folder(tempfile.mkdtemp())
    False
    """
    root = Path(root)
    return (root / "st").is_dir() and (root / "metadata").is_dir()


def hest_path(root: str | Path, sample: str, kind: str) -> Path:
    """Where file ``kind`` (``st``, ``wsis``, ``metadata``, ``patches``) of ``sample`` lives.

    Examples
    --------
    >>> hest_path("hest", "TENX95", "wsis").as_posix()
    'hest/wsis/TENX95.tif'
    """
    return Path(root) / kind / f"{sample}{HEST_FILES[kind]}"


def read_hest_metadata(root: str | Path, sample: str) -> dict[str, Any]:
    """The parsed ``metadata/<sample>.json`` (HEST writes NaN for missing values).

    Raises
    ------
    GR2STDataError
        Missing or unparsable file.
    """
    path = hest_path(root, sample, "metadata")
    if not path.is_file():
        raise GR2STDataError(
            f"{path}: HEST metadata not found; download the sample with "
            f"`gr2st data fetch hest --ids {sample} --dest {root}`"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GR2STDataError(f"{path}: cannot parse HEST metadata ({one_line(exc)})") from None
    if not isinstance(meta, dict):
        raise GR2STDataError(f"{path}: HEST metadata is not a JSON object")
    return meta


def read_hest(
    root: str | Path,
    sample: str,
    *,
    require_counts: bool = True,
) -> AnnData:
    """Read one HEST-1k sample (expression, whole-slide image and metadata).

    Parameters
    ----------
    root
        The HEST folder (holding ``st/``, ``wsis/``, ``metadata/``).
    sample
        Sample id, e.g. ``"TENX95"``; it becomes the section name.
    require_counts
        Raise when ``st/<sample>.h5ad`` holds no raw counts (HEST's do).

    Returns
    -------
    AnnData
        One section in gr2st's shape; ``source_format`` is ``"hest"``, the patient as
        in the module docstring, and ``obs["dataset_title"]``, ``obs["st_technology"]``,
        ``obs["organ"]`` and ``obs["oncotree_code"]`` where the metadata has them.

    Raises
    ------
    GR2STDataError
        A missing file (each named with the command that downloads it), a metadata file
        without a positive ``pixel_size_um_estimated``, or any problem found by
        :func:`gr2st.io.read_anndata_spatial`.

    Examples
    --------
    >>> import tempfile
    >>> from gr2st.datasets import synthetic, write_hest_layout
    >>> root = write_hest_layout(synthetic(n_sections=1, n_genes=5, grid=(3, 3),
    ...                                    image_dir=tempfile.mkdtemp()), tempfile.mkdtemp())
    >>> adata = read_hest(root, "S0")
    >>> adata.shape, adata.uns["gr2st"]["microns_per_pixel"]
    ((9, 5), 2.0)
    """
    root = Path(root)
    if not _ID.match(sample):
        raise GR2STDataError(f"{root}: {sample!r} is not a HEST sample id (e.g. TENX95)")
    st = hest_path(root, sample, "st")
    if not st.is_file():
        known = list_hest(root)["id"].tolist() if is_hest_folder(root) else []
        raise GR2STDataError(
            f"{st}: HEST expression file not found (samples here: "
            f"{examples(known, n=8) if known else 'none'}); download it with "
            f"`gr2st data fetch hest --ids {sample} --dest {root}`"
        )
    meta = read_hest_metadata(root, sample)
    wsi = hest_path(root, sample, "wsis")
    if not wsi.is_file():
        raise GR2STDataError(
            f"{wsi}: HEST whole-slide image not found; download it with "
            f"`gr2st data fetch hest --ids {sample} --dest {root}`"
        )
    mpp = _number(meta.get("pixel_size_um_estimated"))
    if mpp is None or mpp <= 0:
        raise GR2STDataError(
            f"{hest_path(root, sample, 'metadata')}: pixel_size_um_estimated is "
            f"{meta.get('pixel_size_um_estimated')!r}; expected the WSI's µm per pixel"
        )
    technology = _text(meta.get("st_technology"))
    platform = _TECHNOLOGY.get((technology or "").lower())
    spot_um = _number(meta.get("spot_diameter"))
    pitch_um = None if platform else _number(meta.get("inter_spot_dist"))
    try:
        adata = anndata.read_h5ad(st)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise GR2STDataError(f"{st}: cannot read AnnData file ({one_line(exc)})") from None
    section = convert_spatial(
        adata,
        source=str(st),
        default_section=sample,
        library_id=_library(adata),
        image=wsi,
        mpp=mpp,
        platform=platform,
        section=sample,
        patient=hest_patient(meta, sample),
        require_counts=require_counts,
        source_format="hest",
        spot_diameter_um=spot_um if spot_um and spot_um > 0 else None,
        pitch_um=pitch_um if pitch_um and pitch_um > 0 else None,
    )
    for field in ("dataset_title", "st_technology", "organ", "oncotree_code"):
        value = _text(meta.get(field))
        if value is not None:
            section.obs[field] = value
    return section


def hest_patient(meta: dict[str, Any], sample: str) -> str:
    """The patient id of a sample (see the module docstring).

    Examples
    --------
    >>> hest_patient({"patient": "Patient A", "dataset_title": "HER2ST"}, "SPA154")
    'Patient A (HER2ST)'
    >>> hest_patient({"patient": float("nan"), "dataset_title": "HER2+/ER+"}, "SPA1")
    'unknown patient (HER2+-ER+)'
    >>> hest_patient({}, "TENX95")
    'TENX95'
    """
    patient = _text(meta.get("patient"))
    title = _text(meta.get("dataset_title"))
    name = patient or sample if title is None else f"{patient or 'unknown patient'} ({title})"
    # Fold names become folder names: no path separators.
    return name.replace("/", "-").replace("\\", "-")


def list_hest(root: str | Path) -> pd.DataFrame:
    """List the HEST samples under ``root`` (one per ``st/*.h5ad``) without reading them.

    Returns
    -------
    pandas.DataFrame
        Columns ``id``, ``patient``, ``st_technology``, ``has_image``, ``has_metadata``,
        ``has_patches``, sorted by id.

    Examples
    --------
    >>> import tempfile
    >>> from gr2st.datasets import synthetic, write_hest_layout
    >>> root = write_hest_layout(synthetic(n_sections=2, n_genes=5, grid=(3, 3),
    ...                                    image_dir=tempfile.mkdtemp()), tempfile.mkdtemp())
    >>> list_hest(root)[["id", "patient", "has_image"]].values.tolist()
    [['S0', 'P0 (synthetic)', True], ['S1', 'P0 (synthetic)', True]]
    """
    root = Path(root)
    if not (root / "st").is_dir():
        raise GR2STDataError(f"{root}: no st/ folder; expected the HEST layout (st/, wsis/, …)")
    rows = []
    for path in sorted((root / "st").glob("*.h5ad")):
        sample = path.stem
        has_meta = hest_path(root, sample, "metadata").is_file()
        meta = read_hest_metadata(root, sample) if has_meta else {}
        rows.append(
            {
                "id": sample,
                "patient": hest_patient(meta, sample),
                "st_technology": _text(meta.get("st_technology")),
                "has_image": hest_path(root, sample, "wsis").is_file(),
                "has_metadata": has_meta,
                "has_patches": hest_path(root, sample, "patches").is_file(),
            }
        )
    columns = ["id", "patient", "st_technology", "has_image", "has_metadata", "has_patches"]
    return pd.DataFrame(rows, columns=columns)


def _library(adata: AnnData) -> str | None:
    # HEST stores its downscaled WSI under uns["spatial"]["ST"]; take it when it is alone.
    libraries = adata.uns.get("spatial")
    if isinstance(libraries, dict) and len(libraries) == 1:
        return str(next(iter(libraries)))
    return None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text if text and text.lower() != "nan" else None
