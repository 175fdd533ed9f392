"""``--data auto`` (what ``make run`` calls): find HER2ST or fetch it, against a local server."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gr2st._constants import SECTION
from gr2st.cli.benchmark import FETCH_DEST, find_or_fetch_her2st
from gr2st.cli.main import app, main
from gr2st.datasets import synthetic, write_her2st_layout
from gr2st.io import download
from gr2st.io.download import DownloadError, Manifest, RemoteFile
from range_server import RangeServer

SECTIONS = ["B4", "C2"]


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """Two synthetic sections named like HER2ST's, in its layout, as a server would hold."""
    secs = synthetic(n_sections=2, n_genes=8, grid=(5, 5), image_dir=tmp_path / "png", seed=3)
    for adata, name in zip(secs, SECTIONS, strict=True):
        adata.obs[SECTION] = name
    return write_her2st_layout(secs, tmp_path / "served")


@pytest.fixture
def server(served: Path, range_server: RangeServer) -> RangeServer:
    range_server.root = served
    return range_server


def _manifest(served: Path, base_url: str) -> Manifest:
    files = tuple(
        RemoteFile(p.relative_to(served).as_posix(), p.stat().st_size, _sha(p.read_bytes()))
        for p in sorted(served.rglob("*"))
        if p.is_file()
    )
    return Manifest(name="her2st", base_url=base_url, files=files)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory without ../shared/data/her2st, data/her2st or $GR2ST_DATA."""
    work = tmp_path / "clone" / "repo"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv("GR2ST_DATA", raising=False)
    return work


def _serve(monkeypatch: pytest.MonkeyPatch, served: Path, base_url: str) -> list[object]:
    """Point HER2ST's manifest at ``base_url``; returns the sections each call asked for."""
    asked: list[object] = []

    def get_manifest(name: str, *, sections: object = None) -> Manifest:
        asked.append(sections)
        return _manifest(served, base_url)

    monkeypatch.setattr(download, "get_manifest", get_manifest)
    return asked


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_auto_downloads_checks_and_then_reuses_without_a_request(
    served: Path,
    server: RangeServer,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    asked = _serve(monkeypatch, served, server.url)
    assert find_or_fetch_her2st(SECTIONS, progress=False) == FETCH_DEST
    assert asked == [SECTIONS]
    assert _files(workdir / FETCH_DEST) == _files(served)
    size = sum(len(b) for b in _files(served).values()) / 2**20
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "HER2ST sections B4, C2 not found in ../shared/data/her2st, data/her2st; "
        "fetching them into data/her2st",
        f"her2st: downloading 6 files ({size:.1f} MiB) from {server.url} into "
        f"{workdir / FETCH_DEST}",
    ]
    assert len(server.requests) == 6

    # The second run finds data/her2st: no request, nothing printed.
    assert find_or_fetch_her2st(SECTIONS, progress=False) == FETCH_DEST
    assert len(server.requests) == 6
    assert capsys.readouterr().out == ""


def test_an_interrupted_download_resumes(
    served: Path, server: RangeServer, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve(monkeypatch, served, server.url)
    image = "ST-imgs/B/B4/B4.jpg"
    body = (served / image).read_bytes()
    part = workdir / FETCH_DEST / (image + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(body[: len(body) // 2])  # what an interrupted run leaves behind
    find_or_fetch_her2st(SECTIONS, progress=False)
    assert (image, f"bytes={len(body) // 2}-") in server.gets()
    assert _files(workdir / FETCH_DEST) == _files(served)


def test_a_corrupt_file_is_not_kept_under_its_final_name(
    served: Path, server: RangeServer, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve(monkeypatch, served, server.url)
    manifest = _manifest(served, server.url)
    # The server now holds other bytes than the manifest promises.
    (served / "ST-cnts" / "C2.tsv.gz").write_bytes(b"not the counts")
    monkeypatch.setattr(download, "get_manifest", lambda name, sections=None: manifest)
    with pytest.raises(DownloadError, match=r"checksum mismatch for .*ST-cnts/C2\.tsv\.gz"):
        find_or_fetch_her2st(SECTIONS, progress=False)
    assert not (workdir / FETCH_DEST / "ST-cnts" / "C2.tsv.gz").exists()
    assert not (workdir / FETCH_DEST / "ST-cnts" / "C2.tsv.gz.part").exists()


def test_offline_fails_at_once_with_one_line_and_writes_nothing(
    served: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # .invalid never resolves (RFC 6761): what an offline machine sees.
    _serve(monkeypatch, served, "http://gr2st-offline.invalid/data/")
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    argv = ["gr2st", "benchmark", "--data", "auto", "--sections", "B4,C2", "--methods", "mean"]
    monkeypatch.setattr(sys, "argv", [*argv, "--no-progress"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        "error: network failure fetching http://gr2st-offline.invalid/data/ST-cnts/B4.tsv.gz: "
    )
    assert err.endswith(
        "; without network access, copy the data/ folder of https://github.com/almaan/her2st "
        "at commit 85df741 into data/her2st (or anywhere, then pass --data DIR)\n"
    )
    assert waits == []  # an unknown host is not retried
    assert _files(workdir) == {}  # nothing under a final name, no partial file either


def test_section_choices(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[object] = []

    def get_manifest(name: str, *, sections: object = None) -> Manifest:
        asked.append(sections)
        return Manifest(name="her2st", base_url="http://unused.invalid/")

    monkeypatch.setattr(download, "get_manifest", get_manifest)
    find_or_fetch_her2st(None, progress=False)
    find_or_fetch_her2st(["all"], progress=False)
    assert asked == [list(download.HER2ST_IMAGED), list(download.HER2ST_SECTIONS)]


def test_an_existing_folder_holding_the_sections_is_used_as_is(
    served: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve(monkeypatch, served, "http://unused.invalid/")
    monkeypatch.setenv("GR2ST_DATA", str(served))
    assert find_or_fetch_her2st(SECTIONS, progress=False) == served
    assert not (workdir / FETCH_DEST).exists()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:section .* obs\\['cell_type'\\] is missing:UserWarning")
def test_benchmark_data_auto_fetches_then_runs(
    served: Path, server: RangeServer, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve(monkeypatch, served, server.url)
    (workdir / "panel.txt").write_text("\n".join(f"GENE{i:03d}" for i in range(6)) + "\n")
    args = ["benchmark", "--data", "auto", "--sections", "B4,C2", "--methods", "mean,knn"]
    args += ["--nuclei", "none", "--panel", "panel.txt", "--cache", "cache", "--out", "out"]
    result = CliRunner().invoke(app, [*args, "--no-figures", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "her2st: downloading 6 files" in result.output
    res = json.loads((workdir / "out" / "results.json").read_text())
    assert res["sections"] == SECTIONS
    assert set(res["ranking"]) == {"mean", "knn"}
    n_requests = len(server.requests)
    again = CliRunner().invoke(app, [*args, "--no-figures", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "downloading" not in again.output
    assert len(server.requests) == n_requests
