"""What a bug report needs: gr2st's version and those of Python, torch and key libraries."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from gr2st import __version__

__all__ = ["version_report"]

# Distributions reported after torch; None when not installed. scanpy and the extras
# are optional, so "not installed" is an answer, not an error.
_LIBRARIES = (
    "numpy",
    "anndata",
    "scanpy",
    "torch_geometric",
    "onnxruntime",
    "openslide-python",
    "transformers",
)


def _dist_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _torch_line() -> str:
    try:
        import torch
    except ImportError as err:  # a broken torch install is exactly what to report
        return f"torch: cannot import ({' '.join(str(err).split())})"
    if torch.version.cuda is None:
        cuda = "CPU-only build"
    elif torch.cuda.is_available():
        cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s) available"
    else:
        cuda = f"built for CUDA {torch.version.cuda}, no device available"
    return f"torch: {torch.__version__} ({cuda})"


def version_report() -> str:
    """Lines of ``name: version`` for gr2st, Python, torch (with CUDA) and key libraries.

    This is what ``gr2st --version`` prints.

    Examples
    --------
    >>> print(version_report())  # doctest: +ELLIPSIS
    gr2st ...
    python: 3...
    torch: ...
    numpy: ...
    """
    lines = [
        f"gr2st {__version__}",
        f"python: {platform.python_version()} ({platform.python_implementation()}, "
        f"{platform.platform(terse=True)})",
        _torch_line(),
    ]
    lines += [f"{name}: {_dist_version(name)}" for name in _LIBRARIES]
    return "\n".join(lines)
