from __future__ import annotations

from dataclasses import dataclass

import pytest

from gr2st.benchmark.overrides import apply_overrides, route_overrides, split_override
from gr2st.errors import GR2STConfigError


@dataclass(frozen=True)
class Cfg:
    k: int = 5
    rate: float = 0.1
    flag: bool = False
    name: str = "a"
    alphas: tuple[float, ...] = (1.0,)


def test_apply_converts_by_field_type() -> None:
    cfg = apply_overrides(
        Cfg(), ["k=7", "rate=1e-3", "flag=yes", "name=b", "alphas=10, 100"], owner="x"
    )
    assert cfg == Cfg(k=7, rate=1e-3, flag=True, name="b", alphas=(10.0, 100.0))
    assert apply_overrides(Cfg(), [], owner="x") == Cfg()


def test_apply_errors() -> None:
    with pytest.raises(GR2STConfigError, match="x: unknown override 'q'; known: alphas, flag"):
        apply_overrides(Cfg(), ["q=1"], owner="x")
    with pytest.raises(GR2STConfigError, match=r"k='1.5': expected a value like 5 \(int\)"):
        apply_overrides(Cfg(), ["k=1.5"], owner="x")
    with pytest.raises(GR2STConfigError, match="flag='maybe'"):
        apply_overrides(Cfg(), ["flag=maybe"], owner="x")
    with pytest.raises(GR2STConfigError, match="expected key=value"):
        split_override("k")


def test_route() -> None:
    routed = route_overrides(["k=1", "knn:top_k=5", "gr2st:train.epochs=3"], ["knn", "gr2st"])
    assert routed == {"knn": ["k=1", "top_k=5"], "gr2st": ["k=1", "train.epochs=3"]}
    with pytest.raises(GR2STConfigError, match="method 'ridge' is not among"):
        route_overrides(["ridge:alphas=1"], ["knn"])
    with pytest.raises(GR2STConfigError, match="expected key=value"):
        route_overrides(["knn:top_k"], ["knn"])
