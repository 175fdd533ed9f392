"""One checked download: pooch places and sha256-checks the file; the transfer resumes.

:func:`download_file` hands a URL to :func:`pooch.retrieve`, which downloads into a
temporary file next to the destination, checks its sha256 and only then renames it.
Pooch has no resume, so its downloader here is :class:`ResumingDownloader`: it streams
with ``requests`` (urllib3's ``read1``, so a cut connection loses no byte received) into
``<file>.part``, continues an existing ``.part`` with an HTTP ``Range`` request,
retries network failures, and checks what pooch cannot (the size, and the git blob id
that GitHub's tree listing gives instead of a sha256).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import pooch
import requests
import urllib3
from tqdm import tqdm

from gr2st import __version__
from gr2st.io.download._manifest import CHUNK, DownloadError, mismatch

__all__ = ["USER_AGENT", "ResumingDownloader", "download_file", "root_cause"]

USER_AGENT: Final = f"gr2st/{__version__} (+https://pypi.org/project/gr2st/)"


def _part_path(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _content_range_start(value: str | None) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", (value or "").strip())
    return int(match.group(1)) if match else None


def root_cause(err: BaseException) -> BaseException:
    """The socket-level error under requests' and urllib3's wrappers (or ``err``)."""
    reason = getattr(err.args[0], "reason", None) if err.args else None
    if isinstance(reason, BaseException):
        err = reason
    context = err.__context__
    return context if isinstance(context, OSError) else err


class _RestartRange(Exception):
    """The server refused the range of a partial file (HTTP 416): start it over."""


class ResumingDownloader:
    """A pooch downloader that continues ``<file>.part`` across attempts and runs.

    Pooch calls it with a temporary output file; it brings ``part`` to the full
    content (resuming from its current length), checks size and git blob id, and
    moves it onto that output file, which pooch then checks by sha256.

    Parameters
    ----------
    part
        The partial file kept between attempts (``<final>.part``).
    size, git_sha1
        Expectations checked on the complete file (None: not checked).
    progress
        Show a byte progress bar.
    retries
        Extra attempts after a network failure or a server error (HTTP 5xx); each
        continues where the previous one stopped.
    retry_wait_s
        Wait before retry ``k`` is ``k * retry_wait_s`` seconds.
    timeout_s
        Socket timeout of one request.
    headers
        Extra request headers (``requests`` drops ``Authorization`` on a redirect to
        another host).

    Examples
    --------
    >>> import pathlib
    >>> d = ResumingDownloader(pathlib.Path("a.tsv.part"), progress=False)
    >>> d.received
    0
    """

    def __init__(
        self,
        part: Path,
        *,
        size: int | None = None,
        git_sha1: str | None = None,
        progress: bool = True,
        retries: int = 3,
        retry_wait_s: float = 2.0,
        timeout_s: float = 60.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.part = part
        self.size = size
        self.git_sha1 = git_sha1
        self.progress = progress
        self.retries = retries
        self.retry_wait_s = retry_wait_s
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        #: Bytes received over the network (excluding a resumed prefix).
        self.received = 0

    def __call__(self, url: str, output_file: str, pooch_instance: Any = None) -> None:
        """Download ``url`` (resuming ``part``) and move the checked content to ``output_file``."""
        attempt = 0
        while True:
            offset = self.part.stat().st_size if self.part.exists() else 0
            if self.size is not None and offset > self.size:
                self.part.unlink()
                offset = 0
            if self.size is not None and offset == self.size:
                break  # complete from an earlier run that stopped before the rename
            try:
                self.received += self._transfer(url, offset)
                break
            except _RestartRange:
                if attempt >= self.retries:
                    raise DownloadError(f"{url} refused the range of {self.part}") from None
                self.part.unlink()
            except requests.HTTPError as err:
                code = err.response.status_code if err.response is not None else 0
                if code == 404:
                    raise DownloadError(f"{url} was not found (HTTP 404)") from None
                if code in (401, 403):
                    raise DownloadError(
                        f"{url} refused access (HTTP {code}); for a gated dataset accept its "
                        "terms and give a token"
                    ) from None
                if code < 500 or attempt >= self.retries:
                    reason = err.response.reason if err.response is not None else ""
                    raise DownloadError(f"{url} failed: HTTP {code} {reason}") from None
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as err:
                cause = root_cause(err)
                # An unknown host name (offline, no DNS) does not come back within seconds.
                if attempt >= self.retries or isinstance(cause, socket.gaierror):
                    kept = self.part.stat().st_size if self.part.exists() else 0
                    resume = (
                        f"; {kept} bytes kept in {self.part}, run again to resume" if kept else ""
                    )
                    text = " ".join(str(cause).split()) or type(cause).__name__
                    raise DownloadError(f"network failure fetching {url}: {text}{resume}") from None
            attempt += 1
            time.sleep(self.retry_wait_s * attempt)
        problem = mismatch(self.part, size=self.size, git_sha1=self.git_sha1)
        if problem is not None:
            self.part.unlink()
            raise DownloadError(_bad(url, problem))
        os.replace(self.part, output_file)

    def _transfer(self, url: str, offset: int) -> int:
        """Stream ``url`` into ``part`` from byte ``offset``; return the bytes received."""
        # identity: a compressed transfer would make byte ranges and lengths meaningless.
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **self.headers}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout_s) as response:
            if response.status_code == 416 and offset:
                raise _RestartRange
            response.raise_for_status()
            if offset and response.status_code == 206:
                start = _content_range_start(response.headers.get("Content-Range"))
                if start != offset:
                    self.part.unlink()
                    raise ConnectionError(f"server answered range start {start}, asked {offset}")
            else:
                offset = 0  # the server sent the whole file: start over
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            received = 0
            with (
                open(self.part, "ab" if offset else "wb") as fh,
                tqdm(
                    total=total,
                    initial=offset,
                    desc=self.part.name[: -len(".part")],
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    leave=False,
                    disable=not self.progress,
                ) as bar,
            ):
                # read1: what has arrived, so a cut connection loses none of it.
                while chunk := response.raw.read1(CHUNK, decode_content=False):
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and offset + received < total:
            raise ConnectionError(f"connection closed after {offset + received} of {total} bytes")
        return received


def _bad(url: str, problem: str) -> str:
    return (
        f"checksum mismatch for {url}: {problem}; the bad download was removed, "
        "run again to fetch it anew"
    )


@contextmanager
def _quiet_pooch() -> Iterator[None]:
    """Silence pooch's per-file INFO lines: :func:`~gr2st.io.download.fetch` prints one plan."""
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def download_file(
    url: str,
    path: str | os.PathLike[str],
    *,
    size: int | None = None,
    sha256: str | None = None,
    git_sha1: str | None = None,
    progress: bool = True,
    retries: int = 3,
    retry_wait_s: float = 2.0,
    timeout_s: float = 60.0,
    headers: dict[str, str] | None = None,
) -> int:
    """Make ``path`` hold the checked content of ``url``, resuming ``<path>.part``.

    A file already at ``path`` with the right size and hashes is kept (nothing is
    requested); a wrong one is downloaded again. The transfer goes through
    ``<path>.part`` (continued with an HTTP ``Range`` request after an interruption,
    in this run or a later one); the file gets its final name only once its size,
    sha256 (checked by pooch) and git blob id match.

    Parameters
    ----------
    url
        Where to download from.
    path
        Final location; its folder is created.
    size, sha256, git_sha1
        Expectations checked on the complete file (None: not checked).
    progress
        Show a byte progress bar.
    retries, retry_wait_s, timeout_s, headers
        Network policy, see :class:`ResumingDownloader`.

    Returns
    -------
    int
        Bytes received over the network (excluding a resumed prefix).

    Raises
    ------
    DownloadError
        On HTTP 404 or another client error, when retries are exhausted, or when the
        content does not match (the bad download is then removed).

    Examples
    --------
    >>> download_file(  # doctest: +SKIP
    ...     "https://example.org/a.tsv", "data/a.tsv", size=12, sha256="…"
    ... )
    12
    """
    final = Path(path).expanduser().resolve()
    if final.is_file():
        if mismatch(final, size=size, sha256=sha256, git_sha1=git_sha1) is None:
            return 0
        final.unlink()  # pooch would keep a file that it has no sha256 to check against
    final.parent.mkdir(parents=True, exist_ok=True)
    downloader = ResumingDownloader(
        _part_path(final),
        size=size,
        git_sha1=git_sha1,
        progress=progress,
        retries=retries,
        retry_wait_s=retry_wait_s,
        timeout_s=timeout_s,
        headers=headers,
    )
    try:
        with _quiet_pooch():
            pooch.retrieve(
                url,
                known_hash=None if sha256 is None else f"sha256:{sha256}",
                fname=final.name,
                path=final.parent,
                downloader=downloader,
            )
    except ValueError:  # pooch: the sha256 differs (it removed the download)
        raise DownloadError(_bad(url, f"sha256 differs, expected {sha256}")) from None
    return downloader.received
