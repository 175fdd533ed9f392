"""Selective, flat extraction of a downloaded tar (the cSCC GEO archive)."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tarfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from gr2st._utils.files import atomic_path
from gr2st.io.download._manifest import CHUNK, ArchiveMember, DownloadError

__all__ = ["extract_members", "has_output"]


def _check_member_name(name: str, archive: Path) -> None:
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:
        raise DownloadError(f"{archive}: unsafe member name {name!r} (leaves the folder)")


def extract_members(
    archive: str | os.PathLike[str], dest: str | os.PathLike[str], members: Sequence[ArchiveMember]
) -> list[str]:
    """Extract the wanted members of a tar file flat into ``dest``.

    Only regular-file members whose whole name matches a wanted pattern are written,
    under a name taken from that pattern match (never a path from the archive), each
    through an atomic rename. Links, folders and other members are ignored; an
    absolute member name or one with ``..`` is refused.

    Returns
    -------
    list[str]
        The written file names, in the order of ``members``.

    Raises
    ------
    DownloadError
        If the archive is unreadable (it is then removed), unsafe, holds a wanted
        member twice, or lacks one.

    Examples
    --------
    >>> extract_members(  # doctest: +SKIP
    ...     "GSE144240_RAW.tar", "data/cscc", get_manifest("cscc").archives[0].members
    ... )[:1]
    ['GSM4284316_P2_ST_rep1_stdata.tsv.gz']
    """
    archive = Path(archive)
    dest = Path(dest)
    found: dict[int, str] = {}
    try:
        with tarfile.open(archive) as tar:
            for info in tar:
                _check_member_name(info.name, archive)
                if not info.isfile():
                    continue
                for index, member in enumerate(members):
                    out = member.output_name(info.name)
                    if out is None:
                        continue
                    if index in found:
                        raise DownloadError(f"{archive}: more than one {member.label} member")
                    _extract_one(tar, info, dest / out, gunzip=out != info.name, archive=archive)
                    found[index] = out
                    break
    except tarfile.TarError as err:
        archive.unlink()
        raise DownloadError(
            f"{archive} is not a readable tar ({' '.join(str(err).split())}); it was removed, "
            "run again to fetch it"
        ) from None
    missing = [m.label for i, m in enumerate(members) if i not in found]
    if missing:
        raise DownloadError(f"{archive} lacks: {', '.join(missing)}")
    return [found[i] for i in sorted(found)]


def _extract_one(
    tar: tarfile.TarFile, info: tarfile.TarInfo, out: Path, *, gunzip: bool, archive: Path
) -> None:
    source = tar.extractfile(info)
    if source is None:
        raise DownloadError(f"{archive}: member {info.name} has no content")
    try:
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            shutil.copyfileobj(gzip.GzipFile(fileobj=source) if gunzip else source, fh, CHUNK)
    except (gzip.BadGzipFile, EOFError) as err:
        raise DownloadError(f"{archive}: member {info.name} is not valid gzip ({err})") from None


def has_output(dest: Path, member: ArchiveMember) -> bool:
    """Whether ``dest`` already holds a file extracted for ``member``."""
    return dest.is_dir() and any(
        p.is_file() and re.fullmatch(member.pattern, p.name) for p in dest.iterdir()
    )
