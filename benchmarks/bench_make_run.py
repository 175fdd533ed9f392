"""Wall time of ``make run``'s benchmark command: one process vs worker processes.

Runs the command of the Makefile's ``run`` target (its ``RUN_OPTIONS`` read from the
Makefile) twice with the same seed, into two fresh output folders:

* serial: ``--jobs 1 --cpus-per-task 1`` with ``OMP_NUM_THREADS=1`` (what README advises
  on a shared CPU);
* parallel: ``--jobs`` as given (default: one worker per core, each with one thread on
  a machine whose cores equal the workers).

It asserts that both give identical numbers (every fold's saved predictions and every
score in ``results.json``), measures each run's wall time and CPU use (user + system
time of the command and its worker processes / wall time), and logs the ETA the
command printed once 25 % of the estimated work was done against the time that was
actually left. The JSON goes to ``--out``.

The full command takes about an hour on one core; to check the script (or a machine)
in minutes, reduce it: fewer ``--sections`` and ``--methods``, a smaller ``--grid``
(replaces the Makefile's grid), ``--tta 1`` and ``--set gr2st:train.epochs=5``. Such
numbers are recorded with ``"reduced": true``. The sections' features are computed (and
cached) by an untimed run of the ``mean`` baseline first.

Usage::

    python benchmarks/bench_make_run.py --out benchmarks/results/make_run.json
    python benchmarks/bench_make_run.py --sections B4,C2,C3 --methods gr2st,knn \\
        --set gr2st:train.epochs=5 --grid expression.align=none,standardize \\
        --out benchmarks/results/make_run_reduced.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gr2st._utils.files import atomic_path
from gr2st.executors import available_cpus

REPO = Path(__file__).resolve().parents[1]
MAKE_METHODS = "gr2st,ridge,knn,mean,oracle"
#: The share of the estimated work after which the printed ETA is checked.
ETA_AT = 25
_LINE = re.compile(r"\((\d+)% of the work(?:, about (.+) left)?\)\s*$")
_UNITS = {"h": 3600, "min": 60, "s": 1}


def run_options(makefile: Path) -> list[str]:
    """The ``RUN_OPTIONS`` of the Makefile, as command-line words."""
    for line in makefile.read_text().splitlines():
        if line.startswith("RUN_OPTIONS"):
            return shlex.split(line.split(":=", 1)[1])
    raise SystemExit(f"{makefile}: no RUN_OPTIONS line")


def parse_duration(text: str) -> float:
    """``"12 min 34 s"`` → 754.0 (the format of :func:`gr2st.benchmark.progress.format_seconds`)."""
    words = text.split()
    return float(sum(int(n) * _UNITS[u] for n, u in zip(words[::2], words[1::2], strict=True)))


def command(args: argparse.Namespace, out: Path) -> list[str]:
    options = run_options(REPO / "Makefile")
    if args.grid:
        kept, skip = [], False
        for word in options:
            if skip:
                skip = False
            elif word == "--grid":
                skip = True
            else:
                kept.append(word)
        options = kept + [w for g in args.grid for w in ("--grid", g)]
    for flag, value in (("--inner-folds", args.inner_folds), ("--tta", args.tta)):
        if value is not None:
            options[options.index(flag) + 1] = str(value)
    words = [sys.executable, "-m", "gr2st", "benchmark", "--data", args.data]
    if args.sections:
        words += ["--sections", args.sections]
    words += ["--methods", args.methods, "--profile", "default", *options]
    words += [w for s in args.set for w in ("--set", s)]
    return [*words, "--seed", str(args.seed), "--no-progress", "--out", str(out)]


def timed_run(words: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``words``; wall and CPU time, and each printed progress line with its time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    lines: list[tuple[float, str]] = []
    proc = subprocess.Popen(
        words, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.monotonic() - start, line.rstrip()))
    proc.wait()
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = "\n".join(line for _, line in lines[-20:])
        raise SystemExit(f"benchmark failed ({proc.returncode}):\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "cores_used": cpu / wall, "eta": eta_check(lines, wall)}


def eta_check(lines: list[tuple[float, str]], wall: float) -> dict[str, Any] | None:
    """The ETA printed at the first line past :data:`ETA_AT` % vs the time actually left."""
    for at, line in lines:
        match = _LINE.search(line)
        if match and int(match.group(1)) >= ETA_AT and match.group(2):
            eta, actual = parse_duration(match.group(2)), wall - at
            return {
                "line": line,
                "at_s": at,
                "work_done_percent": int(match.group(1)),
                "eta_s": eta,
                "actual_left_s": actual,
                "error": (eta - actual) / actual if actual > 0 else None,
            }
    return None


def assert_identical(a: Path, b: Path) -> int:
    """Every fold's saved arrays and every score of ``results.json`` equal; the arrays compared."""
    n = 0
    for left in sorted((a / "folds").rglob("*.npz")):
        right = b / left.relative_to(a)
        with np.load(left) as x, np.load(right) as y:
            assert sorted(x.files) == sorted(y.files), left
            for key in x.files:
                assert np.array_equal(x[key], y[key], equal_nan=True), f"{left}: {key} differs"
                n += 1
    ra, rb = (json.loads((p / "results.json").read_text())["methods"] for p in (a, b))
    for method in ra:
        for key in ("mean_pcc", "sections", "folds"):
            assert _scores(ra[method][key]) == _scores(rb[method][key]), f"{method}: {key}"
    return n


