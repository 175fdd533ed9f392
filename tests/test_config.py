"""The one hyperparameter system: coercion, nesting, ranges, profiles, JSON round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import pytest

from gr2st.config import (
    Bound,
    Config,
    Fraction,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    apply_overrides,
    coerce,
    config_from_dict,
    config_to_dict,
    resolve_profile,
    route_overrides,
    setting_names,
    split_override,
    validate,
)
from gr2st.errors import GR2STConfigError


@dataclass(frozen=True)
class Inner(Config):
    depth: PositiveInt = 2
    mode: Literal["sum", "concat"] = "sum"


@dataclass(frozen=True)
class Outer(Config):
    lr: PositiveFloat = 1e-3
    dropout: Fraction = 0.1
    flag: bool = False
    name: str = "a"
    alphas: tuple[PositiveFloat, ...] = (1.0,)
    folds: Annotated[int, Bound(low=2)] = 5
    seed: int | None = None
    inner: Inner = field(default_factory=Inner)
    warmup: NonNegativeInt = 0

    def check(self) -> None:
        if self.warmup >= self.inner.depth * 10:
            raise GR2STConfigError("warmup must be below 10 × inner.depth")


def test_overrides_convert_by_type_hint_and_leave_the_original_unchanged() -> None:
    base = Outer()
    cfg = apply_overrides(
        base,
        [
            "lr=3e-4",
            " dropout = 0.5 ",
            "flag=YES",
            "name=b",
            "alphas=10, 100",
            "folds=1e1",
            "seed=7",
            "inner.mode=concat",
            "depth=4",  # a bare leaf name unique in the tree
        ],
        owner="demo",
    )
    assert cfg == Outer(
        lr=3e-4,
        dropout=0.5,
        flag=True,
        name="b",
        alphas=(10.0, 100.0),
        folds=10,
        seed=7,
        inner=Inner(depth=4, mode="concat"),
    )
    assert base == Outer()
    assert apply_overrides(base, ["seed=none"], owner="demo").seed is None
    assert setting_names(base)[:3] == ["alphas", "dropout", "flag"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("nope=1", r"demo: unknown override 'nope'; known: alphas, dropout, flag, folds"),
        ("inner.nope=1", r"unknown override 'inner.nope'"),
        ("lr", r"override 'lr': expected key=value"),
        ("=3", r"expected key=value"),
        ("folds=2.5", r"demo: folds='2.5': expected an integer$"),
        ("folds=many", r"folds='many': expected an integer"),
        ("flag=maybe", r"flag='maybe': expected a boolean"),
        ("lr=fast", r"lr='fast': expected a number"),
        ("mode=product", r"demo: inner.mode='product': expected one of sum, concat$"),
        ("dropout=1.0", r"demo: dropout must be in \[0, 1\), got 1.0$"),
        ("lr=0", r"demo: lr must be > 0, got 0.0$"),
        ("folds=1", r"demo: folds must be >= 2, got 1$"),
        ("alphas=1,-2", r"demo: alphas must be > 0, got \(1.0, -2.0\)$"),
        ("warmup=-1", r"warmup must be >= 0, got -1"),
        ("warmup=20", r"demo: warmup must be below 10 × inner.depth$"),
    ],
)
def test_bad_overrides_are_one_line_errors_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(GR2STConfigError, match=message) as err:
        apply_overrides(Outer(), [override], owner="demo")
    assert "\n" not in str(err.value)


def test_an_ambiguous_bare_name_lists_the_dotted_ones() -> None:
    @dataclass(frozen=True)
    class Two(Config):
        a: Inner = field(default_factory=Inner)
        b: Inner = field(default_factory=Inner)

    with pytest.raises(GR2STConfigError, match=r"'depth' is ambiguous; use one of \['a.depth'"):
        apply_overrides(Two(), ["depth=3"], owner="demo")
    assert apply_overrides(Two(), ["b.depth=3"], owner="demo").b.depth == 3


def test_validate_checks_defaults_too() -> None:
    with pytest.raises(GR2STConfigError, match=r"demo: inner\.depth must be > 0, got 0"):
        validate(Outer(inner=Inner(depth=0)), owner="demo")


def test_dict_round_trip_and_unknown_keys() -> None:
    cfg = apply_overrides(Outer(), ["alphas=1,2", "inner.mode=concat"], owner="demo")
    data = config_to_dict(cfg)
    assert data["alphas"] == [1.0, 2.0]
    assert data["inner"] == {"depth": 2, "mode": "concat"}
    assert config_from_dict(Outer, data, owner="demo") == cfg
    assert config_from_dict(Outer, {"lr": 0.5}, owner="demo") == Outer(lr=0.5)
    with pytest.raises(GR2STConfigError, match=r"demo: unknown setting\(s\) \['inner.extra'\]"):
        config_from_dict(Outer, {"inner": {"extra": 1}}, owner="demo")
    with pytest.raises(GR2STConfigError, match="demo: lr must be > 0"):
        config_from_dict(Outer, {"lr": -1}, owner="demo")
    with pytest.raises(GR2STConfigError, match="flag='x': expected a boolean"):
        config_from_dict(Outer, {"flag": "x"}, owner="demo")


def test_coerce_refuses_bools_for_numbers() -> None:
    with pytest.raises(GR2STConfigError, match="expected an integer"):
        coerce(True, int, key="k")
    assert coerce(False, bool, key="k") is False
    assert coerce([1, 2], tuple[int, ...], key="k") == (1, 2)


def test_profiles_and_aliases() -> None:
    table = {"default": Outer(), "paper": Outer(lr=1.0)}
    assert resolve_profile(table, None, owner="demo") == ("default", Outer())
    assert resolve_profile(table, "ref", owner="demo", aliases={"ref": "paper"})[0] == "paper"
    with pytest.raises(GR2STConfigError, match="demo: no profile 'cpu'; it has: default, paper"):
        resolve_profile(table, "cpu", owner="demo")


def test_routing_overrides_to_methods() -> None:
    routed = route_overrides(["k=1", "knn:top_k=5", "gr2st:train.epochs=3"], ["knn", "gr2st"])
    assert routed == {"knn": ["k=1", "top_k=5"], "gr2st": ["k=1", "train.epochs=3"]}
    with pytest.raises(GR2STConfigError, match="method 'ridge' is not among"):
        route_overrides(["ridge:alphas=1"], ["knn"])
    with pytest.raises(GR2STConfigError, match="expected key=value"):
        route_overrides(["knn:top_k"], ["knn"])
    assert split_override(" a = b ") == ("a", "b")
