"""Test images for every slide backend, shared by the image tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

REPO = Path(__file__).resolve().parents[2]

# Every backend open_slide can choose, with how a test image is written for it.
KINDS = ("png", "jpg", "tiff-strips", "tiff-tiled", "openslide")


def her2st_root() -> Path | None:
    """The real HER2ST folder (env GR2ST_DATA, else ../shared/data/her2st), if present."""
    root = Path(os.environ.get("GR2ST_DATA", REPO / ".." / "shared" / "data" / "her2st"))
    return root if (root / "ST-imgs").is_dir() else None


def coded_image(height: int, width: int) -> np.ndarray:
    """RGB image whose pixels tell their coordinates apart (no two neighbours equal)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 251, y % 251, (7 * x + 13 * y) % 256], axis=-1).astype(np.uint8)


def write_image(kind: str, folder: Path, pixels: np.ndarray) -> tuple[Path, np.ndarray]:
    """Write ``pixels`` for backend ``kind``; return the path and the decoded truth."""
    if kind == "png":
        path = folder / "image.png"
        Image.fromarray(pixels).save(path)
        return path, pixels
    if kind == "jpg":
        path = folder / "image.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        return path, np.asarray(Image.open(path).convert("RGB"))
    if kind == "tiff-strips":
        path = folder / "image.tif"
        tifffile.imwrite(path, pixels, photometric="rgb", rowsperstrip=7, compression="zlib")
        return path, pixels
    if kind == "tiff-tiled":
        path = folder / "image.tiff"
        write_pyramid(path, [pixels, pixels[::2, ::2], pixels[::4, ::4]])
        return path, pixels
    if kind == "openslide":
        # A tiled TIFF under an OpenSlide extension: OpenSlide's generic-tiff driver.
        path = folder / "image.svs"
        tifffile.imwrite(path, pixels, photometric="rgb", tile=(32, 32), compression="zlib")
        return path, pixels
    raise AssertionError(kind)


def write_pyramid(path: Path, levels: list[np.ndarray], **kwargs: object) -> None:
    """Tiled pyramidal TIFF: level 0 with the smaller levels as sub-IFDs."""
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            levels[0],
            photometric="rgb",
            tile=(32, 32),
            compression="zlib",
            subifds=len(levels) - 1,
            **kwargs,  # type: ignore[arg-type]
        )
        for level in levels[1:]:
            tif.write(level, photometric="rgb", tile=(32, 32), compression="zlib", subfiletype=1)


def he_like_batch(n: int, size: int = 48, *, seed: int = 0) -> np.ndarray:
    """H&E-looking patches: pink stroma with purple nuclei, all darker than L* = 80."""
    rng = np.random.default_rng(seed)
    stroma = np.array([205.0, 120.0, 170.0]) + rng.normal(0, 8, (n, 1, 1, 3))
    nuclei = np.array([90.0, 60.0, 140.0]) + rng.normal(0, 8, (n, 1, 1, 3))
    mask = rng.random((n, size, size, 1)) < rng.uniform(0.2, 0.5, (n, 1, 1, 1))
    noise = rng.normal(0, 6, (n, size, size, 3))
    return np.clip(np.where(mask, nuclei, stroma) + noise, 0, 255).astype(np.uint8)
