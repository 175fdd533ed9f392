"""Cost of the spot-on-image check per section, and that it passes the good HER2ST data.

For each imaged HER2ST section (B4, C2-C6) the check of
:func:`gr2st.image.tissue.check_section_image` runs cold (the image's thumbnail and
tissue mask not yet computed in this process) and warm (the same section again: the
remembered result). Records wall-clock and CPU seconds (other processes may share the
machine: wall time stretches, CPU time hardly) with the load average, and each
section's numbers (share of spots on tissue, share of the spots' hull that is tissue,
the best other layout). Exits non-zero when a good section fails the check or warns,
or a cold check takes 1 s of CPU or more.

Usage::

    python benchmarks/bench_input_checks.py --out benchmarks/results/input_checks.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from gr2st._utils.files import atomic_path
from gr2st.image import tissue
from gr2st.io import read_her2st
from gr2st.io.download import HER2ST_IMAGED

#: The cold check must cost less than this (CPU seconds) per section.
BUDGET_S = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/her2st"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/input_checks.json"))
    options = parser.parse_args()
    rows = []
    for name in HER2ST_IMAGED:
        adata = read_her2st(options.data, name)
        timings = {}
        for run in ("cold", "warm"):
            wall, cpu = time.perf_counter(), time.process_time()
            check = tissue.check_section_image(adata)
            timings[f"{run}_wall_s"] = round(time.perf_counter() - wall, 4)
            timings[f"{run}_cpu_s"] = round(time.process_time() - cpu, 4)
        assert check is not None
        best = max(check.layouts, key=lambda k: check.layouts[k])
        rows.append(
            {
                "section": name,
                "n_spots": check.n_spots,
                "on_tissue": check.on_tissue,
                "hull_tissue": check.hull_tissue,
                "best_other_layout": best,
                "best_other_on_tissue": check.layouts[best],
                "warnings": list(check.warnings),
                **timings,
            }
        )
        print(
            f"{name}: {check.on_tissue:.3f} on tissue, hull {check.hull_tissue:.3f}, "
            f"best other {best} {check.layouts[best]:.3f}; cold {timings['cold_wall_s']:.3f} s "
            f"wall / {timings['cold_cpu_s']:.3f} s CPU, warm {timings['warm_wall_s']:.4f} s"
        )
    result = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "thumbnail_px": tissue.THUMBNAIL_PX,
        "budget_cpu_s": BUDGET_S,
        "sections": rows,
        "max_cold_cpu_s": max(r["cold_cpu_s"] for r in rows),
        "max_cold_wall_s": max(r["cold_wall_s"] for r in rows),
        "all_pass_without_warning": all(not r["warnings"] for r in rows),
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(options.out) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {options.out}")
    if not result["all_pass_without_warning"] or result["max_cold_cpu_s"] >= BUDGET_S:
        sys.exit(1)


if __name__ == "__main__":
    main()
