"""Small name → component registries (encoders, methods), like PyG's resolvers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from gr2st.errors import GR2STConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Map names to components, with a helpful error for unknown names.

    Examples
    --------
    >>> reg: Registry[type] = Registry("widgets")
    >>> @reg.register("a")
    ... class A: ...
    >>> reg.get("a") is A
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise GR2STConfigError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise GR2STConfigError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
