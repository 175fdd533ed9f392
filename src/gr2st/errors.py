"""Exceptions raised for bad user input."""

from __future__ import annotations


class GR2STError(Exception):
    """Base class of every error gr2st raises on purpose."""


class GR2STDataError(GR2STError, ValueError):
    """Input data is missing, unreadable or malformed.

    The message is one line naming the file (or field) and what was expected.
    """


class GR2STConfigError(GR2STError, ValueError):
    """An option, override or saved bundle is invalid."""


class GR2STDependencyError(GR2STError, ImportError):
    """A feature needs an optional package that is not installed (or does not import).

    The message is one line naming the package and the ``pip install "gr2st[extra]"``
    command that brings it.
    """


class GR2STLockedError(GR2STError, RuntimeError):
    """Another gr2st run holds the output folder or cache entry this run needs.

    The message names the holder (pid, host, start time) and how to wait for it.
    """


class GR2STInterrupted(KeyboardInterrupt):
    """A run stopped on Ctrl-C or SIGTERM (after saving what it could).

    ``signum`` is the signal that stopped it, so the command line can exit with
    ``128 + signum`` as a shell would.
    """

    def __init__(self, message: str = "", *, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum
