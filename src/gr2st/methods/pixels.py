"""What every method that learns from raw patch pixels shares: inputs, config, one loop.

HisToGene, Hist2ST, THItoGene and HGGEP all predict the expression of every spot of a
section at once, from that section's patches and array coordinates, trained one section
per optimizer step. :class:`PixelMethod` supplies that to the shared training loop
(:class:`gr2st.training.Trainer`: section order, optimizer, step schedule, checkpoints
and resume, progress) and predicts; a method module only defines its network
(:meth:`PixelMethod.build`) and its loss (:meth:`PixelMethod.training_loss`).

Patches come from ``obsm[PATCHES]`` (uint8, written by
:func:`gr2st.encoders.extract_patches`: the frozen encoders' crop and stain
normalisation, resized once), so no epoch decodes an image.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from anndata import AnnData
from torch import Tensor, nn

from gr2st._constants import PATCHES
from gr2st._utils.device import resolve_device
from gr2st._utils.seed import seed_everything
from gr2st.config import (
    Bound,
    Config,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Precision,
    Probability,
)
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.methods.base import Method
from gr2st.models.layers import Augmentation, augment_patches, size_factors
from gr2st.sections import section_arrays, section_name, spot_positions
from gr2st.training import Batch, TrainingTask


@dataclass(frozen=True)
class PixelConfig(Config):
    """Training settings common to the pixel methods (subclassed per method).

    Attributes
    ----------
    epochs
        Passes over the training sections (one section per optimizer step).
    lr, weight_decay
        Optimizer learning rate and weight decay.
    optimizer
        ``"adam"`` or ``"adamw"``.
    lr_step_epochs, lr_gamma
        Multiply the learning rate by ``lr_gamma`` every ``lr_step_epochs`` epochs
        (``0`` keeps it constant), as PyTorch's ``StepLR``.
    n_positions
        Rows of the x/y coordinate embeddings; array coordinates must be below it.
    dropout
        Dropout of the network.
    aug_rotation, aug_hflip, aug_vflip, aug_grayscale, aug_brightness, aug_contrast, aug_saturation
        Training-time patch augmentation (see :class:`~gr2st.models.layers.Augmentation`).
    precision
        ``fp32``, ``tf32`` or ``bf16`` training (see :class:`gr2st.training.Trainer`).
    """

    epochs: PositiveInt = 100
    lr: PositiveFloat = 1e-5
    weight_decay: NonNegativeFloat = 0.0
    optimizer: Literal["adam", "adamw"] = "adam"
    lr_step_epochs: NonNegativeInt = 0
    lr_gamma: Annotated[float, Bound(low=0, high=1, low_open=True)] = 1.0
    n_positions: PositiveInt = 64
    dropout: Fraction = 0.1
    aug_rotation: NonNegativeFloat = 0.0
    aug_hflip: Probability = 0.0
    aug_vflip: Probability = 0.0
    aug_grayscale: Probability = 0.0
    aug_brightness: NonNegativeFloat = 0.0
    aug_contrast: NonNegativeFloat = 0.0
    aug_saturation: NonNegativeFloat = 0.0
    precision: Precision = "fp32"

    @property
    def augmentation(self) -> Augmentation:
        """The ``aug_*`` fields as an :class:`~gr2st.models.layers.Augmentation`."""
        return Augmentation(
            rotation=self.aug_rotation,
            hflip=self.aug_hflip,
            vflip=self.aug_vflip,
            grayscale=self.aug_grayscale,
            brightness=self.aug_brightness,
            contrast=self.aug_contrast,
            saturation=self.aug_saturation,
        )


@dataclass(frozen=True)
class PixelSection:
    """One section's tensors, on the training device.

    Attributes
    ----------
    name
        Section name.
    patches
        ``(n, 3, s, s)`` float patches in ``[0, 1]``.
    positions
        ``(n, 2)`` long array coordinates.
    expression
        ``(n, G)`` log-normalised expression (empty ``(n, 0)`` for a test section).
    counts
        ``(n, G)`` raw panel counts (empty when not available).
    size_factor
        ``(n,)`` panel total over the section's median total (ones when no counts).
    """

    name: str
    patches: Tensor
    positions: Tensor
    expression: Tensor
    counts: Tensor
    size_factor: Tensor

    @property
    def n_spots(self) -> int:
        return int(self.positions.shape[0])


def patch_tensor(adata: AnnData, *, side: int, owner: str) -> Tensor:
    """``obsm[PATCHES]`` as float ``(n, 3, side, side)`` in ``[0, 1]`` (resized if needed).

    Examples
    --------
    >>> import pandas as pd
    >>> ad = AnnData(np.zeros((2, 1), np.float32), obs=pd.DataFrame({"section": ["A", "A"]}))
    >>> ad.obsm["patches"] = np.full((2, 8, 8, 3), 255, np.uint8)
    >>> patch_tensor(ad, side=4, owner="demo").shape
    torch.Size([2, 3, 4, 4])
    """
    where = f"{owner}: section {section_name(adata)!r}"
    if PATCHES not in adata.obsm:
        raise GR2STDataError(
            f"{where}: obsm[{PATCHES!r}] is missing; compute the patches first "
            "(gr2st.encoders.extract_patches, which the benchmark runs for pixel methods)"
        )
    raw = np.asarray(adata.obsm[PATCHES])
    if raw.dtype != np.uint8 or raw.ndim != 4 or raw.shape[3] != 3 or raw.shape[1] != raw.shape[2]:
        raise GR2STDataError(
            f"{where}: obsm[{PATCHES!r}] must be uint8 (n, s, s, 3), got {raw.dtype} {raw.shape}"
        )
    x = torch.from_numpy(np.ascontiguousarray(raw)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != side:
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True).clamp_(0, 1)
    return x


C = TypeVar("C", bound=PixelConfig)


class PixelMethod(Method[C]):
    """Base of the methods that learn from patch pixels, one section per step.

    Subclasses set :attr:`name` and :attr:`profiles` (``default`` and ``paper``) and
    implement :meth:`build`, :meth:`training_loss` and :meth:`forward`.

    Parameters
    ----------
    **kwargs
        See :class:`~gr2st.methods.base.Method`.
    """

    input = "pixels"
    patch_px = 112
    learned = True
    #: Whether :meth:`training_loss` needs raw counts (ZINB) in :class:`PixelSection`.
    needs_counts: ClassVar[bool] = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.history_: list[float] = []
        self._net: nn.Module | None = None

    # ------------------------------------------------------------------ per method

    @abstractmethod
    def build(self, n_genes: int) -> nn.Module:
        """The network for ``n_genes`` genes (``self.config`` holds its settings)."""

    @abstractmethod
    def training_loss(
        self, net: nn.Module, section: PixelSection, *, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Weighted loss terms of one training step on ``section`` (summed by the loop).

        ``generator`` (CPU) drives any augmentation, so training is seeded and resumes
        to the same weights.
        """

    @abstractmethod
    def forward(self, net: nn.Module, section: PixelSection) -> Tensor:
        """Predicted ``(n_spots, n_genes)`` log-normalised expression of ``section``."""

    # ------------------------------------------------------------------ shared

    def augment(self, patches: Tensor, generator: torch.Generator) -> Tensor:
        """Apply the configured training augmentation to ``(n, 3, s, s)`` patches."""
        augmentation = self.config.augmentation
        if not augmentation.active:
            return patches
        return augment_patches(patches, augmentation, generator=generator)

    def section(self, adata: AnnData, *, device: torch.device, train: bool) -> PixelSection:
        """Read one prepared section into tensors (expression and counts when ``train``)."""
        positions = spot_positions(adata)
        if positions.size and positions.max() >= self.config.n_positions:
            raise GR2STDataError(
                f"{self.name}: section {section_name(adata)!r} has array coordinates up to "
                f"{positions.max()}; n_positions={self.config.n_positions} "
                "(raise it with n_positions=...)"
            )
        n = adata.n_obs
        expression = np.zeros((n, 0), np.float32)
        counts = np.zeros((n, 0), np.float32)
        factors = np.ones(n, np.float32)
        if train:
            arrays = section_arrays(adata, with_counts=self.needs_counts)
            expression, counts = arrays.expression, arrays.counts
            if self.needs_counts:
                factors = size_factors(counts)
        patches = patch_tensor(adata, side=int(self.patch_px or 0), owner=self.name)
        return PixelSection(
            name=section_name(adata),
            patches=patches.to(device),
            positions=torch.from_numpy(positions).to(device),
            expression=torch.from_numpy(expression).to(device),
            counts=torch.from_numpy(counts).to(device),
            size_factor=torch.from_numpy(factors).to(device),
        )

    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        if not train:
            raise GR2STDataError(f"{self.name}: fit() needs at least one training section")
        seed_everything(self.seed)
        device = resolve_device(self.device)
        sections = sorted(
            (self.section(a, device=device, train=True) for a in train), key=lambda s: s.name
        )
        net = self.build(int(sections[0].expression.shape[1])).to(device)
        data = [
            t.cpu().numpy()
            for s in sections
            for t in (s.patches, s.positions, s.expression, s.counts)
        ]
        self.history_ = self.train_network(
            net,
            _SectionTask(self, sections),
            epochs=self.config.epochs,
            workdir=workdir,
            data=data,
            precision=self.config.precision,
        )
        self._net = net.eval()

    @torch.no_grad()
    def predict(self, test: AnnData) -> np.ndarray:
        if self._net is None:
            raise GR2STConfigError(f"{self.name}: predict() called before fit()")
        device = next(self._net.parameters()).device
        section = self.section(test, device=device, train=False)
        return self.forward(self._net, section).cpu().numpy().astype(np.float32)


