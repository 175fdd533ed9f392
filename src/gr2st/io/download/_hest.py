"""HEST-1k samples from the Hugging Face hub, through ``huggingface_hub``.

The hub client owns the endpoint (``$HF_ENDPOINT``), the token (``$HF_TOKEN`` or
``hf auth login``; it is not sent to the storage host a download redirects to),
retries and the resumption of a transfer cut mid-way. gr2st adds the per-sample file
list, the check of every file against the size and hash the hub lists (sha256 of LFS
files, git blob id of small ones), and the final layout: a file reaches its final
name only once it matched.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tqdm import tqdm

from gr2st._utils.optional import require
from gr2st.errors import GR2STConfigError
from gr2st.io.download._fetch import FetchReport, plan_line
from gr2st.io.download._manifest import DownloadError, RemoteFile, is_current, mismatch
from gr2st.io.download._registry import HEST_FILES, HEST_PATCHES, HEST_REPO

__all__ = ["HubManifest", "fetch_hest", "hest_manifest"]

_HEST_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: Where hub downloads land before their check (inside the destination: same volume).
STAGING: Final = ".gr2st-download"


@dataclass(frozen=True)
class HubManifest:
    """Files of a Hugging Face dataset at one revision, with their sizes and hashes.

    Parameters
    ----------
    name
        Dataset name for messages (``"hest"``).
    repo_id
        Hub dataset, e.g. ``"MahmoodLab/hest"``.
    revision
        Branch, tag or commit.
    endpoint
        Hub URL, e.g. https://huggingface.co.
    files
        The files, each with its size and a sha256 (LFS files) or git blob id.

    Examples
    --------
    >>> files = (RemoteFile("st/A.h5ad"),)
    >>> HubManifest("hest", "MahmoodLab/hest", "main", "https://huggingface.co", files).url
    'https://huggingface.co/datasets/MahmoodLab/hest'
    """

    name: str
    repo_id: str
    revision: str
    endpoint: str
    files: tuple[RemoteFile, ...]

    @property
    def url(self) -> str:
        """The dataset's page on the hub."""
        return f"{self.endpoint.rstrip('/')}/datasets/{self.repo_id}"


def _hub() -> Any:
    return require("huggingface_hub", feature="Fetching HEST-1k", extra="hest")


@contextmanager
def _hub_errors(what: str) -> Iterator[None]:
    """Turn a huggingface_hub failure on ``what`` (a URL) into a one-line DownloadError.

    The client raises its own HTTP errors and its HTTP library's transport errors
    (which differ between huggingface_hub versions); programming errors pass through.
    """
    try:
        yield
    except (TypeError, AttributeError, AssertionError):
        raise
    except Exception as err:
        response = getattr(err, "response", None)
        status = getattr(response, "status_code", None)
        if status in (401, 403):
            raise DownloadError(
                f"{what} refused access (HTTP {status}): {HEST_REPO} is gated; accept its "
                f"terms at https://huggingface.co/datasets/{HEST_REPO} and set HF_TOKEN to a "
                "read token (or run `hf auth login`)"
            ) from None
        if status == 404:
            raise DownloadError(f"{what} was not found (HTTP 404)") from None
        if isinstance(status, int):
            raise DownloadError(f"{what} failed: HTTP {status}") from None
        text = " ".join(str(err).split()) or type(err).__name__
        raise DownloadError(f"network failure fetching {what}: {text}") from None


