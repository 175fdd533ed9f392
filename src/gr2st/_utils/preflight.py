"""Checks made before long work starts: output location, free space, memory.

Every command that writes runs them first, so that a read-only folder, a full disk or
a request that cannot fit in memory is one line at the start rather than a traceback
after an hour of computing. The sizes are estimates (upper-leaning); the refusal
names the path (or the request), what is needed and what is there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

from gr2st.errors import GR2STConfigError

#: Bytes a patch pixel costs while a batch is read and stain-normalised: three uint8
#: batches in flight (caller, queue, worker) plus the normaliser's float32 temporaries
#: (RGB, LAB, centred, mapped, blended: 5 × 3 channels × 4 bytes) and their weights.
PATCH_BYTES_PER_PIXEL = 3 * 3 + 5 * 3 * 4 + 12
#: Fraction of the available memory a single request may take.
MEMORY_SHARE = 0.9


def format_bytes(n: float) -> str:
    """``1.2 GB``-style size (decimal units).

    Examples
    --------
    >>> format_bytes(1234), format_bytes(5.2e9), format_bytes(3e13)
    ('1.2 kB', '5.2 GB', '30.0 TB')
    """
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def check_writable(
    path: str | os.PathLike[str],
    *,
    what: str = "--out",
    need_bytes: int = 0,
    folder: bool = True,
) -> Path:
    """Refuse (one line) unless ``path`` can be created or written with ``need_bytes`` free.

    Parameters
    ----------
    path
        The output folder (``folder=True``) or file to be written; it need not exist.
    what
        The option naming it, for the message.
    need_bytes
        Estimated size of what will be written there.
    folder
        Whether ``path`` is a folder (else a file).

    Returns
    -------
    pathlib.Path
        ``path``, with ``~`` expanded.

    Raises
    ------
    GR2STConfigError
        The path is the wrong kind (a file where a folder is expected, or the other way
        round), cannot be written, or its file system has less than ``need_bytes`` free.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> check_writable(d / "new" / "out", need_bytes=10) == d / "new" / "out"
    True
    >>> check_writable(d, need_bytes=10**18)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STConfigError: --out ...: not enough free space: about 1000000.0 TB needed, ...
    """
    target = Path(path).expanduser()
    if target.exists():
        if folder and not target.is_dir():
            raise GR2STConfigError(f"{what} {target}: exists and is not a folder")
        if not folder and target.is_dir():
            raise GR2STConfigError(f"{what} {target}: is a folder; expected a file name")
    anchor = _existing_ancestor(target if folder else target.parent)
    if not anchor.is_dir():
        raise GR2STConfigError(f"{what} {target}: {anchor} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gr2st-probe-", dir=anchor)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise GR2STConfigError(f"{what} {target}: cannot write in {anchor} ({reason})") from None
    free = shutil.disk_usage(anchor).free
    if need_bytes > free:
        raise GR2STConfigError(
            f"{what} {target}: not enough free space: about {format_bytes(need_bytes)} needed, "
            f"{format_bytes(free)} free ({need_bytes:,} vs {free:,} bytes); free some space "
            "or choose another location"
        )
    return target


def _read_int(path: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(Path(path).read_text().split()[0])
    return None


def available_memory() -> int | None:
    """Bytes of memory this process can still take, or None when unknown.

    Linux: ``MemAvailable`` of ``/proc/meminfo``, capped by the cgroup's limit (a
    container's memory limit) minus its usage. Elsewhere: psutil's figure when psutil is
    installed.
    """
    if sys.platform.startswith("linux"):
        available = None
        with contextlib.suppress(OSError, ValueError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
        for limit_file, usage_file in (
            ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/memory.usage_in_bytes",
            ),
        ):
            limit, usage = _read_int(limit_file), _read_int(usage_file)
            if limit is not None and usage is not None and limit < 1 << 60:
                room = max(0, limit - usage)
                available = room if available is None else min(available, room)
                break
        return available
    with contextlib.suppress(ImportError):
        import psutil

        return int(psutil.virtual_memory().available)
    return None


def check_memory(need_bytes: float, *, what: str, hint: str = "") -> None:
    """Refuse (one line) when ``need_bytes`` exceeds the memory available now.

    Examples
    --------
    >>> check_memory(1000, what="a tiny request")
    >>> check_memory(1e18, what="a huge request")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STConfigError: a huge request would take about 1000000.0 TB of memory; ...
    """
    available = available_memory()
    if available is None or need_bytes <= MEMORY_SHARE * available:
        return
    raise GR2STConfigError(
        f"{what} would take about {format_bytes(need_bytes)} of memory; "
        f"{format_bytes(available)} is available" + (f"; {hint}" if hint else "")
    )


def patch_memory(size_px: int, batch_size: int, *, out_px: int | None = None) -> int:
    """Peak bytes of reading and stain-normalising patches in batches.

    Examples
    --------
    >>> format_bytes(patch_memory(224, 32))
    '130.1 MB'
    """
    side = max(size_px, out_px or size_px)
    return int(batch_size) * side * side * PATCH_BYTES_PER_PIXEL


def check_patch_memory(size_px: int, batch_size: int, *, out_px: int | None = None) -> None:
    """Refuse a patch size × batch size whose batches cannot fit in memory.

    Examples
    --------
    >>> check_patch_memory(224, 32)
    >>> check_patch_memory(100_000, 32)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STConfigError: patches of 100000 px in batches of 32 would take about ...
    """
    check_memory(
        patch_memory(size_px, batch_size, out_px=out_px),
        what=f"patches of {size_px} px in batches of {batch_size}",
        hint="lower --size or --batch-size",
    )
