"""The name → encoder registry (the PyG ``nn/resolver.py`` pattern).

Encoder modules register their factories in :data:`ENCODERS`; :func:`get_encoder`
resolves any name: a registered one, ``"prefix:argument"``, or a composed name
(:mod:`gr2st.encoders.compose`, whose parts it builds in turn). It is the one module
that knows both the registry and the composition, so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gr2st._registry import Registry
from gr2st.encoders.base import Encoder
from gr2st.encoders.compose import compose_encoder, is_composed
from gr2st.errors import GR2STConfigError

EncoderFactory = Callable[..., Encoder]

#: Encoder factories by name. A name ``"prefix:argument"`` (such as ``"hf:owkin/phikon-v2"``)
#: calls the factory registered as ``prefix`` with ``argument`` as its first argument.
ENCODERS: Registry[EncoderFactory] = Registry("encoder")
#: Factories of the encoders whose intermediate layers can be pooled and concatenated:
#: ``"<name>@<layer>[.<layer>…]"`` calls the one registered as ``name`` with the layers.
LAYERED: Registry[EncoderFactory] = Registry("encoder with selectable layers")


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
    if is_composed(name):
        return compose_encoder(name, build=lambda part: get_encoder(part, device=device, **options))
    prefix, sep, argument = name.partition(":")
    if sep:
        factory = ENCODERS.get(prefix)
        return factory(argument, device=device, **options)
    model, at, layers = name.partition("@")
    if at:
        if model not in LAYERED:
            raise GR2STConfigError(
                f"encoder {name!r}: layers can be chosen for {', '.join(LAYERED.names())} "
                "only (expected <model>@<layer>[.<layer>…][-gem])"
            )
        return LAYERED.get(model)(layers, device=device, **options)
    return ENCODERS.get(name)(device=device, **options)


def list_encoders() -> list[str]:
    """Registered encoder names (a ``prefix`` entry takes ``prefix:<argument>``).

    Examples
    --------
    >>> "efficientnet-lite0" in list_encoders()
    True
    """
    return ENCODERS.names()
