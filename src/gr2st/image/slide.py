"""Read H&E slides of any common format through one small interface.

:func:`open_slide` picks a backend from the file extension:

- ``.jpg``/``.jpeg``/``.png`` → Pillow. Opening reads the header only; the first pixel
  read decodes the whole image once and keeps it in memory (a 9k × 10k HER2ST JPEG
  takes about 2 s and 280 MB).
- ``.tif``/``.tiff`` → tifffile, read lazily tile by tile (or strip by strip) through its
  zarr store, so a whole-slide pyramid is never loaded (a strip TIFF decodes the
  strips a region touches: write large images tiled). Vendor TIFFs that OpenSlide
  recognises (Aperio, Philips, Ventana, …) and TIFFs whose compression tifffile cannot
  decode without ``imagecodecs`` (JPEG, LZW) go to OpenSlide when it can open them
  (tiled files), else to Pillow.
- ``.svs``/``.ndpi``/``.mrxs``/``.scn``/``.svslide``/``.vms``/``.vmu``/``.bif``/``.dcm``
  → OpenSlide; transparent areas are composited onto white.

Coordinates are full-resolution pixels, ``x`` along the width and ``y`` along the
height. EXIF orientation tags are ignored: spot coordinates of ST data refer to the
stored pixel grid.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
from PIL import Image

from gr2st._utils.files import sha256_file
from gr2st._utils.optional import available, require
from gr2st.errors import GR2STDataError

PILLOW_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
OPENSLIDE_SUFFIXES = frozenset(
    {".svs", ".ndpi", ".mrxs", ".scn", ".svslide", ".vms", ".vmu", ".bif", ".dcm"}
)

# Pillow modes with more than 8 bits per sample.
_DEEP_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

# Pillow's decompression-bomb limit is a process-wide setting; it is lifted only while
# one of our own files is opened, under this lock.
_PIL_LIMIT_LOCK = threading.Lock()

# Plausible microscope resolutions (µm per pixel); values outside are placeholders.
_MPP_RANGE = (0.01, 50.0)

# Bytes of level pixels decoded at once while building a thumbnail.
_THUMBNAIL_STRIP_BYTES = 64 << 20

BoxReader = Callable[[int, int, int, int], np.ndarray]


class Slide(ABC):
    """A read-only RGB image addressed in full-resolution pixels.

    Use :func:`open_slide` to get one; close it (or use it as a context manager) to
    release the file.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from PIL import Image
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "he.png"
    >>> Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(path)
    >>> with open_slide(path) as slide:
    ...     slide.dimensions, slide.read_region(-2, 5, 8, 4).shape
    ((60, 40), (4, 8, 3))
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._hash: str | None = None

    @property
    @abstractmethod
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` at full resolution."""

    @property
    @abstractmethod
    def mpp(self) -> float | None:
        """Microns per pixel at full resolution, or ``None`` when the file does not say."""

    @abstractmethod
    def _read_box(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` of the full-resolution image (inside its bounds)."""

    def _thumbnail_source(self, max_size: int) -> tuple[BoxReader, int, int]:
        """A reader of the smallest stored level at least ``max_size`` wide or high."""
        width, height = self.dimensions
        return self._read_box, width, height

    def close(self) -> None:  # noqa: B027 - backends without a file handle keep this no-op
        """Release the file handle."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        width, height = self.dimensions
        return f"{type(self).__name__}({str(self.path)!r}, {width}x{height}, mpp={self.mpp})"

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Read the ``w`` × ``h`` region whose top-left pixel is ``(x, y)``.

        Parts outside the image are filled by reflecting the image at its border
        (``numpy.pad(..., mode="reflect")`` of the whole image: the edge pixel is not
        repeated); the region is never shifted to fit inside.

        Returns
        -------
        numpy.ndarray
            ``uint8`` array of shape ``(h, w, 3)``, RGB.

        Raises
        ------
        GR2STDataError
            When the region does not overlap the image at all (a sign of coordinates
            in the wrong frame or scale).

        Examples
        --------
        >>> import tempfile, pathlib, numpy as np
        >>> from PIL import Image
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "ramp.png"
        >>> img = np.repeat(np.arange(5, dtype=np.uint8)[None, :, None], 3, axis=2)
        >>> Image.fromarray(np.repeat(img, 2, axis=0)).save(path)
        >>> open_slide(path).read_region(-2, 0, 5, 1)[0, :, 0].tolist()
        [2, 1, 0, 1, 2]
        """
        x, y, w, h = int(x), int(y), int(w), int(h)
        if w <= 0 or h <= 0:
            raise GR2STDataError(f"{self.path}: region size must be positive, got {w}x{h}")
        width, height = self.dimensions
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise GR2STDataError(
                f"{self.path}: region x={x} y={y} w={w} h={h} lies outside the "
                f"{width}x{height} image"
            )
        if x >= 0 and y >= 0 and x + w <= width and y + h <= height:
            return np.ascontiguousarray(self._read_box(x, y, x + w, y + h))
        cols = _reflect(np.arange(x, x + w), width)
        rows = _reflect(np.arange(y, y + h), height)
        x0, y0 = int(cols.min()), int(rows.min())
        block = self._read_box(x0, y0, int(cols.max()) + 1, int(rows.max()) + 1)
        return np.ascontiguousarray(block[np.ix_(rows - y0, cols - x0)])

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """Downsample the whole image so that its longer side is ``max_size`` pixels.

        Images already smaller are returned at full resolution (never upsampled).
        Built from the smallest pyramid level that is large enough, in strips of
        bounded memory, by box averaging then a bilinear resize.

        Returns
        -------
        thumbnail : numpy.ndarray
            ``uint8`` RGB array.
        scale : float
            Thumbnail pixels per full-resolution pixel: a full-resolution coordinate
            times ``scale`` is the thumbnail coordinate.

        Examples
        --------
        >>> import tempfile, pathlib, numpy as np
        >>> from PIL import Image
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "he.png"
        >>> Image.fromarray(np.zeros((400, 1000, 3), np.uint8)).save(path)
        >>> thumb, scale = open_slide(path).thumbnail(100)
        >>> thumb.shape, scale
        ((40, 100, 3), 0.1)
        """
        if max_size <= 0:
            raise GR2STDataError(f"{self.path}: thumbnail size must be positive, got {max_size}")
        width, height = self.dimensions
        scale = min(1.0, max_size / max(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        read, level_w, level_h = self._thumbnail_source(max(size))
        return _downsample(read, level_w, level_h, size), scale

    def content_hash(self) -> str:
        """Hex sha256 of the file's bytes, computed on first use and remembered.

        For MIRAX (``.mrxs``) only the index file is hashed, not its data folder.
        """
        if self._hash is None:
            self._hash = sha256_file(self.path)
        return self._hash


def open_slide(path: str | Path) -> Slide:
    """Open an H&E image or whole-slide file, choosing the backend by extension.

    Parameters
    ----------
    path
        A ``.jpg``/``.jpeg``/``.png`` (Pillow), ``.tif``/``.tiff`` (tifffile, lazily;
        OpenSlide or Pillow when tifffile cannot decode it) or an OpenSlide format
        (``.svs``, ``.ndpi``, ``.mrxs``, …).

    Raises
    ------
    GR2STDataError
        When the file is missing, of an unsupported type, or cannot be decoded.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> from PIL import Image
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "he.jpg"
    >>> Image.fromarray(np.full((30, 50, 3), 200, np.uint8)).save(path)
    >>> slide = open_slide(path)
    >>> slide.dimensions, slide.mpp
    ((50, 30), None)
    """
    path = Path(path)
    if not path.is_file():
        raise GR2STDataError(f"{path}: no such image file")
    suffix = path.suffix.lower()
    if suffix in PILLOW_SUFFIXES:
        return _PillowSlide(path)
    if suffix in TIFF_SUFFIXES:
        return _open_tiff(path)
    if suffix in OPENSLIDE_SUFFIXES:
        return _OpenSlideSlide(path)
    known = ", ".join(sorted(PILLOW_SUFFIXES | TIFF_SUFFIXES | OPENSLIDE_SUFFIXES))
    raise GR2STDataError(f"{path}: unsupported image type {suffix or '(none)'!r}; expected {known}")


def uses_pillow(slide: Slide) -> bool:
    """Whether ``slide`` is decoded whole on its first read (JPEG, PNG, plain TIFFs).

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "he.png"
    >>> Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    >>> uses_pillow(open_slide(path))
    True
    """
    return isinstance(slide, _PillowSlide)


def pillow_pixels(path: str | Path) -> np.ndarray:
    """The whole decoded image, as a slide that :func:`uses_pillow` reads it (read-only).

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "he.png"
    >>> Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(path)
    >>> pillow_pixels(path).shape
    (4, 6, 3)
    """
    return _PillowSlide(Path(path))._decoded()


def _open_tiff(path: Path) -> Slide:
    if not available("openslide"):
        # Without OpenSlide (the [wsi] extra) plain TIFFs still read through tifffile.
        try:
            return _TiffSlide(path)
        except _UndecodableError as err:
            try:
                return _PillowSlide(path)
            except GR2STDataError:
                _require_openslide(f"decoding the TIFF {path} ({err})")
            raise GR2STDataError(f"{path}: cannot decode this TIFF ({err})") from None
    import openslide

    vendor = openslide.OpenSlide.detect_format(str(path))
    if vendor is not None and vendor != "generic-tiff":
        return _OpenSlideSlide(path)
    try:
        return _TiffSlide(path)
    except _UndecodableError as err:
        if vendor == "generic-tiff":
            return _OpenSlideSlide(path)
        try:
            return _PillowSlide(path)
        except GR2STDataError:
            raise GR2STDataError(f"{path}: cannot decode this TIFF ({err})") from None


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Map any integer index onto ``0..n-1`` by mirror reflection (edge not repeated)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.mod(index, period)
    return np.where(index < n, index, period - index)


def _downsample(read: BoxReader, width: int, height: int, size: tuple[int, int]) -> np.ndarray:
    """Resize the level behind ``read`` to ``size`` without holding it all in memory."""
    factor = max(1, min(width // size[0], height // size[1]))
    # Strip height is a multiple of the box factor so strips reduce independently.
    rows = max(factor, _THUMBNAIL_STRIP_BYTES // (3 * width) // factor * factor)
    strips = []
    for y0 in range(0, height, rows):
        strip = Image.fromarray(read(0, y0, width, min(height, y0 + rows)))
        strips.append(np.asarray(strip.reduce(factor) if factor > 1 else strip))
    reduced = np.concatenate(strips, axis=0)
    if reduced.shape[1::-1] == size:
        return reduced
    resized = Image.fromarray(reduced).resize(size, Image.Resampling.BILINEAR)
    return np.asarray(resized)


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Decode a Pillow image to an RGB ``uint8`` array, compositing alpha onto white."""
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"))


