"""One hyperparameter system: frozen dataclass configs, named profiles, ``key=value`` overrides.

Every method's settings are a frozen dataclass deriving from :class:`Config`. Fields are
typed; a field's range is part of its type (``PositiveInt``, ``Fraction``, …, built with
:class:`Bound` inside ``typing.Annotated``) and its choices are a ``Literal``. One
function of each kind serves every method:

- :func:`apply_overrides` turns ``"key=value"`` strings into a new config. Keys are field
  names; nested configs use dotted keys (``model.fusion``), and a bare name works when
  it is unique in the tree (``fusion``). Values are converted by the field's type hint.
- :func:`validate` checks every range and choice, then the config's own cross-field
  rules (:meth:`Config.check`).
- :func:`config_to_dict` / :func:`config_from_dict` round-trip through JSON.
- :func:`resolve_profile` picks a named profile from a method's table.

Errors are one line naming the owner (a method name), the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from gr2st.errors import GR2STConfigError

C = TypeVar("C", bound="Config")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NONE = {"none", "null"}


@dataclass(frozen=True)
class Bound:
    """An inclusive or exclusive numeric range, attached to a field's type.

    Examples
    --------
    >>> Bound(low=0, low_open=True).describe()
    '> 0'
    >>> Bound(low=0, high=1, high_open=True).contains(1.0)
    False
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the range."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (
            self.high is not None and (value >= self.high if self.high_open else value > self.high)
        )

    def describe(self) -> str:
        """The range in words, e.g. ``'>= 0'`` or ``'in [0, 1)'``."""
        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "any number"


POSITIVE = Bound(low=0, low_open=True)
NON_NEGATIVE = Bound(low=0)

PositiveInt = Annotated[int, POSITIVE]
PositiveFloat = Annotated[float, POSITIVE]
NonNegativeInt = Annotated[int, NON_NEGATIVE]
NonNegativeFloat = Annotated[float, NON_NEGATIVE]
#: A rate such as dropout: ``[0, 1)``.
Fraction = Annotated[float, Bound(low=0, high=1, high_open=True)]
#: A probability: ``[0, 1]``.
Probability = Annotated[float, Bound(low=0, high=1)]
#: Training precision: ``fp32``; ``tf32`` (TensorFloat-32 matrix products on CUDA);
#: ``bf16`` (bfloat16 autocast of the forward pass).
Precision = Literal["fp32", "tf32", "bf16"]