class _SectionTask(TrainingTask):
    """One section per step, sections in a random order; a step-decayed learning rate."""

    def __init__(self, method: PixelMethod[Any], sections: list[PixelSection]) -> None:
        self.method = method
        self.cfg: PixelConfig = method.config
        self.sections = sections

    def make_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        kind = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        return kind(net.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def learning_rate(self, epoch: int, step: int) -> float:
        """PyTorch ``StepLR``: ``lr · gamma^(epoch // lr_step_epochs)``.

        Examples
        --------
        >>> task = _SectionTask.__new__(_SectionTask)
        >>> task.cfg = PixelConfig(lr=1.0, lr_step_epochs=2, lr_gamma=0.5)
        >>> [task.learning_rate(e, 0) for e in range(5)]
        [1.0, 1.0, 0.5, 0.5, 0.25]
        """
        cfg = self.cfg
        if cfg.lr_step_epochs == 0:
            return cfg.lr
        return cfg.lr * cfg.lr_gamma ** (epoch // cfg.lr_step_epochs)

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterable[Batch]:
        return (Batch(self.sections[i]) for i in rng.permutation(len(self.sections)))

    def loss(self, net: nn.Module, batch: Any, generator: torch.Generator) -> Mapping[str, Tensor]:
        return self.method.training_loss(net, batch, generator=generator)
