"""Checks before long work: output writable with room, memory, existing outputs."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

import gr2st._utils.preflight as preflight


def _read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # Running as root ignores permission bits: fail the probe the way a read-only mount does.
    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(preflight.tempfile, "mkstemp", refuse)


def test_read_only_out_refused_before_reading_data(
    cli, bench_args, h5ad_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _read_only(monkeypatch)
    out = tmp_path / "ro" / "bench"
    outcome = cli(*bench_args(h5ad_dir, out))
    assert outcome.code == 2
    assert outcome.one_error() == (
        f"error: --out {out}: cannot write in {tmp_path} (Read-only file system)"
    )
    assert not out.exists()


def test_read_only_cache_refused(
    cli, h5ad_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _read_only(monkeypatch)
    cache = tmp_path / "cache"
    outcome = cli("features", "--data", h5ad_dir, "--cache", cache, "--device", "cpu")
    assert outcome.code == 2
    assert outcome.one_error().startswith(f"error: --cache {cache}: cannot write in ")


def test_full_disk_refused_with_sizes(
    cli, bench_args, h5ad_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = preflight.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage._replace(free=1_000_000))
    out = tmp_path / "bench"
    outcome = cli(*bench_args(h5ad_dir, out))
    assert outcome.code == 2
    line = outcome.one_error()
    assert line.startswith(f"error: --out {out}: not enough free space: about ")
    assert "needed, 1.0 MB free" in line
    assert not out.exists()


def test_out_that_is_a_file(cli, bench_args, h5ad_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "file"
    out.write_text("x")
    outcome = cli(*bench_args(h5ad_dir, out))
    assert outcome.code == 2
    assert outcome.one_error() == (
        f"error: Invalid value for '--out': dir '{out}' is a file. (see 'gr2st benchmark --help')"
    )


def test_memory_estimate_refuses_huge_patches(cli, h5ad_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    outcome = cli("train", "--data", h5ad_dir, "--size", "100000", "--out", out)
    assert outcome.code == 2
    line = outcome.one_error()
    assert line.startswith("error: patches of 100000 px in batches of 32 would take about ")
    assert line.endswith("is available; lower --size or --batch-size")
    assert not out.exists()


def test_memory_check_uses_available_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "available_memory", lambda: 10_000_000)
    preflight.check_memory(8_000_000, what="x")
    with pytest.raises(
        preflight.GR2STConfigError, match=r"x would take about 9\.5 MB of memory; 10\.0 MB"
    ):
        preflight.check_memory(9_500_000, what="x")


def test_benchmark_out_of_another_request_needs_overwrite(
    cli, bench_args, h5ad_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    first = cli(*bench_args(h5ad_dir, out))
    assert first.code == 0, first.err
    results = (out / "results.json").read_text()
    # The same command again resumes (finished folds reused), no --overwrite needed.
    again = cli(*bench_args(h5ad_dir, out))
    assert again.code == 0, again.err
    # Another request is refused, naming what changed; the old report is untouched.
    other = cli(*bench_args(h5ad_dir, out), "--seed", "7")
    assert other.code == 2
    assert other.one_error() == (
        f"error: --out {out}: holds a benchmark of another request (seed 0 → 7); pass "
        "--overwrite to replace its report (finished folds that still match are reused), "
        "or choose another --out"
    )
    assert (out / "results.json").read_text() == results
    replaced = cli(*bench_args(h5ad_dir, out), "--seed", "7", "--overwrite")
    assert replaced.code == 0, replaced.err
    assert json.loads((out / "request.json").read_text())["seed"] == 7


def test_benchmark_into_unrelated_folder_refused(
    cli, bench_args, h5ad_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    outcome = cli(*bench_args(h5ad_dir, out))
    assert outcome.code == 2
    assert "is not empty and holds no gr2st benchmark" in outcome.one_error()
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_failed_benchmark_leaves_no_out(cli, bench_args, h5ad_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    outcome = cli(*bench_args(h5ad_dir, out), "--set", "knn:nonsense=1")
    assert outcome.code == 2
    assert "nonsense" in outcome.one_error()
    assert not out.exists()


def test_patches_out_must_be_png_and_new(cli, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    sheet.write_bytes(b"old")
    outcome = cli("patches", "--out", sheet, "--n", "4")
    assert outcome.code == 2
    assert outcome.one_error() == (
        f"error: --out {sheet}: already exists; pass --overwrite to replace it"
    )
    assert sheet.read_bytes() == b"old"
    outcome = cli("patches", "--out", tmp_path / "sheet.jpg")
    assert "expected a .png file name" in outcome.one_error()
