"""Run a battery of bad-input and fault cases against gr2st as a hostile new user would.

Each case runs a ``gr2st`` command line (in this process through the CLI's real error
boundary, or in a subprocess where signals or a second process are involved) on an
input made on the fly from the synthetic generator, and is classified:

* ``traceback``: a Python traceback or an "unexpected" error reached the user;
* ``silent exit``: a failure (or interruption) exited 0, or a non-zero exit printed nothing;
* ``silent wrong answer``: the run went on without the warning or error the case calls
  for, or left a file under the output's final name;
* ``ok``: the expected one-line error / warning / interruption, nothing else.

Writes ``--json`` (every case with its exit status and stderr) and prints a summary
table per area (readers, CLI, bundles, faults).

Example::

    PYTHONPATH=src python scripts/robustness_battery.py --json battery.json
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    area: str
    name: str
    expect: str
    code: int
    stderr: list[str]
    verdict: str = ""
    why: str = ""


@dataclass
class Case:
    """``args`` run in-process; ``expect`` is ``error``, ``warn``, ``ok`` or ``interrupt``;
    ``pattern`` must match the error (or warning) line; ``absent`` must not exist after."""

    area: str
    name: str
    args: list[str] | Callable[[], list[str]]
    expect: str
    pattern: str = ""
    absent: list[Path] = field(default_factory=list)
    patch: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
    run: Callable[[], tuple[int, list[str]]] | None = None


def run_cli(args: list[str]) -> tuple[int, list[str]]:
    """``gr2st ARGS`` through :func:`gr2st.cli.main.main`; (exit status, stderr lines)."""
    from gr2st.cli.main import main

    logger = logging.getLogger("gr2st")
    saved = (logger.handlers[:], logger.level, logger.propagate, warnings.showwarning)
    err, out = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                main([str(a) for a in args])
            except SystemExit as stop:
                code = int(stop.code or 0)
    finally:
        logger.handlers, logger.level, logger.propagate, warnings.showwarning = saved
    return code, [line for line in err.getvalue().splitlines() if line.strip()]


def classify(case: Case, code: int, lines: list[str]) -> tuple[str, str]:
    text = "\n".join(lines)
    errors = [line for line in lines if line.startswith("error:")]
    warns = [line for line in lines if line.startswith("warning:")]
    if "Traceback" in text or any("unexpected" in line for line in errors):
        return "traceback", text[-300:]
    left = [str(p) for p in case.absent if p.exists()]
    if case.expect == "interrupt":
        if code not in (130, 143) or not lines:
            return "silent exit", f"exit {code}"
        return ("ok", "") if "interrupted" in lines[-1] else ("silent wrong answer", text)
    if case.expect == "error":
        if code == 0:
            return ("silent exit", "exit 0") if not warns else ("silent wrong answer", "exit 0")
        if len(errors) != 1:
            return "silent exit", f"exit {code}, {len(errors)} error lines"
        if case.pattern and not re.search(case.pattern, errors[0]):
            return "silent wrong answer", errors[0]
    elif case.expect == "warn":
        if code != 0:
            return "silent wrong answer", f"exit {code}: {text[-200:]}"
        if not any(re.search(case.pattern, w) for w in warns):
            return "silent wrong answer", "expected warning missing"
    elif case.expect == "ok" and (code != 0 or errors):
        return "silent wrong answer", f"exit {code}: {text[-200:]}"
    if left:
        return "silent wrong answer", f"left {left}"
    return "ok", ""


# --------------------------------------------------------------------------- inputs


def toy_h5ad(folder: Path) -> Path:
    """Three synthetic sections with stand-in ``toy`` features, and ``panel.txt``."""
    from gr2st._constants import feature_key
    from gr2st.datasets import synthetic

    folder.mkdir(parents=True)
    secs = synthetic(n_sections=3, n_genes=12, grid=(6, 6), signal=2.0, image_dir=folder, seed=1)
    rng = np.random.default_rng(0)
    for adata in secs:
        onehot = 2.0 * np.eye(5)[adata.obs["latent_state"].to_numpy()]
        noise = rng.normal(scale=0.3, size=onehot.shape)
        adata.obsm[feature_key("toy")] = (onehot + noise).astype(np.float32)
        adata.write_h5ad(folder / f"{adata.obs['section'].iloc[0]}.h5ad")
    (folder.parent / "panel.txt").write_text("\n".join(f"GENE{i:03d}" for i in range(6)) + "\n")
    return folder


def her2st_copy(root: Path, name: str, edit: Callable[[Path], None]) -> Path:
    """A fresh one-section HER2ST folder (4 × 12 spots, section A1) with ``edit`` applied."""
    from gr2st._constants import SECTION
    from gr2st.datasets import synthetic, write_her2st_layout

    sec = synthetic(n_sections=1, n_genes=12, grid=(4, 12), seed=3)[0]
    sec.obs[SECTION] = "A1"
    folder = write_her2st_layout([sec], root / name)
    (root / f"{name}.panel.txt").write_text("\n".join(sec.var_names[:6]) + "\n")
    edit(folder)
    return folder


def spots(folder: Path) -> Path:
    return folder / "ST-spotfiles" / "A1_selection.tsv"


def counts(folder: Path) -> Path:
    return folder / "ST-cnts" / "A1.tsv.gz"


def edit_table(path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame | None]) -> None:
    table = pd.read_csv(path, sep="\t")
    result = edit(table)
    (table if result is None else result).to_csv(path, sep="\t", index=False)


def edit_counts(path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame | None]) -> None:
    table = pd.read_csv(path, sep="\t", index_col=0)
    result = edit(table)
    (table if result is None else result).to_csv(path, sep="\t")


def set_cell(column: str, row: int, value: Any) -> Callable[[pd.DataFrame], None]:
    def edit(table: pd.DataFrame) -> None:
        if value is not None and isinstance(value, str):
            table[column] = table[column].astype(object)
        table.loc[row, column] = value

    return edit


def first_rows(n: int, value: Any, dtype: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """Set every count of the first ``n`` spots to ``value``."""

    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table = table.astype(dtype)
        table.iloc[:n, :] = value
        return table

    return edit


def make_bundle(work: Path) -> Path:
    """A one-epoch bundle trained by ``gr2st train`` on two imaged synthetic sections."""
    from gr2st._constants import SECTION
    from gr2st.datasets import synthetic, write_her2st_layout

    images = work / "train-images"
    secs = synthetic(n_sections=2, n_genes=10, grid=(6, 6), signal=2.0, image_dir=images, seed=2)
    for adata, name in zip(secs, ["A1", "A2"], strict=True):
        adata.obs[SECTION] = name
    root = write_her2st_layout(secs, work / "train-her2st")
    panel = work / "train-panel.txt"
    panel.write_text("\n".join(f"GENE{i:03d}" for i in range(5)) + "\n")
    folder = work / "bundle"
    code, lines = run_cli(
        [
            "train",
            "--data",
            root,
            "--panel",
            panel,
            "--nuclei",
            "none",
            "--size",
            "48",
            "--cache",
            work / "cache",
            "--device",
            "cpu",
            "--no-progress",
            "--set",
            "train.epochs=1",
            "--set",
            "model.proj_dim=32",
            "--set",
            "model.heads=2",
            "--out",
            folder,
        ]
    )
    if code != 0:
        raise RuntimeError(f"training the battery's bundle failed: {lines}")
    return folder


def bundle_copy(bundle: Path, dest: Path, edit: Callable[[Path], None]) -> Path:
    shutil.copytree(bundle, dest)
    edit(dest)
    return dest


def rewrite_meta(edit: Callable[[dict[str, Any]], None], *, refingerprint: bool) -> Any:
    from gr2st.models.bundle import META_FILE, meta_fingerprint

    def apply(folder: Path) -> None:
        meta = json.loads((folder / META_FILE).read_text())
        edit(meta)
        if refingerprint:
            meta["fingerprint"] = meta_fingerprint(meta)
        (folder / META_FILE).write_text(json.dumps(meta))

    return apply


# --------------------------------------------------------------------------- subprocess cases

_SLOW_KNN = """
import os
import time
from gr2st.methods import METHODS
from gr2st.methods.knn import KNNBaseline


