"""Random patch augmentations on batched tensors (the pixel baselines' transforms).

The published pixel methods use torchvision's ``RandomRotation``, ``RandomHorizontalFlip``,
``RandomGrayscale`` and ``ColorJitter``. torchvision is not a dependency here, so these
are written on whole batches with torch: each patch draws its own parameters from the
given generator, which keeps training deterministic for a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Augmentation:
    """Parameters of :func:`augment_patches` (all off by default).

    Attributes
    ----------
    rotation
        Maximum absolute rotation in degrees (uniform in ``[-rotation, rotation]``,
        corners filled with 0 as torchvision does).
    quarter_turns
        Rotate by a random multiple of 90° (exact, no interpolation).
    hflip, vflip
        Probability of a horizontal / vertical flip.
    grayscale
        Probability of converting a patch to grey (3 equal channels).
    brightness, contrast, saturation
        Colour jitter strength: factors uniform in ``[1 - s, 1 + s]``, applied in this
        order, each clamped to ``[0, 1]`` as torchvision's ``ColorJitter`` does.
    """

    rotation: float = 0.0
    quarter_turns: bool = False
    hflip: float = 0.0
    vflip: float = 0.0
    grayscale: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    @property
    def active(self) -> bool:
        return any(v > 0 for v in vars(self).values())


def _gray(x: Tensor) -> Tensor:
    weights = x.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _uniform(n: int, low: float, high: float, ref: Tensor, gen: torch.Generator | None) -> Tensor:
    u = torch.rand(n, generator=gen, device=gen.device if gen is not None else "cpu")
    return (low + (high - low) * u).to(ref.device, ref.dtype)


def _chance(n: int, p: float, ref: Tensor, gen: torch.Generator | None) -> Tensor:
    return _uniform(n, 0.0, 1.0, ref, gen) < p


def augment_patches(
    x: Tensor, augmentation: Augmentation, *, generator: torch.Generator | None = None
) -> Tensor:
    """Randomly transform a batch of patches.

    Parameters
    ----------
    x
        ``(N, 3, H, W)`` float patches in ``[0, 1]``.
    augmentation
        What to apply.
    generator
        Source of randomness (a CPU generator; ``None`` uses torch's global one).

    Returns
    -------
    torch.Tensor
        A new tensor shaped like ``x``, values in ``[0, 1]``.

    Examples
    --------
    >>> x = torch.rand(4, 3, 8, 8)
    >>> flipped = augment_patches(x, Augmentation(hflip=1.0))
    >>> torch.equal(flipped, x.flip(-1))
    True
    """
    n = x.shape[0]
    out = x
    if augmentation.hflip > 0:
        out = torch.where(_chance(n, augmentation.hflip, x, generator).view(-1, 1, 1, 1),
                          out.flip(-1), out)  # fmt: skip
    if augmentation.vflip > 0:
        out = torch.where(_chance(n, augmentation.vflip, x, generator).view(-1, 1, 1, 1),
                          out.flip(-2), out)  # fmt: skip
    if augmentation.quarter_turns:
        turns = torch.randint(0, 4, (n,), generator=generator).tolist()
        out = torch.stack(
            [torch.rot90(img, k, dims=(-2, -1)) for img, k in zip(out, turns, strict=True)]
        )
    if augmentation.rotation > 0:
        angle = _uniform(n, -augmentation.rotation, augmentation.rotation, x, generator)
        theta = angle * (math.pi / 180)
        cos, sin = torch.cos(theta), torch.sin(theta)
        zero = torch.zeros_like(cos)
        affine = torch.stack(
            [torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1
        )
        grid = F.affine_grid(affine, list(out.shape), align_corners=False)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if augmentation.brightness > 0:
        b = augmentation.brightness
        out = (out * _uniform(n, 1 - b, 1 + b, x, generator).view(-1, 1, 1, 1)).clamp(0.0, 1.0)
    if augmentation.contrast > 0:
        c = augmentation.contrast
        mean = _gray(out).mean((1, 2, 3), keepdim=True)
        factor = _uniform(n, 1 - c, 1 + c, x, generator).view(-1, 1, 1, 1)
        out = (mean + factor * (out - mean)).clamp(0.0, 1.0)
    if augmentation.saturation > 0:
        s = augmentation.saturation
        factor = _uniform(n, 1 - s, 1 + s, x, generator).view(-1, 1, 1, 1)
        grey = _gray(out)
        out = (grey + factor * (out - grey)).clamp(0.0, 1.0)
    if augmentation.grayscale > 0:
        to_grey = _chance(n, augmentation.grayscale, x, generator).view(-1, 1, 1, 1)
        out = torch.where(to_grey, _gray(out).expand_as(out), out)
    return out.clamp(0.0, 1.0)
