"""``fetch hest``: HEST-1k samples from a local server laid out as the Hugging Face hub."""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
import urllib.parse
from collections.abc import Iterator
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
from gr2st.io.download import HEST_REPO, DownloadError, fetch, hest_manifest

FAST: dict[str, Any] = {"progress": False, "retries": 2, "retry_wait_s": 0.0, "timeout_s": 5.0}
TOKEN = "hf_test_token"
API = f"/api/datasets/{HEST_REPO}/paths-info/"
RESOLVE = f"/datasets/{HEST_REPO}/resolve/"


@dataclass
class Hub:
    """A hub on 127.0.0.1: ``paths-info`` API, ``resolve`` URLs that redirect to a storage
    host (``localhost``, another host name for the same server) serving byte ranges.

    ``files`` maps repository paths to bytes; paths of ``.json`` files are listed with a
    git blob id, others as LFS files with their sha256. ``served`` replaces what the
    storage host sends for a path; ``cut_after[path] = n`` closes the first transfer after
    ``n`` bytes. ``requests`` records (method, path, Authorization, Range).
    """

    files: dict[str, bytes] = field(default_factory=dict)
    served: dict[str, bytes] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _record(self) -> str:
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                hub.requests.append(
                    (self.command, path, self.headers.get("Authorization"),
                     self.headers.get("Range"))
                )  # fmt: skip
                return path

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {TOKEN}":
                    return True
                self.send_error(401)
                return False

            def do_POST(self) -> None:
                path = self._record()
                if not path.startswith(API) or not self._authorised():
                    if path.startswith(API):
                        return
                    self.send_error(404)
                    return
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                wanted = urllib.parse.parse_qs(body).get("paths", [])
                listing = [hub.entry(p) for p in wanted if p in hub.files]
                data = __import__("json").dumps(listing).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = self._record()
                if path.startswith(RESOLVE):
                    if not self._authorised():
                        return
                    name = path[len(RESOLVE) :].split("/", 1)[1]
                    if name not in hub.files:
                        self.send_error(404)
                        return
                    self.send_response(302)
                    self.send_header("Location", f"{hub.storage}/cdn/{name}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not path.startswith("/cdn/"):
                    self.send_error(404)
                    return
                name = path[len("/cdn/") :]
                body = hub.served.get(name, hub.files[name])
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if name in hub.cut_after:
                    payload = payload[: hub.cut_after.pop(name)]
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def storage(self) -> str:
        return f"http://localhost:{self.httpd.server_address[1]}"

    def entry(self, path: str) -> dict[str, Any]:
        data = self.files[path]
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        if path.endswith(".json"):
            return {"type": "file", "path": path, "size": len(data), "oid": blob}
        pointer = hashlib.sha1(b"pointer " + data).hexdigest()  # not the content's id
        lfs = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return {"type": "file", "path": path, "size": len(data), "oid": pointer, "lfs": lfs}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


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
def hub(samples: dict[str, bytes]) -> Iterator[Hub]:
    server = Hub(files=dict(samples))
    yield server
    server.close()


def _fetch(hub: Hub, dest: Path, ids: list[str], **options: Any) -> Any:
    manifest = hest_manifest(ids, endpoint=hub.url, token=TOKEN, timeout_s=5.0, **options)
    return fetch(manifest, dest, headers={"Authorization": f"Bearer {TOKEN}"}, **FAST)


def test_fetched_samples_are_the_hub_layout_and_read(hub: Hub, tmp_path: Path) -> None:
    report = _fetch(hub, tmp_path, ["S0", "S1"])
    want = [f"{k}/{s}{x}" for s in ("S0", "S1")
            for k, x in (("st", ".h5ad"), ("wsis", ".tif"), ("metadata", ".json"))]  # fmt: skip
    assert report.downloaded == want
    for path in want:
        assert (tmp_path / path).read_bytes() == hub.files[path]
    assert not (tmp_path / "patches").exists()
    assert read_hest(tmp_path, "S1").uns[UNS][MICRONS_PER_PIXEL] == 2.0
    # The token goes to the hub, never to the storage host it redirects to.
    api = [r for r in hub.requests if r[0] == "POST"]
    assert len(api) == 1
    assert api[0][2] == f"Bearer {TOKEN}"
    resolved = [r for r in hub.requests if r[1].startswith(RESOLVE)]
    stored = [r for r in hub.requests if r[1].startswith("/cdn/")]
    assert len(resolved) == len(stored) == 6
    assert all(r[1].startswith(f"{RESOLVE}main/") and r[2] == f"Bearer {TOKEN}" for r in resolved)
    assert all(r[2] is None for r in stored)
    # Everything present and correct: a second run downloads nothing.
    hub.requests.clear()
    again = _fetch(hub, tmp_path, ["S0", "S1"])
    assert again.downloaded == []
    assert again.skipped == want
    assert [r[0] for r in hub.requests] == ["POST"]


def test_patches_on_request_and_revision(hub: Hub, tmp_path: Path) -> None:
    report = _fetch(hub, tmp_path, ["S0"], patches=True, revision="v1.1")
    assert report.downloaded[-1] == "patches/S0.h5"
    assert (tmp_path / "patches" / "S0.h5").read_bytes() == b"HEST patches of S0"
    assert any(r[1] == f"{API}v1.1" for r in hub.requests)
    assert all(r[1].startswith(f"{RESOLVE}v1.1/") for r in hub.requests if "resolve" in r[1])


def test_an_interrupted_download_resumes(hub: Hub, tmp_path: Path) -> None:
    wsi = "wsis/S0.tif"
    hub.cut_after[wsi] = 1000
    _fetch(hub, tmp_path, ["S0"])
    assert (tmp_path / wsi).read_bytes() == hub.files[wsi]
    ranges = [r[3] for r in hub.requests if r[1] == f"/cdn/{wsi}"]
    assert ranges == [None, "bytes=1000-"]


def test_content_that_does_not_match_the_listed_hash_is_removed(hub: Hub, tmp_path: Path) -> None:
    wsi = "wsis/S0.tif"
    good = hub.files[wsi]
    hub.served[wsi] = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(DownloadError, match=r"checksum mismatch for .*S0\.tif: sha256 "):
        _fetch(hub, tmp_path, ["S0"])
    assert not (tmp_path / wsi).exists()
    assert not (tmp_path / "wsis" / "S0.tif.part").exists()
    meta = "metadata/S0.json"  # small files are checked by git blob id
    hub.served = {meta: hub.files[meta] + b" "}
    with pytest.raises(DownloadError, match=r"S0\.json: size \d+ bytes, expected \d+"):
        _fetch(hub, tmp_path, ["S0"])


def test_gated_without_token_and_unknown_ids(hub: Hub) -> None:
    with pytest.raises(DownloadError, match=r"HTTP 401\): MahmoodLab/hest is gated; accept its"):
        hest_manifest(["S0"], endpoint=hub.url, token="", timeout_s=5.0)
    with pytest.raises(DownloadError, match=r"MahmoodLab/hest@main has no st/NOPE\.h5ad, wsis/"):
        hest_manifest(["S0", "NOPE"], endpoint=hub.url, token=TOKEN, timeout_s=5.0)
    with pytest.raises(GR2STConfigError, match=r"give the sample ids"):
        hest_manifest([" "], endpoint=hub.url, token=TOKEN)
    with pytest.raises(GR2STConfigError, match=r"\['\.\./S0'\] are not HEST sample ids"):
        hest_manifest(["../S0"], endpoint=hub.url, token=TOKEN)


def test_cli_fetch_hest(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    dest = tmp_path / "hest"
    result = CliRunner().invoke(
        app,
        ["data", "fetch", "hest", "--ids", "S0,S1", "--dest", str(dest), "--mirror", hub.url,
         "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.exception
    assert "Done: 6 downloaded" in result.output
    assert f"gr2st benchmark --data {dest.resolve()}" in result.output
    assert read_hest(dest, "S0").n_obs == 12
    refused = CliRunner().invoke(
        app, ["data", "fetch", "her2st", "--ids", "A1", "--dest", str(tmp_path / "h")]
    )
    assert isinstance(refused.exception, GR2STConfigError)
    assert "--ids, --patches and --revision are for hest, not her2st" in str(refused.exception)
