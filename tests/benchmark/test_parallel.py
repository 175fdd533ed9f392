"""Inner selection and outer folds as parallel tasks: the same numbers as one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from anndata import AnnData

from gr2st._constants import feature_key
from gr2st.benchmark import run_benchmark
from gr2st.benchmark.selection import parse_grid
from gr2st.executors import LocalExecutor
from gr2st.executors.pool import PoolExecutor

FEATURES = feature_key("toy")  # filled by the fixtures (conftest.py)

GRID = [
    "smooth.weight=0,0.5",
    "expression.align=none,standardize",
    "gr2st:predict.bank=both,images",
    "gr2st:train.ensemble=1,2",
]


def _run(sections: list[AnnData], out: Path, executor: Any, **options: Any) -> dict[str, Any]:
    methods = options.pop("methods", ["gr2st", "knn"])
    return run_benchmark(
        sections, methods=methods, genes=list(sections[0].var_names), feature_key=FEATURES,
        out_dir=out, progress=False, figures=False, device="cpu", seed=5,
        grid=parse_grid(GRID if "gr2st" in methods else GRID[:2], methods), select="inner",
        inner_folds=2, overrides=["gr2st:train.epochs=2"], executor=executor, **options,
    )  # fmt: skip


def _without_seconds(obj: Any) -> Any:
    """``obj`` less its timings (wall-clock seconds and what is derived from them)."""
    if isinstance(obj, dict):
        return {
            k: _without_seconds(v)
            for k, v in obj.items()
            if "seconds" not in k and k not in ("checkpoint_share", "seconds_per_step")
        }
    if isinstance(obj, list):
        return [_without_seconds(v) for v in obj]
    return obj


def test_two_worker_inner_selection_equals_one_process(
    four_sections: list[AnnData], tmp_path: Path
) -> None:
    lines: list[str] = []
    serial = _run(four_sections, tmp_path / "serial", LocalExecutor(cpus_per_task=1))
    with PoolExecutor(jobs=2, cpus_per_task=1) as pool:
        parallel = _run(four_sections, tmp_path / "pool", pool, report=lines.append)
    assert _without_seconds(parallel) == _without_seconds(serial)
    for method in ("gr2st", "knn"):
        for fold in ("S0", "S1", "S2", "S3"):
            chosen = parallel["methods"][method]["folds"][fold]["selection"]
            assert chosen["inner_folds"] == [s for s in ("S0", "S1", "S2", "S3") if s != fold][:2]
            with (
                np.load(tmp_path / "serial" / "folds" / method / f"{fold}.npz") as a,
                np.load(tmp_path / "pool" / "folds" / method / f"{fold}.npz") as b,
            ):
                assert sorted(a.files) == sorted(b.files)
                for key in a.files:
                    np.testing.assert_array_equal(a[key], b[key])
    # One line per finished task: 4 folds × (2 inner folds × 2 alignments) inner fit
    # groups of each method (GR2ST's two ensemble members each), and 8 folds; the work
    # done only grows, to 100 %.
    assert len(lines) == 2 * 4 * 4 + 8
    assert sum("fold done" in line for line in lines) == 8
    assert any(line.startswith("gr2st S2: inner fits 8/8 (") for line in lines)
    assert any(line.startswith("knn S2: inner fits 4/4 (") for line in lines)
    shares = [int(line.rsplit("(", 1)[1].split("%")[0]) for line in lines]
    assert shares == sorted(shares)
    assert shares[-1] == 100
    assert not (tmp_path / "pool" / "work").exists()


def test_inner_fits_of_an_interrupted_fold_are_not_fitted_again(
    sections: list[AnnData], tmp_path: Path, flaky: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    grid = parse_grid(["smooth.weight=0,0.5"], ["test-flaky"])
    options: dict[str, Any] = {
        "methods": ["test-flaky"], "genes": list(sections[0].var_names),
        "feature_key": FEATURES, "out_dir": tmp_path, "progress": False, "figures": False,
        "grid": grid, "select": "inner",
    }  # fmt: skip
    monkeypatch.setattr(flaky, "crash_on", 3)  # S0's outer fit, after its two inner fits
    flaky.armed = True
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_benchmark(sections, **options)
    assert len(list((tmp_path / "work" / "test-flaky" / "S0" / "inner").iterdir())) == 2
    flaky.armed = False
    flaky.calls.clear()
    resumed = run_benchmark(sections, **options)
    assert [c["train"] for c in flaky.calls][:2] == [("S1", "S2"), ("S2",)]
    flaky.calls.clear()
    reference = run_benchmark(sections, **{**options, "out_dir": tmp_path / "ref"})
    assert _without_seconds(resumed) == _without_seconds(reference)
