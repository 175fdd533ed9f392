"""The executor interface and the in-process executor.

An :class:`Executor` runs independent :class:`Task` objects (a module-level function
and its keyword arguments) and yields one :class:`Outcome` per task as soon as it is
finished, in whatever order they finish. Data that many tasks read (the prepared
sections of a benchmark) goes through :meth:`Executor.share` once and is passed as a
top-level keyword argument; the Ray executor then ships it to each node once, through
its object store, instead of once per task.

Two failure policies:

* fail fast (``keep_going=False``, the benchmark): the first task error is raised
  unchanged, the tasks still queued are cancelled; what finished before stays
  finished (the caller has saved it).
* keep going (``keep_going=True``, many slides): a task raising anything but a
  :class:`~gr2st.errors.GR2STError` (those are deterministic input errors) is run again
  up to ``max_retries`` times; a task that still fails becomes a failed outcome and the
  others run on.

A worker process that dies mid-task (killed, out of memory) is a Ray matter: Ray runs the
task again elsewhere, up to ``max_retries`` times, under both policies.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from gr2st._registry import Registry
from gr2st.errors import GR2STConfigError, GR2STError

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "EXECUTORS",
    "Executor",
    "LocalExecutor",
    "Outcome",
    "Task",
    "available_cpus",
    "call_with_threads",
    "get_executor",
    "retryable",
    "source_fingerprint",
]

#: Default number of times a failed task is run again.
DEFAULT_MAX_RETRIES = 3


@dataclass(frozen=True)
class Task:
    """One unit of work: ``fn(**kwargs)``.

    ``fn`` must be importable by name (a module-level function) so that remote workers
    can find it; ``key`` names the task in progress bars, logs and error messages.
    """

    key: str
    fn: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What one task gave: its value, or the error it still raised after the retries."""

    task: Task
    value: Any = None
    error: BaseException | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        """Whether the task finished without error."""
        return self.error is None


def retryable(error: BaseException) -> bool:
    """Whether running a task again may help: not for gr2st's own input errors.

    Examples
    --------
    >>> from gr2st.errors import GR2STDataError
    >>> retryable(OSError("stale NFS handle")), retryable(GR2STDataError("bad file"))
    (True, False)
    """
    return isinstance(error, Exception) and not isinstance(error, GR2STError)


def call_with_threads(
    fn: Callable[..., Any], threads: int | None, kwargs: Mapping[str, Any]
) -> Any:
    """``fn(**kwargs)`` with torch and the BLAS/OpenMP pools limited to ``threads``.

    ``None`` leaves the thread pools as they are. Both executors go through here, so a
    task computes with the same number of threads wherever it runs (the order of
    floating-point sums, hence the last bits of a result, can depend on it).

    Examples
    --------
    >>> import torch
    >>> call_with_threads(lambda: torch.get_num_threads(), 1, {})
    1
    """
    if threads is None:
        return fn(**kwargs)
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            return fn(**kwargs)
    finally:
        torch.set_num_threads(before)


@lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """sha256 of gr2st's Python sources, to check that workers run the driver's code.

    Examples
    --------
    >>> len(source_fingerprint())
    64
    """
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


