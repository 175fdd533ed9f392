"""``fetch hest``: HEST-1k samples through huggingface_hub, from a local server laid out as
the Hugging Face hub (its endpoint argument points there; nothing leaves 127.0.0.1)."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import socket
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gr2st._constants import MICRONS_PER_PIXEL, UNS
from gr2st.cli.main import app
from gr2st.datasets import synthetic, write_hest_layout
from gr2st.errors import GR2STConfigError
from gr2st.io import read_hest
from gr2st.io.download import HEST_REPO, DownloadError, fetch_hest, hest_manifest
from range_server import RangeServer

pytest.importorskip("huggingface_hub")

TOKEN = "hf_test_token"
API = f"api/datasets/{HEST_REPO}/paths-info/"
RESOLVE = f"datasets/{HEST_REPO}/resolve/"
COMMIT = "c" * 40


@dataclass
class Hub:
    """The hub's ``paths-info`` API and ``resolve`` URLs as routes of a :class:`RangeServer`.

    ``listed`` maps repository paths to their bytes (``.json`` files are listed with a
    git blob id, others as LFS files with their sha256). A ``resolve`` request (HEAD or
    GET, token required) redirects to the storage host ``localhost`` (another host name
    for the same server), which serves ``server.files["cdn/<path>"]`` with byte ranges;
    a test changes what storage sends by changing that entry.
    """

    server: RangeServer
    listed: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.server.routes.append(self._route)
        self.server.files.update({f"cdn/{p}": b for p, b in self.listed.items()})

    @property
    def url(self) -> str:
        return self.server.url.rstrip("/")

    def _route(self, handler: http.server.BaseHTTPRequestHandler, path: str) -> bool:
        if not path.startswith((API, RESOLVE)):
            return False
        if handler.headers.get("Authorization") != f"Bearer {TOKEN}":
            _reply(handler, 401, headers={"X-Error-Code": "GatedRepo"})
        elif path.startswith(API):
            length = int(handler.headers["Content-Length"])
            wanted = urllib.parse.parse_qs(handler.rfile.read(length).decode()).get("paths", [])
            body = json.dumps([self.entry(p) for p in wanted if p in self.listed]).encode()
            _reply(handler, 200, body, {"Content-Type": "application/json"})
        else:
            name = path[len(RESOLVE) :].split("/", 1)[1]
            if name not in self.listed:
                _reply(handler, 404, headers={"X-Error-Code": "EntryNotFound"})
                return True
            entry = self.entry(name)
            etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
            _reply(
                handler,
                302,
                headers={
                    "Location": f"http://localhost:{self.server.port}/cdn/{name}",
                    "X-Repo-Commit": COMMIT,
                    "X-Linked-Etag": f'"{etag}"',
                    "X-Linked-Size": str(entry["size"]),
                    "ETag": f'"{etag}"',
                },
            )
        return True

    def entry(self, path: str) -> dict[str, Any]:
        data = self.listed[path]
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if path.endswith(".json"):
            return {"type": "file", "path": path, "size": len(data), "oid": blob}
        pointer = hashlib.sha1(b"pointer " + data).hexdigest()  # not the content's id
        lfs = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return {"type": "file", "path": path, "size": len(data), "oid": pointer, "lfs": lfs}


def _reply(
    handler: http.server.BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The files of two synthetic HEST samples, by repository path."""
    tmp = tmp_path_factory.mktemp("hest-src")
    secs = synthetic(n_sections=2, n_genes=6, grid=(3, 4), image_dir=tmp / "img", seed=6)
    root = write_hest_layout(secs, tmp / "hest")
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.*")}
    files["patches/S0.h5"] = b"HEST patches of S0"
    return files


@pytest.fixture
def hub(samples: dict[str, bytes], range_server: RangeServer) -> Hub:
    return Hub(range_server, listed=dict(samples))


def _fetch(hub: Hub, dest: Path, ids: list[str], **options: Any) -> Any:
    manifest = hest_manifest(ids, endpoint=hub.url, token=TOKEN, **options)
    return fetch_hest(manifest, dest, token=TOKEN, progress=False)


def _hits(hub: Hub, prefix: str) -> list[Any]:
    return [h for h in hub.server.requests if h.path.startswith(prefix)]


def test_fetched_samples_are_the_hub_layout_and_read(hub: Hub, tmp_path: Path) -> None:
    report = _fetch(hub, tmp_path, ["S0", "S1"])
    want = [f"{k}/{s}{x}" for s in ("S0", "S1")
            for k, x in (("st", ".h5ad"), ("wsis", ".tif"), ("metadata", ".json"))]  # fmt: skip
    assert report.downloaded == want
    assert report.bytes_downloaded == sum(len(hub.listed[p]) for p in want)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                  if p.is_file()) == sorted(want)  # fmt: skip
    for path in want:
        assert (tmp_path / path).read_bytes() == hub.listed[path]
    assert read_hest(tmp_path, "S1").uns[UNS][MICRONS_PER_PIXEL] == 2.0
    # The token goes to the hub, never to the storage host it redirects to.
    api = _hits(hub, API)
    assert [(h.method, h.auth) for h in api] == [("POST", f"Bearer {TOKEN}")]
    resolved, stored = _hits(hub, RESOLVE), _hits(hub, "cdn/")
    assert {h.path.split("/", 5)[-1] for h in resolved} == set(want)
    assert all(h.path.startswith(f"{RESOLVE}main/") for h in resolved)
    assert all(h.auth == f"Bearer {TOKEN}" for h in resolved)
    assert sorted(h.path for h in stored if h.method == "GET") == sorted(f"cdn/{p}" for p in want)
    assert all(h.auth is None for h in stored)
    # Everything present and correct: a second run downloads nothing.
    hub.server.requests.clear()
    again = _fetch(hub, tmp_path, ["S0", "S1"])
    assert again.downloaded == []
    assert again.skipped == want
    assert [h.method for h in hub.server.requests] == ["POST"]