def _scores(obj: Any) -> Any:
    """``obj`` less wall-clock timings."""
    if isinstance(obj, dict):
        return {k: _scores(v) for k, v in obj.items() if "seconds" not in k and k != "training"}
    return obj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("GR2ST_DATA", "../shared/data/her2st"))
    parser.add_argument("--sections", default="", help="Default: make run's (B4, C2-C6).")
    parser.add_argument("--methods", default=MAKE_METHODS)
    parser.add_argument("--set", action="append", default=[], help="Extra --set items.")
    parser.add_argument("--grid", action="append", default=[], help="Replaces make run's grid.")
    parser.add_argument("--inner-folds", type=int, default=None)
    parser.add_argument("--tta", type=int, default=None, help="Default: make run's.")
    parser.add_argument("--jobs", type=int, default=None, help="Parallel run (default: cores).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/make_run.json")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-make-run-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    serial_words = [*command(args, work / "serial"), "--jobs", "1", "--cpus-per-task", "1"]
    parallel_words = command(args, work / "parallel")
    if args.jobs is not None:
        parallel_words += ["--jobs", str(args.jobs)]
    # Untimed: the features of the sections (cached), so neither run pays for them.
    words = command(args, work / "warm-up")
    warm = [*words[: words.index("--methods")], "--methods", "mean", "--no-figures"]
    warm += ["--tta", words[words.index("--tta") + 1], "--out", str(work / "warm-up")]
    subprocess.run(warm, env=env, cwd=REPO, check=True, capture_output=True)
    print("serial:", shlex.join(serial_words), flush=True)
    serial = timed_run(serial_words, env)
    print(f"serial: {serial['wall_s']:.0f} s", flush=True)
    print("parallel:", shlex.join(parallel_words), flush=True)
    parallel = timed_run(parallel_words, env)
    print(f"parallel: {parallel['wall_s']:.0f} s", flush=True)
    compared = assert_identical(work / "serial", work / "parallel")
    reduced = bool(args.sections or args.grid or args.set or args.inner_folds or args.tta)
    reduced = reduced or args.methods != MAKE_METHODS
    report = {
        "reduced": reduced,
        "command": shlex.join(parallel_words[1:]),
        "cores": available_cpus(),
        "load_average_at_end": os.getloadavg(),
        "machine": platform.platform(),
        "serial": serial,
        "parallel": parallel,
        "speedup": serial["wall_s"] / parallel["wall_s"],
        "identical_arrays": compared,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
