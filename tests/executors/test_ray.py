"""The Ray executor on a local Ray instance of 2 CPUs: equal results, retries, resume.

Skipped when Ray is not installed (``pip install "gr2st[ray]"``); slow (Ray starts in
seconds, each worker imports torch).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pytest
from typer.testing import CliRunner

from gr2st._constants import feature_key
from gr2st.cli.main import app
from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.executors import Task

ray = pytest.importorskip("ray", reason='needs the ray extra (pip install -e ".[dev,ray]")')
from gr2st.executors.ray_executor import RayExecutor  # noqa: E402

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import _tasks  # noqa: E402

pytestmark = pytest.mark.slow

FEATURES = feature_key("toy")
REPO = HERE.parents[1]
SMALL = ["gr2st:train.epochs=2", "gr2st:model.proj_dim=16", "gr2st:model.heads=2"]
#: Fields of results.json that are wall-clock measurements (they differ between runs).
TIMING = ("seconds", "checkpoint", "peak_gpu")


def numbers(value: Any) -> Any:
    """``value`` (results.json) without its timing fields."""
    if isinstance(value, dict):
        return {k: numbers(v) for k, v in value.items() if not any(t in k for t in TIMING)}
    if isinstance(value, list):
        return [numbers(v) for v in value]
    return value


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayExecutor]:
    """One Ray instance of 2 CPUs for the module; its workers import ``_tasks``."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *([old] if old else [])])
    try:
        executor = RayExecutor(num_cpus=2)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    yield executor
    executor.close()
    assert not ray.is_initialized()


@pytest.fixture
def h5ad_dir(tmp_path: Path) -> Path:
    """Three synthetic sections with stand-in features, one .h5ad each, and a panel."""
    folder = tmp_path / "data"
    folder.mkdir()
    secs = synthetic(n_sections=3, n_genes=12, grid=(6, 6), signal=2.0, image_dir=folder, seed=1)
    rng = np.random.default_rng(0)
    for adata in secs:
        onehot = 2.0 * np.eye(5)[adata.obs["latent_state"].to_numpy()]
        adata.obsm[FEATURES] = (onehot + rng.normal(scale=0.3, size=onehot.shape)).astype(
            np.float32
        )
        adata.write_h5ad(folder / f"{adata.obs['section'].iloc[0]}.h5ad")
    (tmp_path / "panel.txt").write_text("\n".join(f"GENE{i:03d}" for i in range(6)) + "\n")
    return folder


