"""``--executor ray`` against ``--executor local``: wall time, peak memory, start-up cost.

Three measurements, written to ``--json``:

* ``benchmark``: ``gr2st benchmark --methods ...`` on ``--data`` with each executor (the
  Ray one a local instance of ``--ray-cpus`` cores), in the same run; wall time, the peak
  summed RSS of the command's process tree (driver, and for Ray its GCS, raylet, object
  store and workers; shared pages count once per process, so this overstates), each
  fold's seconds, and whether the two ``results.json`` agree in every number but times.
* ``startup``: starting a local Ray instance, running one trivial task and stopping it.
* ``features``: ``gr2st features --inputs`` over ``--slides`` synthetic sections, each
  executor with its own empty cache.

Example
-------
``python benchmarks/bench_ray.py --data /work/shared/data/her2st --cache /tmp/c
--work /tmp/bench_ray --json benchmarks/results/ray.json``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

TIMING_KEYS = ("seconds", "peak_gpu", "checkpoint")


def numbers(value: Any) -> Any:
    """``value`` without its timing fields (they differ between any two runs)."""
    if isinstance(value, dict):
        return {k: numbers(v) for k, v in value.items() if not any(t in k for t in TIMING_KEYS)}
    if isinstance(value, list):
        return [numbers(v) for v in value]
    return value


def run_sampled(command: list[str], *, log: Path) -> dict[str, float]:
    """Run ``command``; its wall time and the peak summed RSS of its process tree."""
    peak = 0
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                try:
                    tree = [root, *root.children(recursive=True)]
                    rss = 0
                    for p in tree:
                        with contextlib.suppress(psutil.Error):
                            rss += p.memory_info().rss
                    peak = max(peak, rss)
                except psutil.Error:
                    pass
                stop.wait(0.2)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        code = proc.wait()
        stop.set()
        thread.join()
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed ({code}); see {log}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak / 2**20, 1)}


def gr2st(*args: str) -> list[str]:
    return [sys.executable, "-m", "gr2st", *args]


def bench_benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    common = [
        "benchmark",
        "--data",
        str(args.data),
        "--methods",
        args.methods,
        "--cache",
        str(args.cache),
        "--no-progress",
        "--no-figures",
        "--no-resume",
        *[a for s in args.set for a in ("--set", s)],
    ]
    if args.encoder:
        common += ["--encoder", args.encoder]
    runs: dict[str, Any] = {}
    for executor in ("local", "ray"):
        out = work / f"benchmark-{executor}"
        extra = ["--executor", "ray", "--ray-cpus", str(args.ray_cpus)] if executor == "ray" else []
        runs[executor] = run_sampled(
            gr2st(*common, *extra, "--out", str(out)), log=work / f"benchmark-{executor}.log"
        )
        results = json.loads((out / "results.json").read_text())
        runs[executor]["fold_seconds"] = {
            name: {fold: round(info["seconds"], 2) for fold, info in entry["folds"].items()}
            for name, entry in results["methods"].items()
        }
        runs[executor]["mean_pcc"] = {
            name: entry["mean_pcc"] for name, entry in results["methods"].items()
        }
        runs[executor]["_numbers"] = numbers(results)
    runs["same_numbers"] = runs["local"].pop("_numbers") == runs["ray"].pop("_numbers")
    runs["ray_over_local_wall"] = round(runs["ray"]["wall_s"] / runs["local"]["wall_s"], 3)
    return runs


def bench_startup(args: argparse.Namespace, work: Path, repeats: int = 3) -> dict[str, Any]:
    code = (
        "import time; t = time.perf_counter()\n"
        "from gr2st.executors import Task, get_executor\n"
        f"with get_executor('ray', num_cpus={args.ray_cpus}) as ex:\n"
        "    up = time.perf_counter() - t\n"
        "    [o.value for o in ex.map([Task('t', pow, {'base': 2, 'exp': 3})])]\n"
        "    first = time.perf_counter() - t\n"
        "print(up, first, time.perf_counter() - t)\n"
    )
    rows = []
    for _ in range(repeats):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        up, first, total = map(float, done.stdout.split())
        rows.append(
            {"init_s": round(up, 2), "first_task_s": round(first, 2), "total_s": round(total, 2)}
        )
    return {"runs": rows, "median_total_s": sorted(r["total_s"] for r in rows)[repeats // 2]}


def bench_features(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from gr2st.datasets import synthetic

    slides = work / "slides"
    if not slides.is_dir():
        slides.mkdir(parents=True)
        for adata in synthetic(
            n_sections=args.slides, n_genes=8, grid=(12, 12), image_dir=slides / "img", seed=3
        ):
            adata.write_h5ad(slides / f"{adata.obs['section'].iloc[0]}.h5ad")
    runs: dict[str, Any] = {}
    for executor in ("local", "ray"):
        extra = ["--executor", "ray", "--ray-cpus", str(args.ray_cpus)] if executor == "ray" else []
        runs[executor] = run_sampled(
            gr2st(
                "features",
                "--inputs",
                str(slides),
                "--cache",
                str(work / f"features-cache-{executor}"),
                "--no-progress",
                *extra,
            ),
            log=work / f"features-{executor}.log",
        )
    runs["slides"] = args.slides
    runs["ray_over_local_wall"] = round(runs["ray"]["wall_s"] / runs["local"]["wall_s"], 3)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--methods", default="knn,ridge,gr2st")
    parser.add_argument("--encoder", default=None)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--slides", type=int, default=12)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument(
        "--only", default="benchmark,startup,features", help="Comma-separated parts to run."
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    # Parts measured before (another --only) are kept; each part is saved when done.
    report: dict[str, Any] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    report["cpus"] = os.cpu_count()
    parts = {"benchmark": bench_benchmark, "startup": bench_startup, "features": bench_features}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for part in args.only.split(","):
        load = os.getloadavg()
        report[part] = parts[part](args, args.work)
        report[part]["command"] = sys.argv
        report[part]["load_average"] = {"start": load, "end": os.getloadavg()}
        print(part, json.dumps(report[part]), flush=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
