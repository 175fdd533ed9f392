"""Where independent tasks run: in this process (``local``) or as Ray tasks (``ray``).

The benchmark's (method, fold) pairs and the per-slide work of ``gr2st features`` and
``gr2st predict`` over many inputs go through one small interface,
:class:`Executor`; ``local`` is the default and imports no Ray.

Examples
--------
>>> from gr2st.executors import Task, get_executor
>>> with get_executor("local", cpus_per_task=1) as ex:
...     [o.value for o in ex.map([Task("x", pow, {"base": 2, "exp": 5})])]
[32]
"""

from __future__ import annotations

from gr2st.executors.base import (
    DEFAULT_MAX_RETRIES,
    Executor,
    LocalExecutor,
    Outcome,
    Task,
    available_cpus,
    call_with_threads,
    retryable,
    source_fingerprint,
)
from gr2st.executors.registry import EXECUTORS, get_executor

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