@dataclass(frozen=True)
class Config:
    """Base of every settings dataclass (frozen; all fields typed and defaulted).

    Subclasses add fields and, for rules that relate several fields, override
    :meth:`check`.

    Examples
    --------
    >>> @dataclass(frozen=True)
    ... class Demo(Config):
    ...     k: PositiveInt = 5
    ...     rate: Fraction = 0.1
    >>> apply_overrides(Demo(), ["k=7"], owner="demo")
    Demo(k=7, rate=0.1)
    """

    def check(self) -> None:
        """Cross-field rules; raise :class:`GR2STConfigError` (without the owner prefix)."""


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of a config class (computed once per class)."""
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls, include_extras=True)
    return _HINTS[cls]


def _split_annotated(hint: Any) -> tuple[Any, list[Bound]]:
    if get_origin(hint) is Annotated:
        base, *extras = get_args(hint)
        return base, [e for e in extras if isinstance(e, Bound)]
    return hint, []


def _optional_inner(hint: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(get_args(hint)) == 2:
            return args[0]
    return None


def _is_config(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Config)


def _type_words(hint: Any) -> str:
    base, _ = _split_annotated(hint)
    if get_origin(base) is Literal:
        return "one of " + ", ".join(str(c) for c in get_args(base))
    inner = _optional_inner(base)
    if inner is not None:
        return f"{_type_words(inner)} or none"
    if get_origin(base) is tuple:
        return f"comma-separated {_type_words(get_args(base)[0])}s"
    return {bool: "a boolean (true/false)", int: "an integer", float: "a number"}.get(base, "text")


def coerce(raw: object, hint: Any, *, key: str) -> Any:
    """Convert ``raw`` (an override string or a JSON value) to the type ``hint``.

    Examples
    --------
    >>> coerce("1e2", int, key="epochs")
    100
    >>> coerce("10, 100", tuple[float, ...], key="alphas")
    (10.0, 100.0)
    """
    base, _ = _split_annotated(hint)
    inner = _optional_inner(base)
    if inner is not None:
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in _NONE):
            return None
        return coerce(raw, inner, key=key)
    text = str(raw).strip()
    error = GR2STConfigError(f"{key}={text!r}: expected {_type_words(hint)}")
    if get_origin(base) is Literal:
        choices = get_args(base)
        if text not in [str(c) for c in choices]:
            raise error
        return next(c for c in choices if str(c) == text)
    if get_origin(base) is tuple:
        element = get_args(base)[0]
        items = raw if isinstance(raw, list | tuple) else [v for v in text.split(",") if v.strip()]
        return tuple(coerce(v, element, key=key) for v in items)
    if base is bool:
        if isinstance(raw, bool):
            return raw
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise error
    if base is int:
        if isinstance(raw, bool):
            raise error
        try:
            value = float(text)
        except ValueError:
            raise error from None
        if not value.is_integer():
            raise error
        return int(value)
    if base is float:
        if isinstance(raw, bool):
            raise error
        try:
            return float(text)
        except ValueError:
            raise error from None
    if base is str:
        return text
    raise GR2STConfigError(f"{key}: unsupported setting type {base!r}")


def _paths(config: Config, prefix: str = "") -> dict[str, Any]:
    """Every leaf setting's dotted path → its type hint."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        hint = _hints(type(config))[f.name]
        value = getattr(config, f.name)
        if isinstance(value, Config):
            out.update(_paths(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = hint
    return out


def setting_names(config: Config) -> list[str]:
    """Dotted names of every setting of ``config``, sorted.

    Examples
    --------
    >>> @dataclass(frozen=True)
    ... class Demo(Config):
    ...     k: int = 5
    >>> setting_names(Demo())
    ['k']
    """
    return sorted(_paths(config))


def _resolve_key(key: str, paths: Mapping[str, Any], owner: str) -> str:
    if key in paths:
        return key
    matches = [p for p in paths if p.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise GR2STConfigError(f"{owner}: override {key!r} is ambiguous; use one of {matches}")
    raise GR2STConfigError(
        f"{owner}: unknown override {key!r}; known: {', '.join(sorted(paths))} "
        "(use method:key=value to target one method)"
    )


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


def route_overrides(overrides: Sequence[str], owners: Sequence[str]) -> dict[str, list[str]]:
    """Distribute overrides among owners (e.g. the methods of a benchmark).

    ``key=value`` goes to every owner; ``name:key=value`` goes to owner ``name`` only
    (as ``key=value``), which must be one of ``owners``.

    Examples
    --------
    >>> route_overrides(["top_k=50", "knn:top_k=20"], ["knn", "oracle"])
    {'knn': ['top_k=50', 'top_k=20'], 'oracle': ['top_k=50']}
    """
    routed: dict[str, list[str]] = {name: [] for name in owners}
    for item in overrides:
        head, _, _ = item.partition("=")
        target, colon, key = head.partition(":")
        if not colon:
            split_override(item)
            for name in owners:
                routed[name].append(item)
            continue
        target = target.strip()
        if target not in routed:
            raise GR2STConfigError(
                f"override {item!r}: method {target!r} is not among the selected methods "
                f"({', '.join(owners)})"
            )
        routed[target].append(item[len(head) - len(key) :])
        split_override(routed[target][-1])
    return routed


def _replace(config: C, changes: Mapping[str, Any]) -> C:
    """Apply ``{dotted path: value}`` to a (nested) config."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in changes.items():
        head, dot, rest = path.partition(".")
        if dot:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        direct[head] = _replace(getattr(config, head), sub)
    return dataclasses.replace(config, **direct)


def apply_overrides(config: C, overrides: Sequence[str], *, owner: str) -> C:
    """Return a validated copy of ``config`` with ``key=value`` ``overrides`` applied.

    Parameters
    ----------
    config
        The starting settings (left unchanged).
    overrides
        ``"key=value"`` strings; ``key`` is a field name, a dotted path into nested
        configs (``"model.fusion"``) or a leaf name unique in the tree (``"fusion"``).
    owner
        Name used in error messages (e.g. the method name).

    Raises
    ------
    GR2STConfigError
        Malformed item, unknown or ambiguous key, a value of the wrong type, outside
        its range or breaking a cross-field rule.

    Examples
    --------
    >>> @dataclass(frozen=True)
    ... class Demo(Config):
    ...     k: PositiveInt = 5
    ...     mode: Literal["a", "b"] = "a"
    >>> apply_overrides(Demo(), ["k=7", "mode=b"], owner="demo")
    Demo(k=7, mode='b')
    >>> apply_overrides(Demo(), ["mode=c"], owner="demo")
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STConfigError: demo: mode='c': expected one of a, b
    """
    paths = _paths(config)
    changes: dict[str, Any] = {}
    for item in overrides:
        key, value = split_override(item)
        path = _resolve_key(key, paths, owner)
        try:
            changes[path] = coerce(value, paths[path], key=path)
        except GR2STConfigError as exc:
            raise GR2STConfigError(f"{owner}: {exc}") from None
    new = _replace(config, changes)
    validate(new, owner=owner)
    return new


def validate(config: Config, *, owner: str) -> None:
    """Check every field's range and choices, then the cross-field rules.

    Raises
    ------
    GR2STConfigError
        ``"<owner>: <key> must be <range>, got <value>"`` for the first bad field.
    """
    for path, hint in _paths(config).items():
        value: Any = config
        for part in path.split("."):
            value = getattr(value, part)
        base, bounds = _split_annotated(hint)
        items = value if isinstance(value, tuple) else (value,)
        if get_origin(base) is tuple:
            base, element_bounds = _split_annotated(get_args(base)[0])
            bounds = bounds + element_bounds
        if get_origin(base) is Literal and any(v not in get_args(base) for v in items):
            choices = ", ".join(str(c) for c in get_args(base))
            raise GR2STConfigError(f"{owner}: {path} must be one of {choices}, got {value!r}")
        for bound in bounds:
            for item in items:
                if item is not None and not bound.contains(item):
                    raise GR2STConfigError(
                        f"{owner}: {path} must be {bound.describe()}, got {value}"
                    )
    _check_tree(config, owner)


def _check_tree(config: Config, owner: str) -> None:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, Config):
            _check_tree(value, owner)
    try:
        config.check()
    except GR2STConfigError as exc:
        raise GR2STConfigError(f"{owner}: {exc}") from None


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict of ``config`` (tuples become lists), JSON-serialisable.

    Examples
    --------
    >>> @dataclass(frozen=True)
    ... class Demo(Config):
    ...     alphas: tuple[float, ...] = (1.0, 2.0)
    >>> config_to_dict(Demo())
    {'alphas': [1.0, 2.0]}
    """

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def config_from_dict(cls: type[C], data: Mapping[str, Any], *, owner: str) -> C:
    """Rebuild (and validate) a ``cls`` from :func:`config_to_dict`'s output.

    Missing keys keep their defaults; unknown keys are an error.
    """
    made = _from_dict(cls, data, owner=owner, prefix="")
    validate(made, owner=owner)
    return made


def _from_dict(cls: type[C], data: Mapping[str, Any], *, owner: str, prefix: str) -> C:
    if not isinstance(data, Mapping):
        raise GR2STConfigError(f"{owner}: {prefix or 'config'} must be a mapping")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise GR2STConfigError(f"{owner}: unknown setting(s) {[prefix + u for u in unknown]}")
    values: dict[str, Any] = {}
    for name, raw in data.items():
        hint = hints[name]
        if _is_config(hint):
            values[name] = _from_dict(hint, raw, owner=owner, prefix=f"{prefix}{name}.")
        else:
            try:
                values[name] = coerce(raw, hint, key=f"{prefix}{name}")
            except GR2STConfigError as exc:
                raise GR2STConfigError(f"{owner}: {exc}") from None
    return cls(**values)


def resolve_profile(
    table: Mapping[str, C],
    name: str | None,
    *,
    owner: str,
    aliases: Mapping[str, str] | None = None,
) -> tuple[str, C]:
    """``(profile name, its config)`` from a method's profile ``table``.

    ``None`` picks ``"default"``. ``aliases`` maps other accepted names to a profile.

    Examples
    --------
    >>> @dataclass(frozen=True)
    ... class Demo(Config):
    ...     k: int = 5
    >>> resolve_profile({"default": Demo(), "paper": Demo(k=3)}, "paper", owner="demo")
    ('paper', Demo(k=3))
    >>> resolve_profile({"default": Demo()}, "gpu", owner="demo")
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STConfigError: demo: no profile 'gpu'; it has: default
    """
    chosen = "default" if name is None else (aliases or {}).get(name, name)
    if chosen not in table:
        raise GR2STConfigError(f"{owner}: no profile {name!r}; it has: {', '.join(table)}")
    return chosen, table[chosen]
