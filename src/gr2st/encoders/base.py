"""The encoder interface (the name → encoder registry is :mod:`gr2st.encoders.registry`).

An encoder turns a batch of RGB patches (``uint8``, ``(B, H, W, 3)``) into one frozen
feature vector per patch (``float32``, ``(B, dim)``). It resizes the patches to its own
input size and normalises them the way its weights were trained, so callers only ever
hand it raw pixels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gr2st.errors import GR2STDataError


class Encoder(ABC):
    """A frozen patch encoder.

    Attributes
    ----------
    name
        Short name, safe as an ``obsm`` key suffix (``feature_key(name)``).
    dim
        Length of one feature vector.
    input_size
        Side in pixels the patches are resized to before the network.
    context
        Side of the patch it is handed, as a multiple of the spot patch (above 1 for
        encoders that look at the spot's surroundings too).
    """

    def read_px(self, size_px: int) -> int:
        """Side of the patch to read for a spot patch of ``size_px``."""
        return size_px if self.context == 1 else round(size_px * self.context)

    name: str
    dim: int
    input_size: int
    #: Side of the patch the encoder reads, as a multiple of the spot patch's side.
    context: float = 1.0

    @property
    @abstractmethod
    def weights_hash(self) -> str:
        """Hex sha256 identifying the weights (part of every feature cache key)."""

    @abstractmethod
    def _encode(self, batch: np.ndarray) -> np.ndarray:
        """Encode a validated ``uint8`` ``(B, H, W, 3)`` batch to ``float32`` ``(B, dim)``."""

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """Return one ``float32`` feature vector per patch.

        Parameters
        ----------
        batch
            ``uint8`` array of shape ``(B, H, W, 3)`` (RGB); any ``H, W``.

        Returns
        -------
        numpy.ndarray
            ``float32`` array of shape ``(B, dim)``.

        Examples
        --------
        >>> import numpy as np
        >>> from gr2st.encoders import get_encoder
        >>> enc = get_encoder("efficientnet-lite0", backend="torch")
        >>> enc.encode(np.zeros((2, 224, 224, 3), np.uint8)).shape
        (2, 1280)
        """
        batch = np.asarray(batch)
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise GR2STDataError(
                f"encoder {self.name!r}: expected a uint8 batch of shape (B, H, W, 3), "
                f"got {batch.dtype} {batch.shape}"
            )
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        out = self._encode(batch)
        return np.ascontiguousarray(out, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """Everything that determines the features; used as part of cache keys."""
        return {
            "encoder": self.name,
            "dim": self.dim,
            "input_size": self.input_size,
            "weights": self.weights_hash,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


def to_float_nchw(batch: np.ndarray, size: int) -> torch.Tensor:
    """``uint8`` ``(B, H, W, 3)`` → ``float32`` ``(B, 3, size, size)`` in 0..255.

    The result is a channels-last view (no copy when no resize is needed), which is the
    fast memory layout of PyTorch's CPU convolutions. Resizing is bilinear with
    anti-aliasing, like PIL's.
    """
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        x = x.clamp_(0.0, 255.0).contiguous(memory_format=torch.channels_last)
    return x
