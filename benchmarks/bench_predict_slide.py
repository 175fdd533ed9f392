"""Slide-scale prediction: spots per second and peak memory against the number of spots.

Writes a large synthetic H&E-like slide as a tiled pyramidal TIFF (tissue ellipse with
nuclei-like texture on glass, resolution tags of ``--mpp``), trains a tiny bundle on
synthetic sections (or uses ``--bundle``), then predicts ``--counts`` grid spots on the
slide: a hexagonal grid over the detected tissue whose pitch gives at least N spots, cut
to exactly N. Each count runs in a fresh subprocess so that its peak RSS (sampled every
50 ms from ``/proc/self/statm``, and ``ru_maxrss``) is its own. The encoder dominates the
time; the rest of the pipeline (patch reading, stain, embedding, retrieval) is linear
in the spots and its memory is ``spots × (embedding + genes · 8 bytes)`` on top of the
fixed model, bank and three patch batches.

``--workers 0,2`` runs every count twice, reading and stain-normalising the patches in a
background thread (0) and in two worker processes (2), one after the other on the same
slide and bundle, so the two spots/s are measured in the same conditions.

Usage::

    nice python benchmarks/bench_predict_slide.py --counts 2500,5000,10000
    nice python benchmarks/bench_predict_slide.py --counts 5000 --workers 0,2
    nice python benchmarks/bench_predict_slide.py --counts 25000,50000,100000  # hours on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from gr2st._utils.files import atomic_path

TILE = 512


def _tile(rng: np.random.Generator, y0: int, x0: int, side: int, step: int) -> np.ndarray:
    """One tile of a pyramid level (``step`` full-resolution pixels per pixel): glass
    outside a centred ellipse, textured pink tissue with purple dots."""
    yy, xx = np.mgrid[y0 : y0 + TILE, x0 : x0 + TILE].astype(np.float32) * step
    inside = ((xx - side / 2) / (0.45 * side)) ** 2 + ((yy - side / 2) / (0.38 * side)) ** 2 < 1
    img = np.empty((TILE, TILE, 3), np.float32)
    img[:] = (244, 242, 246)
    tissue = np.array([225, 150, 190], np.float32)
    wave = 12 * np.sin(xx / 37.0)[..., None] * np.cos(yy / 53.0)[..., None]
    img[inside] = (tissue + wave)[inside]
    dots = (rng.random((TILE, TILE)) < 0.01) & inside
    img[dots] = (90, 50, 130)
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_slide(path: Path, *, side: int, mpp: float, seed: int = 0) -> Path:
    """A ``side × side`` tiled TIFF with a 4× and 16× pyramid, written tile by tile."""

    def tiles(level_side: int, factor: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed + factor)
        for y0 in range(0, level_side, TILE):
            for x0 in range(0, level_side, TILE):
                yield _tile(rng, y0, x0, side, factor)

    resolution = (1e4 / mpp, 1e4 / mpp)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        options: dict[str, Any] = {"tile": (TILE, TILE), "photometric": "rgb", "dtype": np.uint8}
        tif.write(
            tiles(side, 1),
            shape=(side, side, 3),
            subifds=2,
            resolution=resolution,
            resolutionunit="CENTIMETER",
            **options,
        )
        for factor in (4, 16):
            level = -(-side // factor)
            tif.write(tiles(level, factor), shape=(level, level, 3), subfiletype=1, **options)
    return path


def train_tiny_bundle(folder: Path, encoder: str) -> Path:
    """A small GR2ST bundle on synthetic sections (2 epochs; timing, not accuracy)."""
    from gr2st.datasets import synthetic
    from gr2st.predict import train_bundle

    sections = synthetic(n_sections=3, n_genes=60, grid=(12, 12), image_dir=folder, seed=0)
    (folder / "panel.txt").write_text("\n".join(f"GENE{i:03d}" for i in range(50)))
    return train_bundle(
        sections,
        folder / "bundle",
        panel=folder / "panel.txt",
        encoder=encoder,
        nuclei="none",
        size_px=56,  # 112 µm at the synthetic 2 µm/px: 224 px on a 0.5 µm/px slide
        overrides=["train.epochs=2", "model.proj_dim=64", "model.heads=2"],
        device="cpu",
        progress=False,
    )


class PeakRSS:
    """Sample this process's resident memory in a thread; :attr:`peak` in bytes."""

    def __init__(self, interval: float = 0.05) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            with open("/proc/self/statm") as fh:
                self.peak = max(self.peak, int(fh.read().split()[1]) * self._page)
            time.sleep(interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_one(
    bundle_path: Path, slide: Path, n: int, batch_size: int, workers: int
) -> dict[str, Any]:
    """Predict ``n`` grid spots of ``slide``; time and peak memory of this process."""
    from gr2st.image import open_slide
    from gr2st.predict import grid_spots, load_bundle, predict_spots, write_prediction
    from gr2st.predict.spots import THUMBNAIL_PX, QuerySpots, detect_tissue

    with PeakRSS() as rss:
        start = time.perf_counter()
        bundle = load_bundle(bundle_path, device="cpu")
        with open_slide(slide) as opened:
            thumbnail = opened.thumbnail(THUMBNAIL_PX)
            mpp = opened.mpp
            assert mpp is not None
            tissue_um2 = detect_tissue(thumbnail[0]).sum() * (mpp / thumbnail[1]) ** 2
            # Hexagonal cell area pitch² · √3/2: the pitch giving about 5 % more than n spots.
            pitch = float(np.sqrt(tissue_um2 / (1.05 * n * np.sqrt(3) / 2)))
            grid = grid_spots(opened, pitch_um=pitch, thumbnail=thumbnail)
        if grid.n_spots < n:
            raise SystemExit(f"grid gave {grid.n_spots} < {n} spots; lower the pitch")
        spots = QuerySpots(
            centers=grid.centers[:n],
            obs=grid.obs.iloc[:n],
            source="grid",
            mpp=grid.mpp,
            spot_diameter_px=grid.spot_diameter_px,
        )
        setup = time.perf_counter() - start
        t0 = time.perf_counter()
        # Elapsed time and peak memory each time another quarter of the spots is encoded,
        # so one run shows whether the cost per spot stays constant as spots accumulate.
        marks = [n * q // 4 for q in (1, 2, 3, 4)]
        checkpoints: list[dict[str, float]] = []
        encode, done = bundle.encoder.encode, [0]

        def counted(batch: np.ndarray) -> np.ndarray:
            out = encode(batch)
            done[0] += len(batch)
            while len(checkpoints) < len(marks) and done[0] >= marks[len(checkpoints)]:
                checkpoints.append(
                    {
                        "spots": done[0],
                        "elapsed_s": time.perf_counter() - t0,
                        "peak_rss_bytes": rss.peak,
                        "load_1min": os.getloadavg()[0],
                    }
                )
            return out

        bundle.encoder.encode = counted  # type: ignore[method-assign]
        pred = predict_spots(
            bundle,
            slide,
            spots,
            batch_size=batch_size,
            thumbnail=thumbnail,
            progress=False,
            workers=workers,
        )
        predict_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_prediction(pred, Path(tmp) / "pred.h5ad")
            write_s = time.perf_counter() - t0
    return {
        "n_spots": n,
        "workers": workers,
        "pitch_um": pitch,
        "n_genes": pred.n_vars,
        "setup_s": setup,
        "predict_s": predict_s,
        "write_s": write_s,
        "spots_per_s": n / predict_s,
        "peak_rss_bytes": rss.peak,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "checkpoints": checkpoints,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="2500,5000,10000", help="Spot counts to predict.")
    parser.add_argument("--side", type=int, default=20000, help="Slide side in pixels.")
    parser.add_argument("--mpp", type=float, default=0.5, help="Slide microns per pixel.")
    parser.add_argument("--encoder", default="efficientnet-lite0", help="Encoder of the bundle.")
    parser.add_argument("--bundle", type=Path, help="Use this bundle instead of training one.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--workers", default="0", help="Comma-separated worker counts to compare (0: a thread)."
    )
    parser.add_argument("--workdir", type=Path, help="Where the slide and bundle go (kept).")
    parser.add_argument("--out", type=Path, default=Path("results/bench_predict_slide.json"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        result = run_one(args.bundle, args.slide, args.one, args.batch_size, int(args.workers))
        print(json.dumps(result))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-predict-"))
    work.mkdir(parents=True, exist_ok=True)
    slide = work / f"slide_{args.side}.tif"
    t0 = time.perf_counter()
    if not slide.is_file():
        write_slide(slide, side=args.side, mpp=args.mpp)
    slide_s = time.perf_counter() - t0
    bundle = args.bundle or train_tiny_bundle(work, args.encoder)
    runs = []
    for n in (int(c) for c in args.counts.split(",")):
        for workers in (int(w) for w in args.workers.split(",")):
            command = [sys.executable, __file__, "--one", str(n), "--bundle", str(bundle)]
            command += ["--slide", str(slide), "--batch-size", str(args.batch_size)]
            command += ["--workers", str(workers)]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = runs[-1]
            print(
                f"{n:>7} spots, {workers} workers: {r['predict_s']:8.1f} s, "
                f"{r['spots_per_s']:7.1f} spots/s, peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB",
                flush=True,
            )
    per_spot = [r["predict_s"] / r["n_spots"] for r in runs if r["workers"] == runs[0]["workers"]]
    report = {
        "slide": {"side_px": args.side, "mpp": args.mpp, "bytes": slide.stat().st_size,
                  "write_s": slide_s},
        "encoder": args.encoder,
        "bundle": str(bundle),
        "runs": runs,
        # Linear time: seconds per spot stays constant across counts.
        "seconds_per_spot_ratio_max_min": max(per_spot) / min(per_spot),
        "load_average": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }  # fmt: skip
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
