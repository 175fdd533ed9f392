"""Optional dependencies: import them where a feature needs them, or say how to get them.

gr2st's core installs what ``gr2st benchmark`` and ``gr2st predict`` need with the default
encoder; other features live behind extras (``pip install "gr2st[wsi]"``). Each such import
goes through :func:`require`, so a missing package is one line naming the extra, not a
traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from gr2st.errors import GR2STDependencyError

__all__ = ["available", "require"]


def available(module: str) -> bool:
    """Whether ``module`` can be found (without importing it).

    Examples
    --------
    >>> available("numpy"), available("surely_not_a_module")
    (True, False)
    """
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a broken entry
        return False


def require(
    module: str, *, feature: str, extra: str | None, package: str | None = None
) -> ModuleType:
    """Import ``module`` for ``feature``, or raise a one-line install instruction.

    Parameters
    ----------
    module
        Importable module name, e.g. ``"openslide"``.
    feature
        What needs it, as the start of a sentence (``"reading .svs slides"``).
    extra
        gr2st extra that installs it, or None for a core dependency (then the hint
        names the package itself).
    package
        Distribution name on PyPI when it differs from ``module``.

    Raises
    ------
    GR2STDependencyError
        The module is not installed, or is installed but fails to import.

    Examples
    --------
    >>> require("json", feature="reading JSON", extra=None).__name__
    'json'
    >>> require("no_such_module", feature="Flying", extra="fly")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STDependencyError: Flying needs the optional package no_such_module; ...
    """
    package = package or module
    hint = f'pip install "gr2st[{extra}]"' if extra else f"pip install {package}"
    installed = available(module)
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if installed:
            reason = " ".join(str(err).split())
            raise GR2STDependencyError(
                f"{feature} needs the package {package}, which is installed but does not "
                f"import ({reason}); reinstall it with {hint}"
            ) from err
        kind = "optional package" if extra else "package"
        raise GR2STDependencyError(
            f"{feature} needs the {kind} {package}; install it with {hint}"
        ) from err
