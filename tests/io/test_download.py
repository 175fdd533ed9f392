"""Checked downloader: layout, resume, checksums, errors and archives, against a local server."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import random
import re
import socket
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gr2st.errors import GR2STConfigError
from gr2st.io.download import (
    CSCC_SECTIONS,
    HER2ST_SECTIONS,
    ArchiveMember,
    DownloadError,
    GitTreeListing,
    Manifest,
    RemoteFile,
    TarArchive,
    dataset_names,
    download_file,
    extract_members,
    fetch,
    get_manifest,
)
from range_server import RangeServer

FAST: dict[str, Any] = {"progress": False, "retries": 2, "retry_wait_s": 0.0, "timeout_s": 5.0}


def payload(n: int, seed: int) -> bytes:
    """Deterministic pseudo-random bytes (so a misplaced chunk changes the hash)."""
    return random.Random(seed).randbytes(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


CONTENT = {
    "ST-cnts/A1.tsv.gz": payload(70_000, 1),
    "ST-spotfiles/A1_selection.tsv": payload(1_234, 2),
    "ST-imgs/A/A1/some_HE.jpg": payload(3 * (1 << 20) + 17, 3),  # several read chunks
}


def small_manifest(base_url: str, content: dict[str, bytes] = CONTENT) -> Manifest:
    return Manifest(
        name="tiny",
        base_url=base_url,
        files=tuple(RemoteFile(p, len(b), sha(b)) for p, b in content.items()),
    )


# ------------------------------------------------------------------------ plain files


def test_fetch_writes_the_exact_layout(range_server: RangeServer, tmp_path: Path) -> None:
    range_server.files.update(CONTENT)
    report = fetch(
        small_manifest("http://unused.invalid/"), tmp_path, mirror=range_server.url, **FAST
    )
    assert files_under(tmp_path) == CONTENT
    assert report.downloaded == list(CONTENT)
    assert report.skipped == []
    assert report.bytes_downloaded == sum(len(b) for b in CONTENT.values())
    assert report.dest == tmp_path.resolve()
    assert sorted(p for p, _ in range_server.gets()) == sorted(CONTENT)


def test_second_fetch_skips_present_files_without_any_request(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.files.update(CONTENT)
    manifest = small_manifest(range_server.url)
    fetch(manifest, tmp_path, **FAST)
    range_server.requests.clear()
    report = fetch(manifest, tmp_path, **FAST)
    assert range_server.requests == []
    assert report.downloaded == []
    assert report.skipped == list(CONTENT)
    assert report.bytes_downloaded == 0


def test_a_wrong_existing_file_is_downloaded_again(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.files.update(CONTENT)
    bad = tmp_path / "ST-spotfiles/A1_selection.tsv"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"x" * len(CONTENT["ST-spotfiles/A1_selection.tsv"]))  # right size only
    report = fetch(small_manifest(range_server.url), tmp_path, **FAST)
    assert "ST-spotfiles/A1_selection.tsv" in report.downloaded
    assert files_under(tmp_path) == CONTENT


def test_resume_requests_only_the_remainder_of_a_part_file(
    range_server: RangeServer, tmp_path: Path
) -> None:
    data = CONTENT["ST-imgs/A/A1/some_HE.jpg"]
    range_server.files["img.jpg"] = data
    done = 1_500_000
    part = tmp_path / "img.jpg.part"
    part.write_bytes(data[:done])
    received = download_file(
        range_server.url + "img.jpg", tmp_path / "img.jpg", size=len(data), sha256=sha(data), **FAST
    )
    assert range_server.gets() == [("img.jpg", f"bytes={done}-")]
    assert range_server.sent["img.jpg"] == received == len(data) - done
    assert (tmp_path / "img.jpg").read_bytes() == data
    assert not part.exists()


def test_an_interrupted_transfer_is_resumed_by_the_retry(
    range_server: RangeServer, tmp_path: Path
) -> None:
    data = CONTENT["ST-imgs/A/A1/some_HE.jpg"]
    range_server.files["img.jpg"] = data
    range_server.cut_after["img.jpg"] = 1_000_000
    download_file(range_server.url + "img.jpg", tmp_path / "img.jpg", sha256=sha(data), **FAST)
    assert range_server.gets() == [("img.jpg", None), ("img.jpg", "bytes=1000000-")]
    assert range_server.sent["img.jpg"] == len(data)  # nothing was sent twice
    assert (tmp_path / "img.jpg").read_bytes() == data


def test_a_server_ignoring_range_restarts_the_file(
    range_server: RangeServer, tmp_path: Path
) -> None:
    data = payload(50_000, 7)
    range_server.files["a.tsv"] = data
    range_server.honour_range = False
    (tmp_path / "a.tsv.part").write_bytes(data[:20_000])
    download_file(
        range_server.url + "a.tsv", tmp_path / "a.tsv", size=len(data), sha256=sha(data), **FAST
    )
    assert range_server.gets() == [("a.tsv", "bytes=20000-")]
    assert (tmp_path / "a.tsv").read_bytes() == data  # no duplicated prefix


def test_a_part_file_longer_than_expected_is_discarded(
    range_server: RangeServer, tmp_path: Path
) -> None:
    data = payload(5_000, 8)
    range_server.files["a.tsv"] = data
    (tmp_path / "a.tsv.part").write_bytes(payload(9_000, 9))
    download_file(range_server.url + "a.tsv", tmp_path / "a.tsv", size=len(data), **FAST)
    assert range_server.gets() == [("a.tsv", None)]
    assert (tmp_path / "a.tsv").read_bytes() == data


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ({"size": 1_233}, r"size 1234 bytes, expected 1233"),
        ({"sha256": "0" * 64}, r"sha256 differs, expected 0{64}"),
        ({"git_sha1": "1" * 40}, r"git blob id [0-9a-f]{40}, expected 1{40}"),
    ],
)
def test_a_mismatch_is_a_clear_error_and_the_bad_file_is_removed(
    range_server: RangeServer, tmp_path: Path, expect: dict[str, Any], message: str
) -> None:
    range_server.files["s.tsv"] = CONTENT["ST-spotfiles/A1_selection.tsv"]
    url = range_server.url + "s.tsv"
    with pytest.raises(DownloadError, match=rf"checksum mismatch for {re.escape(url)}: {message}"):
        download_file(url, tmp_path / "s.tsv", **expect, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_the_right_git_blob_id_is_accepted(range_server: RangeServer, tmp_path: Path) -> None:
    data = CONTENT["ST-spotfiles/A1_selection.tsv"]
    range_server.files["s.tsv"] = data
    download_file(
        range_server.url + "s.tsv", tmp_path / "s.tsv", git_sha1=git_blob_id(data), **FAST
    )
    assert (tmp_path / "s.tsv").read_bytes() == data


def test_a_missing_file_is_a_404_error_naming_the_url(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.files.update(CONTENT)
    content = {**CONTENT, "ST-cnts/Z9.tsv.gz": b"never served"}
    with pytest.raises(
        DownloadError, match=re.escape(f"{range_server.url}ST-cnts/Z9.tsv.gz") + ".*404"
    ):
        fetch(small_manifest(range_server.url, content), tmp_path, **FAST)
    assert not (tmp_path / "ST-cnts/Z9.tsv.gz").exists()
    assert [p for p, _ in range_server.gets()].count("ST-cnts/Z9.tsv.gz") == 1  # 404 is not retried


def test_a_network_failure_names_the_url(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/a.tsv"
    with pytest.raises(DownloadError, match=rf"network failure fetching {re.escape(url)}: .*"):
        download_file(url, tmp_path / "a.tsv", **FAST)
    assert not (tmp_path / "a.tsv").exists()


def test_a_redirect_to_another_host_drops_the_authorization(
    range_server: RangeServer, tmp_path: Path
) -> None:
    data = payload(3_000, 15)
    range_server.files["a.tsv"] = data

    def moved(handler: http.server.BaseHTTPRequestHandler, path: str) -> bool:
        if path != "moved/a.tsv":
            return False
        handler.send_response(302)  # to "localhost": the same server under another host name
        handler.send_header("Location", f"http://localhost:{range_server.port}/a.tsv")
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return True

    range_server.routes.append(moved)
    headers = {"Authorization": "Bearer secret"}
    url = range_server.url + "moved/a.tsv"
    download_file(url, tmp_path / "a.tsv", sha256=sha(data), headers=headers, **FAST)
    assert (tmp_path / "a.tsv").read_bytes() == data
    assert [(h.path, h.auth) for h in range_server.requests] == [
        ("moved/a.tsv", "Bearer secret"),
        ("a.tsv", None),
    ]


def test_a_network_failure_keeps_the_partial_data_for_the_next_run(
    range_server: RangeServer, tmp_path: Path
) -> None:
    data = payload(40_000, 10)
    range_server.files["a.tsv"] = data
    range_server.cut_after["a.tsv"] = 15_000
    with pytest.raises(DownloadError, match=r"15000 bytes kept in .*a\.tsv\.part, run again"):
        download_file(range_server.url + "a.tsv", tmp_path / "a.tsv", **{**FAST, "retries": 0})
    assert not (tmp_path / "a.tsv").exists()
    assert (tmp_path / "a.tsv.part").read_bytes() == data[:15_000]
    download_file(range_server.url + "a.tsv", tmp_path / "a.tsv", sha256=sha(data), **FAST)
    assert range_server.gets()[-1] == ("a.tsv", "bytes=15000-")
    assert (tmp_path / "a.tsv").read_bytes() == data


# ------------------------------------------------------------------------ tree listing


def listing_manifest(range_server: RangeServer, tree: Mapping[str, object]) -> Manifest:
    range_server.files["tree.json"] = json.dumps(tree).encode()
    return Manifest(
        name="listed",
        base_url=range_server.url + "data/",
        files=(RemoteFile("ST-cnts/A1.tsv.gz", 3, sha(b"abc")),),
        listing=GitTreeListing(
            url=range_server.url + "tree.json?recursive=1",
            prefix="data/",
            pattern=r"ST-imgs/[A-Z]/[A-Z][0-9]+/[^/]+\.jpg",
        ),
    )


def test_listed_files_are_discovered_and_checked_by_git_blob_id(
    range_server: RangeServer, tmp_path: Path
) -> None:
    images = {"ST-imgs/A/A1/x_HE.jpg": payload(900, 11), "ST-imgs/D/D2/y.jpg": payload(700, 12)}
    range_server.files["data/ST-cnts/A1.tsv.gz"] = b"abc"
    range_server.files.update({f"data/{p}": b for p, b in images.items()})
    tree = {
        "truncated": False,
        "tree": [
            {"path": "data", "type": "tree", "sha": "0" * 40},
            *(
                {"path": f"data/{p}", "type": "blob", "size": len(b), "sha": git_blob_id(b)}
                for p, b in images.items()
            ),
            {"path": "data/ST-imgs/A/A1/notes.txt", "type": "blob", "size": 1, "sha": "2" * 40},
            {"path": "res/ST-imgs/A/A1/z.jpg", "type": "blob", "size": 1, "sha": "3" * 40},
        ],
    }
    report = fetch(listing_manifest(range_server, tree), tmp_path, **FAST)
    assert files_under(tmp_path) == {"ST-cnts/A1.tsv.gz": b"abc", **images}
    assert sorted(report.downloaded) == sorted(["ST-cnts/A1.tsv.gz", *images])


def test_a_listed_file_with_another_blob_id_is_rejected(
    range_server: RangeServer, tmp_path: Path
) -> None:
    range_server.files["data/ST-cnts/A1.tsv.gz"] = b"abc"
    range_server.files["data/ST-imgs/A/A1/x.jpg"] = b"tampered"
    tree = {
        "tree": [{"path": "data/ST-imgs/A/A1/x.jpg", "type": "blob", "size": 8, "sha": "4" * 40}]
    }
    with pytest.raises(DownloadError, match=r"x\.jpg: git blob id [0-9a-f]{40}, expected 4{40}"):
        fetch(listing_manifest(range_server, tree), tmp_path, **FAST)
    assert not (tmp_path / "ST-imgs/A/A1/x.jpg").exists()


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (None, r"HTTP 404.*manual step: clone the repository"),
        ({"tree": [], "truncated": True}, r"truncated listing; manual step"),
        ({"tree": []}, r"lists no file matching .*; manual step"),
        ({"nodes": []}, r"is not a git tree listing; manual step"),
    ],
)
def test_an_unusable_listing_says_the_manual_step(
    range_server: RangeServer, tmp_path: Path, tree: dict[str, object] | None, message: str
) -> None:
    manifest = listing_manifest(range_server, tree or {})
    if tree is None:
        del range_server.files["tree.json"]
    with pytest.raises(DownloadError, match=message):
        fetch(manifest, tmp_path, **FAST)
    assert not any(tmp_path.iterdir())  # the listing is read before any download


def test_a_listing_is_checked_even_when_the_manifest_pins_some_of_its_files(
    range_server: RangeServer, tmp_path: Path
) -> None:
    image = b"pinned image"
    range_server.files["data/ST-imgs/A/A1/x.jpg"] = image
    manifest = listing_manifest(range_server, {"tree": []})
    pinned = Manifest(
        name="listed",
        base_url=manifest.base_url,
        files=(RemoteFile("ST-imgs/A/A1/x.jpg", len(image), sha(image)),),
        listing=manifest.listing,
    )
    with pytest.raises(DownloadError, match=r"lists no file matching"):
        fetch(pinned, tmp_path, **FAST)  # an empty listing is an error, not "nothing new"
    only_pinned = {"path": "data/ST-imgs/A/A1/x.jpg", "type": "blob", "size": 12, "sha": "5" * 40}
    range_server.files["tree.json"] = json.dumps({"tree": [only_pinned]}).encode()
    report = fetch(pinned, tmp_path, **FAST)  # pinned by sha256: the listing's id is unused
    assert report.downloaded == ["ST-imgs/A/A1/x.jpg"]
    assert files_under(tmp_path) == {"ST-imgs/A/A1/x.jpg": image}


def test_a_listing_entry_without_a_blob_id_is_an_error(
    range_server: RangeServer, tmp_path: Path
) -> None:
    entry = {"path": "data/ST-imgs/A/A1/x.jpg", "type": "blob", "size": 3, "sha": "XYZ"}
    with pytest.raises(DownloadError, match=r"entry data/ST-imgs/A/A1/x\.jpg lacks .* blob id"):
        fetch(listing_manifest(range_server, {"tree": [entry]}), tmp_path, **FAST)


# ---------------------------------------------------------------------------- archives

SECTIONS = ("P2_ST_rep1", "P10_ST_rep1")


def cscc_like_members() -> tuple[ArchiveMember, ...]:
    members = []
    for s in SECTIONS:
        members += [
            ArchiveMember(f"{s} counts", rf"GSM[0-9]+_{s}_stdata\.tsv\.gz"),
            ArchiveMember(f"{s} image", rf"GSM[0-9]+_{s}\.jpg", decompress=True),
        ]
    return tuple(members)


def make_tar(members: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink is not None:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return buffer.getvalue()


JPEG = b"\xff\xd8\xff" + payload(5_000, 13)
RAW_MEMBERS = {
    "GSM1_P2_ST_rep1_stdata.tsv.gz": gzip.compress(b"gene\tA\n"),
    "GSM1_P2_ST_rep1.jpg.gz": gzip.compress(JPEG),
    "GSM4_P10_ST_rep1_stdata.tsv.gz": gzip.compress(b"gene\tB\n"),
    "GSM4_P10_ST_rep1.jpg": JPEG[::-1],
    "GSM9_P1_ST_rep1_stdata.tsv.gz": b"not a wanted section",
    "GSE144236_scRNA_counts.txt.gz": b"not a section file",
}


def archive_manifest(range_server: RangeServer) -> Manifest:
    range_server.files["suppl/RAW.tar"] = make_tar(RAW_MEMBERS, symlink="GSM1_P2_ST_rep1.jpg.link")
    return Manifest(
        name="archived",
        base_url=range_server.url + "suppl/",
        archives=(TarArchive("RAW.tar", cscc_like_members()),),
    )


def test_an_archive_is_extracted_flat_keeping_only_wanted_members(
    range_server: RangeServer, tmp_path: Path
) -> None:
    report = fetch(archive_manifest(range_server), tmp_path, **FAST)
    assert files_under(tmp_path) == {
        "GSM1_P2_ST_rep1_stdata.tsv.gz": RAW_MEMBERS["GSM1_P2_ST_rep1_stdata.tsv.gz"],
        "GSM1_P2_ST_rep1.jpg": JPEG,  # gunzipped
        "GSM4_P10_ST_rep1_stdata.tsv.gz": RAW_MEMBERS["GSM4_P10_ST_rep1_stdata.tsv.gz"],
        "GSM4_P10_ST_rep1.jpg": JPEG[::-1],
    }  # the tar itself was removed
    assert report.downloaded == ["RAW.tar"]
    assert report.extracted == [
        "GSM1_P2_ST_rep1_stdata.tsv.gz",
        "GSM1_P2_ST_rep1.jpg",
        "GSM4_P10_ST_rep1_stdata.tsv.gz",
        "GSM4_P10_ST_rep1.jpg",
    ]
    range_server.requests.clear()
    again = fetch(archive_manifest(range_server), tmp_path, **FAST)
    assert range_server.requests == []
    assert again.skipped == ["RAW.tar"]


def test_keep_archives_leaves_the_tar(range_server: RangeServer, tmp_path: Path) -> None:
    manifest = archive_manifest(range_server)
    fetch(manifest, tmp_path, keep_archives=True, **FAST)
    assert (tmp_path / "RAW.tar").read_bytes() == range_server.files["suppl/RAW.tar"]


@pytest.mark.parametrize("name", ["../GSM1_P2_ST_rep1_stdata.tsv.gz", "/tmp/GSM1_x.tsv.gz"])
def test_an_archive_member_leaving_the_folder_is_refused(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "raw" / "RAW.tar"
    archive.parent.mkdir()
    archive.write_bytes(make_tar({name: b"evil"}))
    dest = tmp_path / "raw" / "out"
    with pytest.raises(DownloadError, match=r"unsafe member name"):
        extract_members(archive, dest, cscc_like_members())
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["RAW.tar", "raw"]


def test_an_archive_lacking_a_member_names_it(tmp_path: Path) -> None:
    archive = tmp_path / "RAW.tar"
    members = {k: v for k, v in RAW_MEMBERS.items() if "P10" not in k}
    archive.write_bytes(make_tar(members))
    with pytest.raises(DownloadError, match=r"lacks: P10_ST_rep1 counts, P10_ST_rep1 image$"):
        extract_members(archive, tmp_path / "out", cscc_like_members())


def test_an_unreadable_archive_is_removed(tmp_path: Path) -> None:
    archive = tmp_path / "RAW.tar"
    archive.write_bytes(payload(4_000, 14))
    with pytest.raises(DownloadError, match=r"not a readable tar .*it was removed"):
        extract_members(archive, tmp_path / "out", cscc_like_members())
    assert not archive.exists()


def test_a_corrupt_gzip_member_leaves_no_output(tmp_path: Path) -> None:
    archive = tmp_path / "RAW.tar"
    archive.write_bytes(make_tar({"GSM1_P2_ST_rep1.jpg.gz": gzip.compress(JPEG)[:-9]}))
    with pytest.raises(DownloadError, match=r"GSM1_P2_ST_rep1\.jpg\.gz is not valid gzip"):
        extract_members(archive, tmp_path / "out", cscc_like_members())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# -------------------------------------------------------------------- built-in manifests


def test_builtin_dataset_names_and_unknown_name() -> None:
    assert dataset_names() == ["cscc", "her2st"]
    with pytest.raises(GR2STConfigError, match=r"unknown dataset 'visium'; known: cscc, her2st"):
        get_manifest("visium")


def test_her2st_manifest_covers_the_36_sections() -> None:
    m = get_manifest("her2st")
    assert m.base_url == (
        "https://raw.githubusercontent.com/almaan/her2st/"
        "85df7411b987a7dec3feff9718b869a7a82091ec/data/"
    )
    assert len(HER2ST_SECTIONS) == 36
    assert HER2ST_SECTIONS[:7] == ("A1", "A2", "A3", "A4", "A5", "A6", "B1")
    assert HER2ST_SECTIONS[-7:] == ("F3", "G1", "G2", "G3", "H1", "H2", "H3")
    paths = {f.path for f in m.files}
    assert {f"ST-cnts/{s}.tsv.gz" for s in HER2ST_SECTIONS} < paths
    assert {f"ST-spotfiles/{s}_selection.tsv" for s in HER2ST_SECTIONS} < paths
    images = sorted(p for p in paths if p.startswith("ST-imgs/"))
    assert images == [
        "ST-imgs/B/B4/BT10737_D2_HE.jpg",
        "ST-imgs/C/C2/5714_HE_BT_C2.jpg",
        "ST-imgs/C/C3/5714_HE_BT_D1.jpg",
        "ST-imgs/C/C4/5714_HE_BT_D2.jpg",
        "ST-imgs/C/C5/5714_HE_BT_E1.jpg",
        "ST-imgs/C/C6/5714_HE_BT_E2.jpg",
    ]
    assert len([p for p in paths if p.startswith("ST-pat/lbl/")]) == 10
    assert len(paths) == 88
    assert all(f.size and f.sha256 for f in m.files)
    assert m.listing is not None
    for image in images:
        assert re.fullmatch(m.listing.pattern, image)
    assert not re.fullmatch(m.listing.pattern, "ST-pat/img/A1.jpg")


def test_cscc_manifest_selects_each_section_file_exactly() -> None:
    m = get_manifest("cscc")
    assert m.base_url == "https://ftp.ncbi.nlm.nih.gov/geo/series/GSE144nnn/GSE144240/suppl/"
    (archive,) = m.archives
    assert archive.path == "GSE144240_RAW.tar"
    assert len(CSCC_SECTIONS) == 12
    names = [
        "GSM4284316_P2_ST_rep1_stdata.tsv.gz",
        "GSM4284316_spot_data-selection-P2_ST_rep1.tsv.gz",
        "GSM4284316_P2_ST_rep1.jpg.gz",
        "GSM4284325_P10_ST_rep1.jpg",
        "GSM4284300_P1_ST_rep1_stdata.tsv.gz",
        "sub/GSM4284316_P2_ST_rep1_stdata.tsv.gz",
        "GSE144236_cSCC_counts.txt.gz",
    ]
    hits = {
        n: [(m.label, m.output_name(n)) for m in archive.members if m.output_name(n)] for n in names
    }
    assert hits == {
        names[0]: [("P2_ST_rep1 counts", names[0])],
        names[1]: [("P2_ST_rep1 spot file", names[1])],
        names[2]: [("P2_ST_rep1 image", "GSM4284316_P2_ST_rep1.jpg")],
        names[3]: [("P10_ST_rep1 image", names[3])],
        names[4]: [],
        names[5]: [],
        names[6]: [],
    }


def test_the_cscc_manifest_fetches_a_geo_like_tar_into_the_flat_layout(
    range_server: RangeServer, tmp_path: Path
) -> None:
    expected: dict[str, bytes] = {}
    members: dict[str, bytes] = {"GSE144236_cSCC_counts.txt.gz": b"scRNA, not wanted"}
    for i, s in enumerate(CSCC_SECTIONS):
        gsm = f"GSM{4284316 + i}"
        counts, spots, image = (payload(100 + i, 3 * i + k) for k in range(3))
        members |= {
            f"{gsm}_{s}_stdata.tsv.gz": counts,
            f"{gsm}_spot_data-selection-{s}.tsv.gz": spots,
            f"{gsm}_{s}.jpg.gz": gzip.compress(image),
        }
        expected |= {
            f"{gsm}_{s}_stdata.tsv.gz": counts,
            f"{gsm}_spot_data-selection-{s}.tsv.gz": spots,
            f"{gsm}_{s}.jpg": image,
        }
    range_server.files["geo/GSE144240_RAW.tar"] = make_tar(members)
    report = fetch("cscc", tmp_path, mirror=range_server.url + "geo", **FAST)
    assert files_under(tmp_path) == expected
    assert sorted(report.extracted) == sorted(expected)
    assert range_server.gets() == [("geo/GSE144240_RAW.tar", None)]


def test_manifest_paths_must_stay_inside_the_folder() -> None:
    for bad in ("../x.tsv", "/etc/x", "a/../../x", ""):
        with pytest.raises(GR2STConfigError, match="must be relative"):
            RemoteFile(bad)
    with pytest.raises(GR2STConfigError, match="sha256 must be 64 lowercase hex"):
        RemoteFile("a.tsv", sha256="ABC")


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
@pytest.mark.slow
def test_her2st_manifest_matches_the_real_files(
    her2st_root: Path, range_server: RangeServer, tmp_path: Path
) -> None:
    root = her2st_root.resolve()
    m = get_manifest("her2st")
    local = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert {f.path for f in m.files} <= local
    # Serve the real folder as a mirror: the built-in manifest must fetch it unchanged.
    range_server.root = root
    static = Manifest(name="her2st", base_url=m.base_url, files=m.files)
    report = fetch(static, tmp_path, mirror=range_server.url, **FAST)
    assert len(report.downloaded) == 88
    fetched = files_under(tmp_path)
    assert set(fetched) == {f.path for f in m.files}
    assert all(fetched[p] == (root / p).read_bytes() for p in fetched)
