"""The command line's one error boundary: every failure is one line and an exit status."""

from __future__ import annotations

import errno
import io
import logging
import sys
from pathlib import Path

import pytest
import torch

from gr2st.cli.main import INTERRUPTED

USAGE_ERRORS = [
    (["benchmark", "--bogus-flag"], "No such option: --bogus-flag"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["train", "--data", "somewhere"], "Missing option '--out'"),
    (["benchmark", "--seed", "abc"], "Invalid value for '--seed'"),
    (["patches", "--n", "0", "--out", "x.png"], "Invalid value for '--n'"),
]


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS)
def test_usage_errors_are_one_line_exit_2(cli, args: list[str], message: str) -> None:
    outcome = cli(*args)
    assert outcome.code == 2
    line = outcome.one_error()
    assert message in line
    assert "--help" in line


def test_gr2st_errors_are_one_line_exit_2(cli, tmp_path: Path) -> None:
    panel = tmp_path / "panel.txt"
    panel.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    outcome = cli("data", "check", "--data", tmp_path, "--panel", panel)
    assert outcome.code == 2
    assert outcome.one_error() == (
        f"error: {panel}: gene panel is not a text file (byte 0 is not UTF-8); "
        "expected one gene per line"
    )


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("tpu", "device 'tpu' is not one of auto, cpu, cuda, cuda:N, mps"),
        ("cuda:x", "device 'cuda:x' is not one of"),
        pytest.param(
            "cuda",
            "device 'cuda':",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present"),
        ),
        ("cuda:99", "device 'cuda:99':"),
    ],
)
@pytest.mark.parametrize("command", ["features", "benchmark", "train", "predict"])
def test_unavailable_device_is_one_line(
    cli, tmp_path: Path, command: str, device: str, message: str
) -> None:
    extra = {
        "train": ["--out", tmp_path / "bundle"],
        "predict": [
            "--model",
            tmp_path,
            "--image",
            tmp_path / "x.png",
            "--out",
            tmp_path / "p.h5ad",
        ],
    }.get(command, [])
    data = [] if command == "predict" else ["--data", tmp_path]
    outcome = cli(command, *data, "--device", device, *extra)
    assert outcome.code == 2
    assert message in outcome.one_error()
    assert not (tmp_path / "bundle").exists()
    assert not (tmp_path / "p.h5ad").exists()


# How safetensors reports a full disk (its own exception type, the OS text inside).
_IO_ERROR = 'IoError(Os { code: 28, message: "No space left on device" })'


def _raise(err: BaseException):
    def boom(*args: object, **kwargs: object) -> None:
        raise err

    return boom


@pytest.mark.parametrize(
    ("err", "code", "line"),
    [
        (KeyboardInterrupt(), 130, INTERRUPTED),
        (
            OSError(errno.ENOSPC, "No space left on device", "/data/out/x.npz"),
            1,
            "error: /data/out/x.npz: No space left on device",
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "/ro/out"),
            1,
            "error: /ro/out: Read-only file system",
        ),
        (
            RuntimeError(f"Error while serializing: {_IO_ERROR}"),
            1,
            f"error: Error while serializing: {_IO_ERROR}",
        ),
        (
            MemoryError("Unable to allocate 894. GiB"),
            1,
            "error: out of memory (Unable to allocate 894. GiB); lower --batch-size or --size, "
            "or use fewer sections",
        ),
    ],
)
def test_environment_failures_and_ctrl_c(
    cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, err: BaseException, code: int, line: str
) -> None:
    monkeypatch.setattr("gr2st.genes.get_panel", _raise(err))
    outcome = cli("data", "check", "--data", tmp_path)
    assert outcome.code == code
    assert outcome.err == [line]


def test_unexpected_error_names_a_log_with_the_traceback(
    cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GR2ST_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("gr2st.genes.get_panel", _raise(ValueError("boom\nsecond line")))
    outcome = cli("data", "check", "--data", tmp_path)
    assert outcome.code == 1
    line = outcome.one_error()
    assert line.startswith("error: unexpected ValueError: boom second line; traceback in ")
    log_file = Path(line.split("traceback in ")[1].split(" (a bug")[0])
    assert log_file.parent == tmp_path / "cache" / "logs"
    text = log_file.read_text()
    assert "Traceback (most recent call last)" in text
    assert "ValueError: boom" in text
    assert "command: gr2st data check --data" in text


def test_debug_prints_the_traceback(cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("gr2st.genes.get_panel", _raise(ValueError("boom")))
    outcome = cli("--debug", "data", "check", "--data", tmp_path)
    assert outcome.code == 1
    assert "Traceback (most recent call last)" in "\n".join(outcome.err)
    assert outcome.err[-1] == "ValueError: boom"


def test_log_lines_go_to_the_stderr_of_the_moment(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    # A run sets up gr2st's logger; a later caller with another stderr (a notebook cell, a
    # test runner whose earlier stream is closed) must get the lines, not a logging error.
    assert cli("--version").code == 0
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    logging.getLogger("gr2st").warning("A1: dropped 1 spot(s)")
    assert later.getvalue() == "warning: A1: dropped 1 spot(s)\n"
