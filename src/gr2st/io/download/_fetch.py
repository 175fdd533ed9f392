"""Fetch a whole manifest: tree listing, plan line, files, archives, report."""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import requests
from tqdm import tqdm

from gr2st.errors import GR2STConfigError
from gr2st.io.download._archive import extract_members, has_output
from gr2st.io.download._manifest import (
    DownloadError,
    GitTreeListing,
    Manifest,
    RemoteFile,
    is_current,
    is_git_sha1,
)
from gr2st.io.download._registry import get_manifest
from gr2st.io.download._transfer import USER_AGENT, download_file, root_cause

__all__ = ["FetchReport", "fetch", "plan_line"]


@dataclass
class FetchReport:
    """What :func:`fetch` did.

    Attributes
    ----------
    dataset
        Name of the manifest fetched.
    dest
        Absolute destination folder (the ``--data`` argument of ``gr2st benchmark``).
    downloaded
        Relative paths downloaded now (archives included).
    skipped
        Relative paths (or archive paths) already present and correct.
    extracted
        File names written from archives.
    bytes_downloaded
        Bytes received over the network.
    """

    dataset: str
    dest: Path
    downloaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0


def _get_json(url: str, *, timeout_s: float) -> Any:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/vnd.github+json"}
    try:
        response = requests.get(url, headers=headers, timeout=timeout_s)
        response.raise_for_status()
        return response.json()
    except requests.HTTPError as err:
        status = err.response.status_code if err.response is not None else 0
        reason = err.response.reason if err.response is not None else ""
        raise DownloadError(f"{url} failed: HTTP {status} {reason}") from None
    except ValueError as err:  # requests' JSONDecodeError is a ValueError
        raise DownloadError(f"{url} did not return JSON ({err})") from None
    except requests.RequestException as err:
        cause = " ".join(str(root_cause(err)).split())
        raise DownloadError(f"network failure fetching {url}: {cause}") from None


def _listed_files(
    listing: GitTreeListing, *, url: str, known: Iterable[str], timeout_s: float
) -> list[RemoteFile]:
    """Files of a GitHub tree listing that match the listing's pattern and are not known."""
    manual = (
        f"manual step: clone the repository at that commit and copy the files under "
        f"{listing.prefix} (pattern {listing.pattern}) into the destination"
    )
    try:
        tree = _get_json(url, timeout_s=timeout_s)
        if not isinstance(tree, dict) or not isinstance(tree.get("tree"), list):
            raise DownloadError(f"{url} is not a git tree listing")
        if tree.get("truncated"):
            raise DownloadError(f"{url} returned a truncated listing")
    except DownloadError as err:
        raise DownloadError(f"{err}; {manual}") from None
    known = set(known)
    files = []
    matched = 0
    for entry in tree["tree"]:
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str) or entry.get("type") != "blob":
            continue
        relative = path.removeprefix(listing.prefix)
        if relative == path or not re.fullmatch(listing.pattern, relative):
            continue
        matched += 1
        if relative in known:
            continue
        size, sha = entry.get("size"), entry.get("sha")
        if not isinstance(size, int) or not is_git_sha1(sha):
            raise DownloadError(f"{url}: entry {path} lacks an integer size or a git blob id")
        files.append(RemoteFile(relative, size=size, git_sha1=sha))
    if not matched:
        raise DownloadError(f"{url} lists no file matching {listing.pattern}; {manual}")
    return files


def plan_line(name: str, todo: Sequence[RemoteFile], base: str, root: Path) -> str:
    """One line: what is about to be downloaded, from where, into where.

    Examples
    --------
    >>> from pathlib import Path
    >>> plan_line("tiny", [RemoteFile("a", 2**20)], "https://example.org/", Path("/d"))
    'tiny: downloading 1 file (1.0 MiB) from https://example.org/ into /d'
    """
    if not todo:
        return f"{name}: every file is already in {root}"
    size = f"{sum(f.size or 0 for f in todo) / 2**20:.1f} MiB"
    if any(f.size is None for f in todo):
        size = "size unknown" if all(f.size is None for f in todo) else f"at least {size}"
    plural = "s" if len(todo) > 1 else ""
    return f"{name}: downloading {len(todo)} file{plural} ({size}) from {base} into {root}"