@METHODS.register("slow-knn")
class SlowKNN(KNNBaseline):
    def fit(self, train, *, workdir=None):
        time.sleep(float(os.environ.get("BATTERY_FIT_SECONDS", "1.5")))
        super().fit(train, workdir=workdir)
"""


def _env(work: Path) -> dict[str, str]:
    plugin = work / "plugin"
    plugin.mkdir(exist_ok=True)
    (plugin / "slow_knn_plugin.py").write_text(textwrap.dedent(_SLOW_KNN))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), str(REPO / "src")])}


def _slow_bench(work: Path, data: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import slow_knn_plugin; from gr2st.cli.main import main; main()",
        "benchmark",
        "--data",
        str(data),
        "--methods",
        "slow-knn",
        "--encoder",
        "toy",
        "--panel",
        str(data.parent / "panel.txt"),
        "--no-progress",
        "--no-figures",
        "--out",
        str(out),
    ]


def signal_mid_benchmark(work: Path, data: Path, signum: int) -> tuple[int, list[str]]:
    out = work / f"sig{int(signum)}"
    proc = subprocess.Popen(
        _slow_bench(work, data, out),
        env=_env(work),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (out / "folds" / "slow-knn" / "S0.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    lines = err.splitlines()
    leftovers = [p for p in out.rglob("*") if p.name.endswith((".tmp", ".old", ".lock"))]
    if leftovers or (out / "results.json").exists():
        lines.append(f"left behind: {leftovers}")
        return 0, lines  # counted as a silent wrong answer below
    return proc.returncode, lines


def second_run_on_same_out(work: Path, data: Path) -> tuple[int, list[str]]:
    out = work / "busy"
    # The first run stays busy long enough for the second to start.
    first = subprocess.Popen(
        _slow_bench(work, data, out),
        env={**_env(work), "BATTERY_FIT_SECONDS": "60"},
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / ".gr2st.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(
            _slow_bench(work, data, out),
            env=_env(work),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        first.terminate()
        first.wait(timeout=120)
    return second.returncode, second.stderr.splitlines()


def kill_9_then_rerun(work: Path, data: Path) -> tuple[int, list[str]]:
    out = work / "killed"
    proc = subprocess.Popen(
        _slow_bench(work, data, out),
        env=_env(work),
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (out / "folds" / "slow-knn" / "S0.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = subprocess.run(
        _slow_bench(work, data, out), env=_env(work), capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stderr.splitlines()


# --------------------------------------------------------------------------- the battery


# ---- inputs built from the real HER2ST B4 (skipped when the data is absent)

HER2ST_DATA = Path(os.environ.get("GR2ST_DATA") or REPO.parent / "shared" / "data" / "her2st")
_B4: dict[str, Any] = {}


def b4_parts() -> dict[str, Any]:
    """B4's panel counts, spot table and image, pixels downscaled 4× (read once)."""
    if not _B4:
        from PIL import Image

        from gr2st.genes import get_panel

        counts = pd.read_csv(HER2ST_DATA / "ST-cnts" / "B4.tsv.gz", sep="\t", index_col=0)
        keep = [g for g in [*get_panel("her2st-785"), "ERBB2"] if g in counts.columns]
        table = pd.read_csv(HER2ST_DATA / "ST-spotfiles" / "B4_selection.tsv", sep="\t")
        table[["pixel_x", "pixel_y"]] /= 4
        [path] = (HER2ST_DATA / "ST-imgs" / "B" / "B4").glob("*.jpg")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.draft("RGB", (img.size[0] // 4, img.size[1] // 4))
                pixels = np.asarray(img.convert("RGB"))
        _B4.update(counts=counts[keep], spots=table, image=pixels)
    return _B4


def b4_copy(folder: Path, **edits: Any) -> Path:
    """A HER2ST folder holding B4 (see :func:`b4_parts`) with ``spots``, ``counts``,
    ``image`` (pixels) or ``image_bytes`` replaced."""
    from PIL import Image

    parts = b4_parts()
    for sub in ("ST-cnts", "ST-spotfiles", "ST-imgs/B/B4"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    counts_table = edits.get("counts", parts["counts"])
    counts_table.to_csv(folder / "ST-cnts" / "B4.tsv.gz", sep="\t")
    spot_table = edits.get("spots", parts["spots"])
    spot_table.to_csv(folder / "ST-spotfiles" / "B4_selection.tsv", sep="\t", index=False)
    image = folder / "ST-imgs" / "B" / "B4" / "B4_HE.jpg"
    if "image_bytes" in edits:
        image.write_bytes(edits["image_bytes"])
    else:
        Image.fromarray(edits.get("image", parts["image"])).save(image, quality=90)
    (folder / "panel.txt").write_text("\n".join(parts["counts"].columns[:50]) + "\n")
    return folder


def b4_spots(**moves: Callable[[pd.DataFrame], Any]) -> Callable[[], dict[str, Any]]:
    """Edits of B4's spot table: each keyword a column set to a function of the table."""

    def edit() -> dict[str, Any]:
        table = b4_parts()["spots"].copy()
        new = {column: make(table) for column, make in moves.items()}
        for column, values in new.items():
            table[column] = values
        return {"spots": table}

    return edit


def b4_image(make: Callable[[np.ndarray], np.ndarray]) -> Callable[[], dict[str, Any]]:
    return lambda: {"image": np.ascontiguousarray(make(b4_parts()["image"]))}


def other_image(section: str) -> Callable[[], dict[str, Any]]:
    def edit() -> dict[str, Any]:
        from PIL import Image

        [path] = (HER2ST_DATA / "ST-imgs" / section[0] / section).glob("*.jpg")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.draft("RGB", (img.size[0] // 4, img.size[1] // 4))
                return {"image": np.asarray(img.convert("RGB"))}

    return edit


def b4_jpeg_bytes(damage: str) -> Callable[[], dict[str, Any]]:
    def edit() -> dict[str, Any]:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(b4_parts()["image"]).save(buffer, format="JPEG", quality=90)
        raw = bytearray(buffer.getvalue())
        if damage == "truncated":
            return {"image_bytes": bytes(raw[: len(raw) // 2])}
        rng = np.random.default_rng(0)
        for at in rng.integers(len(raw) // 3, len(raw) - 100, 200):
            raw[at] = int(rng.integers(0, 256))
        return {"image_bytes": bytes(raw)}

    return edit


def b4_counts(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[], dict[str, Any]]:
    return lambda: {"counts": edit(b4_parts()["counts"].copy())}


def _duplicate_erbb2(table: pd.DataFrame) -> pd.DataFrame:
    table.insert(0, "ERBB2", table.iloc[:, 10].to_numpy(), allow_duplicates=True)
    return table


def _same_position(table: pd.DataFrame) -> Any:
    values = table["pixel_x"].to_numpy().copy()
    values[1] = values[0]
    return values


def input_cases(work: Path) -> list[Case]:
    """The spot-on-image, image and counts checks on every command reading a section."""
    if not (HER2ST_DATA / "ST-cnts" / "B4.tsv.gz").is_file():
        print(f"(no HER2ST data at {HER2ST_DATA}: the inputs cases are skipped)")
        return []
    cases: list[Case] = []
    commands: dict[str, Callable[[Path, Path], list[Any]]] = {
        "data check": lambda f, o: ["data", "check", "--data", f, "--panel", f / "panel.txt"],
        "features": lambda f, o: ["features", "--data", f, "--nuclei", "none", "--cache", o],
        "train": lambda f, o: [
            "train", "--data", f, "--panel", f / "panel.txt", "--cache", o / "c", "--out", o
        ],
        "benchmark": lambda f, o: [
            "benchmark", "--data", f, "--methods", "knn", "--panel", f / "panel.txt",
            "--cache", o / "c", "--out", o,
        ],
        "patches": lambda f, o: ["patches", "--data", f, "--section", "B4", "--out", o / "s.png"],
    }  # fmt: skip

    def case(
        name: str,
        edit: Callable[[], dict[str, Any]],
        expect: str,
        pattern: str,
        *,
        on: tuple[str, ...] = tuple(commands),
        extra: tuple[str, ...] = (),
    ) -> None:
        for command in on:
            slug = re.sub(r"\W+", "-", f"{name}-{command}")

            def args(command: str = command, slug: str = slug) -> list[str]:
                folder = b4_copy(work / "b4" / slug, **edit())
                return [*commands[command](folder, work / "b4-out" / slug), *extra]

            absent = [] if expect != "error" else [work / "b4-out" / slug / "s.png"]
            cases.append(Case("inputs", f"{name}: {command}", args, expect, pattern, absent))

    swapped = b4_spots(pixel_x=lambda t: t["pixel_y"], pixel_y=lambda t: t["pixel_x"])
    case("pixel_x/pixel_y swapped", swapped, "error", "pixel_x and pixel_y look swapped")
    case("C2's image", other_image("C2"), "error", r"B4: \d+ of 283 spots .* lie off the tissue")
    case("C3's image", other_image("C3"), "error", r"B4: \d+ of 283 spots .* lie off the tissue")
    case(
        "image rotated 90°",
        b4_image(lambda a: np.rot90(a, k=-1)),
        "error",
        "rotated by 90° clockwise",
    )
    case("all-white image", b4_image(lambda a: np.full_like(a, 255)), "error", "no tissue detected")
    case(
        "spots moved onto glass",
        b4_spots(pixel_y=lambda t: t["pixel_y"] - 800),
        "error",
        "lie off the tissue",
    )
    case(
        "pixels in µm (×0.69)",
        b4_spots(pixel_x=lambda t: t["pixel_x"] * 0.69, pixel_y=lambda t: t["pixel_y"] * 0.69),
        "error",
        "lie off the tissue",
    )
    case(
        "pixels ÷10",
        b4_spots(pixel_x=lambda t: t["pixel_x"] / 10, pixel_y=lambda t: t["pixel_y"] / 10),
        "error",
        # Stopped by the reader's geometry before the image check: ~28 µm/px is implausible.
        r"spot pitch gives 27\.4\d µm/px, outside the plausible 0\.1–20 µm/px",
    )
    grey = b4_image(lambda a: a.mean(axis=2, keepdims=True).astype(np.uint8).repeat(3, axis=2))
    case("greyscale image", grey, "error", "greyscale image .*--allow-grey")
    case("truncated JPEG", b4_jpeg_bytes("truncated"), "error", "truncated")
    case("200 corrupted JPEG bytes", b4_jpeg_bytes("corrupted"), "error", "cannot decode")
    case(
        "ERBB2 twice",
        b4_counts(_duplicate_erbb2),
        "error",
        r"\('ERBB2 ×2'\).*--duplicate-genes sum",
    )
    case(
        "counts of 1 spot",
        b4_counts(lambda t: t.iloc[:1]),
        "error",
        "1 of the 284 spots selected",
    )
    case(
        "two spots at one pixel position",
        b4_spots(pixel_x=_same_position, pixel_y=lambda t: _same_position(t.rename(
            columns={"pixel_y": "pixel_x", "pixel_x": "pixel_y"}))),
        "error",
        "share one pixel position",
    )  # fmt: skip
    # The overrides: a warning (or nothing) where the user says they know.
    case(
        "swapped with --allow-off-tissue",
        swapped,
        "warn",
        "look swapped .*--allow-off-tissue",
        on=("data check",),
        extra=("--allow-off-tissue",),
    )
    case("grey with --allow-grey", grey, "ok", "", on=("data check",), extra=("--allow-grey",))
    case(
        "ERBB2 twice with --duplicate-genes sum",
        b4_counts(_duplicate_erbb2),
        "warn",
        "summed the counts of 1 gene",
        on=("data check",),
        extra=("--duplicate-genes", "sum"),
    )
    case("B4 as it is", dict, "ok", "", on=("data check",))
    cases.append(
        Case(
            "inputs",
            "--profile turbo --methods knn",
            ["benchmark", "--methods", "knn", "--profile", "turbo", "--out", work / "turbo"],
            "error",
            "none of the methods knn has profiles",
        )
    )
    return cases


def build_cases(work: Path) -> list[Case]:
    data = toy_h5ad(work / "toy" / "data")
    panel = data.parent / "panel.txt"
    bundle = make_bundle(work)

    def bench(out: Path, *extra: str, data: Path = data) -> list[str]:
        return [
            "benchmark",
            "--data",
            data,
            "--methods",
            "knn",
            "--encoder",
            "toy",
            "--panel",
            panel,
            "--no-progress",
            "--no-figures",
            "--out",
            out,
            *extra,
        ]

    cases: list[Case] = []
    add = cases.append

    # ---- CLI usage and options
    for command in ("benchmark", "train", "predict", "features", "patches", "info"):
        add(
            Case(
                "cli",
                f"{command} --bogus-flag",
                [command, "--bogus-flag"],
                "error",
                "No such option",
            )
        )
    add(Case("cli", "unknown command", ["frobnicate"], "error", "No such command"))
    add(
        Case(
            "cli",
            "train without --out",
            ["train", "--data", data],
            "error",
            "Missing option '--out'",
        )
    )
    add(Case("cli", "--seed abc", ["benchmark", "--seed", "abc"], "error", "--seed"))
    add(
        Case(
            "cli", "patches --n 0", ["patches", "--n", "0", "--out", work / "p.png"], "error", "--n"
        )
    )
    add(
        Case(
            "cli",
            "--data is a file",
            ["benchmark", "--data", "/etc/hostname"],
            "error",
            "is a file",
        )
    )
    add(Case("cli", "--batch-size -1", ["features", "--batch-size", "-1"], "error", "--batch-size"))
    add(
        Case(
            "cli",
            "--sections repeated",
            bench(work / "rep", "--sections", "S0,S0"),
            "error",
            "more than once",
        )
    )
    add(
        Case(
            "cli", "unknown method", [*bench(work / "um"), "--methods", "nosuch"], "error", "nosuch"
        )
    )
    add(
        Case(
            "cli",
            "bad override",
            bench(work / "bo", "--set", "knn:nope=1"),
            "error",
            "nope",
            absent=[work / "bo"],
        )
    )
    add(
        Case(
            "cli",
            "data fetch unknown dataset",
            ["data", "fetch", "nosuch", "--dest", work / "fetch"],
            "error",
            "unknown dataset",
        )
    )
    for device in ("tpu", "cuda:x", "cuda:99", "cuda"):
        for command in ("features", "benchmark", "train"):
            extra = ["--out", work / f"dev-{command}"] if command == "train" else []
            add(
                Case(
                    "cli",
                    f"{command} --device {device}",
                    [command, "--data", data, "--device", device, *extra],
                    "error",
                    f"device '{re.escape(device)}'",
                )
            )
    add(
        Case(
            "cli",
            "predict --device tpu",
            [
                "predict",
                "--model",
                bundle,
                "--image",
                work / "x.png",
                "--out",
                work / "dev.h5ad",
                "--device",
                "tpu",
            ],
            "error",
            "device 'tpu'",
        )
    )
    add(
        Case(
            "cli",
            "predict --out not .h5ad",
            ["predict", "--model", bundle, "--image", work / "x.png", "--out", work / "x.csv"],
            "error",
            r"expected a \.h5ad",
        )
    )

    # ---- readers (HER2ST layout and .h5ad), each a fresh damaged copy
    def her2st_case(name: str, edit: Callable[[Path], None], expect: str, pattern: str) -> None:
        def args() -> list[str]:
            folder = her2st_copy(work / "her2st", name, edit)
            return [
                "data",
                "check",
                "--data",
                folder,
                "--panel",
                work / "her2st" / f"{name}.panel.txt",
            ]

        add(Case("readers", name, args, expect, pattern))

    def swap(t: pd.DataFrame) -> None:
        t[["x", "y"]] = t[["y", "x"]].to_numpy()

    her2st_case("x/y swapped", lambda f: edit_table(spots(f), swap), "error", "look swapped")
    her2st_case(
        "array x = 1e20",
        lambda f: edit_table(spots(f), set_cell("x", 3, 1e20)),
        "error",
        "not grid positions",
    )
    her2st_case(
        "array x NaN",
        lambda f: edit_table(spots(f), set_cell("x", 3, np.nan)),
        "error",
        "missing or non-numeric",
    )
    her2st_case(
        "pixel_x text",
        lambda f: edit_table(spots(f), set_cell("pixel_x", 3, "abc")),
        "error",
        "pixel_x",
    )
    her2st_case(
        "pixel_x inf",
        lambda f: edit_table(spots(f), set_cell("pixel_x", 3, np.inf)),
        "error",
        "pixel_x",
    )
    her2st_case(
        "spot table without pixel_y",
        lambda f: edit_table(spots(f), lambda t: t.drop(columns="pixel_y")),
        "error",
        "pixel_y",
    )
    her2st_case(
        "spot table header only",
        lambda f: edit_table(spots(f), lambda t: t.iloc[:0]),
        "error",
        "A1",
    )
    her2st_case("spot table empty file", lambda f: spots(f).write_text(""), "error", "spot table")
    her2st_case(
        "spot table binary",
        lambda f: spots(f).write_bytes(bytes(range(256)) * 4),
        "error",
        "spot table",
    )
    her2st_case(
        "duplicate spot rows",
        lambda f: edit_table(spots(f), lambda t: pd.concat([t, t.iloc[:2]])),
        "error",
        "duplicate",
    )
    her2st_case(
        "no spot selected",
        lambda f: edit_table(spots(f), set_cell("selected", slice(None), 0)),
        "error",
        "A1",
    )
    her2st_case(
        "most spots unselected",
        lambda f: edit_table(spots(f), set_cell("selected", slice(5, None), 0)),
        "ok",
        "",
    )
    her2st_case("spot table missing", lambda f: spots(f).unlink(), "error", "A1_selection.tsv")
    her2st_case("counts missing", lambda f: counts(f).unlink(), "error", "no HER2ST section found")
    her2st_case(
        "counts truncated gzip",
        lambda f: counts(f).write_bytes(counts(f).read_bytes()[:200]),
        "error",
        "A1.tsv.gz",
    )
    her2st_case(
        "counts not gzip", lambda f: counts(f).write_bytes(b"not gzip at all"), "error", "A1.tsv.gz"
    )
    her2st_case(
        "counts negative",
        lambda f: edit_counts(counts(f), lambda t: t.iloc.__setitem__((0, 0), -3)),
        "error",
        "A1",
    )
    her2st_case(
        "counts fractional",
        lambda f: edit_counts(counts(f), first_rows(1, 0.5, float)),
        "error",
        "A1",
    )
    her2st_case(
        "counts text",
        lambda f: edit_counts(counts(f), first_rows(1, "x", object)),
        "error",
        "A1",
    )
    her2st_case(
        "counts bad spot ids",
        lambda f: edit_counts(counts(f), lambda t: t.rename(index=lambda i: f"spot{i}")),
        "error",
        "not ST spot ids",
    )
    her2st_case("counts transposed", lambda f: edit_counts(counts(f), lambda t: t.T), "ok", "")
    her2st_case(
        "duplicate genes",
        lambda f: edit_counts(counts(f), lambda t: t.rename(columns={t.columns[1]: t.columns[0]})),
        "error",
        "duplicate gene",
    )
    her2st_case(
        "all counts zero",
        lambda f: edit_counts(counts(f), lambda t: t * 0),
        "warn",
        "48 of 48 spots",
    )
    her2st_case(
        "most panel counts zero",
        lambda f: edit_counts(counts(f), first_rows(47, 0, int)),
        "warn",
        "47 of 48 spots",
    )

    def h5ad_case(name: str, edit: Callable[[Any], None], expect: str, pattern: str) -> None:
        def args() -> list[str]:
            import anndata

            folder = work / "h5ad" / name.replace(" ", "_")
            shutil.copytree(data, folder)
            adata = anndata.read_h5ad(folder / "S0.h5ad")
            edit(adata)
            (folder / "S0.h5ad").unlink()
            if adata is not None:
                adata.write_h5ad(folder / "S0.h5ad")
            return bench(work / "h5ad-out" / name.replace(" ", "_"), data=folder)

        add(
            Case(
                "readers",
                f"h5ad {name}",
                args,
                expect,
                pattern,
                absent=[work / "h5ad-out" / name.replace(" ", "_")],
            )
        )

    def nan_spatial(a: Any) -> None:
        a.obsm["spatial"] = np.asarray(a.obsm["spatial"], dtype=float)
        a.obsm["spatial"][2] = np.nan

    h5ad_case("NaN spatial", nan_spatial, "error", "without finite pixel positions")
    h5ad_case("no spatial", lambda a: a.obsm.pop("spatial"), "error", "spatial")
    h5ad_case("negative counts", lambda a: a.X.__setitem__((0, 0), -1), "error", "S0")
    h5ad_case(
        "two sections in one file",
        lambda a: a.obs.__setitem__("section", ["S0", "S9"] * (a.n_obs // 2)),
        "error",
        "section",
    )
    h5ad_case(
        "same section as another file",
        lambda a: a.obs.__setitem__("section", "S1"),
        "error",
        "again",
    )

    def not_h5ad() -> list[str]:
        folder = work / "h5ad" / "garbage"
        shutil.copytree(data, folder)
        (folder / "S0.h5ad").write_bytes(b"this is not HDF5")
        return bench(work / "h5ad-out" / "garbage", data=folder)

    add(Case("readers", "h5ad not HDF5", not_h5ad, "error", "S0.h5ad"))

    def truncated_h5ad() -> list[str]:
        folder = work / "h5ad" / "truncated"
        shutil.copytree(data, folder)
        raw = (folder / "S0.h5ad").read_bytes()
        (folder / "S0.h5ad").write_bytes(raw[: len(raw) // 2])
        return bench(work / "h5ad-out" / "truncated", data=folder)

    add(Case("readers", "h5ad truncated", truncated_h5ad, "error", "S0.h5ad"))

    # ---- gene panels
    def panel_case(name: str, content: bytes | None, pattern: str) -> None:
        path = work / "panels" / f"{name.replace(' ', '_')}.txt"
        if content is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        add(
            Case(
                "readers",
                f"panel {name}",
                ["data", "check", "--data", data.parent, "--panel", path],
                "error",
                pattern,
            )
        )

    panel_case("binary", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not a text file")
    panel_case("NUL bytes", b"GENE000\x00\x00GENE001\n", "not a text file")
    panel_case("empty", b"# only a comment\n", "empty")
    panel_case("duplicated gene", b"GENE000\nGENE000\n", "GENE000")
    panel_case("missing file", None, "panel")

    # ---- bundles
    def info_case(name: str, edit: Callable[[Path], None], expect: str, pattern: str) -> None:
        def args() -> list[str]:
            return ["info", bundle_copy(bundle, work / "bundles" / name.replace(" ", "_"), edit)]

        add(Case("bundles", name, args, expect, pattern))

    info_case("intact", lambda f: None, "ok", "")
    info_case(
        "newer major version",
        rewrite_meta(lambda m: m.update(gr2st_version="7.0.0"), refingerprint=True),
        "error",
        "newer major version",
    )
    info_case(
        "older version",
        rewrite_meta(lambda m: m.update(gr2st_version="0.0.1"), refingerprint=True),
        "warn",
        "older than this gr2st",
    )
    info_case(
        "edited meta",
        rewrite_meta(lambda m: m.update(gr2st_version="7.0.0"), refingerprint=False),
        "error",
        "fingerprint",
    )
    info_case(
        "unknown schema",
        rewrite_meta(lambda m: m.update(schema_version=99), refingerprint=True),
        "error",
        "schema_version",
    )
    info_case(
        "meta not JSON",
        lambda f: (f / "bundle.json").write_text("{nope"),
        "error",
        "not valid JSON",
    )
    info_case("meta missing", lambda f: (f / "bundle.json").unlink(), "error", "not a gr2st bundle")
    info_case(
        "weights truncated",
        lambda f: (f / "weights.safetensors").write_bytes(
            (f / "weights.safetensors").read_bytes()[:100]
        ),
        "error",
        "weights",
    )
    info_case(
        "weights flipped",
        lambda f: (f / "weights.safetensors").write_bytes(
            (f / "weights.safetensors").read_bytes()[:-64] + bytes(64)
        ),
        "error",
        "weights",
    )
    info_case("bank missing", lambda f: (f / "bank.safetensors").unlink(), "error", "bank")
    add(
        Case(
            "bundles",
            "info on a missing folder",
            ["info", work / "nowhere"],
            "error",
            "no such bundle",
        )
    )
    existing = work / "existing.h5ad"
    existing.write_bytes(b"previous")
    add(
        Case(
            "bundles",
            "predict onto an existing output",
            ["predict", "--model", bundle, "--image", work / "x.png", "--out", existing],
            "error",
            "already exists",
        )
    )
    add(
        Case(
            "bundles",
            "train onto an existing bundle",
            ["train", "--data", data, "--out", bundle],
            "error",
            "already exists",
        )
    )

    # ---- faults: file system, memory, locks, integrity, signals
    def read_only() -> contextlib.AbstractContextManager[Any]:
        return mock.patch(
            "gr2st._utils.preflight.tempfile.mkstemp",
            side_effect=OSError(errno.EROFS, "Read-only file system"),
        )

    def full_disk() -> contextlib.AbstractContextManager[Any]:
        usage = shutil.disk_usage(work)
        return mock.patch(
            "gr2st._utils.preflight.shutil.disk_usage", return_value=usage._replace(free=10_000)
        )

    def enospc_mid_run() -> contextlib.AbstractContextManager[Any]:
        return mock.patch(
            "gr2st.benchmark.store.np.savez",
            side_effect=OSError(errno.ENOSPC, "No space left on device"),
        )

    add(
        Case(
            "faults",
            "read-only benchmark --out",
            bench(work / "ro"),
            "error",
            "Read-only",
            absent=[work / "ro"],
            patch=read_only,
        )
    )
    add(
        Case(
            "faults",
            "read-only train --out",
            ["train", "--data", data, "--out", work / "ro-b"],
            "error",
            "Read-only",
            absent=[work / "ro-b"],
            patch=read_only,
        )
    )
    add(
        Case(
            "faults",
            "read-only features --cache",
            ["features", "--data", data, "--cache", work / "ro-c"],
            "error",
            "Read-only",
            patch=read_only,
        )
    )
    add(
        Case(
            "faults",
            "read-only predict --out",
            ["predict", "--model", bundle, "--image", work / "x.png", "--out", work / "ro.h5ad"],
            "error",
            "Read-only",
            patch=read_only,
        )
    )
    add(
        Case(
            "faults",
            "full disk before benchmark",
            bench(work / "full"),
            "error",
            "not enough free space",
            absent=[work / "full"],
            patch=full_disk,
        )
    )
    add(
        Case(
            "faults",
            "full disk before train",
            ["train", "--data", data, "--out", work / "full-b"],
            "error",
            "not enough free space",
            patch=full_disk,
        )
    )
    add(
        Case(
            "faults",
            "disk fills mid-benchmark",
            bench(work / "enospc"),
            "error",
            "No space left on device",
            patch=enospc_mid_run,
        )
    )
    add(
        Case(
            "faults",
            "train --size 100000",
            ["train", "--data", data, "--size", "100000", "--out", work / "huge"],
            "error",
            "of memory",
            absent=[work / "huge"],
        )
    )
    add(
        Case(
            "faults",
            "features --batch-size 10^6",
            ["features", "--data", data, "--batch-size", "1000000", "--size", "224"],
            "error",
            "of memory",
        )
    )

    def tampered() -> list[str]:
        out = work / "tampered"
        run_cli(bench(out))
        record = out / "folds" / "knn" / "S1.json"
        meta = json.loads(record.read_text())
        meta["sections"]["S1"]["mean_pcc"] = 0.99
        record.write_text(json.dumps(meta))
        return bench(out)

    add(Case("faults", "hand-edited fold record", tampered, "warn", "does not match its checksum"))

    def other_request() -> list[str]:
        out = work / "other"
        run_cli(bench(out))
        return bench(out, "--seed", "5")

    add(Case("faults", "--out of another request", other_request, "error", "another request"))

    def stale_lock() -> list[str]:
        out = work / "stale"
        out.mkdir()
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        info = {"pid": dead.pid, "host": socket.gethostname(), "since": "earlier"}
        (out / ".gr2st.lock").write_text(json.dumps(info))
        return bench(out)

    add(Case("faults", "stale lock of a dead pid", stale_lock, "warn", "taking over the lock"))

    def onnx_flipped() -> tuple[int, list[str]]:
        from gr2st.encoders import get_encoder

        path = get_encoder("efficientnet-lite0", backend="onnx").onnx_path()
        raw = bytearray(path.read_bytes())
        mid = len(raw) // 2
        raw[mid : mid + 4000] = bytes(b ^ 0x5A for b in raw[mid : mid + 4000])
        path.write_bytes(bytes(raw))
        buf = io.StringIO()
        handler = logging.StreamHandler(buf)
        logging.getLogger("gr2st").addHandler(handler)
        try:
            get_encoder("efficientnet-lite0", backend="onnx")
        finally:
            logging.getLogger("gr2st").removeHandler(handler)
        lines = [f"warning: {line}" for line in buf.getvalue().splitlines()]
        return 0, lines

    add(
        Case(
            "faults",
            "ONNX export with 4,000 bytes flipped",
            [],
            "warn",
            "does not match its checksum",
            run=onnx_flipped,
        )
    )
    add(
        Case(
            "faults",
            "SIGINT mid-benchmark",
            [],
            "interrupt",
            run=lambda: signal_mid_benchmark(work, data, signal.SIGINT),
        )
    )
    add(
        Case(
            "faults",
            "SIGTERM mid-benchmark",
            [],
            "interrupt",
            run=lambda: signal_mid_benchmark(work, data, signal.SIGTERM),
        )
    )
    add(
        Case(
            "faults",
            "second benchmark on the same --out",
            [],
            "error",
            r"is in use by pid \d+",
            run=lambda: second_run_on_same_out(work, data),
        )
    )
    add(Case("faults", "kill -9 then rerun", [], "ok", run=lambda: kill_9_then_rerun(work, data)))
    cases += input_cases(work)
    return cases


@contextlib.contextmanager
def _cache(work: Path) -> Iterator[None]:
    before = os.environ.get("GR2ST_CACHE_DIR")
    os.environ["GR2ST_CACHE_DIR"] = str(work / "cache")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("GR2ST_CACHE_DIR", None)
        else:
            os.environ["GR2ST_CACHE_DIR"] = before


def run_battery(work: Path) -> list[Result]:
    results = []
    with _cache(work):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        for case in build_cases(work):
            try:
                if case.run is not None:
                    code, lines = case.run()
                else:
                    args = case.args() if callable(case.args) else case.args
                    with case.patch() if case.patch else contextlib.nullcontext():
                        code, lines = run_cli([str(a) for a in args])
            except Exception as err:
                code, lines = -1, [f"Traceback (battery setup): {type(err).__name__}: {err}"]
            verdict, why = classify(case, code, lines)
            results.append(Result(case.area, case.name, case.expect, code, lines, verdict, why))
            mark = "." if verdict == "ok" else "F"
            print(mark, end="", flush=True)
    print()
    return results


def summary(results: list[Result]) -> str:
    verdicts = ("ok", "traceback", "silent exit", "silent wrong answer")
    rows = [("area", "cases", *verdicts)]
    for area in ("readers", "inputs", "cli", "bundles", "faults"):
        mine = [r for r in results if r.area == area]
        rows.append(
            (area, str(len(mine)), *(str(sum(r.verdict == v for r in mine)) for v in verdicts))
        )
    rows.append(
        ("total", str(len(results)), *(str(sum(r.verdict == v for r in results)) for v in verdicts))
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="Write every case here.")
    parser.add_argument("--keep", action="store_true", help="Keep the work folder.")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gr2st-battery-"))
    try:
        results = run_battery(work)
    finally:
        if not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(summary(results))
    for r in results:
        if r.verdict != "ok":
            print(f"  {r.verdict}: [{r.area}] {r.name}: {r.why}")
    if options.json is not None:
        options.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    sys.exit(0 if all(r.verdict == "ok" for r in results) else 1)


if __name__ == "__main__":
    main()