def hest_manifest(
    ids: Sequence[str],
    *,
    patches: bool = False,
    revision: str = "main",
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> HubManifest:
    """The files of HEST-1k samples ``ids`` with their sizes and hashes, from the hub.

    One ``paths-info`` request (:meth:`huggingface_hub.HfApi.get_paths_info`) gives,
    per file, its size and the sha256 of its content (LFS files) or its git blob id.

    Parameters
    ----------
    ids
        Sample ids, e.g. ``["TENX95", "NCBI783"]`` (the ``id`` column of the hub's
        ``HEST_v1_1_0.csv``).
    patches
        Also fetch ``patches/<id>.h5`` (HEST's own patches; gr2st does not need them).
    revision
        Branch, tag or commit of the dataset.
    endpoint
        Hub URL (default ``$HF_ENDPOINT``, else https://huggingface.co); a mirror of the
        hub, or a local server in tests.
    token
        Hugging Face token; None: huggingface_hub's (``$HF_TOKEN``, else the login).

    Raises
    ------
    GR2STConfigError
        No ids, or an id that cannot be a HEST id.
    DownloadError
        The hub refuses (gated dataset without a token), fails, or lacks a file.
    GR2STDependencyError
        huggingface_hub is not installed (``pip install "gr2st[hest]"``).

    Examples
    --------
    >>> m = hest_manifest(["TENX95"])  # doctest: +SKIP
    >>> [f.path for f in m.files]  # doctest: +SKIP
    ['st/TENX95.h5ad', 'wsis/TENX95.tif', 'metadata/TENX95.json']
    """
    ids = list(dict.fromkeys(i.strip() for i in ids if i.strip()))
    if not ids:
        raise GR2STConfigError("hest: give the sample ids to fetch (--ids TENX95,…)")
    bad = [i for i in ids if not _HEST_ID.fullmatch(i)]
    if bad:
        raise GR2STConfigError(f"hest: {bad} are not HEST sample ids (e.g. TENX95)")
    kinds = {**HEST_FILES, **(HEST_PATCHES if patches else {})}
    paths = [f"{kind}/{i}{suffix}" for i in ids for kind, suffix in kinds.items()]
    hub = _hub()
    api = hub.HfApi(endpoint=endpoint, token=token)
    where = f"{api.endpoint}/api/datasets/{HEST_REPO}/paths-info/{revision}"
    with _hub_errors(where):
        listed = api.get_paths_info(HEST_REPO, paths, repo_type="dataset", revision=revision)
    entries = {e.path: e for e in listed if isinstance(e, hub.hf_api.RepoFile)}
    missing = [p for p in paths if p not in entries]
    if missing:
        raise DownloadError(
            f"{HEST_REPO}@{revision} has no {', '.join(missing[:6])}"
            f"{' …' if len(missing) > 6 else ''}; check the ids against the hub's "
            "HEST_v1_1_0.csv"
        )
    files = []
    for p in paths:
        e = entries[p]
        try:
            if e.lfs is not None:
                files.append(RemoteFile(p, size=int(e.lfs.size), sha256=str(e.lfs.sha256)))
            else:
                files.append(RemoteFile(p, size=int(e.size), git_sha1=str(e.blob_id)))
        except (TypeError, ValueError, GR2STConfigError):
            raise DownloadError(f"{where}: entry {p} lacks a size or a valid hash") from None
    return HubManifest("hest", HEST_REPO, revision, str(api.endpoint), tuple(files))


@contextmanager
def _hub_progress(hub: Any, show: bool) -> Iterator[None]:
    """Turn huggingface_hub's byte progress bars off for the duration when not ``show``."""
    was_off = hub.utils.are_progress_bars_disabled()
    if not show:
        hub.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not show and not was_off:
            hub.utils.enable_progress_bars()


@contextmanager
def _staging(root: Path) -> Iterator[Path]:
    """A folder for unchecked downloads inside ``root``, removed when done or failed."""
    staging = root / STAGING
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_hest(
    manifest: HubManifest,
    dest: str | os.PathLike[str],
    *,
    token: str | bool | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> FetchReport:
    """Download the files of ``manifest`` into ``dest`` with ``huggingface_hub.hf_hub_download``.

    Files already there with the right size and hash are kept without a request.
    Each other file is downloaded into ``dest/.gr2st-download`` (huggingface_hub
    resumes a transfer cut mid-way within the run), checked against the size and hash
    the hub listed, and only then moved to ``dest/<path>``; a file that does not match
    is removed and reported.

    Parameters
    ----------
    manifest
        From :func:`hest_manifest`.
    dest
        Destination folder (the layout :func:`gr2st.io.read_hest` reads).
    token
        Hugging Face token; None: huggingface_hub's (``$HF_TOKEN``, else the login).
    progress
        Show progress bars (files, then bytes of the current file).
    log
        Called once, before any transfer, with the plan line.

    Returns
    -------
    FetchReport
        What was downloaded and skipped.

    Raises
    ------
    DownloadError
        The hub refuses or lacks a file, the network failed, or content does not match.

    Examples
    --------
    >>> report = fetch_hest(hest_manifest(["TENX95"]), "data/hest")  # doctest: +SKIP
    >>> report.downloaded  # doctest: +SKIP
    ['st/TENX95.h5ad', 'wsis/TENX95.tif', 'metadata/TENX95.json']
    """
    hub = _hub()
    root = Path(dest).expanduser().resolve()
    report = FetchReport(dataset=manifest.name, dest=root)
    todo = [f for f in manifest.files if not is_current(root / f.path, f)]
    report.skipped += [f.path for f in manifest.files if f not in todo]
    if log is not None:
        log(plan_line(manifest.name, todo, manifest.url, root))
    if not todo:
        return report
    with _staging(root) as staging, _hub_progress(hub, progress):
        for f in tqdm(todo, desc=manifest.name, unit="file", disable=not progress):
            url = f"{manifest.url}/resolve/{manifest.revision}/{f.path}"
            with _hub_errors(url):
                got = Path(
                    hub.hf_hub_download(
                        manifest.repo_id,
                        f.path,
                        repo_type="dataset",
                        revision=manifest.revision,
                        endpoint=manifest.endpoint,
                        token=token,
                        local_dir=staging,
                    )
                )
            problem = mismatch(got, size=f.size, sha256=f.sha256, git_sha1=f.git_sha1)
            if problem is not None:
                got.unlink()
                raise DownloadError(
                    f"checksum mismatch for {url}: {problem}; the bad download was removed, "
                    "run again to fetch it anew"
                )
            final = root / f.path
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, final)
            report.downloaded.append(f.path)
            report.bytes_downloaded += f.size or 0
    return report
