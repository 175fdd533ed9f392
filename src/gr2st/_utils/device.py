"""The one place a device string becomes a device: ``--device`` checked and resolved."""

from __future__ import annotations

import re

import torch

from gr2st.errors import GR2STConfigError

#: What ``--device`` accepts.
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda)(:\d+)?$")


def check_device(device: str | None) -> str:
    """Return ``device`` if this machine has it, else raise a one-line error.

    Accepts ``auto`` (None), ``cpu``, ``cuda``, ``cuda:N`` and ``mps``; CUDA needs a
    CUDA build of torch and a visible device, ``cuda:N`` that many devices.

    Raises
    ------
    GR2STConfigError
        An unknown device name, or a device this machine lacks.

    Examples
    --------
    >>> check_device("cpu")
    'cpu'
    >>> check_device("tpu")
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STConfigError: device 'tpu' is not one of auto, cpu, cuda, cuda:N, mps
    """
    if device is None:
        return "auto"
    match = _DEVICE.match(str(device))
    if match is None or (match.group(2) and match.group(1) in ("auto", "mps")):
        raise GR2STConfigError(f"device {str(device)!r} is not one of {DEVICE_CHOICES}")
    kind = match.group(1)
    if kind == "cuda":
        if torch.version.cuda is None:
            raise GR2STConfigError(
                f"device {device!r}: this torch ({torch.__version__}) is built without CUDA; "
                "use cpu or auto (or install a CUDA build of torch)"
            )
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise GR2STConfigError(
                f"device {device!r}: no CUDA device is visible (driver or CUDA_VISIBLE_DEVICES); "
                "use cpu or auto"
            )
        index = int(match.group(2)[1:]) if match.group(2) else 0
        if index >= count:
            raise GR2STConfigError(
                f"device {device!r}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})"
            )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise GR2STConfigError(f"device {device!r}: Apple's MPS is not available here; use cpu")
    return str(device)


def resolve_device(device: str | None = None) -> torch.device:
    """``"auto"``/None → CUDA when present, else CPU; any other name is checked first.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if check_device(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(device))