class Executor(ABC):
    """Runs independent tasks and yields their outcomes as they finish.

    Parameters
    ----------
    cpus_per_task
        CPU cores one task uses: the torch/BLAS threads of each task (both executors)
        and the cores Ray reserves for it. ``None``: the local executor leaves the
        thread pools as they are; the Ray executor uses 1.
    max_retries
        How often a failed task is run again (see the module docstring).

    Examples
    --------
    >>> from gr2st.executors import Task, get_executor
    >>> with get_executor("local") as ex:
    ...     [o.value for o in ex.map([Task("a", pow, {"base": 7, "exp": 2})])]
    [49]
    """

    name: ClassVar[str]
    #: Whether tasks run in this process (then they may draw their own progress bars).
    in_process: ClassVar[bool]

    def __init__(
        self, *, cpus_per_task: int | None = None, max_retries: int = DEFAULT_MAX_RETRIES
    ) -> None:
        if cpus_per_task is not None and (not isinstance(cpus_per_task, int) or cpus_per_task < 1):
            raise GR2STConfigError(
                f"cpus per task must be a positive integer, got {cpus_per_task!r}"
            )
        if not isinstance(max_retries, int) or max_retries < 0:
            raise GR2STConfigError(f"max retries must be an integer >= 0, got {max_retries!r}")
        self.cpus_per_task = cpus_per_task
        self.max_retries = max_retries

    def share(self, value: Any) -> Any:
        """A handle to ``value`` for many tasks; pass it as a top-level keyword argument."""
        return value

    def device(self, device: str) -> str:
        """The device a task should ask for when the user asked for ``device``."""
        return device

    @abstractmethod
    def map(
        self,
        tasks: Sequence[Task],
        *,
        keep_going: bool = False,
        on_start: Callable[[Task], None] | None = None,
    ) -> Iterator[Outcome]:
        """Run ``tasks``; yield each outcome when its task finishes.

        Parameters
        ----------
        tasks
            The tasks; their keys must be unique.
        keep_going
            Retry and report failed tasks instead of raising the first error.
        on_start
            Called with each task when it starts (in-process executors only).
        """

    def describe(self) -> str:
        """One line saying where tasks run."""
        return self.name

    def close(self) -> None:  # noqa: B027 (optional hook: most executors hold nothing)
        """Release what the executor started (nothing for the local one)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _check_keys(tasks: Sequence[Task]) -> None:
    seen: set[str] = set()
    for task in tasks:
        if task.key in seen:
            raise GR2STConfigError(f"task {task.key!r} is given twice")
        seen.add(task.key)


class LocalExecutor(Executor):
    """Today's loop: each task in turn, in this process, with no copy of its inputs."""

    name = "local"
    in_process = True

    def map(
        self,
        tasks: Sequence[Task],
        *,
        keep_going: bool = False,
        on_start: Callable[[Task], None] | None = None,
    ) -> Iterator[Outcome]:
        _check_keys(tasks)
        for task in tasks:
            if on_start is not None:
                on_start(task)
            if not keep_going:
                yield Outcome(task, call_with_threads(task.fn, self.cpus_per_task, task.kwargs))
                continue
            attempt = 1
            while True:
                try:
                    value = call_with_threads(task.fn, self.cpus_per_task, task.kwargs)
                except Exception as err:
                    if retryable(err) and attempt <= self.max_retries:
                        attempt += 1
                        continue
                    yield Outcome(task, error=err, attempts=attempt)
                else:
                    yield Outcome(task, value, attempts=attempt)
                break


#: Executors by name: a factory taking the keyword options of :func:`get_executor`.
EXECUTORS: Registry[Callable[..., Executor]] = Registry("executor")


@EXECUTORS.register("local")
def _local(
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_task: int | None = None,
    gpus_per_task: float = 0.0,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> Executor:
    for option, value in (("--address", address), ("--ray-cpus", num_cpus)):
        if value is not None:
            raise GR2STConfigError(f"{option} needs --executor ray")
    if gpus_per_task:
        raise GR2STConfigError("--gpus-per-task needs --executor ray (locally, use --device)")
    return LocalExecutor(cpus_per_task=cpus_per_task, max_retries=max_retries)


@EXECUTORS.register("pool")
def _pool(
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_task: int | None = None,
    gpus_per_task: float = 0.0,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> Executor:
    from gr2st.executors.pool import PoolExecutor

    _local(address=address, gpus_per_task=gpus_per_task)
    return PoolExecutor(jobs=num_cpus, cpus_per_task=cpus_per_task, max_retries=max_retries)


@EXECUTORS.register("ray")
def _ray(**options: Any) -> Executor:
    from gr2st.executors.ray_executor import RayExecutor

    return RayExecutor(**options)


def get_executor(
    name: str = "local",
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_task: int | None = None,
    gpus_per_task: float = 0.0,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> Executor:
    """The executor called ``name`` (``"local"`` or ``"ray"``), set up.

    Parameters
    ----------
    name
        ``"local"``: this process, one task after the other (imports no Ray).
        ``"pool"``: ``num_cpus`` worker processes on this machine (default: one per
        core), each task with ``cpus_per_task`` threads (default: cores // workers).
        ``"ray"``: Ray tasks (needs ``pip install "gr2st[ray]"``).
    address
        Ray only: ``"auto"`` (the cluster this machine belongs to, as ``ray start``
        made it), ``"ray://host:port"`` (Ray Client) or ``"host:port"``; None starts a
        Ray instance on this machine, stopped again by :meth:`Executor.close`.
    num_cpus
        Ray: CPU cores of the Ray instance started here (default: all); pool: worker
        processes.
    cpus_per_task, max_retries
        See :class:`Executor`.
    gpus_per_task
        Ray only: GPUs reserved for each task (fractions share a GPU).

    Examples
    --------
    >>> get_executor("local").name
    'local'
    >>> get_executor("dask")
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STConfigError: unknown executor 'dask'; known: local, pool, ray
    """
    factory = EXECUTORS.get(name)
    return factory(
        address=address,
        num_cpus=num_cpus,
        cpus_per_task=cpus_per_task,
        gpus_per_task=gpus_per_task,
        max_retries=max_retries,
    )


def available_cpus() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
