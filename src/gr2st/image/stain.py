"""Stain normalisation of H&E patches: Reinhard (default), Macenko, or none.

Every normaliser maps a ``uint8`` batch ``(B, H, W, 3)`` to a batch of the same shape
and exposes a stable :attr:`StainNormalizer.key` naming the method and its reference
statistics, for cache keys.

Reinhard (LAB mean/std matching), vectorised over the batch:

- each pixel gets a tissue weight from its CIELAB lightness ``L*``: 1 at or below
  ``tissue_lightness[0]``, 0 at or above ``tissue_lightness[1]``, linear in between
  (background glass is bright: ``L* ≈ 92-96`` on the HER2ST scans, tissue mostly below 85);
- each patch's LAB mean and standard deviation are weighted by it, so background does
  not dilute them; every pixel is then mapped ``(lab - mean) * ref_std / std + ref_mean``
  and the result is blended with the original in RGB by the same weight, so white
  background stays exactly as it was and there is no seam at the threshold;
- a patch whose weights sum to less than ``min_tissue`` of its pixels (nearly empty
  glass) is returned unchanged.

The default reference ships in ``gr2st/image/data/reinhard_reference.json``: the
statistics of a typical HER2ST spot patch (pooled mean, within-patch standard deviation;
``scripts/compute_stain_reference.py`` computes them). :meth:`ReinhardNormalizer.fit`
takes a reference image's own statistics instead. Scans with dim, tinted glass (HER2ST
B4: ``L* ≈ 84``) have that glass weighted as pale tissue. torchstain's
Reinhard is not used: it normalises one image at a time, includes background in the
statistics and has no notion of a tissue weight.

Macenko uses torchstain's NumPy implementation patch by patch. Patches with fewer than
``min_tissue`` stained pixels (optical density at least ``beta`` in every channel), whose
stained pixels have a single colour (no stain plane to estimate), or on which the
stain-vector estimate fails numerically, are returned unchanged.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from skimage.color import rgb2lab

from gr2st._registry import Registry
from gr2st._utils.optional import require
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.image.color import lab_to_rgb, rgb_to_lab
from gr2st.image.slide import Slide, open_slide

ReferenceImage = np.ndarray | Slide | str | Path

# L* ramp separating tissue (weight 1) from background glass (weight 0). The lower end
# is the usual luminosity tissue threshold (L* < 80, e.g. StainTools); the ramp up to 90
# keeps pale eosin partly in.
DEFAULT_TISSUE_LIGHTNESS = (80.0, 90.0)
# Below this share of tissue (Reinhard: summed weight; Macenko: stained pixels) a patch
# is left as is: its statistics would describe glass, not stain.
DEFAULT_MIN_TISSUE = 0.05
# Reference images larger than this are fitted on a thumbnail of REFERENCE_THUMBNAIL_PX.
REFERENCE_MAX_PIXELS = 1 << 27
REFERENCE_THUMBNAIL_PX = 8192
# Pixels converted to LAB at once while fitting (bounds memory to ~100 MB).
_FIT_CHUNK_PIXELS = 1 << 22
# Optical-density variance below which the stained pixels do not span a plane.
_MIN_PLANE_VARIANCE = 1e-10
# Pixels Macenko's reference fit uses (a seeded uniform sample of the reference image).
_MACENKO_FIT_PIXELS = 1 << 20

STAIN_NORMALIZERS: Registry[type[StainNormalizer]] = Registry("stain normaliser")

REFERENCE_FILE = "reinhard_reference.json"


def tissue_weight(
    lightness: np.ndarray, *, tissue_lightness: tuple[float, float] = DEFAULT_TISSUE_LIGHTNESS
) -> np.ndarray:
    """Per-pixel tissue weight in ``[0, 1]`` from CIELAB lightness ``L*`` (0-100).

    Examples
    --------
    >>> tissue_weight(np.array([50.0, 85.0, 95.0])).tolist()
    [1.0, 0.5, 0.0]
    """
    lo, hi = tissue_lightness
    if not 0 <= lo < hi <= 100:
        raise GR2STConfigError(f"tissue_lightness must satisfy 0 <= lo < hi <= 100, got {lo, hi}")
    weight = (hi - np.asarray(lightness)) / (hi - lo)
    return np.clip(weight, 0.0, 1.0).astype(np.asarray(lightness).dtype, copy=False)


@dataclass
class LabMoments:
    """Running tissue-weighted first and second moments of CIELAB pixels.

    Add RGB images (or slides, read in strips) with :meth:`add`, or other moments with
    :meth:`merge`; :attr:`mean` and :attr:`std` are the weighted statistics of
    everything added.

    Attributes
    ----------
    weight
        Summed tissue weight of the pixels added.
    pixels
        Number of pixels added.
    centre
        Weighted LAB mean so far (zeros while ``weight`` is 0).
    spread
        Weighted sum of squared deviations from ``centre``, per LAB channel.

    Examples
    --------
    >>> moments = LabMoments()
    >>> moments.add(np.full((4, 4, 3), [200, 120, 160], np.uint8))
    >>> moments.weight, moments.std.round(6).tolist()
    (16.0, [0.0, 0.0, 0.0])
    """

    tissue_lightness: tuple[float, float] = DEFAULT_TISSUE_LIGHTNESS
    weight: float = 0.0
    pixels: int = 0
    centre: np.ndarray = field(default_factory=lambda: np.zeros(3))
    spread: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def add(self, image: ReferenceImage) -> None:
        """Accumulate the pixels of an RGB ``uint8`` array (any ``(..., 3)``) or a slide."""
        if isinstance(image, Slide | str | Path):
            self._add_slide(image)
            return
        pixels = _check_rgb(image, "reference image").reshape(-1, 3)
        for start in range(0, len(pixels), _FIT_CHUNK_PIXELS):
            lab = rgb2lab(pixels[start : start + _FIT_CHUNK_PIXELS]).astype(np.float64)
            w = tissue_weight(lab[:, 0], tissue_lightness=self.tissue_lightness)
            mass = float(w.sum())
            chunk = LabMoments(self.tissue_lightness, mass, len(lab))
            if mass > 0:
                chunk.centre = w @ lab / mass
                chunk.spread = w @ (lab - chunk.centre) ** 2
            self.merge(chunk)

    def merge(self, other: LabMoments) -> None:
        """Add the pixels summarised by ``other`` (Chan et al.'s pairwise update)."""
        if other.tissue_lightness != self.tissue_lightness:
            raise GR2STConfigError(
                f"cannot merge moments weighted by L* ramps {other.tissue_lightness} and "
                f"{self.tissue_lightness}"
            )
        # Means and summed squared deviations merge without E[x²] - E[x]² cancellation.
        self.pixels += other.pixels
        total = self.weight + other.weight
        if other.weight == 0:
            return
        delta = other.centre - self.centre
        self.centre = self.centre + delta * (other.weight / total)
        self.spread = self.spread + other.spread + delta**2 * (self.weight * other.weight / total)
        self.weight = total

    def _add_slide(self, source: Slide | str | Path) -> None:
        slide = source if isinstance(source, Slide) else open_slide(source)
        try:
            width, height = slide.dimensions
            if width * height > REFERENCE_MAX_PIXELS:
                self.add(slide.thumbnail(REFERENCE_THUMBNAIL_PX)[0])
                return
            rows = max(1, _FIT_CHUNK_PIXELS // width)
            for y0 in range(0, height, rows):
                self.add(slide.read_region(0, y0, width, min(rows, height - y0)))
        finally:
            if slide is not source:
                slide.close()

    @property
    def mean(self) -> np.ndarray:
        """Weighted LAB mean ``(3,)``."""
        self._check()
        return self.centre.copy()

    @property
    def std(self) -> np.ndarray:
        """Weighted LAB standard deviation ``(3,)`` (population, not sample)."""
        self._check()
        return np.sqrt(self.spread / self.weight)

    def _check(self) -> None:
        if self.weight <= 0:
            raise GR2STDataError(
                "reference image has no tissue: every pixel is lighter than "
                f"L*={self.tissue_lightness[1]}"
            )


class StainNormalizer(ABC):
    """Map ``uint8`` RGB batches to a reference stain appearance."""

    name: ClassVar[str]

    @property
    @abstractmethod
    def key(self) -> str:
        """Stable id of the method, its settings and its reference statistics."""

    @abstractmethod
    def fit(self, image: ReferenceImage) -> Self:
        """Take the reference statistics from ``image`` (array, slide or image path)."""

    @abstractmethod
    def transform(self, batch: np.ndarray) -> np.ndarray:
        """Normalise a ``uint8`` batch ``(B, H, W, 3)``; returns the same shape and dtype."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.transform(batch)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r})"


@STAIN_NORMALIZERS.register("none")
class NoNormalizer(StainNormalizer):
    """Identity: patches keep the colours of the scan.

    Examples
    --------
    >>> batch = np.zeros((2, 8, 8, 3), np.uint8)
    >>> NoNormalizer().transform(batch) is batch
    True
    """

    name = "none"

    @property
    def key(self) -> str:
        return "none"

    def fit(self, image: ReferenceImage) -> Self:
        raise GR2STConfigError("stain normaliser 'none' takes no reference image")

    def transform(self, batch: np.ndarray) -> np.ndarray:
        return _check_batch(batch)


@STAIN_NORMALIZERS.register("reinhard")
class ReinhardNormalizer(StainNormalizer):
    """Reinhard colour transfer: match each patch's tissue LAB mean/std to a reference.

    Parameters
    ----------
    mean, std
        Reference LAB statistics; ``None`` loads the shipped HER2ST reference.
    tissue_lightness
        ``(lo, hi)`` ``L*`` ramp of the tissue weight (see the module docstring).
    min_tissue
        Patches with less tissue weight than this share of their pixels are unchanged.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> batch = rng.integers(60, 200, (2, 32, 32, 3), dtype=np.uint8)
    >>> ReinhardNormalizer().transform(batch).shape
    (2, 32, 32, 3)
    """

    name = "reinhard"

    def __init__(
        self,
        *,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
        tissue_lightness: tuple[float, float] = DEFAULT_TISSUE_LIGHTNESS,
        min_tissue: float = DEFAULT_MIN_TISSUE,
    ) -> None:
        if (mean is None) != (std is None):
            raise GR2STConfigError("give both the reference mean and std, or neither")
        if mean is None or std is None:
            reference = load_reference()
            mean, std = reference["mean"], reference["std"]
        self.mean = np.asarray(mean, dtype=np.float64).reshape(3)
        self.std = np.asarray(std, dtype=np.float64).reshape(3)
        if not (np.isfinite(self.mean).all() and (self.std > 0).all()):
            raise GR2STConfigError(f"invalid Reinhard reference mean={mean} std={std}")
        tissue_weight(np.zeros(1), tissue_lightness=tissue_lightness)  # validates the ramp
        if not 0 <= min_tissue < 1:
            raise GR2STConfigError(f"min_tissue must be in [0, 1), got {min_tissue}")
        self.tissue_lightness = (float(tissue_lightness[0]), float(tissue_lightness[1]))
        self.min_tissue = float(min_tissue)

    @property
    def key(self) -> str:
        return _key(
            self.name,
            mean=self.mean,
            std=self.std,
            tissue_lightness=self.tissue_lightness,
            min_tissue=self.min_tissue,
        )

    def fit(self, image: ReferenceImage) -> Self:
        """Set the reference to the tissue-weighted LAB statistics of ``image``.

        A path or slide is read at full resolution in strips, or as a thumbnail of
        ``REFERENCE_THUMBNAIL_PX`` when larger than ``REFERENCE_MAX_PIXELS``.
        """
        moments = LabMoments(tissue_lightness=self.tissue_lightness)
        moments.add(image)
        self.mean, self.std = moments.mean, np.maximum(moments.std, 1e-6)
        return self

    def transform(self, batch: np.ndarray) -> np.ndarray:
        batch = _check_batch(batch)
        out = batch.copy()
        if batch.size == 0:
            return out
        rgb = batch.astype(np.float32) / 255
        lab = rgb_to_lab(batch)
        weight = tissue_weight(lab[..., 0], tissue_lightness=self.tissue_lightness)
        mass = weight.sum(axis=(1, 2), dtype=np.float64)
        keep = np.flatnonzero(mass >= self.min_tissue * batch.shape[1] * batch.shape[2])
        if keep.size == 0:
            return out
        lab, weight, rgb, mass = lab[keep], weight[keep], rgb[keep], mass[keep]
        mean = np.einsum("bhw,bhwc->bc", weight, lab, dtype=np.float64) / mass[:, None]
        centred = lab - mean[:, None, None, :].astype(np.float32)
        var = np.einsum("bhw,bhwc->bc", weight, centred * centred, dtype=np.float64)
        std = np.sqrt(var / mass[:, None])
        gain = (self.std / np.maximum(std, 1e-6)).astype(np.float32)
        mapped = centred * gain[:, None, None, :] + self.mean.astype(np.float32)
        np.clip(mapped[..., 0], 0, 100, out=mapped[..., 0])
        # Cap b* where Z would turn negative: skimage would clip it there too, with a warning.
        b_max = 200 * (mapped[..., 0] + 16) / 116
        np.minimum(mapped[..., 2], b_max, out=mapped[..., 2])
        normed = lab_to_rgb(mapped)
        blended = rgb + weight[..., None] * (normed - rgb)
        out[keep] = np.clip(np.rint(blended * 255), 0, 255).astype(np.uint8)
        return out


@STAIN_NORMALIZERS.register("macenko")
class MacenkoNormalizer(StainNormalizer):
    """Macenko stain-vector normalisation (torchstain, NumPy backend), patch by patch.

    The default reference is torchstain's (the stain matrix and maximal concentrations
    of Macenko's reference implementation); :meth:`fit` replaces it.

    Parameters
    ----------
    io
        Transmitted light intensity (background brightness).
    alpha
        Percentile of the stain angle distribution taken as the extreme stain vectors.
    beta
        Optical density below which a pixel counts as unstained.
    min_tissue
        Patches with a smaller share of stained pixels are returned unchanged.
    seed
        Seed of the pixel sample a reference image is fitted on.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> batch = rng.integers(60, 200, (2, 32, 32, 3), dtype=np.uint8)
    >>> MacenkoNormalizer().transform(batch).shape
    (2, 32, 32, 3)
    """

    name = "macenko"

    def __init__(
        self,
        *,
        io: float = 240.0,
        alpha: float = 1.0,
        beta: float = 0.15,
        min_tissue: float = DEFAULT_MIN_TISSUE,
        seed: int = 0,
    ) -> None:
        torchstain = require("torchstain", feature="Macenko stain normalisation", extra="macenko")
        if not (io > 0 and 0 < alpha < 50 and beta >= 0 and 0 <= min_tissue < 1):
            raise GR2STConfigError(
                f"invalid Macenko settings io={io} alpha={alpha} beta={beta} "
                f"min_tissue={min_tissue}"
            )
        self._impl: Any = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
        self.io, self.alpha, self.beta = float(io), float(alpha), float(beta)
        self.min_tissue = float(min_tissue)
        self.seed = seed

    @property
    def key(self) -> str:
        return _key(
            self.name,
            stain_matrix=np.asarray(self._impl.HERef),
            max_concentration=np.asarray(self._impl.maxCRef),
            io=self.io,
            alpha=self.alpha,
            beta=self.beta,
            min_tissue=self.min_tissue,
        )

    def fit(self, image: ReferenceImage) -> Self:
        """Estimate the reference stain matrix from ``image`` (a sample of its pixels)."""
        pixels = _reference_array(image).reshape(-1, 3)
        if len(pixels) > _MACENKO_FIT_PIXELS:
            rng = np.random.default_rng(self.seed)
            pixels = pixels[rng.choice(len(pixels), _MACENKO_FIT_PIXELS, replace=False)]
        if not self._has_stains(pixels):
            raise GR2STDataError(
                "Macenko reference image has too few stained pixels, or only one stain colour"
            )
        with np.errstate(divide="raise", invalid="raise"):
            self._impl.fit(pixels[:, None, :], Io=self.io, alpha=self.alpha, beta=self.beta)
        return self

    def transform(self, batch: np.ndarray) -> np.ndarray:
        batch = _check_batch(batch)
        out = batch.copy()
        for i, patch in enumerate(batch):
            if not self._has_stains(patch.reshape(-1, 3)):
                continue
            try:
                # Degenerate stain estimates show up as 0/0 or x/0: raise, not NaN pixels.
                with np.errstate(divide="raise", invalid="raise"):
                    normed, _, _ = self._impl.normalize(
                        patch, Io=self.io, alpha=self.alpha, beta=self.beta, stains=False
                    )
            except (FloatingPointError, np.linalg.LinAlgError, ValueError, IndexError):
                continue
            out[i] = normed
        return out

    def _has_stains(self, pixels: np.ndarray) -> bool:
        """Enough stained pixels (torchstain's criterion), spread over a plane in OD space."""
        density = -np.log((pixels + 1.0) / self.io)
        stained = density[np.all(density >= self.beta, axis=1)]
        if len(stained) < max(3, self.min_tissue * len(pixels)):
            return False
        # Two stain vectors span a plane; a cloud flatter than that (one flat colour)
        # makes the eigenvector choice arbitrary and the output meaningless.
        return bool(np.linalg.eigvalsh(np.cov(stained.T))[-2] > _MIN_PLANE_VARIANCE)


def get_stain_normalizer(
    name: str = "reinhard", *, reference: ReferenceImage | None = None
) -> StainNormalizer:
    """Build a stain normaliser by name, optionally fitted on a reference image.

    Parameters
    ----------
    name
        ``"reinhard"`` (default), ``"macenko"`` or ``"none"``.
    reference
        Reference image (array, slide or path); ``None`` keeps the method's default
        reference (shipped HER2ST statistics for Reinhard, torchstain's for Macenko).

    Raises
    ------
    GR2STConfigError
        Unknown name, or a reference given to ``"none"``.

    Examples
    --------
    >>> get_stain_normalizer("none").key
    'none'
    >>> get_stain_normalizer().key.startswith("reinhard-")
    True
    """
    normalizer = STAIN_NORMALIZERS.get(name)()
    if reference is not None:
        normalizer.fit(reference)
    return normalizer


def load_reference() -> dict[str, Any]:
    """The shipped Reinhard reference (``mean``, ``std`` and how they were computed).

    Examples
    --------
    >>> len(load_reference()["mean"])
    3
    """
    text = (resources.files("gr2st.image") / "data" / REFERENCE_FILE).read_text("utf-8")
    reference: dict[str, Any] = json.loads(text)
    return reference


def _key(name: str, **settings: Any) -> str:
    # Rounded so that a value surviving a JSON or float32 round trip keeps its key.
    canonical = {
        k: np.round(np.asarray(v, dtype=np.float64), 6).tolist() for k, v in settings.items()
    }
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
    return f"{name}-{digest[:16]}"


def _check_rgb(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim < 2 or image.shape[-1] != 3:
        raise GR2STDataError(
            f"{what} must be a uint8 RGB array (..., 3), got {image.dtype} {image.shape}"
        )
    return image


def _check_batch(batch: np.ndarray) -> np.ndarray:
    batch = _check_rgb(batch, "stain normaliser input")
    if batch.ndim != 4:
        raise GR2STDataError(f"stain normaliser input must be (B, H, W, 3), got {batch.shape}")
    return batch


def _reference_array(image: ReferenceImage) -> np.ndarray:
    """Pixels of a reference given as array, slide or path (large slides: thumbnail)."""
    if not isinstance(image, Slide | str | Path):
        return _check_rgb(image, "reference image")
    slide = image if isinstance(image, Slide) else open_slide(image)
    try:
        width, height = slide.dimensions
        if width * height > REFERENCE_MAX_PIXELS:
            return slide.thumbnail(REFERENCE_THUMBNAIL_PX)[0]
        return slide.read_region(0, 0, width, height)
    finally:
        if slide is not image:
            slide.close()
