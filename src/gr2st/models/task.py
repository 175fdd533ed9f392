"""GR2ST's training task: batches of one section's spots and the contrastive loss.

The loss is the network's (:class:`gr2st.models.module.GR2STModule`); the task adds the
batch order, the optimizer and the optional spot mixup and feature noise.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from gr2st.training import Batch, TrainingTask

if TYPE_CHECKING:
    from gr2st.models.gr2st import GR2ST


@contextmanager
def private_rng(device: torch.device) -> Iterator[None]:
    """Run with forked torch RNGs, leaving the caller's random state untouched."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


class ContrastiveTask(TrainingTask):
    """GR2ST's batches (spots of one section, shuffled) and contrastive loss."""

    def __init__(self, model: GR2ST, data: list[dict[str, Tensor]]) -> None:
        cfg = model.config.train
        self.model = model
        self.data = data
        self.new_optimizer_each_epoch = cfg.optimizer_per_epoch
        self.noise_scale: Tensor | None = None
        self.mixing: torch.distributions.Beta | None = None
        if cfg.mixup > 0:
            self.mixing = torch.distributions.Beta(cfg.mixup, cfg.mixup)
        if cfg.feature_noise > 0:
            all_features = torch.cat([d["features"] for d in data])
            self.noise_scale = cfg.feature_noise * all_features.std(dim=0, keepdim=True)

    def make_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        cfg = self.model.config.train
        params = list(net.parameters())
        # One fused pass over each parameter instead of one per operation: with the
        # reference profile's 65,536-row coordinate tables a 300-spot CPU step took 1.4 s
        # instead of 3.3 s (benchmarks/bench_train_step.py, "+fused"). Equal to the
        # unfused update to float rounding and deterministic (resume stays bit-exact).
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
        return torch.optim.Adam(
            params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None
        )

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterable[Batch]:
        # Sections in a random order; a section's spots shuffled and cut into batches,
        # so a batch never mixes sections (and normally is one whole section).
        size = self.model.config.train.batch_size
        for si in rng.permutation(len(self.data)):
            sec = self.data[si]
            n = int(sec["positions"].shape[0])
            order = torch.from_numpy(rng.permutation(n)).to(sec["positions"].device)
            for batch in order.split(size):
                yield Batch((sec, batch), weight=float(batch.numel()))

    def loss(self, net: nn.Module, batch: Any, generator: torch.Generator) -> Tensor:
        sec, index = batch
        feats = sec["features"][index]
        expression = sec["expression"][index]
        if self.mixing is not None:
            feats, expression = self._mix(feats, expression)
        if self.noise_scale is not None:
            feats = feats + self.noise_scale * torch.randn_like(feats)
        loss: Tensor = net(feats, expression, sec["positions"][index], sec["types"][index])
        return loss

    def _mix(self, feats: Tensor, expression: Tensor) -> tuple[Tensor, Tensor]:
        """Spot mixup (``train.mixup``): both sides of each spot mixed with one partner."""
        assert self.mixing is not None
        n = feats.shape[0]
        draw = self.mixing.sample((n, 1)).to(device=feats.device, dtype=feats.dtype)
        lam = torch.maximum(draw, 1 - draw)
        partner = torch.randperm(n).to(feats.device)
        return (
            lam * feats + (1 - lam) * feats[partner],
            lam * expression + (1 - lam) * expression[partner],
        )
