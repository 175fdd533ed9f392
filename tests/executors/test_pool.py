"""The pool executor: worker processes on this machine (joblib/loky)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from gr2st.benchmark import run_benchmark
from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.executors import Task, available_cpus, get_executor
from gr2st.executors.pool import PoolExecutor

sys.path.insert(0, str(Path(__file__).parent))
import _tasks

FEATURES = "X_toy"


@pytest.fixture(scope="module")
def pool() -> Iterator[PoolExecutor]:
    ex = PoolExecutor(jobs=2, cpus_per_task=1, max_retries=2)
    yield ex
    ex.close()


def test_tasks_run_in_workers_with_their_threads_on_shared_read_only_data(
    pool: PoolExecutor,
) -> None:
    values = np.arange(6.0)
    shared = pool.share(values)
    assert shared is not values  # written once, mapped by each worker
    tasks = [Task(f"t{i}", _tasks.total, {"values": shared, "offset": i}) for i in range(3)]
    tasks += [Task("threads", torch.get_num_threads, {}), Task("pid", os.getpid, {})]
    outcomes = {o.task.key: o for o in pool.map(tasks)}
    assert [outcomes[f"t{i}"].value for i in range(3)] == [15.0, 16.0, 17.0]
    assert outcomes["threads"].value == 1
    assert outcomes["pid"].value != os.getpid()
    assert all(o.ok and o.attempts == 1 for o in outcomes.values())
    assert pool.share(None) is None


def test_threads_default_to_cores_per_worker() -> None:
    ex = PoolExecutor(jobs=1)
    assert ex.threads == available_cpus()
    assert get_executor("pool", num_cpus=2, cpus_per_task=3).describe() == (
        "2 worker processes × 3 threads"
    )


def test_keep_going_then_fail_fast(pool: PoolExecutor, tmp_path: Path) -> None:
    outcomes = {
        o.task.key: o
        for o in pool.map(
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
    # Fail fast raises the task's error unchanged (and stops the workers).
    with pytest.raises(GR2STDataError, match=r"^x\.h5ad: not a section$"):
        list(pool.map([Task("bad", _tasks.bad_input, {"name": "x.h5ad"})]))


def test_a_task_whose_worker_died_runs_again(pool: PoolExecutor, tmp_path: Path) -> None:
    marker = tmp_path / "died"
    [outcome] = pool.map([Task("dies", _tasks.die_once, {"marker": marker})])
    assert outcome.ok
    assert outcome.attempts == 2
    assert outcome.value != int(marker.read_text())  # another process ran it again
    again = tmp_path / "again"
    with pytest.raises(RuntimeError, match="task dies"):
        list(
            PoolExecutor(jobs=1, max_retries=0).map(
                [Task("dies", _tasks.die_once, {"marker": again})]
            )
        )


def test_option_errors() -> None:
    with pytest.raises(GR2STConfigError, match="--jobs must be a positive integer"):
        PoolExecutor(jobs=0)
    with pytest.raises(GR2STConfigError, match="--address needs --executor ray"):
        get_executor("pool", address="auto")
    with pytest.raises(GR2STConfigError, match="task 'a' is given twice"):
        list(PoolExecutor(jobs=1).map([Task("a", pow, {}), Task("a", pow, {})]))


def _sections() -> list:
    secs = synthetic(n_sections=3, n_genes=8, grid=(5, 5), signal=2.0, seed=2)
    for s in secs:
        s.obsm[FEATURES] = s.obs[["latent_state"]].to_numpy(float)
    return secs


@pytest.mark.slow
def test_a_benchmark_fold_whose_worker_is_killed_runs_again(
    pool: PoolExecutor, tmp_path: Path
) -> None:
    secs = _sections()
    genes = list(secs[0].var_names)
    out = tmp_path / "killed"
    control = tmp_path / "killed-control"
    control.mkdir()
    (control / "hold-S1").touch()
    killed: list[int] = []

    def kill_when_held() -> None:
        deadline = time.monotonic() + 120
        while not (control / "held-S1").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int((control / "held-S1").read_text())
        (control / "hold-S1").unlink()  # the rerun goes through
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_when_held)
    killer.start()
    try:
        results = run_benchmark(
            secs, methods=["test-sleepy"], genes=genes, feature_key=FEATURES, out_dir=out,
            progress=False, figures=False, executor=pool,
        )  # fmt: skip
    finally:
        killer.join()
    pids = (control / "pids-S1").read_text().split()
    assert len(pids) == 2  # the killed attempt and the rerun
    assert int(pids[0]) == killed[0]
    assert int(pids[1]) != killed[0]
    reference = run_benchmark(
        secs, methods=["knn"], genes=genes, feature_key=FEATURES, out_dir=tmp_path / "ref",
        progress=False, figures=False,
    )  # fmt: skip
    assert results["methods"]["test-sleepy"]["sections"] == reference["methods"]["knn"]["sections"]
