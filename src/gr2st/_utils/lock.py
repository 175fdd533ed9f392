"""Lock files that keep two gr2st runs out of the same output folder or cache entry.

A lock is a small file (``.gr2st.lock`` inside an output folder, ``<entry>.lock`` next
to a cache entry) that names its holder (pid, host, start time, command) and carries an
advisory OS lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows). The OS drops
that lock when the holder exits, however it exits (``kill -9`` included), so a lock
file left behind by a dead process on this host is simply taken over. A file that
names a process on another host is respected (its liveness cannot be checked from
here, and some network file systems do not share OS locks between hosts): the message
says which file to delete once that run is known to be gone.

Locks are re-entrant within a process: a function holding an output folder may call
another that locks the same folder.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gr2st.errors import GR2STLockedError

log = logging.getLogger(__name__)

#: Name of the lock file inside a locked folder.
LOCK_NAME = ".gr2st.lock"
_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock, as written in its file."""

    pid: int
    host: str
    since: str
    command: str

    def describe(self) -> str:
        """``pid 123 on host h since 2026-01-01 10:00:00 (gr2st benchmark …)``."""
        command = f" ({self.command})" if self.command else ""
        return f"pid {self.pid} on host {self.host} since {self.since}{command}"

    @property
    def here(self) -> bool:
        return self.host == socket.gethostname()


class _Held:
    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self.count = 1


_HELD: dict[Path, _Held] = {}
_REGISTRY = threading.Lock()


def _try_lock(fd: int) -> None:
    """Take the OS lock or raise ``BlockingIOError`` when another process has it."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as err:
            raise BlockingIOError(str(err)) from err
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host.

    Examples
    --------
    >>> pid_alive(os.getpid())
    True
    """
    if pid <= 0:
        return False
    if sys.platform == "win32":  # pragma: no cover - os.kill would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def read_holder(path: str | os.PathLike[str]) -> Holder | None:
    """The holder named in a lock file (None when absent, empty or unreadable)."""
    try:
        info: Any = json.loads(Path(path).read_text(encoding="utf-8"))
        return Holder(
            pid=int(info["pid"]),
            host=str(info["host"]),
            since=str(info.get("since", "?")),
            command=str(info.get("command", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _payload() -> bytes:
    since = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
    command = " ".join(["gr2st", *sys.argv[1:]])[:300]
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": since, "command": command}
    return (json.dumps(info) + "\n").encode()


def _busy(path: Path, what: str, holder: Holder | None, wait: float | None) -> GR2STLockedError:
    who = holder.describe() if holder is not None else "another process"
    waited = f" (waited {wait:g} s)" if wait else ""
    hint = "pass --wait SECONDS to wait for it" if not wait else "wait longer with --wait"
    if holder is not None and not holder.here:
        hint += f", or delete {path} if that run is gone"
    return GR2STLockedError(f"{what} is in use by {who}{waited}; {hint}")


@contextmanager
def hold_lock(
    path: str | os.PathLike[str],
    *,
    what: str,
    wait: float | None = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Hold the lock file ``path`` for the duration of the ``with`` block.

    Parameters
    ----------
    path
        The lock file (created, with its folder, when missing; removed on release).
    what
        What it protects, for messages (``"output folder results/x"``).
    wait
        Seconds to wait for another holder (0: fail at once; None: wait as long as it
        takes).
    on_wait
        Called once with a line saying whom this run waits for (default: a log warning).

    Raises
    ------
    GR2STLockedError
        Another live process holds the lock after ``wait`` seconds.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> lock = pathlib.Path(tempfile.mkdtemp()) / LOCK_NAME
    >>> with hold_lock(lock, what="demo"):
    ...     read_holder(lock).pid == os.getpid()
    True
    >>> lock.exists()
    False
    """
    lock = Path(path).absolute()
    with _REGISTRY:
        held = _HELD.get(lock)
        if held is not None:
            held.count += 1
    if held is not None:
        try:
            yield lock
        finally:
            with _REGISTRY:
                held.count -= 1
        return
    fd = _acquire(lock, what=what, wait=wait, on_wait=on_wait)
    entry = _Held(fd, lock)
    with _REGISTRY:
        _HELD[lock] = entry
    try:
        yield lock
    finally:
        with _REGISTRY:
            entry.count -= 1
            release = entry.count == 0
            if release:
                del _HELD[lock]
        if release:
            _release(entry)


def _acquire(
    lock: Path, *, what: str, wait: float | None, on_wait: Callable[[str], None] | None
) -> int:
    lock.parent.mkdir(parents=True, exist_ok=True)
    deadline = None if wait is None else time.monotonic() + max(0.0, wait)
    announced = False
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _try_lock(fd)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(lock)
        except OSError as err:  # a file system without locks: the file's content decides
            os.close(fd)
            log.debug("cannot lock %s (%s); relying on its content", lock, err)
            holder = read_holder(lock)
            if holder is None or (holder.here and not pid_alive(holder.pid)):
                return _claim(lock, None, holder)
        else:
            # Someone may have removed the file between our open and our lock: retry on
            # the file that is there now, or two runs would lock two different files.
            if _same_file(fd, lock):
                holder = read_holder(lock)
                if holder is None or holder.here or holder.pid == os.getpid():
                    return _claim(lock, fd, holder)
                # The OS lock is free but the file names a run on another host: some
                # network file systems do not share OS locks, so trust the file.
            _unlock(fd)
            os.close(fd)
            if not _exists(lock):
                continue
        if deadline is not None and time.monotonic() >= deadline:
            raise _busy(lock, what, holder, wait)
        if not announced:
            who = holder.describe() if holder is not None else "another process"
            line = f"{what} is in use by {who}; waiting" + (
                "" if wait is None else f" up to {wait:g} s"
            )
            (on_wait or log.warning)(line)
            announced = True
        time.sleep(_POLL_SECONDS)


def _exists(path: Path) -> bool:
    return path.exists()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _claim(lock: Path, fd: int | None, previous: Holder | None) -> int:
    """Write our name into the lock file (taking over a dead holder's) and return its fd."""
    if previous is not None and previous.pid != os.getpid():
        log.warning(
            "%s: taking over the lock of pid %d on %s, which is no longer running",
            lock,
            previous.pid,
            previous.host,
        )
    if fd is None:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    payload = _payload()
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, payload)
    return fd


def _release(entry: _Held) -> None:
    # Remove the file first (while still locked), so a waiter never reads a stale name.
    with suppress(OSError):
        if _same_file(entry.fd, entry.path):
            entry.path.unlink()
    with suppress(OSError):
        _unlock(entry.fd)
    os.close(entry.fd)


@contextmanager
def lock_folder(
    folder: str | os.PathLike[str],
    *,
    what: str | None = None,
    wait: float | None = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Hold ``folder/.gr2st.lock``.

    The folder is created when missing, and removed again on release when it is still
    empty then (a run that failed before writing anything leaves no folder behind).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> new = pathlib.Path(tempfile.mkdtemp()) / "out"
    >>> with lock_folder(new) as lock:
    ...     lock.name
    '.gr2st.lock'
    >>> new.exists()
    False
    """
    root = Path(folder)
    created = not root.exists()
    try:
        with hold_lock(
            root / LOCK_NAME, what=what or f"folder {root}", wait=wait, on_wait=on_wait
        ) as path:
            yield path
    finally:
        if created:
            with suppress(OSError):  # not empty, or already gone: leave it
                root.rmdir()
