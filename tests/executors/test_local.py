"""The executor interface and the in-process executor (no Ray needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gr2st.errors import GR2STConfigError, GR2STDataError, GR2STDependencyError
from gr2st.executors import LocalExecutor, Task, call_with_threads, get_executor

sys.path.insert(0, str(Path(__file__).parent))
import _tasks


def test_local_runs_tasks_in_order_with_their_threads() -> None:
    values = np.arange(6.0)
    with get_executor("local", cpus_per_task=1) as ex:
        shared = ex.share(values)
        assert shared is values  # in process: no copy
        outcomes = list(
            ex.map(
                [Task(f"t{i}", _tasks.total, {"values": shared, "offset": i}) for i in range(3)]
                + [Task("threads", torch.get_num_threads, {})]
            )
        )
    assert [o.task.key for o in outcomes] == ["t0", "t1", "t2", "threads"]
    assert [o.value for o in outcomes] == [15.0, 16.0, 17.0, 1]
    assert all(o.ok and o.attempts == 1 for o in outcomes)


def test_call_with_threads_restores_the_pools() -> None:
    before = torch.get_num_threads()
    with pytest.raises(ZeroDivisionError):
        call_with_threads(lambda: 1 / 0, 1, {})
    assert torch.get_num_threads() == before


def test_fail_fast_raises_the_task_error_unchanged() -> None:
    ex = LocalExecutor()
    tasks = [Task("bad", _tasks.bad_input, {"name": "x.h5ad"}), Task("never", pow, {})]
    with pytest.raises(GR2STDataError, match=r"^x\.h5ad: not a section$"):
        list(ex.map(tasks))


def test_keep_going_retries_transient_errors_not_input_errors(tmp_path: Path) -> None:
    ex = LocalExecutor(max_retries=2)
    outcomes = {
        o.task.key: o
        for o in ex.map(
            [
                Task("flaky", _tasks.fail_once, {"marker": tmp_path / "m"}),
                Task("bad", _tasks.bad_input, {"name": "y.h5ad"}),
            ],
            keep_going=True,
        )
    }
    assert outcomes["flaky"].ok
    assert outcomes["flaky"].attempts == 2
    assert outcomes["bad"].attempts == 1  # deterministic: not run again
    assert isinstance(outcomes["bad"].error, GR2STDataError)

    never = LocalExecutor(max_retries=0)
    [outcome] = never.map(
        [Task("flaky", _tasks.fail_once, {"marker": tmp_path / "n"})], keep_going=True
    )
    assert isinstance(outcome.error, OSError)
    assert outcome.attempts == 1


def test_option_errors() -> None:
    with pytest.raises(GR2STConfigError, match="task 'a' is given twice"):
        list(LocalExecutor().map([Task("a", pow, {}), Task("a", pow, {})]))
    with pytest.raises(GR2STConfigError, match="--address needs --executor ray"):
        get_executor("local", address="auto")
    with pytest.raises(GR2STConfigError, match="--gpus-per-task needs --executor ray"):
        get_executor("local", gpus_per_task=1)
    with pytest.raises(GR2STConfigError, match="cpus per task must be a positive integer"):
        get_executor("local", cpus_per_task=0)
    with pytest.raises(GR2STConfigError, match="unknown executor 'dask'"):
        get_executor("dask")


def test_ray_absent_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    with pytest.raises(GR2STDependencyError) as info:
        get_executor("ray")
    message = str(info.value)
    assert "--executor ray" in message
    assert "gr2st[ray]" in message
    assert "\n" not in message
