"""Summarise a ``benchmarks/gpu_check.sh`` run: one row per method, JSON and a table.

Reads, per method folder under ``--out``: the finished folds (``folds/<method>/*.json``,
with their training statistics), the per-epoch progress of a fold stopped at the cap
(``work/<method>/<fold>/progress.jsonl``) and the nvidia-smi samples taken meanwhile.

Usage::

    python benchmarks/gpu_check_report.py --out results/gpu_check --methods histogene,gr2st
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any


def _folds(folder: Path, method: str) -> list[dict[str, Any]]:
    records = []
    for path in sorted((folder / "folds" / method).glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return records


def _running(folder: Path, method: str) -> list[dict[str, Any]]:
    """Last progress record of every unfinished fold."""
    out = []
    for log in (folder / "work" / method).glob("*/progress.jsonl"):
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        if lines:
            out.append(json.loads(lines[-1]))
    return out


def _gpu(samples: Path) -> dict[str, float]:
    util, memory = [], []
    if samples.is_file():
        for row in csv.reader(samples.open()):
            try:
                util.append(float(row[1]))
                memory.append(float(row[2]))
            except (IndexError, ValueError):
                continue
    if not util:
        return {}
    busy = [u for u in util if u > 0]
    return {
        "gpu_util_mean": sum(util) / len(util),
        "gpu_util_busy_mean": sum(busy) / len(busy) if busy else 0.0,
        "gpu_memory_max_mib": max(memory),
    }


def summarise(out: Path, method: str, cap: float) -> dict[str, Any]:
    folder = out / method
    done = _folds(folder, method)
    running = _running(folder, method)
    steps = sum(int(f.get("training", {}).get("steps", 0)) for f in done)
    seconds = sum(float(f.get("training", {}).get("train_seconds", 0.0)) for f in done)
    steps += sum(int(r["steps"]) for r in running)
    seconds += sum(float(r["train_seconds"]) for r in running)
    ckpt = sum(float(f.get("training", {}).get("checkpoint_seconds", 0.0)) for f in done)
    ckpt += sum(float(r["checkpoint_seconds"]) for r in running)
    peaks = [f["training"].get("peak_gpu_bytes", 0) for f in done if "training" in f]
    pccs = [
        s["mean_pcc"]
        for f in done
        for s in f.get("sections", {}).values()
        if s.get("mean_pcc") is not None
    ]
    return {
        "method": method,
        "cap_seconds": cap,
        "folds_finished": len(done),
        "steps": steps,
        "seconds_per_step": seconds / steps if steps else math.nan,
        "checkpoint_share": ckpt / (seconds + ckpt) if seconds + ckpt else math.nan,
        "peak_gpu_gb": max(peaks) / 1e9 if peaks else math.nan,
        "mean_pcc_finished_folds": sum(pccs) / len(pccs) if pccs else math.nan,
        **_gpu(out / f"{method}.nvidia-smi.csv"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", required=True)
    parser.add_argument("--cap", type=float, default=math.nan)
    args = parser.parse_args()
    rows = [summarise(args.out, m, args.cap) for m in args.methods.split(",") if m]
    header = f"{'method':<10} {'s/step':>8} {'GPU %':>6} {'peak GB':>8} {'folds':>5} {'PCC':>7}"
    print(header)
    for r in rows:
        print(
            f"{r['method']:<10} {r['seconds_per_step']:>8.3f} "
            f"{r.get('gpu_util_busy_mean', math.nan):>6.1f} {r['peak_gpu_gb']:>8.2f} "
            f"{r['folds_finished']:>5d} {r['mean_pcc_finished_folds']:>7.4f}"
        )
    (args.out / "gpu_check.json").write_text(json.dumps(rows, indent=2, allow_nan=True))


if __name__ == "__main__":
    main()
