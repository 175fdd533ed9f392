"""``key=value`` overrides: routing them to methods and applying them to a config.

``gr2st benchmark --set`` takes ``key=value`` (given to every selected method) or
``method:key=value`` (given to that method only). Each method applies the overrides it
receives to its own frozen dataclass config with :func:`apply_overrides`, which rejects
unknown keys and values of the wrong type with a one-line error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

from gr2st.errors import GR2STConfigError

C = TypeVar("C")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def split_override(item: str) -> tuple[str, str]:
    """Split ``"key=value"`` into its two stripped parts.

    Examples
    --------
    >>> split_override("top_k = 50")
    ('top_k', '50')
    """
    key, sep, value = item.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise GR2STConfigError(f"override {item!r}: expected key=value")
    return key, value


def route_overrides(overrides: Sequence[str], methods: Sequence[str]) -> dict[str, list[str]]:
    """Distribute overrides to methods.

    ``key=value`` goes to every method in ``methods``; ``name:key=value`` goes to method
    ``name`` only (as ``key=value``), which must be one of ``methods``.

    Examples
    --------
    >>> route_overrides(["top_k=50", "knn:top_k=20"], ["knn", "oracle"])
    {'knn': ['top_k=50', 'top_k=20'], 'oracle': ['top_k=50']}
    """
    routed: dict[str, list[str]] = {name: [] for name in methods}
    for item in overrides:
        head, _, _ = item.partition("=")
        target, colon, key = head.partition(":")
        if not colon:
            split_override(item)
            for name in methods:
                routed[name].append(item)
            continue
        target = target.strip()
        if target not in routed:
            raise GR2STConfigError(
                f"override {item!r}: method {target!r} is not among the selected methods "
                f"({', '.join(methods)})"
            )
        routed[target].append(item[len(head) - len(key) :])
        split_override(routed[target][-1])
    return routed


def _convert(value: str, like: Any, key: str) -> Any:
    try:
        if isinstance(like, bool):
            lowered = value.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(value)
        if isinstance(like, tuple):
            element = like[0] if like else ""
            return tuple(_convert(v, element, key) for v in value.split(",") if v.strip())
        if isinstance(like, int):
            return int(value)
        if isinstance(like, float):
            return float(value)
        if like is None or isinstance(like, str):
            return value
    except ValueError:
        pass
    raise GR2STConfigError(
        f"override {key}={value!r}: expected a value like {like!r} ({type(like).__name__})"
    )


def apply_overrides(config: C, overrides: Sequence[str], *, owner: str) -> C:
    """Return a copy of the dataclass ``config`` with ``overrides`` applied.

    Values are converted to the type of the field's current value (bool, int, float,
    str, or a comma-separated tuple).

    Parameters
    ----------
    config
        A dataclass instance holding the defaults of the chosen profile.
    overrides
        ``key=value`` strings.
    owner
        Name used in error messages (e.g. the method name).

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Cfg:
    ...     k: int = 5
    ...     alphas: tuple[float, ...] = (1.0,)
    >>> apply_overrides(Cfg(), ["k=7", "alphas=10,100"], owner="demo")
    Cfg(k=7, alphas=(10.0, 100.0))
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError("apply_overrides expects a dataclass instance")
    fields = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for item in overrides:
        key, value = split_override(item)
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise GR2STConfigError(
                f"{owner}: unknown override {key!r}; known: {known} "
                "(use method:key=value to target one method)"
            )
        changes[key] = _convert(value, getattr(config, key), key)
    return dataclasses.replace(config, **changes)
