"""Cache keys of ``gr2st features``: everything a cached result depends on.

The image file's sha256, the spot coordinates, the patch size, the stain normaliser's
key, the version of the pixel code (:data:`PIXEL_CODE`), and the encoder (name, weights
hash, backend) or the nuclei source (for imported HoVer-Net results, a fingerprint of
their files). Any change here changes which caches hit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from anndata import AnnData

from gr2st._constants import MICRONS_PER_PIXEL, UNS
from gr2st._utils.files import sha256_bytes, sha256_file
from gr2st.encoders.base import Encoder
from gr2st.encoders.options import image_path, spot_centers
from gr2st.image.stain import StainNormalizer

# Bump when the way features are computed from patches changes (not the encoder itself).
FEATURES_VERSION = 1

#: Version of the code that turns an image into patches, stain-normalised pixels and
#: nuclei (``gr2st.image``): part of every cache key. Change it (any new string) with
#: every change that alters those results; changes that keep them (refactoring, worker
#: processes) keep it, so that existing caches stay valid. Until the worker processes
#: came it was the sha256 of the sources, recomputed on every edit; this is its last
#: value, so caches written before still hit.
PIXEL_CODE = "83c55e88db0f14410c2372f8e995da8ee07bab828372613d323a6920eca86a0f"


def image_key(adata: AnnData, size: int, stain: StainNormalizer | None) -> dict[str, Any]:
    """The part of every cache key that identifies the pixels of each spot's patch."""
    return {
        # The file's sha256, as Slide.content_hash(), without decoding the image.
        "image": sha256_file(image_path(adata)),
        "coords": sha256_bytes(spot_centers(adata).tobytes()),
        "n_spots": adata.n_obs,
        "size_px": size,
        "stain": stain.key if stain is not None else "none",
        # Reading, cropping, normalising and nuclei code: results change when it does.
        "code": PIXEL_CODE,
    }


def features_key(image_key: dict[str, Any], encoder: Encoder) -> dict[str, Any]:
    """The cache key of a section's features: its pixels and the encoder."""
    return {"kind": "features", "version": FEATURES_VERSION, **image_key, **encoder.describe()}


def nuclei_key(
    adata: AnnData, image_key: dict[str, Any], source: str, results: Path | None
) -> dict[str, Any]:
    """The cache key of a section's nuclei: its pixels, or the imported files."""
    key = {"kind": "nuclei", **image_key, "source": source}
    if results is not None:
        # Imported nuclei depend on the files and the spot ids, not on the pixels.
        key.update(
            image=None,
            stain=None,
            results=files_fingerprint(results),
            spot_ids=sha256_bytes(*(str(s).encode() for s in adata.obs_names)),
            mpp=adata.uns.get(UNS, {}).get(MICRONS_PER_PIXEL),
        )
    return key


def files_fingerprint(path: Path) -> str:
    """sha256 of the names, sizes and modification times of ``path`` or the files under it."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        stat = f.stat()
        name = f.relative_to(path) if path.is_dir() else f.name
        h.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def patches_key(image_key: dict[str, Any], out_px: int) -> dict[str, Any]:
    """The cache key of a section's stored patches (:func:`~gr2st.encoders.extract_patches`)."""
    return {"kind": "patches", "out_px": out_px, **image_key}
