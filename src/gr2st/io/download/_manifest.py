"""What a dataset consists of: files, archive members, a tree listing, and the error type."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from gr2st.errors import GR2STConfigError, GR2STError

__all__ = [
    "ArchiveMember",
    "DownloadError",
    "GitTreeListing",
    "Manifest",
    "RemoteFile",
    "TarArchive",
    "mismatch",
]

CHUNK: Final = 1 << 20
_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
_GIT_SHA1_RE: Final = re.compile(r"[0-9a-f]{40}")


class DownloadError(GR2STError):
    """A file could not be downloaded, or what arrived is not the expected file.

    The message is one line naming the URL (or file) and what went wrong.
    """


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it goes and what it must be.

    Parameters
    ----------
    path
        POSIX path relative to both the destination folder and the base URL.
    size
        Expected size in bytes, or None when unknown.
    sha256
        Expected hex sha256 of the content, or None when unknown.
    git_sha1
        Expected git blob id (sha1 of ``b"blob <size>\\0" + content``), or None.

    Examples
    --------
    >>> RemoteFile("ST-cnts/A1.tsv.gz", size=3).path
    'ST-cnts/A1.tsv.gz'
    """

    path: str
    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None

    def __post_init__(self) -> None:
        check_relative(self.path)
        if self.sha256 is not None and not _SHA256_RE.fullmatch(self.sha256):
            raise GR2STConfigError(f"manifest entry {self.path}: sha256 must be 64 lowercase hex")
        if self.git_sha1 is not None and not _GIT_SHA1_RE.fullmatch(self.git_sha1):
            raise GR2STConfigError(f"manifest entry {self.path}: git_sha1 must be 40 lowercase hex")


def is_git_sha1(value: object) -> bool:
    """Whether ``value`` is a git blob id (40 lowercase hex)."""
    return isinstance(value, str) and _GIT_SHA1_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class ArchiveMember:
    """A file wanted from an archive, matched by its name.

    Parameters
    ----------
    label
        Human-readable name used in error messages, e.g. ``"P2_ST_rep1 counts"``.
    pattern
        Regular expression that the output file name must match in full. Only flat
        member names can match (the pattern is expected to exclude ``/``).
    decompress
        Also accept ``<name>.gz`` members and write them gunzipped as ``<name>``.

    Examples
    --------
    >>> ArchiveMember("image", r"GSM[0-9]+_A\\.jpg", decompress=True).output_name("GSM1_A.jpg.gz")
    'GSM1_A.jpg'
    """

    label: str
    pattern: str
    decompress: bool = False

    def output_name(self, member_name: str) -> str | None:
        """Return the output file name for ``member_name``, or None if it is not wanted."""
        if re.fullmatch(self.pattern, member_name):
            return member_name
        if self.decompress and member_name.endswith(".gz"):
            stem = member_name[: -len(".gz")]
            if re.fullmatch(self.pattern, stem):
                return stem
        return None


@dataclass(frozen=True)
class TarArchive:
    """A tar file whose selected members are extracted flat into the destination.

    Parameters
    ----------
    path
        POSIX path of the archive relative to the base URL; it is downloaded next to
        the extracted files and removed after a successful extraction.
    members
        Every member wanted; each must be found exactly once.
    size, sha256
        Expected size and sha256 of the archive, or None when unknown.
    """

    path: str
    members: tuple[ArchiveMember, ...]
    size: int | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        check_relative(self.path)


@dataclass(frozen=True)
class GitTreeListing:
    """Files of a GitHub repository found from its recursive tree listing at fetch time.

    Parameters
    ----------
    url
        GitHub API URL of ``git/trees/<commit>?recursive=1``.
    prefix
        Repository folder that the base URL points at (stripped from listed paths).
    pattern
        Regular expression that a path relative to ``prefix`` must match in full.
    """

    url: str
    prefix: str
    pattern: str


@dataclass(frozen=True)
class Manifest:
    """What a dataset consists of and where it comes from.

    Parameters
    ----------
    name
        Dataset name as given to :func:`~gr2st.io.download.fetch`.
    base_url
        URL that every relative path of ``files`` and ``archives`` is appended to.
    files
        Files downloaded one by one.
    archives
        Archives downloaded and then partly extracted.
    listing
        Further files discovered from a GitHub tree listing (files already in
        ``files`` take precedence).

    Examples
    --------
    >>> Manifest("tiny", "https://example.org/", files=(RemoteFile("a.tsv"),)).files[0].path
    'a.tsv'
    """

    name: str
    base_url: str
    files: tuple[RemoteFile, ...] = ()
    archives: tuple[TarArchive, ...] = ()
    listing: GitTreeListing | None = None

    def __post_init__(self) -> None:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise GR2STConfigError(f"manifest {self.name}: duplicate file paths")


def check_relative(path: str) -> None:
    """Refuse a manifest path that is absolute or leaves its folder."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\\" in path:
        raise GR2STConfigError(
            f"manifest path {path!r} must be relative and stay inside the folder"
        )


def _hashes(path: Path) -> tuple[str, str]:
    """Hex sha256 and git blob sha1 of a file, in one pass."""
    sha256 = hashlib.sha256()
    git = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            sha256.update(block)
            git.update(block)
    return sha256.hexdigest(), git.hexdigest()


def mismatch(
    path: Path, *, size: int | None, sha256: str | None = None, git_sha1: str | None = None
) -> str | None:
    """Describe how the file at ``path`` differs from the expectations, or None if it matches.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a"
    >>> _ = p.write_bytes(b"abc")
    >>> mismatch(p, size=4)
    'size 3 bytes, expected 4'
    >>> mismatch(p, size=3, git_sha1="f2ba8f84ab5c1bce84a7b441cb1959cfc7093b7f") is None
    True
    """
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"size {actual} bytes, expected {size}"
    if sha256 is None and git_sha1 is None:
        return None
    got_sha256, got_git = _hashes(path)
    if sha256 is not None and got_sha256 != sha256:
        return f"sha256 {got_sha256}, expected {sha256}"
    if git_sha1 is not None and got_git != git_sha1:
        return f"git blob id {got_git}, expected {git_sha1}"
    return None


def is_current(path: Path, f: RemoteFile) -> bool:
    """Whether ``path`` holds ``f`` already (right size and hashes)."""
    return (
        path.is_file() and mismatch(path, size=f.size, sha256=f.sha256, git_sha1=f.git_sha1) is None
    )