def test_patches_on_request_and_revision(hub: Hub, tmp_path: Path) -> None:
    report = _fetch(hub, tmp_path, ["S0"], patches=True, revision="v1.1")
    assert report.downloaded[-1] == "patches/S0.h5"
    assert (tmp_path / "patches" / "S0.h5").read_bytes() == b"HEST patches of S0"
    assert [h.path for h in _hits(hub, API)] == [f"{API}v1.1"]
    assert all(h.path.startswith(f"{RESOLVE}v1.1/") for h in _hits(hub, RESOLVE))


def test_a_transfer_cut_mid_way_resumes(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # The client writes what it read in whole chunks (10 MiB): small ones for a small file.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 500)
    wsi = "wsis/S0.tif"
    hub.server.cut_after[f"cdn/{wsi}"] = 1000
    _fetch(hub, tmp_path, ["S0"])
    assert (tmp_path / wsi).read_bytes() == hub.listed[wsi]
    assert [r for p, r in hub.server.gets() if p == f"cdn/{wsi}"] == [None, "bytes=1000-"]
    assert hub.server.sent[f"cdn/{wsi}"] == len(hub.listed[wsi])  # nothing sent twice


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("wsis/S0.tif", r"sha256 [0-9a-f]{64}, expected [0-9a-f]{64}"),  # LFS: content sha256
        ("metadata/S0.json", r"git blob id [0-9a-f]{40}, expected [0-9a-f]{40}"),  # small file
    ],
)
def test_content_that_does_not_match_the_listed_hash_is_removed(
    hub: Hub, tmp_path: Path, path: str, problem: str
) -> None:
    good = hub.listed[path]
    hub.server.files[f"cdn/{path}"] = good[:-1] + bytes([good[-1] ^ 1])  # same size
    url = re.escape(f"{hub.url}/{RESOLVE}main/{path}")
    with pytest.raises(DownloadError, match=rf"checksum mismatch for {url}: {problem}; the bad"):
        _fetch(hub, tmp_path, ["S0"])
    assert not (tmp_path / path).exists()
    assert not (tmp_path / ".gr2st-download").exists()  # no unchecked file is left


def test_gated_without_token_and_unknown_ids(hub: Hub) -> None:
    with pytest.raises(DownloadError, match=r"HTTP 401\): MahmoodLab/hest is gated; accept its"):
        hest_manifest(["S0"], endpoint=hub.url, token=False)
    with pytest.raises(DownloadError, match=r"MahmoodLab/hest@main has no st/NOPE\.h5ad, wsis/"):
        hest_manifest(["S0", "NOPE"], endpoint=hub.url, token=TOKEN)
    with pytest.raises(GR2STConfigError, match=r"give the sample ids"):
        hest_manifest([" "], endpoint=hub.url, token=TOKEN)
    with pytest.raises(GR2STConfigError, match=r"\['\.\./S0'\] are not HEST sample ids"):
        hest_manifest(["../S0"], endpoint=hub.url, token=TOKEN)


def test_an_unreachable_hub_is_a_one_line_network_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.utils._http as hub_http

    monkeypatch.setattr(hub_http.time, "sleep", lambda seconds: None)  # the client's backoff
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.raises(DownloadError) as info:
        hest_manifest(["S0"], endpoint=endpoint, token=TOKEN)
    message = str(info.value)
    assert message.startswith(
        f"network failure fetching {endpoint}/api/datasets/MahmoodLab/hest/paths-info/main: "
    )
    assert "\n" not in message


def test_cli_fetch_hest(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # huggingface_hub's own token lookup
    dest = tmp_path / "hest"
    result = CliRunner().invoke(
        app,
        ["data", "fetch", "hest", "--ids", "S0,S1", "--dest", str(dest), "--mirror", hub.url,
         "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.exception
    assert "hest: downloading 6 files" in result.output
    assert "Done: 6 downloaded" in result.output
    assert f"gr2st benchmark --data {dest.resolve()}" in result.output
    assert read_hest(dest, "S0").n_obs == 12
    refused = CliRunner().invoke(
        app, ["data", "fetch", "her2st", "--ids", "A1", "--dest", str(tmp_path / "h")]
    )
    assert isinstance(refused.exception, GR2STConfigError)
    assert "--ids, --patches and --revision are for hest, not her2st" in str(refused.exception)
