"""Two runs on one output: the second stops naming the first; dead holders are taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gr2st._utils.lock import LOCK_NAME, hold_lock, lock_folder, read_holder
from gr2st.errors import GR2STLockedError

REPO = Path(__file__).resolve().parents[2]


def _holder(folder: Path) -> subprocess.Popen[str]:
    """Another process holding ``folder``'s lock until its stdin closes."""
    code = textwrap.dedent(
        f"""
        import sys
        from gr2st._utils.lock import lock_folder
        with lock_folder({str(folder)!r}):
            print("held", flush=True)
            sys.stdin.read()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_second_benchmark_on_same_out_stops_naming_the_first(
    cli, bench_args, h5ad_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    proc = _holder(out)
    try:
        outcome = cli(*bench_args(h5ad_dir, out))
        assert outcome.code == 2
        line = outcome.one_error()
        assert line.startswith(f"error: --out {out} is in use by pid {proc.pid} on host ")
        assert line.endswith("; pass --wait SECONDS to wait for it")
        start = time.monotonic()
        waited = cli(*bench_args(h5ad_dir, out), "--wait", "0.5")
        assert time.monotonic() - start >= 0.5
        assert waited.code == 2
        assert waited.err[0].startswith(f"--out {out} is in use by pid {proc.pid}")
        assert "(waited 0.5 s); wait longer with --wait" in waited.one_error()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)
    # Released: the same command now runs.
    outcome = cli(*bench_args(h5ad_dir, out))
    assert outcome.code == 0, outcome.err
    assert not (out / LOCK_NAME).exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, caplog) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "x"}))
    with lock_folder(tmp_path):
        holder = read_holder(lock)
        assert holder is not None
        assert holder.pid == os.getpid()
    assert f"taking over the lock of pid {dead.pid}" in caplog.text
    assert not lock.exists()


def test_lock_of_another_host_is_respected(tmp_path: Path) -> None:
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "since": "then"}))
    expected = rf"delete {lock} if that run is gone"
    with pytest.raises(GR2STLockedError, match=expected), lock_folder(tmp_path, what="x"):
        pass
    assert lock.exists()


def test_locks_are_reentrant_and_released(tmp_path: Path) -> None:
    lock = tmp_path / "entry.lock"
    with hold_lock(lock, what="x"):
        with hold_lock(lock, what="x"):
            assert lock.exists()
        assert lock.exists()
    assert not lock.exists()
