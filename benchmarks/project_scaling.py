"""Project the paper's protocol onto 1, 8 and 64 GPUs from measured per-fold task times.

Inputs are measurements, never guesses made here: the seconds of each (method, fold) task
from a ``results.json`` (``--results``, HER2ST-6 folds) plus any ``--fold-seconds
NAME=SECONDS`` measured elsewhere (e.g. ``docs/results.md``), and the Ray start-up cost
from ``bench_ray.py``'s JSON (``--ray-json``). The assumptions are options, printed with
the table:

* a task's time grows linearly with its training spots (epochs fixed): HER2ST-6 folds
  train on ``--measured-train-spots``; a paper fold on (sections − 1) × spots per section;
* a GPU runs a task ``--gpu-speedup`` times faster than this 2-core CPU did (one or more
  values; no GPU was measured here);
* one task per GPU; tasks are placed longest first on the least loaded GPU (LPT), the
  schedule Ray's queue approaches when every task is submitted at once.

Example
-------
``python benchmarks/project_scaling.py --results /tmp/b/results.json --ray-json ray.json
--fold-seconds hggep=321 --gpu-speedup 1 10``
"""

from __future__ import annotations

import argparse
import heapq
import json
from pathlib import Path
from statistics import mean
from typing import Any


def lpt_makespan(tasks: list[float], workers: int) -> float:
    """Finish time of ``tasks`` on ``workers``: longest first onto the least loaded."""
    loads = [0.0] * workers
    heapq.heapify(loads)
    for t in sorted(tasks, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + t)
    return max(loads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=None, help="Measured results.json.")
    parser.add_argument("--ray-json", type=Path, required=True, help="bench_ray.py output.")
    parser.add_argument("--fold-seconds", nargs="*", default=[], metavar="NAME=SECONDS")
    parser.add_argument(
        "--methods", default="gr2st,histogene,hist2st,thitogene,hggep,mclstexp,reg2st"
    )
    parser.add_argument("--measured-train-spots", type=float, default=994.2)
    parser.add_argument("--datasets", nargs="*", default=["her2st=32:378", "cscc=12:378"],
                        metavar="NAME=FOLDS:SPOTS_PER_SECTION")  # fmt: skip
    parser.add_argument("--gpus", nargs="*", type=int, default=[1, 8, 64])
    parser.add_argument("--gpu-speedup", nargs="*", type=float, default=[1.0, 10.0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    measured = json.loads(args.results.read_text())["methods"] if args.results else {}
    per_fold = {n: mean(f["seconds"] for f in e["folds"].values()) for n, e in measured.items()}
    for item in args.fold_seconds:
        name, seconds = item.split("=")
        per_fold[name] = float(seconds)
    methods = args.methods.split(",")
    missing = [m for m in methods if m not in per_fold]
    if missing:
        raise SystemExit(f"no measured fold seconds for {missing}; pass --fold-seconds")
    startup = json.loads(args.ray_json.read_text())["startup"]["median_total_s"]

    tasks: list[float] = []
    datasets = {}
    for spec in args.datasets:
        name, rest = spec.split("=")
        folds, spots = rest.split(":")
        scale = (int(folds) - 1) * float(spots) / args.measured_train_spots
        datasets[name] = {"folds": int(folds), "spots_per_section": float(spots), "scale": scale}
        tasks += [per_fold[m] * scale for m in methods for _ in range(int(folds))]
    report: dict[str, Any] = {
        "fold_seconds_measured": {m: round(per_fold[m], 1) for m in methods},
        "datasets": datasets,
        "tasks": len(tasks),
        "task_hours_cpu": round(sum(tasks) / 3600, 1),
        "longest_task_s_cpu": round(max(tasks), 0),
        "ray_startup_s": startup,
        "rows": [],
    }
    print(f"{len(tasks)} tasks, {sum(tasks) / 3600:.1f} task-hours at this CPU's speed")
    print("| GPUs | " + " | ".join(f"speed-up {s:g}×" for s in args.gpu_speedup) + " |")
    print("|---|" + "---|" * len(args.gpu_speedup))
    for gpus in args.gpus:
        cells = []
        for speedup in args.gpu_speedup:
            wall = lpt_makespan([t / speedup for t in tasks], gpus) + startup
            report["rows"].append({"gpus": gpus, "speedup": speedup, "wall_h": wall / 3600})
            cells.append(f"{wall / 3600:.1f} h")
        print(f"| {gpus} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
