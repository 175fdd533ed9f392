"""Executors by name: :data:`EXECUTORS` and :func:`get_executor`.

The registry sits above the executors it names, so that an executor module imports
only :mod:`gr2st.executors.base` (Ray's module is imported when ``"ray"`` is asked for).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gr2st._registry import Registry
from gr2st.errors import GR2STConfigError
from gr2st.executors.base import DEFAULT_MAX_RETRIES, Executor, LocalExecutor

__all__ = ["EXECUTORS", "get_executor"]

#: Executors by name: a factory taking the keyword options of :func:`get_executor`.
EXECUTORS: Registry[Callable[..., Executor]] = Registry("executor")


def _refuse_ray_options(
    *, address: str | None, gpus_per_task: float, num_cpus: int | None = None
) -> None:
    """The options only a Ray executor takes are errors on this machine's executors."""
    for option, value in (("--address", address), ("--ray-cpus", num_cpus)):
        if value is not None:
            raise GR2STConfigError(f"{option} needs --executor ray")
    if gpus_per_task:
        raise GR2STConfigError("--gpus-per-task needs --executor ray (locally, use --device)")


@EXECUTORS.register("local")
def _local(
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_task: int | None = None,
    gpus_per_task: float = 0.0,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> Executor:
    _refuse_ray_options(address=address, gpus_per_task=gpus_per_task, num_cpus=num_cpus)
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

    _refuse_ray_options(address=address, gpus_per_task=gpus_per_task)
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
    """The executor called ``name`` (``"local"``, ``"pool"`` or ``"ray"``), set up.

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
