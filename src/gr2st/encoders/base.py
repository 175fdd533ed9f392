"""The encoder interface and the name → encoder registry.

An encoder turns a batch of RGB patches (``uint8``, ``(B, H, W, 3)``) into one frozen
feature vector per patch (``float32``, ``(B, dim)``). It resizes the patches to its own
input size and normalises them the way its weights were trained, so callers only ever
hand it raw pixels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gr2st._registry import Registry
from gr2st.errors import GR2STConfigError, GR2STDataError

EncoderFactory = Callable[..., "Encoder"]

#: Encoder factories by name. A name ``"prefix:argument"`` (such as ``"hf:owkin/phikon-v2"``)
#: calls the factory registered as ``prefix`` with ``argument`` as its first argument.
ENCODERS: Registry[EncoderFactory] = Registry("encoder")


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


def get_encoder(name: str, *, device: str = "auto", **options: Any) -> Encoder:
    """Build a registered encoder by name.

    Parameters
    ----------
    name
        A registered name (``"efficientnet-lite0"``, ``"efficientnet-lite1"``,
        ``"efficientnet-lite2"``) or ``"hf:<local dir or hub id>"`` for any
        transformers vision backbone; ``"hf:…?pooling=mean"`` averages the patch
        tokens instead of taking the CLS token; ``"efficientnet-lite0@s4.s6.head"``
        pools and concatenates chosen layers (:mod:`gr2st.encoders.efficientnet`).
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    **options
        Passed to the encoder (e.g. ``backend="onnx"`` for EfficientNet-Lite,
        ``pooling="mean"`` for ``hf:``).

    Examples
    --------
    >>> enc = get_encoder("efficientnet-lite0", backend="torch")
    >>> enc.name, enc.dim, enc.input_size
    ('efficientnet-lite0', 1280, 224)
    """
    if not isinstance(name, str) or not name:
        raise GR2STConfigError(f"encoder name must be a non-empty string, got {name!r}")
    from gr2st.encoders.compose import compose_encoder, is_composed

    if is_composed(name):
        return compose_encoder(name, device=device, **options)
    prefix, sep, argument = name.partition(":")
    if sep:
        factory = ENCODERS.get(prefix)
        return factory(argument, device=device, **options)
    if "@" in name:
        from gr2st.encoders.efficientnet import layered_encoder

        return layered_encoder(name, device=device, **options)
    return ENCODERS.get(name)(device=device, **options)


def list_encoders() -> list[str]:
    """Registered encoder names (a ``prefix`` entry takes ``prefix:<argument>``).

    Examples
    --------
    >>> "efficientnet-lite0" in list_encoders()
    True
    """
    return ENCODERS.names()
