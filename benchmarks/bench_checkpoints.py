"""Checkpoint overhead of every learned method: time writing checkpoints / fit time.

Each learned method is fitted on the same synthetic sections with a work folder, twice:
with checkpoints after every epoch (``checkpoint_every=0``, what the loops did before
the wall-clock interval) and with the default interval (a checkpoint every few minutes,
at the end and on Ctrl-C). Both fits of a method run back to back, so load from other
processes affects them alike; the share is reported per run, the target being ≤ 5 %
with the default interval.

Usage::

    python benchmarks/bench_checkpoints.py --out results/bench_checkpoints.json
    python benchmarks/bench_checkpoints.py --profile paper --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gr2st._utils.files import atomic_path
from gr2st.training import DEFAULT_CHECKPOINT_SECONDS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "methods"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_contract import LEARNED, make, strong_sections

# Epochs per method: enough for the fit to take seconds, not minutes, on a CPU.
EPOCHS = {
    "gr2st": "train.epochs=30",
    "mclstexp": "epochs=10",
    "reg2st": "epochs=30",
    "histogene": "epochs=10",
    "hist2st": "epochs=5",
    "thitogene": "epochs=5",
    "hggep": "epochs=5",
}


def _fit(name: str, profile: str, device: str, every: float, sections: list[Any]) -> dict:
    # The contract test's small widths on the default profile; the paper profile as is.
    extra = [EPOCHS[name]]
    kwargs: dict[str, Any] = {"checkpoint_every": every}
    if profile == "paper":
        from gr2st.methods import METHODS

        method = METHODS.get(name)(
            feature_key="X_toy", profile="paper", overrides=extra, device=device,
            progress=False, **kwargs,
        )  # fmt: skip
    else:
        method = make(name, *extra, device=device, **kwargs)
    with tempfile.TemporaryDirectory() as work:
        method.fit(sections[:3], workdir=Path(work))
    stats = method.training_stats
    assert stats is not None
    return {
        "checkpoint_every": every,
        "fit_seconds": stats.seconds,
        "checkpoint_seconds": stats.checkpoint_seconds,
        "checkpoints": stats.checkpoints,
        "share": stats.checkpoint_share,
        "seconds_per_step": stats.seconds_per_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench_checkpoints.json"))
    parser.add_argument("--profile", default="default", choices=["default", "paper"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default=",".join(LEARNED))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sections = strong_sections(0)
    rows = []
    print(f"{'method':<10} {'every epoch':>22} {'default interval':>22}")
    for name in args.methods.split(","):
        runs = [_fit(name, args.profile, args.device, every, sections)
                for every in (0.0, DEFAULT_CHECKPOINT_SECONDS)]  # fmt: skip
        rows.append({"method": name, "runs": runs})
        cells = [f"{r['share']:6.1%} of {r['fit_seconds']:6.1f} s" for r in runs]
        print(f"{name:<10} {cells[0]:>22} {cells[1]:>22}", flush=True)
    worst = max(r["runs"][1]["share"] for r in rows)
    result = {
        "benchmark": "checkpoint overhead",
        "profile": args.profile,
        "device": args.device,
        "threads": args.threads,
        "machine": platform.platform(),
        "torch": torch.__version__,
        "target_share": 0.05,
        "worst_share_default_interval": worst,
        "methods": rows,
        "median_share_every_epoch": float(np.median([r["runs"][0]["share"] for r in rows])),
    }
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
    print(f"worst share with the default interval: {worst:.1%} (target ≤ 5 %); {args.out}")


if __name__ == "__main__":
    main()
