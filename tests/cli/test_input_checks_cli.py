"""Every command that reads a section with an image refuses spots that do not fit it,
on the real B4 downscaled (``mini_b4``) with its pixel columns swapped."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from gr2st.cli.main import main


def _run(args: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """(exit status, stderr lines); stdout is kept in ``_run.out``."""
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    _run.out = captured.out  # type: ignore[attr-defined]
    return int(stop.value.code or 0), [line for line in captured.err.splitlines() if line]


@pytest.fixture
def swapped(mini_b4, tmp_path: Path) -> Path:
    spots = mini_b4.spots.copy()
    spots["pixel_x"], spots["pixel_y"] = mini_b4.spots["pixel_y"], mini_b4.spots["pixel_x"]
    return mini_b4.write(tmp_path / "swapped", spots=spots)


SWAPPED = (
    r"^error: B4: \d+ of 283 spots \(\d+ %\) lie off the tissue of B4_HE.jpg; "
    "pixel_x and pixel_y look swapped"
)


@pytest.mark.parametrize(
    "command",
    [
        ["data", "check"],
        ["features", "--nuclei", "none"],
        ["train", "--out", "{tmp}/bundle"],
        ["benchmark", "--methods", "knn", "--out", "{tmp}/bench"],
        ["patches", "--section", "B4", "--out", "{tmp}/sheet.png"],
    ],
)
def test_every_command_refuses_swapped_pixel_columns(
    command: list[str], swapped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(tmp=tmp_path) for a in command]
    extra = ["--panel", swapped / "panel.txt"] if command[0] not in ("patches", "features") else []
    if command[0] in ("features", "train", "benchmark"):
        extra += ["--cache", tmp_path / "cache"]
    code, lines = _run([*args, "--data", swapped, *extra], capsys)
    assert code == 2
    assert len(lines) == 1
    assert re.match(SWAPPED, lines[0]), lines
    assert "--allow-off-tissue" in lines[0]
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "bundle").exists()
    assert not (tmp_path / "sheet.png").exists()


def test_data_check_passes_b4_and_says_the_share_on_tissue(
    mini_b4, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = mini_b4.write(tmp_path)
    code, lines = _run(["data", "check", "--data", folder, "--panel", folder / "panel.txt"], capsys)
    assert code == 0
    assert lines == []
    out = _run.out  # type: ignore[attr-defined]
    assert re.search(r"B4: 283 spots, image yes \(9\d % of spots on tissue\)", out)


def test_data_check_allow_off_tissue_warns(
    swapped: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = _run(["data", "check", "--data", swapped, "--panel",
                        swapped / "panel.txt", "--allow-off-tissue"], capsys)  # fmt: skip
    assert code == 0
    [warning] = [line for line in lines if "--allow-off-tissue" in line]
    assert warning.startswith("warning: B4: ")
    assert "look swapped" in warning
    assert warning.endswith("(--allow-off-tissue)")
    assert "B4: 283 spots, image yes" in _run.out  # type: ignore[attr-defined]


def test_data_check_refuses_a_truncated_image(
    mini_b4, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = (mini_b4.write(tmp_path / "good") / "ST-imgs/B/B4/B4_HE.jpg").read_bytes()
    folder = mini_b4.write(tmp_path / "cut", image_bytes=raw[: len(raw) // 2])
    code, lines = _run(["data", "check", "--data", folder, "--panel", folder / "panel.txt"], capsys)
    assert code == 2
    assert len(lines) == 1
    assert "B4_HE.jpg: cannot decode the image (image file is truncated" in lines[0]


def test_data_check_grey_image(mini_b4, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grey = mini_b4.image.mean(axis=2, keepdims=True).astype(np.uint8).repeat(3, axis=2)
    folder = mini_b4.write(tmp_path, image=grey)
    args = ["data", "check", "--data", folder, "--panel", folder / "panel.txt"]
    code, lines = _run(args, capsys)
    assert code == 2
    assert "greyscale image" in lines[0]
    assert "--allow-grey" in lines[0]
    code, lines = _run([*args, "--allow-grey"], capsys)
    assert code == 0
    assert not [line for line in lines if line.startswith("error")]
    assert "B4: 283 spots, image yes" in _run.out  # type: ignore[attr-defined]


def test_data_check_duplicate_genes(
    mini_b4, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counts = mini_b4.counts.copy()
    counts.insert(0, "ERBB2", counts.iloc[:, 5].to_numpy(), allow_duplicates=True)
    folder = mini_b4.write(tmp_path, counts=counts)
    args = ["data", "check", "--data", folder, "--panel", folder / "panel.txt"]
    code, lines = _run(args, capsys)
    assert code == 2
    assert "('ERBB2 ×2')" in lines[0]
    assert "--duplicate-genes sum" in lines[0]
    code, [warning] = _run([*args, "--duplicate-genes", "sum"], capsys)
    assert code == 0
    assert "summed the counts of 1 gene name(s)" in warning
    assert "B4: 283 spots" in _run.out  # type: ignore[attr-defined]


def test_profile_for_methods_without_profiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = _run(
        ["benchmark", "--methods", "knn,mean", "--profile", "turbo", "--data", tmp_path], capsys
    )
    assert code == 2
    assert lines == [
        "error: --profile turbo: none of the methods knn, mean has profiles (they learn "
        "nothing and have one set of settings); drop --profile or add a learned method"
    ]
