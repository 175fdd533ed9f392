"""``gr2st data fetch`` end to end, against a local HTTP server (never the internet)."""

from __future__ import annotations

import hashlib
import shlex
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gr2st.cli.main import app, main
from gr2st.io import download
from gr2st.io.download import Manifest, RemoteFile
from range_server import RangeServer

FILES = {"ST-cnts/A1.tsv.gz": b"counts" * 1000, "ST-spotfiles/A1_selection.tsv": b"x\ty\n1\t2\n"}


@pytest.fixture
def mirror(range_server: RangeServer) -> str:
    """URL of a local server holding ``FILES`` under their relative paths."""
    range_server.files.update(FILES)
    return range_server.url


@pytest.fixture
def tiny_her2st(monkeypatch: pytest.MonkeyPatch) -> Manifest:
    """Replace the built-in HER2ST manifest by two files (the real one lists 118)."""
    files = tuple(RemoteFile(p, len(b), hashlib.sha256(b).hexdigest()) for p, b in FILES.items())
    manifest = Manifest(name="her2st", base_url="https://unreachable.invalid/", files=files)
    monkeypatch.setattr(download, "get_manifest", lambda name, sections=None: manifest)
    return manifest


def test_fetch_prints_destination_and_the_benchmark_argument(
    tiny_her2st: Manifest, mirror: str, tmp_path: Path
) -> None:
    dest = tmp_path / "my data"  # a space, so the printed argument must be quoted
    args = ["data", "fetch", "her2st", "--dest", str(dest), "--mirror", mirror, "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == f"Fetching her2st into {dest.resolve()}"
    assert lines[1] == f"her2st: downloading 2 files (0.0 MiB) from {mirror} into {dest.resolve()}"
    assert lines[2] == "Done: 2 downloaded (0.0 MiB), 0 already present, 0 extracted."
    assert lines[-1] == f"Use it with: gr2st benchmark --data {shlex.quote(str(dest.resolve()))}"
    assert {p: (dest / p).read_bytes() for p in FILES} == FILES

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert f"her2st: every file is already in {dest.resolve()}" in again.output
    assert "Done: 0 downloaded (0.0 MiB), 2 already present, 0 extracted." in again.output


def test_a_missing_file_exits_with_a_one_line_error(
    tiny_her2st: Manifest,
    mirror: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broken = Manifest(
        name="her2st",
        base_url=tiny_her2st.base_url,
        files=(*tiny_her2st.files, RemoteFile("ST-cnts/Z9.tsv.gz")),
    )
    monkeypatch.setattr(download, "get_manifest", lambda name, sections=None: broken)
    argv = ["gr2st", "data", "fetch", "her2st", "--dest", str(tmp_path / "d"), "--mirror", mirror]
    monkeypatch.setattr(sys, "argv", [*argv, "--no-progress"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {mirror}ST-cnts/Z9.tsv.gz was not found (HTTP 404)\n"


def test_an_unknown_dataset_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["gr2st", "data", "fetch", "visium", "--dest", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: unknown dataset 'visium'; known: cscc, her2st, hest\n"
    assert list(tmp_path.iterdir()) == []


def test_help_says_where_each_dataset_comes_from() -> None:
    group = CliRunner().invoke(app, ["data", "--help"])
    assert group.exit_code == 0
    assert "fetch" in group.output
    result = CliRunner().invoke(app, ["data", "fetch", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for fact in (
        "github.com/almaan/her2st at commit 85df741",
        "copy data/ST-imgs into DEST/ST-imgs",
        "GEO GSE144240_RAW.tar",
        "--mirror",
    ):
        assert fact in text


def test_data_check_on_her2st_layout(tmp_path: Path) -> None:
    from gr2st._constants import SECTION
    from gr2st.datasets import synthetic, write_her2st_layout

    genes_file = tmp_path / "panel.txt"
    secs = synthetic(n_sections=2, n_genes=6, grid=(3, 3), image_dir=tmp_path / "img", seed=0)
    for name, s in zip(["A1", "B1"], secs, strict=True):
        s.obs[SECTION] = name
    secs[1].uns["gr2st"]["image_path"] = None
    genes_file.write_text("\n".join(secs[0].var_names[:4]) + "\n")
    root = write_her2st_layout(secs, tmp_path / "her2st")
    result = CliRunner().invoke(
        app, ["data", "check", "--data", str(root), "--panel", str(genes_file)]
    )
    assert result.exit_code == 0, result.output
    assert "A1: 9 spots, image yes" in result.output
    assert "B1: 9 spots, image no" in result.output
    assert "Sections with an image (the benchmark's default): A1" in result.output

    genes_file.write_text("GENE000\nNOT_A_GENE\n")
    result = CliRunner().invoke(
        app, ["data", "check", "--data", str(root), "--panel", str(genes_file)]
    )
    assert result.exit_code != 0
    assert "NOT_A_GENE" in str(result.exception)
