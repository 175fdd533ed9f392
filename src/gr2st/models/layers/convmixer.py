"""ConvMixer blocks: depthwise convolutions mix space, a pointwise convolution mixes channels.

A ConvMixer (Trockman & Kolter, "Patches Are All You Need?", 2022) keeps the spatial
size and the channel count of its input: a residual branch of depthwise ``k × k``
convolutions mixes each channel over space, then a ``1 × 1`` convolution mixes the
channels. Hist2ST and HGGEP run a stack of such blocks on each spot's patch-embedded
image; their variant stacks two depthwise ``conv → BatchNorm → GELU`` layers in the
residual branch (the paper's block has one, with GELU before BatchNorm), which is
this module's default (``depthwise_convs=2``).
"""

from __future__ import annotations

from torch import Tensor, nn

from gr2st.errors import GR2STConfigError


class ConvMixerBlock(nn.Module):
    """One ConvMixer block on ``(batch, dim, h, w)`` feature maps (shape preserved).

    ``x ← x + DW(x)`` where ``DW`` is ``depthwise_convs`` × (depthwise ``kernel_size``
    convolution with "same" padding → BatchNorm → GELU), then
    ``x ← BatchNorm(GELU(Conv1×1(x)))``.

    Parameters
    ----------
    dim
        Channels in and out.
    kernel_size
        Side of the depthwise kernels (odd, so "same" padding is symmetric).
    depthwise_convs
        Depthwise layers in the residual branch (2 in Hist2ST/HGGEP, 1 in the
        original ConvMixer).

    Examples
    --------
    >>> import torch
    >>> block = ConvMixerBlock(8, 5)
    >>> block(torch.randn(2, 8, 16, 16)).shape
    torch.Size([2, 8, 16, 16])
    >>> sum(p.numel() for p in block.parameters())  # 2 * (200 + 8 + 16) + (64 + 8 + 16)
    536
    """

    def __init__(self, dim: int, kernel_size: int, *, depthwise_convs: int = 2) -> None:
        super().__init__()
        if dim < 1 or depthwise_convs < 1:
            raise GR2STConfigError(
                f"ConvMixerBlock: dim and depthwise_convs must be >= 1, "
                f"got {dim} and {depthwise_convs}"
            )
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise GR2STConfigError(
                f"ConvMixerBlock: kernel_size must be a positive odd integer, got {kernel_size}"
            )
        layers: list[nn.Module] = []
        for _ in range(depthwise_convs):
            layers += [
                nn.Conv2d(dim, dim, kernel_size, groups=dim, padding=kernel_size // 2),
                nn.BatchNorm2d(dim),
                nn.GELU(),
            ]
        self.depthwise = nn.Sequential(*layers)
        self.pointwise = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(x + self.depthwise(x))


class ConvMixer(nn.Sequential):
    """``depth`` :class:`ConvMixerBlock` of the same width, one after the other.

    Parameters
    ----------
    dim, kernel_size, depthwise_convs
        See :class:`ConvMixerBlock`.
    depth
        Number of blocks.

    Examples
    --------
    >>> import torch
    >>> mixer = ConvMixer(4, depth=3, kernel_size=3)
    >>> len(mixer), mixer(torch.randn(1, 4, 8, 8)).shape
    (3, torch.Size([1, 4, 8, 8]))
    """

    def __init__(self, dim: int, *, depth: int, kernel_size: int, depthwise_convs: int = 2) -> None:
        if depth < 1:
            raise GR2STConfigError(f"ConvMixer: depth must be >= 1, got {depth}")
        super().__init__(
            *(
                ConvMixerBlock(dim, kernel_size, depthwise_convs=depthwise_convs)
                for _ in range(depth)
            )
        )
