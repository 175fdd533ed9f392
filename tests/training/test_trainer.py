"""The shared training loop: resume to identical weights, checkpoint policy, averaging."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from gr2st.training import Batch, Checkpoint, Trainer, TrainingTask
from gr2st.training.trainer import GR2STTrainingError


class Regression(TrainingTask):
    """A noisy regression whose loss draws from every RNG the loop must restore."""

    def __init__(self, *, lr_per_step: bool = False, fresh_optimizer: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        self.lr_per_step = lr_per_step
        self.new_optimizer_each_epoch = fresh_optimizer
        self.seen_lrs: list[float] = []
        self.on_step: Any = None

    def make_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(net.parameters(), lr=0.05)

    def learning_rate(self, epoch: int, step: int) -> float | None:
        return 0.05 / (1 + epoch + step / 10) if self.lr_per_step else None

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterable[Batch]:
        order = torch.from_numpy(rng.permutation(64))
        for index in order.split(16):
            yield Batch(index, weight=float(len(index)))

    def loss(self, net: nn.Module, batch: Any, generator: torch.Generator) -> dict[str, Tensor]:
        if self.on_step is not None:
            self.on_step()
        x = self.x[batch] + 0.05 * torch.randn(len(batch), 4, generator=generator)
        pred = net(x)  # dropout: torch's global generator
        return {
            "mse": ((pred - self.y[batch]) ** 2).mean(),
            "l2": 1e-4 * net[0].weight.square().sum(),
        }


def _net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))


def _fit(
    tmp: Path | None, task: Regression | None = None, **kwargs: Any
) -> tuple[list[float], nn.Module]:
    net = _net()
    trainer = Trainer(
        epochs=6, seed=1, workdir=tmp, run_fingerprint="run", progress=False, **kwargs
    )
    history = trainer.fit(net, task or Regression())
    return history, net


def _weights(net: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.learning
def test_training_lowers_the_loss_and_is_deterministic() -> None:
    first, net_a = _fit(None)
    second, net_b = _fit(None)
    assert first == second
    assert first[-1] < 0.3 * first[0]
    for a, b in zip(_weights(net_a), _weights(net_b), strict=True):
        assert torch.equal(a, b)


def test_an_interrupted_fit_resumes_to_identical_weights(tmp_path: Path, monkeypatch) -> None:
    reference, net_ref = _fit(tmp_path / "straight", checkpoint_every=0)
    real_save = Checkpoint.save

    def crash_after_third(self: Checkpoint, **kwargs: Any) -> None:
        real_save(self, **kwargs)
        if kwargs["epoch"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", crash_after_third)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "resumed", checkpoint_every=0)
    monkeypatch.setattr(Checkpoint, "save", real_save)
    torch.manual_seed(999)  # a fresh process: another global RNG state
    trainer = Trainer(
        epochs=6, seed=1, workdir=tmp_path / "resumed", run_fingerprint="run", progress=False
    )
    net = _net()
    torch.manual_seed(12345)
    history = trainer.fit(net, Regression())
    assert trainer.stats.resumed_from == 3
    assert history == reference
    for a, b in zip(_weights(net), _weights(net_ref), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_of_another_run_is_ignored(tmp_path: Path) -> None:
    _fit(tmp_path, checkpoint_every=0)
    trainer = Trainer(epochs=6, seed=1, workdir=tmp_path, run_fingerprint="other", progress=False)
    trainer.fit(_net(), Regression())
    assert trainer.stats.resumed_from == 0
    assert trainer.stats.epochs_run == 6


def test_checkpoints_follow_the_interval_and_always_save_the_end(tmp_path: Path) -> None:
    net = _net()
    rare = Trainer(epochs=6, seed=1, workdir=tmp_path / "a", checkpoint_every=3600, progress=False)
    rare.fit(net, Regression())
    assert rare.stats.checkpoints == 1  # the last epoch only
    often = Trainer(epochs=6, seed=1, workdir=tmp_path / "b", checkpoint_every=0, progress=False)
    often.fit(_net(), Regression())
    assert often.stats.checkpoints == 6
    assert often.stats.checkpoint_seconds > 0
    assert often.stats.steps == 6 * 4
    assert np.isfinite(often.stats.seconds_per_step)
    assert 0 < often.stats.checkpoint_share < 1
    none = Trainer(epochs=2, seed=1, progress=False)
    none.fit(_net(), Regression())
    assert none.stats.checkpoints == 0


def test_ctrl_c_saves_at_the_end_of_the_epoch_and_the_rerun_finishes_identically(
    tmp_path: Path,
) -> None:
    reference, net_ref = _fit(None)
    task = Regression()
    steps = {"n": 0}

    def interrupt_in_the_second_epoch() -> None:
        steps["n"] += 1
        if steps["n"] == 6:
            os.kill(os.getpid(), signal.SIGINT)

    task.on_step = interrupt_in_the_second_epoch
    trainer = Trainer(epochs=6, seed=1, workdir=tmp_path, checkpoint_every=3600, progress=False)
    with pytest.raises(KeyboardInterrupt, match="interrupted after epoch 2"):
        trainer.fit(_net(), task)
    assert trainer.stats.epochs_run == 2  # the epoch in progress was finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    again = Trainer(epochs=6, seed=1, workdir=tmp_path, checkpoint_every=3600, progress=False)
    net = _net()
    history = again.fit(net, Regression())
    assert again.stats.resumed_from == 2
    assert history == reference
    for a, b in zip(_weights(net), _weights(net_ref), strict=True):
        assert torch.equal(a, b)


def test_weight_averaging_keeps_the_mean_of_the_last_epochs() -> None:
    seen: list[list[Tensor]] = []
    net = _net()
    trainer = Trainer(
        epochs=5,
        seed=1,
        average_last=3,
        progress=False,
        on_epoch_end=lambda done, loss: seen.append(_weights(net)),
    )
    trainer.fit(net, Regression())
    expected = [torch.stack(ws).mean(0) for ws in zip(*seen[2:], strict=True)]
    for got, want in zip(_weights(net), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_learning_rate_per_step_and_fresh_optimizer_each_epoch() -> None:
    net = _net()
    task = Regression(lr_per_step=True, fresh_optimizer=True)
    optimizers: list[torch.optim.Optimizer] = []
    make = task.make_optimizer

    def record(n: nn.Module) -> torch.optim.Optimizer:
        optimizers.append(make(n))
        return optimizers[-1]

    task.make_optimizer = record  # type: ignore[method-assign]
    Trainer(epochs=2, seed=1, progress=False).fit(net, task)
    assert len(optimizers) == 3  # one before training, then one per epoch
    assert optimizers[-1].param_groups[0]["lr"] == pytest.approx(0.05 / (1 + 1 + 3 / 10))
    step = next(iter(optimizers[-1].state.values()))["step"]
    assert float(step) == 4  # the last epoch's steps only: the moments were reset


def test_a_diverging_loss_stops_with_a_clear_error() -> None:
    task = Regression()
    task.x = task.x * float("nan")
    with pytest.raises(
        GR2STTrainingError, match=r"training: the training loss became nan in epoch 1"
    ):
        Trainer(epochs=2, seed=1, progress=False).fit(_net(), task)


def test_bf16_autocast_trains() -> None:
    history, _ = _fit(None, precision="bf16")
    assert all(np.isfinite(history))
    assert history[-1] < history[0]
