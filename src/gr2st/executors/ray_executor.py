"""Ray tasks: the same tasks on every core of a machine, or across a cluster.

Each :class:`~gr2st.executors.Task` becomes one Ray task declaring ``num_cpus``
(``cpus_per_task``) and ``num_gpus`` (``gpus_per_task``). What reaches a worker:

* the task's function and arguments, pickled by Ray; functions and classes by their
  import path, so every node needs the same gr2st installed (checked: each task
  returns the fingerprint of its worker's gr2st sources, and a mismatch stops the job);
* data given to :meth:`RayExecutor.share`, put into Ray's object store once and read by
  every task on a node from shared memory (numpy arrays without a copy, read-only);
* nothing else: paths in the arguments (feature cache, output folders, fold work
  folders) must point to storage every node sees.

Ray's own retry runs a task again when its worker process dies (up to
``max_retries``); errors the task raises follow the executor's failure policy.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from gr2st._utils.optional import require
from gr2st.errors import GR2STConfigError, GR2STError
from gr2st.executors.base import (
    DEFAULT_MAX_RETRIES,
    Executor,
    Outcome,
    Task,
    available_cpus,
    call_with_threads,
    check_keys,
    retryable,
    source_fingerprint,
)

log = logging.getLogger(__name__)

__all__ = ["RayExecutor"]


def _run_in_worker(fn: Callable[..., Any], threads: int, /, **kwargs: Any) -> tuple[Any, str]:
    """The Ray task: run ``fn`` with ``threads`` threads; say which gr2st ran it."""
    with warnings.catch_warnings():
        # Shared arrays arrive as read-only views of the object store, which torch warns
        # about when wrapping them; gr2st reads its inputs and never writes to them.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        value = call_with_threads(fn, threads, kwargs)
    return value, source_fingerprint()


class RayExecutor(Executor):
    """Run tasks as Ray tasks on a Ray instance started here or on an existing cluster.

    Parameters
    ----------
    address
        None: start a Ray instance on this machine with ``num_cpus`` cores (stopped by
        :meth:`close`). ``"auto"``, ``"host:port"`` or ``"ray://host:port"``: connect to
        a running cluster (:meth:`close` disconnects and leaves it running). When this
        process is already connected (``ray.init`` was called), that connection is used.
    num_cpus
        Cores of the instance started here (default: those this process may use).
    cpus_per_task
        Cores reserved for, and threads used by, each task (default 1).
    gpus_per_task
        GPUs reserved for each task; Ray sets ``CUDA_VISIBLE_DEVICES`` accordingly.
    max_retries
        Runs of a task after its worker died, and of a failed task under ``keep_going``.
    runtime_env
        Ray runtime environment (e.g. ``{"py_modules": [...]}`` to ship code), Python
        API only.

    Examples
    --------
    >>> from gr2st.executors import Task
    >>> with RayExecutor(num_cpus=2) as ex:  # doctest: +SKIP
    ...     [o.value for o in ex.map([Task("a", pow, {"base": 7, "exp": 2})])]
    [49]
    """

    name = "ray"
    in_process = False

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        cpus_per_task: int | None = None,
        gpus_per_task: float = 0.0,
        max_retries: int = DEFAULT_MAX_RETRIES,
        runtime_env: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(cpus_per_task=cpus_per_task or 1, max_retries=max_retries)
        if not (isinstance(gpus_per_task, int | float) and gpus_per_task >= 0):
            raise GR2STConfigError(f"GPUs per task must be >= 0, got {gpus_per_task!r}")
        if num_cpus is not None and (not isinstance(num_cpus, int) or num_cpus < 1):
            raise GR2STConfigError(f"--ray-cpus must be a positive integer, got {num_cpus!r}")
        if num_cpus is not None and address is not None:
            raise GR2STConfigError(
                "--ray-cpus sizes a Ray instance started here; not with --address"
            )
        self.ray = require("ray", feature="--executor ray", extra="ray")
        self.gpus_per_task = float(gpus_per_task)
        self.address = address
        self._owner = False
        if not self.ray.is_initialized():
            self._connect(address, num_cpus, runtime_env)
        self._check_resources()
        self._remote = self.ray.remote(_run_in_worker).options(
            num_cpus=self.cpus_per_task,
            num_gpus=self.gpus_per_task,
            max_retries=max_retries,
            retry_exceptions=False,
        )

    def _connect(
        self, address: str | None, num_cpus: int | None, runtime_env: Mapping[str, Any] | None
    ) -> None:
        options: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "runtime_env": dict(runtime_env) if runtime_env else None,
        }
        if address is None:
            options["num_cpus"] = num_cpus or available_cpus()
        try:
            self.ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as err:
            reason = " ".join(str(err).split())
            where = f"--address {address}" if address else "a local Ray instance"
            raise GR2STConfigError(f"{where}: cannot start or reach Ray ({reason})") from None
        self._owner = True

    def _check_resources(self) -> None:
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        fits = any(
            r.get("CPU", 0) >= self.cpus_per_task and r.get("GPU", 0) >= self.gpus_per_task
            for r in nodes
        )
        if not fits:
            have = ", ".join(f"{r.get('CPU', 0):g} CPU/{r.get('GPU', 0):g} GPU" for r in nodes)
            message = (
                f"no Ray node has {self.cpus_per_task} CPU and {self.gpus_per_task:g} GPU "
                f"for a task (nodes: {have or 'none'}); lower --cpus-per-task/--gpus-per-task"
            )
            if self._owner and self.address is None:
                self.close()
                raise GR2STConfigError(message)
            # A cluster may grow (autoscaling); its tasks then wait for such a node.
            log.warning("%s", message)

    def describe(self) -> str:
        total = self.ray.cluster_resources()
        return (
            f"ray ({self.address or 'local instance'}: {total.get('CPU', 0):g} CPU, "
            f"{total.get('GPU', 0):g} GPU; {self.cpus_per_task} CPU, "
            f"{self.gpus_per_task:g} GPU per task)"
        )

    def share(self, value: Any) -> Any:
        return self.ray.put(value)

    def device(self, device: str) -> str:
        # A task without a GPU reserved must not take one that another task holds.
        return "cpu" if device == "auto" and not self.gpus_per_task else device

    def map(
        self,
        tasks: Sequence[Task],
        *,
        keep_going: bool = False,
        on_start: Callable[[Task], None] | None = None,
    ) -> Iterator[Outcome]:
        check_keys(tasks)
        ray = self.ray
        pending: dict[Any, tuple[Task, int]] = {}

        def submit(task: Task, attempt: int) -> None:
            ref = self._remote.remote(task.fn, self.cpus_per_task, **task.kwargs)
            pending[ref] = (task, attempt)

        for task in tasks:
            submit(task, 1)
        try:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                task, attempt = pending.pop(ref)
                # ``error`` is what is reported, ``raised`` what fail-fast raises: gr2st's
                # one-line errors as they are, others with the worker's traceback.
                try:
                    value, fingerprint = ray.get(ref)
                except ray.exceptions.RayTaskError as wrapped:
                    error: BaseException = wrapped.cause or wrapped
                    raised = error if isinstance(error, GR2STError) else wrapped
                except ray.exceptions.RayError as err:  # the worker died too often, node lost
                    error = raised = RuntimeError(f"task {task.key}: {' '.join(str(err).split())}")
                else:
                    if fingerprint != source_fingerprint():
                        raise GR2STConfigError(
                            f"task {task.key} ran on a worker whose gr2st differs from this "
                            "one's (source fingerprint "
                            f"{fingerprint[:12]} vs {source_fingerprint()[:12]}); install the "
                            "same gr2st on every node"
                        )
                    yield Outcome(task, value, attempts=attempt)
                    continue
                if not keep_going:
                    raise raised
                if retryable(error) and attempt <= self.max_retries:
                    log.warning("task %s failed (%s); running it again", task.key, error)
                    submit(task, attempt + 1)
                    continue
                yield Outcome(task, error=error, attempts=attempt)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._owner and self.ray.is_initialized():
            self.ray.shutdown()
        self._owner = False
