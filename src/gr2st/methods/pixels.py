"""What every method that learns from raw patch pixels shares: inputs, config, one loop.

HisToGene, Hist2ST, THItoGene and HGGEP all predict the expression of every spot of a
section at once, from that section's patches and array coordinates, trained one section
per optimiser step. :class:`PixelMethod` owns that loop (section order, optimiser,
step schedule, per-epoch checkpoints and resume, progress, prediction); a method
module only defines its network (:meth:`PixelMethod.build`) and its loss
(:meth:`PixelMethod.training_loss`).

Patches come from ``obsm[PATCHES]`` (uint8, written by
:func:`gr2st.encoders.extract_patches`: the frozen encoders' crop and stain
normalisation, resized once), so no epoch decodes an image.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from anndata import AnnData
from torch import Tensor, nn
from tqdm.auto import tqdm

from gr2st._constants import PATCHES
from gr2st._utils.seed import resolve_device, seed_everything
from gr2st.benchmark.data import section_name
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.methods.base import Method
from gr2st.models.layers import (
    Augmentation,
    EpochCheckpoint,
    augment_patches,
    fingerprint,
    section_arrays,
    size_factors,
    spot_positions,
)


@dataclass(frozen=True)
class PixelConfig:
    """Training settings common to the pixel methods (subclassed per method).

    Attributes
    ----------
    epochs
        Passes over the training sections (one section per optimiser step).
    lr, weight_decay
        Optimiser learning rate and weight decay.
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
    """

    epochs: int = 100
    lr: float = 1e-5
    weight_decay: float = 0.0
    optimizer: str = "adam"
    lr_step_epochs: int = 0
    lr_gamma: float = 1.0
    n_positions: int = 64
    dropout: float = 0.1
    aug_rotation: float = 0.0
    aug_hflip: float = 0.0
    aug_vflip: float = 0.0
    aug_grayscale: float = 0.0
    aug_brightness: float = 0.0
    aug_contrast: float = 0.0
    aug_saturation: float = 0.0

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

    def validate(self, owner: str) -> None:
        """Raise :class:`GR2STConfigError` naming the first invalid field."""
        for name in ("epochs", "lr", "n_positions"):
            if not getattr(self, name) > 0:
                raise GR2STConfigError(
                    f"{owner}: {name} must be positive, got {getattr(self, name)}"
                )
        if self.optimizer not in ("adam", "adamw"):
            raise GR2STConfigError(
                f"{owner}: optimizer must be adam or adamw, got {self.optimizer!r}"
            )
        if self.weight_decay < 0 or self.lr_step_epochs < 0 or not 0 < self.lr_gamma <= 1:
            raise GR2STConfigError(
                f"{owner}: weight_decay and lr_step_epochs must be >= 0 and lr_gamma in (0, 1]"
            )
        if not 0 <= self.dropout < 1:
            raise GR2STConfigError(f"{owner}: dropout must be in [0, 1), got {self.dropout}")
        self.augmentation.validate(owner)


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
    >>> ad = AnnData(np.zeros((2, 1), np.float32))
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


class PixelMethod(Method, Generic[C]):
    """Base of the methods that learn from patch pixels, one section per step.

    Subclasses set :attr:`name`, :attr:`profiles`, :attr:`configs` (profile → config)
    and implement :meth:`build`, :meth:`training_loss` and :meth:`forward`.

    Parameters
    ----------
    progress
        Show a progress bar over epochs.
    **kwargs
        See :class:`~gr2st.methods.base.Method`.
    """

    input = "pixels"
    patch_px = 112
    name: ClassVar[str]
    configs: ClassVar[dict[str, Any]]
    #: Whether :meth:`training_loss` needs raw counts (ZINB) in :class:`PixelSection`.
    needs_counts: ClassVar[bool] = False

    def __init__(self, *, progress: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config: C = self._profile_config(self.name, self.configs)
        self.config.validate(self.name)
        self.progress = progress
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

    def _optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        cfg = self.config
        kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return kind(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _lr(self, epoch: int) -> float:
        cfg = self.config
        if cfg.lr_step_epochs == 0:
            return cfg.lr
        return cfg.lr * cfg.lr_gamma ** (epoch // cfg.lr_step_epochs)

    def fit(self, train: Sequence[AnnData], *, workdir: Path | None = None) -> None:
        if not train:
            raise GR2STDataError(f"{self.name}: fit() needs at least one training section")
        cfg = self.config
        seed_everything(self.seed)
        device = resolve_device(self.device)
        sections = sorted(
            (self.section(a, device=device, train=True) for a in train), key=lambda s: s.name
        )
        net = self.build(int(sections[0].expression.shape[1])).to(device)
        optimizer = self._optimizer(net)
        # The section order's generator is saved in the checkpoint and the augmentation
        # generator is reseeded per epoch, so a resumed fit ends at the same weights.
        order_rng = np.random.default_rng(self.seed)
        generator = torch.Generator()
        settings = {"method": self.name, "seed": self.seed, **dataclasses.asdict(cfg)}
        arrays = [
            t.cpu().numpy()
            for s in sections
            for t in (s.patches, s.positions, s.expression, s.counts)
        ]
        checkpoint = EpochCheckpoint(workdir, run_fingerprint=fingerprint(settings, arrays))
        start, history = checkpoint.load(model=net, optimizer=optimizer, rng=order_rng)
        epochs = tqdm(
            range(start, cfg.epochs),
            desc=self.name,
            initial=start,
            total=cfg.epochs,
            disable=not self.progress,
        )
        for epoch in epochs:
            # Reseeded every epoch, so a resumed fit draws the same augmentations.
            generator.manual_seed(self.seed * 100_003 + epoch)
            net.train()
            for group in optimizer.param_groups:
                group["lr"] = self._lr(epoch)
            total = 0.0
            for index in order_rng.permutation(len(sections)):
                terms = self.training_loss(net, sections[index], generator=generator)
                loss = torch.stack(list(terms.values())).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
            history.append(total / len(sections))
            epochs.set_postfix(loss=f"{history[-1]:.4f}")
            checkpoint.save(
                model=net, optimizer=optimizer, epoch=epoch + 1, history=history, rng=order_rng
            )
        self._net = net.eval()
        self.history_ = history

    @torch.no_grad()
    def predict(self, test: AnnData) -> np.ndarray:
        if self._net is None:
            raise GR2STConfigError(f"{self.name}: predict() called before fit()")
        device = next(self._net.parameters()).device
        section = self.section(test, device=device, train=False)
        return self.forward(self._net, section).cpu().numpy().astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"profile": self.profile, **dataclasses.asdict(self.config)}
