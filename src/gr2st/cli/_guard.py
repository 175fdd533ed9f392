"""What every writing command checks before long work, and the options that go with it.

Before reading a slide or training anything, a command checks its device, that its
output location is writable with room for the expected outputs, that an existing
output is replaced only with ``--overwrite``, and takes the output's lock (``--wait``
seconds for another run using it, else a one-line refusal naming that run).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import typer

from gr2st._utils.lock import hold_lock, lock_folder
from gr2st._utils.preflight import check_writable
from gr2st.errors import GR2STConfigError

OVERWRITE_HELP = "Replace an existing output (default: refuse)."
WAIT_HELP = (
    "Seconds to wait when another gr2st run is using the same output (default 0: stop "
    "at once with a message naming it)."
)


def overwrite_option() -> bool:
    """The ``--overwrite`` option."""
    return typer.Option(False, "--overwrite", help=OVERWRITE_HELP)


def wait_option() -> float:
    """The ``--wait SECONDS`` option."""
    return typer.Option(0.0, "--wait", min=0.0, metavar="SECONDS", help=WAIT_HELP)


def refuse_existing(path: Path, *, overwrite: bool, what: str = "--out") -> None:
    """Refuse to replace an existing ``path`` unless ``overwrite``.

    Examples
    --------
    >>> import tempfile
    >>> refuse_existing(Path(tempfile.mkdtemp()), overwrite=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STConfigError: --out ...: already exists; pass --overwrite to replace it
    """
    if path.exists() and not overwrite:
        raise GR2STConfigError(f"{what} {path}: already exists; pass --overwrite to replace it")


@contextlib.contextmanager
def locked_output(path: Path, *, wait: float, folder: bool = False) -> Iterator[None]:
    """Hold the lock of an output: ``path/.gr2st.lock`` for a folder that holds a run's
    files (``folder=True``), else ``.<name>.lock`` next to a file or bundle (which is
    replaced as a whole)."""
    if folder:
        with lock_folder(path, what=f"--out {path}", wait=wait, on_wait=say):
            yield
    else:
        lock = path.parent / f".{path.name}.lock"
        with hold_lock(lock, what=f"--out {path}", wait=wait, on_wait=say):
            yield


def say(line: str) -> None:
    """Print a line on stderr (what a waiting run says)."""
    typer.echo(line, err=True)


def prepare_output(
    path: Path, *, overwrite: bool, need_bytes: int = 0, folder: bool = False
) -> Path:
    """Check an output file or bundle folder before long work: writable, room, overwrite.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "pred.h5ad"
    >>> prepare_output(out, overwrite=False, need_bytes=1000) == out
    True
    """
    target = check_writable(path, need_bytes=need_bytes, folder=folder)
    refuse_existing(target, overwrite=overwrite)
    return target


def missing_bytes(paths: Sequence[tuple[Path, int]]) -> int:
    """Bytes still to write for ``(path, size)`` pairs (files of the right size count 0).

    Examples
    --------
    >>> missing_bytes([(Path("/nonexistent"), 10)])
    10
    """
    total = 0
    for path, size in paths:
        try:
            have = os.stat(path).st_size
        except OSError:
            have = 0
        total += 0 if have == size else size
    return total