class _UndecodableError(Exception):
    """tifffile can read the TIFF's structure but not decode its pixels."""


class _PillowSlide(Slide):
    """A Pillow image: headers read on open, pixels decoded in full on first read."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._decode_lock = threading.Lock()
        self._pixels: np.ndarray | None = None
        image = _pillow_open(path)
        with image:
            if image.mode in _DEEP_MODES:
                raise GR2STDataError(
                    f"{path}: expected an 8-bit RGB image, got mode {image.mode!r}"
                )
            self._size: tuple[int, int] = image.size

    @property
    def dimensions(self) -> tuple[int, int]:
        return self._size

    @property
    def mpp(self) -> float | None:
        # JPEG/PNG resolution fields hold display DPI (usually 72), not the scan's.
        return None

    def _read_box(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        # A copy: callers own the regions they read.
        return self._decoded()[y0:y1, x0:x1].copy()

    def _decoded(self) -> np.ndarray:
        # Locked: the first read may come from iter_patches' worker thread.
        with self._decode_lock:
            if self._pixels is None:
                with _pillow_open(self.path) as image:
                    try:
                        pixels = _to_rgb(image)
                    except (OSError, SyntaxError, ValueError) as err:
                        raise GR2STDataError(f"{self.path}: cannot decode image ({err})") from None
                pixels.setflags(write=False)
                self._pixels = pixels
            return self._pixels


def _pillow_open(path: Path) -> Image.Image:
    with _PIL_LIMIT_LOCK:
        limit = Image.MAX_IMAGE_PIXELS
        # Whole-slide JPEGs exceed Pillow's bomb limit; the user chose this file.
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        except (OSError, SyntaxError, ValueError) as err:
            raise GR2STDataError(f"{path}: cannot read image ({err})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = limit


class _TiffSlide(Slide):
    def __init__(self, path: Path) -> None:
        import tifffile
        import zarr

        super().__init__(path)
        try:
            self._tif = tifffile.TiffFile(path)
        except (OSError, ValueError, tifffile.TiffFileError) as err:
            raise GR2STDataError(f"{path}: cannot read TIFF ({err})") from None
        try:
            series = self._tif.series[0]
            self._axes = series.axes
            if series.dtype != np.uint8 or self._axes not in ("YXS", "SYX", "YX"):
                raise GR2STDataError(
                    f"{path}: expected an 8-bit RGB or greyscale TIFF, got axes "
                    f"{self._axes!r} of {series.dtype}"
                )
            self._levels = [
                zarr.open_array(series.aszarr(level=i), mode="r") for i in range(len(series.levels))
            ]
            self._page = series.levels[0].keyframe
            self._decode(self._levels[0], 0, 0, 1, 1)
        except Exception:
            self._tif.close()
            raise

    def _decode(self, level: Any, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        try:
            if self._axes == "SYX":
                block = np.moveaxis(level[:3, y0:y1, x0:x1], 0, -1)
            else:
                block = level[y0:y1, x0:x1]
        except (ValueError, KeyError, NotImplementedError) as err:
            raise _UndecodableError(str(err)) from None
        if block.ndim == 2:
            return np.repeat(block[..., None], 3, axis=2)
        return block[..., :3]

    def _dims(self, level: Any) -> tuple[int, int]:
        shape = level.shape
        return (shape[2], shape[1]) if self._axes == "SYX" else (shape[1], shape[0])

    @property
    def dimensions(self) -> tuple[int, int]:
        return self._dims(self._levels[0])

    @property
    def mpp(self) -> float | None:
        tags = self._page.tags
        if "XResolution" not in tags or "ResolutionUnit" not in tags:
            return None
        numerator, denominator = tags["XResolution"].value
        microns_per_unit = {2: 25400.0, 3: 10000.0}.get(int(tags["ResolutionUnit"].value))
        if microns_per_unit is None or numerator <= 0:
            return None
        mpp = microns_per_unit * denominator / numerator
        # Writers often store a screen DPI (72 dpi ≈ 353 µm/px), not the scan resolution.
        return mpp if _MPP_RANGE[0] <= mpp <= _MPP_RANGE[1] else None

    def _read_box(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self._decode(self._levels[0], x0, y0, x1, y1)

    def _thumbnail_source(self, max_size: int) -> tuple[BoxReader, int, int]:
        # Levels are ordered largest first; take the last one still large enough.
        level = self._levels[0]
        for candidate in self._levels[1:]:
            if max(self._dims(candidate)) < max_size:
                break
            level = candidate
        width, height = self._dims(level)

        def read(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            return self._decode(level, x0, y0, x1, y1)

        return read, width, height

    def close(self) -> None:
        self._tif.close()


def _require_openslide(feature: str) -> Any:
    return require("openslide", feature=feature, extra="wsi", package="openslide-python")


class _OpenSlideSlide(Slide):
    def __init__(self, path: Path) -> None:
        openslide = _require_openslide(f"reading {path.suffix} slides ({path.name})")

        super().__init__(path)
        try:
            self._osr = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, OSError) as err:
            raise GR2STDataError(f"{path}: OpenSlide cannot read it ({err})") from None

    @property
    def dimensions(self) -> tuple[int, int]:
        width, height = self._osr.dimensions
        return int(width), int(height)

    @property
    def mpp(self) -> float | None:
        import openslide

        value = self._osr.properties.get(openslide.PROPERTY_NAME_MPP_X)
        try:
            mpp = float(value) if value is not None else math.nan
        except ValueError:
            return None
        return mpp if math.isfinite(mpp) and mpp > 0 else None

    def _read_level(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        # OpenSlide takes the origin in level-0 pixels and the size in level pixels.
        downsample = self._osr.level_downsamples[level]
        origin = (round(x0 * downsample), round(y0 * downsample))
        rgba = np.asarray(self._osr.read_region(origin, level, (x1 - x0, y1 - y0)))
        # Non-premultiplied RGBA; unscanned areas are fully transparent → white.
        alpha = rgba[..., 3:].astype(np.uint16)
        rgb = (rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
        return rgb.astype(np.uint8)

    def _read_box(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self._read_level(0, x0, y0, x1, y1)

    def _thumbnail_source(self, max_size: int) -> tuple[BoxReader, int, int]:
        width, height = self.dimensions
        level = self._osr.get_best_level_for_downsample(max(width, height) / max_size)
        level_w, level_h = self._osr.level_dimensions[level]

        def read(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            return self._read_level(level, x0, y0, x1, y1)

        return read, int(level_w), int(level_h)

    def close(self) -> None:
        self._osr.close()
