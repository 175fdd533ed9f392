"""Encoders built from other encoders: view averaging, concatenation, a context scale.

Frozen ImageNet features are not invariant to the orientation of tissue, which has none:
averaging the features of the eight flips/rotations of a patch (:class:`ViewAveraged`)
removes that nuisance. Different networks see different things; :class:`Concatenated`
puts their features side by side. A spot's neighbourhood says what tissue it sits in;
:class:`WithContext` adds the features of a larger patch around the spot. All are ordinary
:class:`~gr2st.encoders.Encoder` objects named by what they are made of, so
``get_encoder`` rebuilds them from their name (a bundle stores only that), and the feature
cache keys them by their parts.

Name grammar: ``part[+part…][-ctx<scale>x]``, each ``part`` = ``<encoder>[-tta<views>]``,
e.g. ``efficientnet-lite0-tta8+efficientnet-lite2-tta8-ctx2x``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gr2st._utils.files import sha256_bytes
from gr2st.encoders.base import Encoder
from gr2st.errors import GR2STConfigError

_TTA = re.compile(r"-tta(\d+)$")
_CONTEXT = re.compile(r"-ctx(\d+(?:\.\d+)?)x$")

#: View counts :class:`ViewAveraged` accepts: the identity, the horizontal flip, the
#: four rotations, or all eight symmetries of the square.
VIEW_COUNTS = (1, 2, 4, 8)


def dihedral_views(batch: np.ndarray, views: int) -> list[np.ndarray]:
    """The first ``views`` symmetries of a ``(B, H, W, C)`` batch of square patches.

    Order: identity, horizontal flip, then rotations by 90°, 180°, 270° (with 8: each
    rotation also flipped).

    Examples
    --------
    >>> x = np.arange(4).reshape(1, 2, 2, 1)
    >>> [v[0, :, :, 0].tolist() for v in dihedral_views(x, 2)]
    [[[0, 1], [2, 3]], [[1, 0], [3, 2]]]
    >>> len(dihedral_views(x, 8)), len({v.tobytes() for v in dihedral_views(x, 8)})
    (8, 8)
    """
    if views not in VIEW_COUNTS:
        raise GR2STConfigError(f"views must be one of {VIEW_COUNTS}, got {views!r}")
    if views == 4:
        rotations = [np.rot90(batch, k, axes=(1, 2)) for k in range(4)]
        return [np.ascontiguousarray(v) for v in rotations]
    out = []
    for k in range(4):
        rotated = np.rot90(batch, k, axes=(1, 2))
        out += [rotated, rotated[:, :, ::-1]]
    return [np.ascontiguousarray(v) for v in out[:views]]


class ViewAveraged(Encoder):
    """Mean of an encoder's features over flips and rotations of each patch.

    Parameters
    ----------
    base
        The encoder of each view.
    views
        1, 2, 4 or 8 (all symmetries of the square).

    Examples
    --------
    >>> from gr2st.encoders import get_encoder
    >>> enc = ViewAveraged(get_encoder("efficientnet-lite0", backend="torch"), views=8)
    >>> enc.name, enc.dim
    ('efficientnet-lite0-tta8', 1280)
    >>> patch = np.random.default_rng(0).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
    >>> turned = np.ascontiguousarray(np.rot90(patch, 1, axes=(1, 2)))
    >>> bool(np.allclose(enc.encode(patch), enc.encode(turned), atol=1e-4))
    True
    """

    def __init__(self, base: Encoder, *, views: int = 8) -> None:
        if views not in VIEW_COUNTS:
            raise GR2STConfigError(f"tta: expected one of {VIEW_COUNTS} views, got {views!r}")
        self.base = base
        self.views = views
        self.name = base.name if views == 1 else f"{base.name}-tta{views}"
        self.dim = base.dim
        self.input_size = base.input_size

    @property
    def weights_hash(self) -> str:
        return self.base.weights_hash

    def _encode(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[1] != batch.shape[2]:
            raise GR2STConfigError(
                f"encoder {self.name!r}: view averaging needs square patches, got "
                f"{batch.shape[1]}×{batch.shape[2]}"
            )
        total = np.zeros((len(batch), self.dim), np.float64)
        for view in dihedral_views(batch, self.views):
            total += self.base.encode(view)
        return (total / self.views).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "encoder": self.name, "views": self.views}


class Concatenated(Encoder):
    """Several encoders' features of the same patch, side by side.

    Examples
    --------
    >>> from gr2st.encoders import get_encoder
    >>> a = get_encoder("efficientnet-lite0", backend="torch")
    >>> enc = Concatenated([a, ViewAveraged(a, views=2)])
    >>> enc.name, enc.dim
    ('efficientnet-lite0+efficientnet-lite0-tta2', 2560)
    """

    def __init__(self, parts: Sequence[Encoder]) -> None:
        if len(parts) < 2:
            raise GR2STConfigError("a concatenated encoder needs at least two encoders")
        if any(p.context != 1 for p in parts):
            # All parts see the same patch; a context applies to the whole concatenation.
            raise GR2STConfigError("concatenated encoders must not have their own context")
        self.parts = list(parts)
        self.name = "+".join(p.name for p in self.parts)
        self.dim = sum(p.dim for p in self.parts)
        self.input_size = max(p.input_size for p in self.parts)

    @property
    def weights_hash(self) -> str:
        return sha256_bytes(*(p.weights_hash.encode() for p in self.parts))

    def _encode(self, batch: np.ndarray) -> np.ndarray:
        return np.concatenate([p.encode(batch) for p in self.parts], axis=1)

    def describe(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "dim": self.dim,
            "parts": [p.describe() for p in self.parts],
        }


class WithContext(Encoder):
    """Features of the spot's patch and of a larger patch around it, side by side.

    The encoder is handed the larger patch (``context`` times the spot patch's side: the
    readers in gr2st honour :attr:`~gr2st.encoders.Encoder.context`); the spot's own
    patch is its centre. Both are resized to the base encoder's input, so the context
    half sees the neighbourhood at a coarser scale. The whole patch is stain-normalised
    once, so the centre half can differ slightly from the base encoder's features.

    Examples
    --------
    >>> from gr2st.encoders import get_encoder
    >>> enc = WithContext(get_encoder("efficientnet-lite0", backend="torch"), scale=2)
    >>> enc.name, enc.dim, enc.context
    ('efficientnet-lite0-ctx2x', 2560, 2.0)
    >>> enc.encode(np.zeros((1, 96, 96, 3), np.uint8)).shape
    (1, 2560)
    """

    def __init__(self, base: Encoder, *, scale: float) -> None:
        if not scale > 1:
            raise GR2STConfigError(f"context: expected a scale above 1, got {scale!r}")
        self.base = base
        self.context = float(scale)
        self.name = f"{base.name}-ctx{scale:g}x"
        self.dim = 2 * base.dim
        self.input_size = base.input_size

    @property
    def weights_hash(self) -> str:
        return self.base.weights_hash

    def _encode(self, batch: np.ndarray) -> np.ndarray:
        side = batch.shape[1]
        inner = max(1, round(side / self.context))
        start = (side - inner) // 2
        centre = np.ascontiguousarray(batch[:, start : start + inner, start : start + inner])
        return np.concatenate([self.base.encode(centre), self.base.encode(batch)], axis=1)

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "encoder": self.name, "context": self.context}


def is_composed(name: str) -> bool:
    """Whether ``name`` names a composed encoder (``+``, ``-tta…`` or ``-ctx…x``)."""
    return "+" in name or bool(_TTA.search(name) or _CONTEXT.search(name))


def compose_encoder(name: str, *, build: Callable[[str], Encoder]) -> Encoder:
    """Build the encoder a composed name describes (see the module's grammar).

    ``build`` makes each plain part from its name (:func:`~gr2st.encoders.get_encoder`
    passes itself, with the device and options).

    Examples
    --------
    >>> from gr2st.encoders import get_encoder
    >>> enc = compose_encoder("efficientnet-lite0-tta2+efficientnet-lite0-ctx2x",
    ...                       build=lambda part: get_encoder(part, backend="torch"))
    >>> enc.name, enc.dim
    ('efficientnet-lite0-tta2+efficientnet-lite0-ctx2x', 5120)
    """
    context = _CONTEXT.search(name) if "+" in name else None
    if context is not None:
        inner = compose_encoder(name[: context.start()], build=build)
        return WithContext(inner, scale=float(context.group(1)))
    parts = name.split("+")
    if len(parts) > 1:
        return Concatenated([compose_encoder(p, build=build) for p in parts])
    ctx = _CONTEXT.search(name)
    if ctx is not None:
        inner = compose_encoder(name[: ctx.start()], build=build)
        return WithContext(inner, scale=float(ctx.group(1)))
    tta = _TTA.search(name)
    if tta is not None:
        inner = compose_encoder(name[: tta.start()], build=build)
        return ViewAveraged(inner, views=int(tta.group(1)))
    return build(name)


def encoder_name(
    encoders: str, *, tta: int = 1, context_px: int | None = None, size_px: int
) -> str:
    """The composed name of the ``gr2st features`` options.

    Parameters
    ----------
    encoders
        One name or several joined by ``+`` (concatenated).
    tta
        Views averaged per encoder (1, 2, 4 or 8).
    context_px
        Side of the context patch in full-resolution pixels (None: no context).
    size_px
        Side of the spot patch.

    Examples
    --------
    >>> encoder_name("efficientnet-lite0+efficientnet-lite2", tta=8, context_px=448,
    ...              size_px=224)
    'efficientnet-lite0-tta8+efficientnet-lite2-tta8-ctx2x'
    >>> encoder_name("efficientnet-lite0", size_px=224)
    'efficientnet-lite0'
    """
    if tta not in VIEW_COUNTS:
        raise GR2STConfigError(f"--tta: expected one of {VIEW_COUNTS}, got {tta!r}")
    parts = [p.strip() for p in encoders.split("+")]
    if not all(parts):
        raise GR2STConfigError(f"--encoder {encoders!r}: expected NAME or NAME+NAME")
    name = "+".join(p if tta == 1 else f"{p}-tta{tta}" for p in parts)
    if context_px is None:
        return name
    if context_px <= size_px:
        raise GR2STConfigError(
            f"--context {context_px}: expected a side larger than the patch ({size_px} px)"
        )
    return f"{name}-ctx{context_px / size_px:g}x"
