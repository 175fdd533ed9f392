"""Ctrl-C and SIGTERM: exit 128 + signal with one line, no temporary file left, resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gr2st._utils.lock import LOCK_NAME
from gr2st.cli.main import INTERRUPTED

REPO = Path(__file__).resolve().parents[2]

_PLUGIN = """
import time
from gr2st.methods import METHODS
from gr2st.methods.knn import KNNBaseline


@METHODS.register("slow-knn")
class SlowKNN(KNNBaseline):
    def fit(self, train, *, workdir=None):
        time.sleep(1.5)
        super().fit(train, workdir=workdir)
"""


def _as_in_a_terminal() -> None:
    # pytest-xdist workers start their children with SIGINT ignored; a user's shell does not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "plugin").mkdir(exist_ok=True)
    (tmp_path / "plugin" / "slow_knn_plugin.py").write_text(textwrap.dedent(_PLUGIN))
    paths = [str(tmp_path / "plugin"), str(REPO / "src")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_benchmark_exits_128_plus_signal_and_resumes(
    h5ad_dir: Path, tmp_path: Path, signum: int
) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable, "-c", "import slow_knn_plugin; from gr2st.cli.main import main; main()",
        "benchmark", "--data", str(h5ad_dir), "--methods", "slow-knn", "--encoder", "toy",
        "--panel", str(h5ad_dir.parent / "panel.txt"), "--no-progress", "--no-figures",
        "--out", str(out),
    ]  # fmt: skip
    first_fold = out / "folds" / "slow-knn" / "S0.json"
    env = _env(tmp_path)
    proc = subprocess.Popen(
        command,
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_in_a_terminal,
    )
    try:
        deadline = time.monotonic() + 180
        while not first_fold.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the first fold never finished"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1] == INTERRUPTED
    assert "Traceback" not in err
    assert not (out / "results.json").exists()
    assert not (out / LOCK_NAME).exists()
    assert not [p for p in out.rglob("*") if p.name.endswith((".tmp", ".old"))]
    saved = first_fold.read_text()

    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert first_fold.read_text() == saved  # reused, not recomputed
    assert set(json.loads((out / "results.json").read_text())["sections"]) == {"S0", "S1", "S2"}


_WRITER = """
import sys, time
from pathlib import Path
import typer
from gr2st._utils.files import atomic_path
from gr2st.cli.main import app, main

@app.command("slow-write")
def slow_write(out: Path) -> None:
    with atomic_path(out) as tmp:
        tmp.write_text("partial")
        print("writing", flush=True)
        time.sleep(60)

main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_writing_leaves_no_partial_file(tmp_path: Path, signum: int) -> None:
    out = tmp_path / "result.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, "slow-write", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_in_a_terminal,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum
    assert err.strip() == INTERRUPTED
    assert os.listdir(tmp_path) == []
