"""Worker processes on this machine: the same tasks on every core, through joblib's loky.

Each :class:`~gr2st.executors.Task` runs in one of ``jobs`` worker processes (a loky
process pool, the one joblib and scikit-learn use), with its torch and BLAS/OpenMP
threads limited so that workers × threads = the cores this process may use. What
reaches a worker:

* the task's function and arguments, pickled (functions and classes by import path);
* data given to :meth:`PoolExecutor.share`, written once to a temporary folder with
  :func:`joblib.dump` and mapped read-only by every worker (numpy arrays are not
  copied: the workers share the operating system's page cache);
* nothing else.

A worker that dies mid-task (killed, out of memory) breaks the pool: the pool is
restarted and its unfinished tasks run again, up to ``max_retries`` times each, under
both failure policies. Errors a task raises follow the executor's failure policy.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import joblib
from joblib.externals.loky import get_reusable_executor
from joblib.externals.loky.process_executor import TerminatedWorkerError

from gr2st.errors import GR2STConfigError
from gr2st.executors.base import (
    DEFAULT_MAX_RETRIES,
    Executor,
    Outcome,
    Task,
    available_cpus,
    call_with_threads,
    check_keys,
    retryable,
)

log = logging.getLogger(__name__)

__all__ = ["PoolExecutor"]


@dataclass(frozen=True)
class _Shared:
    """Handle of a value :meth:`PoolExecutor.share` wrote to ``path``."""

    path: str


@lru_cache(maxsize=4)
def _load(path: str) -> Any:
    # Once per worker process and shared value; the arrays stay mapped, not copied.
    return joblib.load(path, mmap_mode="r")


def _run_in_worker(fn: Callable[..., Any], threads: int, kwargs: dict[str, Any]) -> Any:
    """The pool's task: resolve the shared values, run ``fn`` with ``threads`` threads."""
    resolved = {k: _load(v.path) if isinstance(v, _Shared) else v for k, v in kwargs.items()}
    with warnings.catch_warnings():
        # Shared arrays are read-only maps, which torch warns about when wrapping them;
        # gr2st reads its inputs and never writes to them.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return call_with_threads(fn, threads, resolved)


def _warm_up() -> None:
    """Import torch once per worker, before its first task."""
    import torch  # noqa: F401


class PoolExecutor(Executor):
    """Run tasks in ``jobs`` worker processes on this machine.

    Parameters
    ----------
    jobs
        Worker processes (default: the cores this process may use).
    cpus_per_task
        torch/BLAS threads of each task (default: cores // ``jobs``, at least 1).
    max_retries
        Runs of a task again after its worker died, and of a failed task under
        ``keep_going``.

    Examples
    --------
    >>> from gr2st.executors import Task
    >>> with PoolExecutor(jobs=2) as ex:
    ...     sorted(o.value for o in ex.map([Task(str(i), pow, {"base": i, "exp": 2})
    ...                                      for i in range(3)]))
    [0, 1, 4]
    """

    name = "pool"
    in_process = False

    def __init__(
        self,
        *,
        jobs: int | None = None,
        cpus_per_task: int | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
            raise GR2STConfigError(f"--jobs must be a positive integer, got {jobs!r}")
        cores = available_cpus()
        self.jobs = jobs or cores
        super().__init__(
            cpus_per_task=cpus_per_task or max(1, cores // self.jobs), max_retries=max_retries
        )
        self._folder: Path | None = None
        self._started = False

    @property
    def threads(self) -> int:
        """torch/BLAS threads of each task."""
        assert self.cpus_per_task is not None
        return self.cpus_per_task

    def describe(self) -> str:
        return f"{self.jobs} worker processes × {self.threads} threads"

    def share(self, value: Any) -> Any:
        if value is None:
            return None
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="gr2st-shared-"))
        path = self._folder / f"{len(list(self._folder.iterdir()))}.joblib"
        joblib.dump(value, path)
        return _Shared(str(path))

    def _pool(self) -> Any:
        # The reusable pool is restarted by loky when a worker died (it is then broken).
        self._started = True
        return get_reusable_executor(
            max_workers=self.jobs, initializer=_warm_up, reuse=True, timeout=300
        )

    def map(
        self,
        tasks: Sequence[Task],
        *,
        keep_going: bool = False,
        on_start: Callable[[Task], None] | None = None,
    ) -> Iterator[Outcome]:
        check_keys(tasks)
        pending: dict[Future[Any], tuple[Task, int]] = {}

        def submit(task: Task, attempt: int) -> None:
            future = self._pool().submit(_run_in_worker, task.fn, self.threads, dict(task.kwargs))
            pending[future] = (task, attempt)

        for task in tasks:
            submit(task, 1)
        finished = False
        try:
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                # Tasks of a pool whose worker died fail together; each runs again on the
                # restarted pool.
                died: list[tuple[Task, int, BaseException]] = []
                for future in done:
                    task, attempt = pending.pop(future)
                    try:
                        value = future.result()
                    except TerminatedWorkerError as err:
                        died.append((task, attempt, err))
                        continue
                    except Exception as err:
                        if not keep_going:
                            raise
                        if retryable(err) and attempt <= self.max_retries:
                            log.warning("task %s failed (%s); running it again", task.key, err)
                            submit(task, attempt + 1)
                            continue
                        yield Outcome(task, error=err, attempts=attempt)
                    else:
                        yield Outcome(task, value, attempts=attempt)
                for task, attempt, death in died:
                    if attempt > self.max_retries:
                        message = " ".join(str(death).split())
                        error = RuntimeError(f"task {task.key}: {message}")
                        if not keep_going:
                            raise error
                        yield Outcome(task, error=error, attempts=attempt)
                        continue
                    log.warning("task %s: its worker process died; running it again", task.key)
                    submit(task, attempt + 1)
            finished = True
        finally:
            if not finished:
                for future in pending:
                    future.cancel()
                # Stop the fits still running for a job that failed or was interrupted.
                self._pool().shutdown(wait=False, kill_workers=True)

    def close(self) -> None:
        if self._started:
            # The workers end here (and their CPU time is accounted to this process).
            self._pool().shutdown(wait=True)
            self._started = False
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
