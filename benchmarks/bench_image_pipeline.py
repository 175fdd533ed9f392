"""Throughput of each stage of the image pipeline, and the whole of it cold and warm.

Stages, each timed alone on the real sections (patches per second over all their spots):

- ``read``: decoding the section's H&E image, amortised over its spots;
- ``crop``: cutting the 224-px patches out of the decoded image;
- ``stain``: Reinhard normalisation of those patches;
- ``nuclei``: classical nuclear segmentation and measurement of the normalised patches;
- ``encode``: each encoder on the normalised patches (``--n-encode`` of them), for every
  EfficientNet-Lite variant and backend.

Then ``prepare_image_inputs`` end to end (features of the default encoder + classical nuclear
types) on all sections with an empty cache (cold) and again (warm). Each timing records
wall-clock and CPU seconds (all threads of this process): other processes may share the
machine, which stretches wall time but hardly CPU time, so the load average is recorded too.
``sum_of_stages_s`` (wall) next to the cold time shows what overlapping image decoding and
patch preparation with encoding saves.

Usage::

    nice python benchmarks/bench_image_pipeline.py --out results/bench_image_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gr2st._constants import MICRONS_PER_PIXEL, UNS
from gr2st._utils.files import atomic_path
from gr2st.cli.benchmark import load_sections, resolve_data_dir
from gr2st.encoders import (
    DEFAULT_ENCODER,
    EfficientNetLite,
    get_encoder,
    prepare_image_inputs,
)
from gr2st.encoders.efficientnet import Backend
from gr2st.encoders.options import image_path, spot_centers
from gr2st.image import get_stain_normalizer, iter_patches, open_slide
from gr2st.image.nuclei import measure_patches
from gr2st.sections import section_label as section_name

ENCODERS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
BACKENDS: tuple[Backend, ...] = ("torch", "onnx")
STAGES = ("read", "crop", "stain", "nuclei")


class Clock:
    """Accumulate the wall-clock and process CPU seconds of the blocks it times."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self._start = (0.0, 0.0)

    def __enter__(self) -> Clock:
        self._start = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._start[0]
        self.cpu += time.process_time() - self._start[1]

    def rate(self, n: int) -> dict[str, float]:
        return {
            "patches": n,
            "wall_s": round(self.wall, 3),
            "cpu_s": round(self.cpu, 3),
            "patches_per_s": round(n / self.wall, 1),
            "cpu_ms_per_patch": round(1000 * self.cpu / n, 2),
        }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def stage_times(adatas: list[Any], *, size: int, batch_size: int, n_encode: int) -> dict[str, Any]:
    """Time read, crop, stain and nuclei over all sections, then each encoder."""
    stain = get_stain_normalizer("reinhard")
    clocks = {name: Clock() for name in STAGES}
    sample: list[np.ndarray] = []
    for adata in adatas:
        centers = spot_centers(adata)
        slide = open_slide(image_path(adata))
        with clocks["read"]:  # Pillow images are decoded on first read
            slide.read_region(int(centers[0, 0]), int(centers[0, 1]), 1, 1)
        with clocks["crop"]:
            patches = iter_patches(
                slide, centers, size_px=size, batch_size=batch_size, prefetch=False
            )
            batches = [p for _, p in patches]
        with clocks["stain"]:
            stained = [stain.transform(b) for b in batches]
        mpp = adata.uns[UNS].get(MICRONS_PER_PIXEL)
        with clocks["nuclei"]:
            for b in stained:
                measure_patches(b, microns_per_pixel=mpp)
        slide.close()
        sample.extend(stained)
        print(f"{section_name(adata)}: {adata.n_obs} spots timed", flush=True)
    n_total = sum(a.n_obs for a in adatas)
    stages: dict[str, Any] = {name: clock.rate(n_total) for name, clock in clocks.items()}
    sample_patches = np.concatenate(sample)[:n_encode]
    encoders: dict[str, Any] = {}
    for name in ENCODERS:
        for backend in BACKENDS:
            enc = EfficientNetLite(name, backend=backend)
            enc.encode(sample_patches[:batch_size])  # warm-up (allocations, graph optimisation)
            with Clock() as clock:
                for start in range(0, len(sample_patches), batch_size):
                    enc.encode(sample_patches[start : start + batch_size])
            encoders[f"{name}/{backend}"] = {
                "input_size": enc.input_size,
                **clock.rate(len(sample_patches)),
            }
            rate = len(sample_patches) / clock.wall
            print(f"encode {name}/{backend}: {rate:.1f} patches/s", flush=True)
    default = EfficientNetLite(DEFAULT_ENCODER)
    stages["encode"] = {"encoder": f"{default.name}/{default.backend}"} | encoders[
        f"{default.name}/{default.backend}"
    ]
    return {"stages": stages, "encoders": encoders}


def end_to_end(adatas: list[Any], *, cache_dir: Path, batch_size: int) -> dict[str, Any]:
    """``prepare_image_inputs`` cold (empty cache) then warm, default encoder + nuclei."""
    runs: dict[str, Any] = {}
    for label in ("cold", "warm"):
        load = _load()
        with Clock() as clock:
            enc = get_encoder(DEFAULT_ENCODER)
            reports = prepare_image_inputs(
                adatas,
                encoder=enc,
                nuclei="classical",
                cache_dir=cache_dir,
                batch_size=batch_size,
                progress=False,
            )
        runs[label] = {
            "wall_s": round(clock.wall, 2),
            "cpu_s": round(clock.cpu, 2),
            "load_before": load,
            "load_after": _load(),
            "encoder": enc.describe(),
            "sections": [
                {
                    "section": r.section,
                    "spots": r.n_spots,
                    "total_s": round(r.total_s, 2),
                    "image_wait_s": round(r.wait_s, 2),
                    "encode_s": round(r.encode_s, 2),
                    "nuclei_s": round(r.nuclei_s, 2),
                    "features_cached": r.features_cached,
                    "nuclei_cached": r.nuclei_cached,
                }
                for r in reports
            ],
        }
        print(f"end to end {label}: {clock.wall:.1f} s wall, {clock.cpu:.1f} s CPU", flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="HER2ST folder")
    parser.add_argument("--sections", default=None, help="comma-separated (default: imaged)")
    parser.add_argument("--out", type=Path, default=Path("results/bench_image_pipeline.json"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-encode", type=int, default=128, help="patches per encoder timing")
    parser.add_argument("--skip-stages", action="store_true", help="only the end-to-end runs")
    args = parser.parse_args()

    root = resolve_data_dir(args.data)
    names = args.sections.split(",") if args.sections else None
    _, adatas = load_sections(root, names)
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "nice": os.nice(0),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "data": str(root),
        "sections": [section_name(a) for a in adatas],
        "spots": sum(a.n_obs for a in adatas),
        "patch_px": args.size,
        "batch_size": args.batch_size,
        "load_before": _load(),
    }
    with tempfile.TemporaryDirectory(prefix="gr2st-bench-cache-") as cache:
        result["end_to_end"] = end_to_end(adatas, cache_dir=Path(cache), batch_size=args.batch_size)
    if not args.skip_stages:
        result.update(
            stage_times(adatas, size=args.size, batch_size=args.batch_size, n_encode=args.n_encode)
        )
        stages = result["stages"]
        result["sum_of_stages_s"] = round(
            sum(stages[k]["wall_s"] for k in STAGES)
            + result["spots"] / stages["encode"]["patches_per_s"],
            2,
        )
    result["load_after"] = _load()
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