def fetch(
    dataset: str | Manifest,
    dest: str | os.PathLike[str],
    *,
    sections: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    mirror: str | None = None,
    listing_url: str | None = None,
    progress: bool = True,
    retries: int = 3,
    retry_wait_s: float = 2.0,
    timeout_s: float = 60.0,
    keep_archives: bool = False,
    headers: dict[str, str] | None = None,
) -> FetchReport:
    """Download a dataset into ``dest`` in the layout its reader expects.

    Parameters
    ----------
    dataset
        A name from :func:`~gr2st.io.download.dataset_names`, or a :class:`Manifest`.
    dest
        Destination folder; created if missing. Files already there with the right
        size and hash are kept; a wrong one is downloaded again.
    sections
        Fetch only these sections of a named dataset (see
        :func:`~gr2st.io.download.get_manifest`).
    log
        Called once, before any transfer, with a line saying how many files (and
        bytes) will be downloaded from where into where.
    mirror
        Base URL to use instead of the manifest's (same relative paths).
    listing_url
        URL of the GitHub tree listing to use instead of the manifest's.
    progress
        Show progress bars (files, then bytes of the current file).
    retries, retry_wait_s, timeout_s, headers
        Network policy, see :class:`~gr2st.io.download.ResumingDownloader`.
    keep_archives
        Keep downloaded archives after extracting them.

    Returns
    -------
    FetchReport
        What was downloaded, skipped and extracted.

    Raises
    ------
    DownloadError
        A file is missing on the server, the network failed, or content does not
        match (see :func:`~gr2st.io.download.download_file` and
        :func:`~gr2st.io.download.extract_members`).
    GR2STConfigError
        ``dataset`` is not a known name.

    Examples
    --------
    >>> report = fetch("cscc", "data/cscc", progress=False)  # doctest: +SKIP
    >>> report.extracted[0]  # doctest: +SKIP
    'GSM4284316_P2_ST_rep1_stdata.tsv.gz'
    """
    if isinstance(dataset, str):
        manifest = get_manifest(dataset, sections=sections)
    elif sections is not None:
        raise GR2STConfigError("fetch: sections applies to a dataset name, not a Manifest")
    else:
        manifest = dataset
    root = Path(dest).expanduser().resolve()
    base = (mirror or manifest.base_url).rstrip("/") + "/"
    files = list(manifest.files)
    if manifest.listing is not None:
        files += _listed_files(
            manifest.listing,
            url=listing_url or manifest.listing.url,
            known=(f.path for f in files),
            timeout_s=timeout_s,
        )
    report = FetchReport(dataset=manifest.name, dest=root)
    options: dict[str, Any] = {
        "progress": progress,
        "retries": retries,
        "retry_wait_s": retry_wait_s,
        "timeout_s": timeout_s,
        "headers": headers,
    }
    todo = [f for f in files if not is_current(root / f.path, f)]
    report.skipped += [f.path for f in files if f not in todo]
    pending = [a for a in manifest.archives if not all(has_output(root, m) for m in a.members)]
    if log is not None:
        archives = [RemoteFile(a.path, a.size) for a in pending]
        log(plan_line(manifest.name, [*todo, *archives], base, root))
    for f in tqdm(todo, desc=manifest.name, unit="file", disable=not progress or not todo):
        report.bytes_downloaded += download_file(
            base + urllib.parse.quote(f.path),
            root / f.path,
            size=f.size,
            sha256=f.sha256,
            git_sha1=f.git_sha1,
            **options,
        )
        report.downloaded.append(f.path)
    for archive in manifest.archives:
        if archive not in pending:
            report.skipped.append(archive.path)
            continue
        local = root / PurePosixPath(archive.path).name
        entry = RemoteFile(archive.path, size=archive.size, sha256=archive.sha256)
        if not is_current(local, entry):
            report.bytes_downloaded += download_file(
                base + urllib.parse.quote(archive.path),
                local,
                size=archive.size,
                sha256=archive.sha256,
                **options,
            )
            report.downloaded.append(archive.path)
        report.extracted += extract_members(local, root, archive.members)
        if not keep_archives:
            local.unlink()
    return report
