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
