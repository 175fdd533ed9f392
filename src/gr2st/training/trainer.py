"""The training loop shared by GR2ST and every learned baseline.

A method supplies a :class:`TrainingTask`: its optimizer, its learning-rate schedule,
the batches of an epoch and the loss of a batch. :class:`Trainer` owns the rest:
epochs, the batch-order generator, a per-epoch seeded generator for augmentation,
checkpoints (on a wall-clock interval, at the end and on Ctrl-C / SIGTERM) and
resume to bit-identical weights, a running weight average, mixed precision, the
progress bar and the loss history.

Seeding policy: the loop does not reseed torch's global generator (dropout and any
``torch.rand*`` call without a generator draw from it), so the caller seeds it
before building the network; a resumed run restores it from the checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from gr2st._constants import DEFAULT_CHECKPOINT_SECONDS
from gr2st.errors import GR2STError, GR2STInterrupted
from gr2st.training.checkpoint import Checkpoint

log = logging.getLogger(__name__)
#: Per-epoch training records in a fit's work folder.
PROGRESS_LOG = "progress.jsonl"


class GR2STTrainingError(GR2STError):
    """Training diverged (non-finite loss)."""


@dataclass(frozen=True)
class Batch:
    """One optimizer step's input: what :meth:`TrainingTask.loss` receives, and its weight.

    ``weight`` weighs the step's loss in the epoch's mean (e.g. its number of spots).
    """

    data: Any
    weight: float = 1.0


class TrainingTask(ABC):
    """What a method contributes to the shared loop.

    Attributes
    ----------
    new_optimizer_each_epoch
        Re-create the optimizer at the start of every epoch (resets Adam's moments; a
        quirk of the published GR2ST code).
    """

    new_optimizer_each_epoch: bool = False

    @abstractmethod
    def make_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        """A fresh optimizer over ``net``'s parameters."""

    def learning_rate(self, epoch: int, step: int) -> float | None:
        """Learning rate of step ``step`` of ``epoch`` (0-based); None keeps the current one."""
        return None

    @abstractmethod
    def batches(self, epoch: int, rng: np.random.Generator) -> Iterable[Batch]:
        """The batches of one epoch; ``rng`` (resumed exactly) orders them."""

    @abstractmethod
    def loss(
        self, net: nn.Module, batch: Any, generator: torch.Generator
    ) -> Tensor | Mapping[str, Tensor]:
        """Loss of one batch: a scalar, or named (already weighted) terms that are summed.

        ``generator`` (CPU) is reseeded every epoch from the seed, for augmentation that
        replays identically after a resume.
        """


@dataclass
class TrainingStats:
    """Where a fit's time went (also what ``benchmarks/gpu_check.sh`` prints)."""

    epochs_run: int = 0
    steps: int = 0
    seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    checkpoints: int = 0
    resumed_from: int = 0
    train_seconds: float = 0.0
    #: Peak CUDA memory allocated during the fit (0 on other devices).
    peak_gpu_bytes: int = 0

    @property
    def seconds_per_step(self) -> float:
        """Mean wall time of one optimizer step, device work included (NaN before any)."""
        return self.train_seconds / self.steps if self.steps else math.nan

    @property
    def checkpoint_share(self) -> float:
        """Checkpoint writing time over the whole fit time."""
        return self.checkpoint_seconds / self.seconds if self.seconds > 0 else 0.0

    def __add__(self, other: TrainingStats) -> TrainingStats:
        """The stats of two fits run one after the other (peak memory: the larger)."""
        return TrainingStats(
            epochs_run=self.epochs_run + other.epochs_run,
            steps=self.steps + other.steps,
            seconds=self.seconds + other.seconds,
            checkpoint_seconds=self.checkpoint_seconds + other.checkpoint_seconds,
            checkpoints=self.checkpoints + other.checkpoints,
            resumed_from=self.resumed_from + other.resumed_from,
            train_seconds=self.train_seconds + other.train_seconds,
            peak_gpu_bytes=max(self.peak_gpu_bytes, other.peak_gpu_bytes),
        )

    def as_dict(self) -> dict[str, float | int]:
        return {
            "epochs_run": self.epochs_run,
            "steps": self.steps,
            "seconds": self.seconds,
            "checkpoint_seconds": self.checkpoint_seconds,
            "checkpoints": self.checkpoints,
            "checkpoint_share": self.checkpoint_share,
            "resumed_from": self.resumed_from,
            "train_seconds": self.train_seconds,
            "seconds_per_step": self.seconds_per_step,
            "peak_gpu_bytes": self.peak_gpu_bytes,
        }


class _DeferredInterrupts:
    """Turn the first SIGINT/SIGTERM into a request honoured at the next epoch end.

    A second signal acts at once (the previous handler is back in place).
    """

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _DeferredInterrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signum
        signal.signal(signum, self._previous[signum])
        log.warning(
            "%s: stopping after this epoch to save a checkpoint (press Ctrl-C again to stop now)",
            self.desc,
        )

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextmanager
def _numerics(device: torch.device, precision: str) -> Iterator[None]:
    """Deterministic CPU kernels; TF32 or bf16 autocast on request (restored afterwards)."""
    with ExitStack() as stack:
        if device.type == "cpu":
            before = torch.are_deterministic_algorithms_enabled()
            warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
            torch.use_deterministic_algorithms(True, warn_only=True)
            stack.callback(torch.use_deterministic_algorithms, before, warn_only=warn_only)
        if precision == "tf32" and device.type == "cuda":
            matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

            def restore() -> None:
                torch.backends.cuda.matmul.allow_tf32 = matmul
                torch.backends.cudnn.allow_tf32 = cudnn

            stack.callback(restore)
        yield


class Trainer:
    """Run a :class:`TrainingTask` for a number of epochs, resumably.

    Parameters
    ----------
    epochs
        Passes over the task's batches.
    seed
        Seeds the batch-order generator and the per-epoch augmentation generator.
    workdir
        Folder of the checkpoint; ``None`` trains without one.
    run_fingerprint
        Identifies the run (settings and data), so a checkpoint is resumed only by the
        run that wrote it (see :func:`gr2st.training.fingerprint`).
    checkpoint_every
        Seconds between checkpoints; ``0`` writes one after every epoch. The last epoch
        and an interrupted run (Ctrl-C, SIGTERM) are always saved.
    average_last
        Keep the mean of the weights at the end of the last ``average_last`` epochs
        (1 = the last epoch's weights).
    precision
        ``fp32``, ``tf32`` (CUDA matrix products in TensorFloat-32) or ``bf16`` (bfloat16
        autocast of the forward pass and loss).
    progress
        Show a progress bar over epochs.
    desc
        Name on the progress bar and in messages.
    on_epoch_end
        Called as ``on_epoch_end(epochs_done, epoch_loss)`` after each epoch.

    With a ``workdir``, :data:`PROGRESS_LOG` there gets one JSON line per epoch (epoch,
    loss, steps, seconds of training and of checkpoints): a running fit can be watched,
    e.g. by ``benchmarks/gpu_check.sh``.

    Examples
    --------
    >>> class Fit(TrainingTask):
    ...     def __init__(self, x, y):
    ...         self.x, self.y = x, y
    ...     def make_optimizer(self, net):
    ...         return torch.optim.SGD(net.parameters(), lr=0.1)
    ...     def batches(self, epoch, rng):
    ...         yield Batch(rng.permutation(len(self.x)), weight=len(self.x))
    ...     def loss(self, net, batch, generator):
    ...         i = torch.from_numpy(batch)
    ...         return ((net(self.x[i]) - self.y[i]) ** 2).mean()
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(32, 3)
    >>> history = Trainer(epochs=20, seed=0, progress=False).fit(
    ...     nn.Linear(3, 1), Fit(x, x.sum(1, keepdim=True)))
    >>> history[-1] < 0.1 * history[0]
    True
    """

    def __init__(
        self,
        *,
        epochs: int,
        seed: int,
        workdir: str | Path | None = None,
        run_fingerprint: str = "",
        checkpoint_every: float = DEFAULT_CHECKPOINT_SECONDS,
        average_last: int = 1,
        precision: str = "fp32",
        progress: bool = True,
        desc: str = "training",
        on_epoch_end: Callable[[int, float], None] | None = None,
    ) -> None:
        self.epochs = epochs
        self.seed = seed
        self.checkpoint = Checkpoint(
            None if workdir is None else Path(workdir), run_fingerprint=run_fingerprint
        )
        self.checkpoint_every = checkpoint_every
        self.average_last = average_last
        self.precision = precision
        self.progress = progress
        self.desc = desc
        self.on_epoch_end = on_epoch_end
        self.log_path = None if workdir is None else Path(workdir) / PROGRESS_LOG
        self.stats = TrainingStats()

    def fit(self, net: nn.Module, task: TrainingTask) -> list[float]:
        """Train ``net`` in place; return the weighted mean loss of every epoch."""
        started = time.perf_counter()
        device = next(net.parameters()).device
        rng = np.random.default_rng(self.seed)
        generator = torch.Generator()
        optimizer = task.make_optimizer(net)
        average = AveragedModel(net) if self.average_last > 1 else None
        restored = self.checkpoint.load(net=net, optimizer=optimizer, rng=rng, average=average)
        history = restored.history
        self.stats = TrainingStats(resumed_from=restored.epoch)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        first_average = self.epochs - self.average_last
        report_every = max(1, self.epochs // 10)
        last_save = time.monotonic()
        bar = tqdm(
            range(restored.epoch, self.epochs),
            initial=restored.epoch,
            total=self.epochs,
            desc=self.desc,
            unit="epoch",
            disable=not self.progress,
            leave=False,
        )
        with ExitStack() as stack:
            stack.enter_context(_numerics(device, self.precision))
            interrupts = (
                stack.enter_context(_DeferredInterrupts(self.desc))
                if self.checkpoint.enabled
                else None
            )
            for epoch in bar:
                generator.manual_seed(self.seed * 100_003 + epoch)
                if task.new_optimizer_each_epoch:
                    optimizer = task.make_optimizer(net)
                tic = time.perf_counter()
                loss = self._epoch(net, task, optimizer, epoch, rng, generator, device)
                self.stats.train_seconds += time.perf_counter() - tic
                if not math.isfinite(loss):
                    raise GR2STTrainingError(
                        f"{self.desc}: the training loss became {loss} in epoch {epoch + 1}; "
                        "lower the learning rate (lr=...) or check the inputs"
                    )
                history.append(loss)
                if average is not None and epoch >= first_average:
                    average.update_parameters(net)
                done = epoch + 1
                stop = interrupts is not None and interrupts.requested is not None
                due = time.monotonic() - last_save >= self.checkpoint_every
                if self.checkpoint.enabled and (due or stop or done == self.epochs):
                    self._save(net, optimizer, done, history, rng, average)
                    last_save = time.monotonic()
                bar.set_postfix(loss=f"{loss:.4f}")
                if not self.progress and (done % report_every == 0 or done == self.epochs):
                    log.info("%s: epoch %d/%d, loss %.4f", self.desc, done, self.epochs, loss)
                if self.log_path is not None:
                    self._log_epoch(done, loss)
                if self.on_epoch_end is not None:
                    self.on_epoch_end(done, loss)
                if stop:
                    raise GR2STInterrupted(
                        f"{self.desc}: interrupted after epoch {done}",
                        signum=interrupts.requested if interrupts is not None else None,
                    )
        bar.close()
        if average is not None:
            net.load_state_dict(average.module.state_dict())
        if device.type == "cuda":
            self.stats.peak_gpu_bytes = int(torch.cuda.max_memory_allocated(device))
        self.stats.seconds = time.perf_counter() - started
        return list(history)

    def _epoch(
        self,
        net: nn.Module,
        task: TrainingTask,
        optimizer: torch.optim.Optimizer,
        epoch: int,
        rng: np.random.Generator,
        generator: torch.Generator,
        device: torch.device,
    ) -> float:
        net.train()
        # Accumulated on the device: one host sync per epoch, not per step.
        dtype = torch.float32 if device.type == "mps" else torch.float64
        total = torch.zeros((), dtype=dtype, device=device)
        weight = 0.0
        autocast = torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        )
        for step, batch in enumerate(task.batches(epoch, rng)):
            lr = task.learning_rate(epoch, step)
            if lr is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr
            with autocast:
                terms = task.loss(net, batch.data, generator)
            loss = terms if isinstance(terms, Tensor) else torch.stack(list(terms.values())).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().to(dtype) * batch.weight
            weight += batch.weight
            self.stats.steps += 1
        self.stats.epochs_run += 1
        # The one host sync of the epoch (it also makes the epoch's timing include the
        # device's queued work).
        return float(total) / weight if weight else math.nan

    def _log_epoch(self, epoch: int, loss: float) -> None:
        assert self.log_path is not None
        record = {
            "epoch": epoch,
            "epochs": self.epochs,
            "loss": loss,
            "steps": self.stats.steps,
            "train_seconds": round(self.stats.train_seconds, 4),
            "checkpoint_seconds": round(self.stats.checkpoint_seconds, 4),
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _save(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        epoch: int,
        history: list[float],
        rng: np.random.Generator,
        average: nn.Module | None,
    ) -> None:
        tic = time.perf_counter()
        self.checkpoint.save(
            net=net, optimizer=optimizer, epoch=epoch, history=history, rng=rng, average=average
        )
        self.stats.checkpoint_seconds += time.perf_counter() - tic
        self.stats.checkpoints += 1


def train_network(
    net: nn.Module,
    task: TrainingTask,
    *,
    epochs: int,
    seed: int,
    desc: str,
    workdir: str | Path | None = None,
    run_fingerprint: str = "",
    checkpoint_every: float = DEFAULT_CHECKPOINT_SECONDS,
    average_last: int = 1,
    precision: str = "fp32",
    progress: bool = True,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> tuple[list[float], TrainingStats]:
    """Train ``net`` on ``task`` with a :class:`Trainer`: the one way every model trains.

    Parameters are those of :class:`Trainer`.

    Returns
    -------
    history : list of float
        The weighted mean loss of every epoch.
    stats : TrainingStats
        Where the fit's time went.

    Examples
    --------
    >>> class Fit(TrainingTask):
    ...     def make_optimizer(self, net):
    ...         return torch.optim.SGD(net.parameters(), lr=0.1)
    ...     def batches(self, epoch, rng):
    ...         yield Batch(None)
    ...     def loss(self, net, batch, generator):
    ...         return (net(torch.ones(4, 1)) ** 2).mean()
    >>> history, stats = train_network(
    ...     nn.Linear(1, 1), Fit(), epochs=3, seed=0, desc="demo", progress=False)
    >>> len(history), stats.steps
    (3, 3)
    """
    trainer = Trainer(
        epochs=epochs,
        seed=seed,
        workdir=workdir,
        run_fingerprint=run_fingerprint,
        checkpoint_every=checkpoint_every,
        average_last=average_last,
        precision=precision,
        progress=progress,
        desc=desc,
        on_epoch_end=on_epoch_end,
    )
    history = trainer.fit(net, task)
    return history, trainer.stats
