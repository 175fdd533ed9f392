"""The options of ``gr2st features`` checked and resolved, and a section's image inputs.

Where a section's image is (:func:`image_path`), its spot centres (:func:`spot_centers`)
and patch side (:func:`section_patch_px`); the stain (:func:`resolve_stain`) and nuclei
(:func:`parse_nuclei`) options turned into objects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from anndata import AnnData

from gr2st._constants import IMAGE_PATH, MICRONS_PER_PIXEL, SPATIAL, UNS
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.image.patches import patch_size_px
from gr2st.image.stain import StainNormalizer, get_stain_normalizer
from gr2st.sections import section_label

StainOption = str | StainNormalizer | None


def image_path(adata: AnnData) -> Path:
    """The H&E image of ``adata`` (``uns[UNS][IMAGE_PATH]``), checked to exist."""
    path = adata.uns.get(UNS, {}).get(IMAGE_PATH)
    name = section_label(adata)
    if not path:
        raise GR2STDataError(
            f"section {name}: uns[{UNS!r}][{IMAGE_PATH!r}] is empty; image features need the "
            "H&E image"
        )
    path = Path(path)
    if not path.is_file():
        raise GR2STDataError(f"section {name}: image file {path} does not exist")
    return path


def spot_centers(adata: AnnData) -> np.ndarray:
    """``obsm[SPATIAL]`` as a C-contiguous float64 ``(n_obs, 2)`` array."""
    if SPATIAL not in adata.obsm:
        raise GR2STDataError(f"section {section_label(adata)}: obsm[{SPATIAL!r}] is missing")
    centers = np.ascontiguousarray(adata.obsm[SPATIAL], dtype=np.float64)
    if centers.shape != (adata.n_obs, 2):
        raise GR2STDataError(
            f"section {section_label(adata)}: obsm[{SPATIAL!r}] must have shape "
            f"({adata.n_obs}, 2), got {centers.shape}"
        )
    return centers


def resolve_stain(stain: StainOption) -> StainNormalizer | None:
    """``"reinhard"``/``"macenko"`` → a normaliser; ``None``/``"none"`` → None (no-op).

    Examples
    --------
    >>> resolve_stain("none") is None
    True
    >>> resolve_stain("reinhard").key.startswith("reinhard-")
    True
    """
    if stain is None or stain == "none":
        return None
    if isinstance(stain, str):
        return get_stain_normalizer(stain)
    if not isinstance(stain, StainNormalizer):
        raise GR2STConfigError(f"stain must be a name, None or a StainNormalizer, got {stain!r}")
    return stain


def parse_nuclei(nuclei: str) -> tuple[str, Path | None]:
    """``"classical"`` / ``"hovernet:<path>"`` / ``"none"`` → (source, HoVer-Net results).

    Examples
    --------
    >>> parse_nuclei("classical")
    ('classical', None)
    """
    source, sep, rest = nuclei.partition(":")
    if source == "hovernet":
        if not sep or not rest:
            raise GR2STConfigError(
                "nuclei='hovernet:<path>' needs the HoVer-Net results (folder or JSON file)"
            )
        path = Path(rest).expanduser()
        if not path.exists():
            raise GR2STConfigError(f"HoVer-Net results {path} do not exist")
        return source, path
    if source in ("classical", "none") and not sep:
        return source, None
    raise GR2STConfigError(
        f"nuclei must be 'classical', 'hovernet:<path>' or 'none', got {nuclei!r}"
    )


def section_patch_px(adata: AnnData, size_px: int | None, patch_um: float | None) -> int:
    """The spot patch side of a section, from pixels or microns (its ``MICRONS_PER_PIXEL``)."""
    mpp = adata.uns.get(UNS, {}).get(MICRONS_PER_PIXEL)
    return patch_size_px(patch_px=size_px, patch_um=patch_um, mpp=mpp)


def check_batch_size(batch_size: int) -> None:
    """Raise unless ``batch_size`` is a positive integer."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise GR2STConfigError(f"batch_size must be a positive integer, got {batch_size!r}")


def check_workers(workers: int) -> None:
    """Raise unless ``workers`` is a non-negative integer."""
    if not isinstance(workers, int) or workers < 0:
        raise GR2STConfigError(f"workers must be a non-negative integer, got {workers!r}")