def _benchmark(h5ad_dir: Path, out: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(
        app,
        ["benchmark", "--data", str(h5ad_dir), "--encoder", "toy", "--panel",
         str(h5ad_dir.parent / "panel.txt"), "--no-progress", "--no-figures",
         "--device", "cpu", "--out", str(out), *args],
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads((out / "results.json").read_text())


def test_tasks_share_read_only_data_and_fail_as_asked(cluster: RayExecutor, tmp_path: Path) -> None:
    values = np.arange(1000.0)
    shared = cluster.share(values)
    assert isinstance(shared, ray.ObjectRef)
    outcomes = {
        o.task.key: o.value
        for o in cluster.map(
            [Task(f"t{i}", _tasks.total, {"values": shared, "offset": i}) for i in range(4)]
        )
    }
    assert outcomes == {f"t{i}": 499500.0 + i for i in range(4)}

    # Fail fast: gr2st's one-line errors arrive as they are.
    with pytest.raises(GR2STDataError, match=r"^z\.h5ad: not a section$"):
        list(cluster.map([Task("bad", _tasks.bad_input, {"name": "z.h5ad"})]))
    # Keep going: a transient error is retried on a worker, an input error is reported.
    kept = {
        o.task.key: o
        for o in cluster.map(
            [
                Task("flaky", _tasks.fail_once, {"marker": tmp_path / "m"}),
                Task("bad", _tasks.bad_input, {"name": "z.h5ad"}),
            ],
            keep_going=True,
        )
    }
    assert kept["flaky"].ok
    assert kept["flaky"].attempts == 2
    assert isinstance(kept["bad"].error, GR2STDataError)
    assert kept["bad"].attempts == 1


def test_resources_are_checked(cluster: RayExecutor) -> None:
    assert cluster.describe().startswith("ray (local instance: 2 CPU, 0 GPU;")
    assert cluster.device("auto") == "cpu"  # no GPU reserved: never take one
    with pytest.raises(GR2STConfigError, match="--ray-cpus sizes a Ray instance started here"):
        RayExecutor(address="auto", num_cpus=2)


def test_benchmark_on_ray_equals_local(
    cluster: RayExecutor, h5ad_dir: Path, tmp_path: Path
) -> None:
    sets = [a for s in SMALL for a in ("--set", s)]
    methods = ["--methods", "knn,ridge,gr2st", *sets]
    local = _benchmark(h5ad_dir, tmp_path / "local", *methods, "--cpus-per-task", "1")
    # This process is connected to the module's 2-CPU instance: --executor ray uses it.
    on_ray = _benchmark(h5ad_dir, tmp_path / "ray", *methods, "--executor", "ray")
    assert list(on_ray["methods"]) == ["knn", "ridge", "gr2st"]
    assert numbers(on_ray) == numbers(local)
    # The comparison is of scores, not of NaNs (two epochs of gr2st learn little).
    assert local["methods"]["knn"]["mean_pcc"] > 0.05
    assert np.isfinite(local["methods"]["gr2st"]["mean_pcc"])
    for method in ("knn", "ridge", "gr2st"):
        local_folds = sorted((tmp_path / "local" / "folds" / method).glob("*.npz"))
        ray_folds = sorted((tmp_path / "ray" / "folds" / method).glob("*.npz"))
        assert [p.name for p in ray_folds] == [p.name for p in local_folds]
        for a, b in zip(local_folds, ray_folds, strict=True):
            with np.load(a) as x, np.load(b) as y:
                assert sorted(x.files) == sorted(y.files)
                for key in x.files:
                    np.testing.assert_array_equal(x[key], y[key])
    assert not (tmp_path / "ray" / "work").exists() or not any(
        (tmp_path / "ray" / "work").rglob("*.pt")
    )


def test_a_killed_worker_is_retried_with_equal_results(
    cluster: RayExecutor, h5ad_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    control = tmp_path / "killed-control"
    control.mkdir(parents=True)
    (control / "hold-S1").touch()
    killed: list[int] = []

    def kill_when_held() -> None:
        deadline = time.monotonic() + 120
        while not (control / "held-S1").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int((control / "held-S1").read_text())
        (control / "hold-S1").unlink()  # the retry runs through
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_when_held)
    killer.start()
    try:
        results = _benchmark(h5ad_dir, out, "--methods", "test-sleepy", "--executor", "ray")
    finally:
        killer.join()
    pids = (control / "pids-S1").read_text().split()
    assert len(pids) == 2  # fit ran twice: the killed attempt and Ray's retry
    assert int(pids[0]) == killed[0]
    assert int(pids[1]) != killed[0]
    reference = _benchmark(h5ad_dir, tmp_path / "reference", "--methods", "knn")
    assert results["methods"]["test-sleepy"]["sections"] == reference["methods"]["knn"]["sections"]
    assert results["methods"]["test-sleepy"]["mean_pcc"] == reference["methods"]["knn"]["mean_pcc"]


def test_ctrl_c_on_the_driver_then_rerun_resumes(
    cluster: RayExecutor, h5ad_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "interrupted"
    control = tmp_path / "interrupted-control"
    control.mkdir(parents=True)
    for fold in ("S1", "S2"):
        (control / f"hold-{fold}").touch()
    address = ray.get_runtime_context().gcs_address
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable, "-c", "import _tasks; from gr2st.cli.main import main; main()",
        "benchmark", "--data", str(h5ad_dir), "--encoder", "toy", "--panel",
        str(h5ad_dir.parent / "panel.txt"), "--methods", "test-sleepy", "--no-progress",
        "--no-figures", "--executor", "ray", "--address", address, "--out", str(out),
    ]  # fmt: skip
    first_fold = out / "folds" / "test-sleepy" / "S0.json"
    proc = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 600  # a loaded 2-core machine: minutes
        while not (first_fold.exists() and (control / "held-S1").exists()):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the first fold never finished"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 130, output  # 128 + SIGINT, as shells report Ctrl-C
    assert not (out / "results.json").exists()
    assert not (out / "folds" / "test-sleepy" / "S1.json").exists()
    saved = first_fold.read_text()

    for fold in ("S1", "S2"):
        (control / f"hold-{fold}").unlink()
    # Minutes on a loaded 2-core machine: each new worker imports torch and gr2st.
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert first_fold.read_text() == saved  # loaded from the fold store, not recomputed
    assert (control / "pids-S0").read_text().count("\n") == 1
    resumed = json.loads((out / "results.json").read_text())["methods"]["test-sleepy"]
    reference = _benchmark(h5ad_dir, tmp_path / "reference", "--methods", "knn")["methods"]["knn"]
    assert resumed["sections"] == reference["sections"]
    assert resumed["mean_pcc"] == reference["mean_pcc"]


@pytest.mark.filterwarnings("ignore:section .* obs\\['cell_type'\\] is missing:UserWarning")
def test_predict_many_slides_on_ray_equals_local(cluster: RayExecutor, tmp_path: Path) -> None:
    from gr2st.predict import train_bundle

    train = synthetic(n_sections=2, n_genes=6, grid=(4, 4), image_dir=tmp_path / "t", seed=5)
    bundle = train_bundle(
        train, tmp_path / "bundle", panel=[f"GENE{i:03d}" for i in range(4)], nuclei="none",
        size_px=48, device="cpu", cache_dir=tmp_path / "cache", progress=False,
        overrides=["train.epochs=2", "model.proj_dim=16", "model.heads=2"],
    )  # fmt: skip
    slides = tmp_path / "slides"
    slides.mkdir()
    for adata in synthetic(n_sections=2, n_genes=6, grid=(3, 4), image_dir=slides, seed=4):
        adata.write_h5ad(slides / f"{adata.obs['section'].iloc[0]}.h5ad")
    common = ["predict", "--model", str(bundle), "--device", "cpu", "--inputs", str(slides)]
    runner = CliRunner()
    local = runner.invoke(app, [*common, "--cpus-per-task", "1", "--out", str(tmp_path / "l")])
    assert local.exit_code == 0, (local.output, local.exception)
    on_ray = runner.invoke(app, [*common, "--executor", "ray", "--out", str(tmp_path / "r")])
    assert on_ray.exit_code == 0, (on_ray.output, on_ray.exception)
    assert "Summary: 2 done, 0 skipped, 0 failed (of 2)." in on_ray.output
    for name in ("S0.h5ad", "S1.h5ad"):
        a = anndata.read_h5ad(tmp_path / "l" / name)
        b = anndata.read_h5ad(tmp_path / "r" / name)
        np.testing.assert_array_equal(a.X, b.X)
        assert list(a.var_names) == list(b.var_names)
