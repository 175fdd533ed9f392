from __future__ import annotations

import dataclasses

import pytest

from gr2st.config import apply_overrides as apply_config_overrides
from gr2st.errors import GR2STConfigError
from gr2st.models import GR2STConfig, get_profile


def apply_overrides(config: GR2STConfig, overrides: list[str]) -> GR2STConfig:
    return apply_config_overrides(config, overrides, owner="gr2st")


def test_paper_profile_is_the_published_recipe() -> None:
    assert get_profile("reference") == get_profile("paper")
    cfg = get_profile("paper")
    m, t = cfg.model, cfg.train
    assert (m.proj_dim, m.heads, m.dropout, m.temperature) == (256, 8, 0.1, 1.0)
    assert (m.k_dynamic, m.k_spatial, m.same_type_bonus, m.fusion) == (20, 20, 0.3, "sum")
    assert not m.normalise_logits
    assert not m.learnable_temperature
    assert (m.n_positions, m.position_rounding) == (65536, "floor")
    assert m.use_dynamic
    assert m.use_spatial
    assert m.use_cell_type
    assert m.use_position
    assert (t.epochs, t.batch_size, t.lr, t.weight_decay) == (100, 2048, 1e-4, 1e-3)
    assert t.optimizer_per_epoch
    assert t.precision == "fp32"
    assert t.average_last == 1
    assert t.feature_noise == 0.0
    assert cfg.predict.top_k == 200


def test_default_profile_differs_only_where_documented() -> None:
    ref, ours = get_profile("paper"), get_profile("default")
    assert ours.train == ref.train
    # Retrieval: the published spot bank vs ours, both banks (chosen by inner selection).
    assert dataclasses.replace(ours.predict, bank="spots") == ref.predict
    assert (ref.predict.bank, ours.predict.bank) == ("spots", "both")
    diff = {
        f.name
        for f in dataclasses.fields(ref.model)
        if getattr(ref.model, f.name) != getattr(ours.model, f.name)
    }
    assert diff == {"n_positions", "position_rounding", "dropout", "knn_ties"}
    assert ref.model.knn_ties == "cdist"
    assert ours.model.knn_ties == "index"
    assert ours.model.n_positions == 1024
    assert ours.model.dropout == 0.3
    assert ours.model.position_rounding == "round"


def test_overrides_coerce_types_and_leave_the_original_unchanged() -> None:
    base = get_profile("default")
    cfg = apply_overrides(
        base,
        [
            "model.fusion=concat",
            "train.epochs=50",
            "train.lr=3e-4",
            "model.use_dynamic=false",
            "learnable_temperature=YES",
            " top_k = 10 ",
            "train.epochs=1e1",
        ],
    )
    assert cfg.model.fusion == "concat"
    assert cfg.train.epochs == 10
    assert cfg.train.lr == 3e-4
    assert cfg.model.use_dynamic is False
    assert cfg.model.learnable_temperature is True
    assert cfg.predict.top_k == 10
    assert base.train.epochs == 100
    assert base.model.fusion == "sum"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.nope=1", r"gr2st: unknown override 'model.nope'; known: model.dropout"),
        ("nope=1", r"unknown override 'nope'"),
        ("solver.lr=1", r"unknown override 'solver.lr'"),
        ("train.epochs", r"expected key=value"),
        ("train.epochs=2.5", r"gr2st: train.epochs='2.5': expected an integer"),
        ("train.epochs=many", r"train.epochs='many': expected an integer"),
        ("train.lr=fast", r"train.lr='fast': expected a number"),
        ("model.use_spatial=maybe", r"model.use_spatial='maybe': expected a boolean"),
        ("model.fusion=product", r"model.fusion='product': expected one of sum, concat, max"),
        ("model.dropout=1.0", r"gr2st: model.dropout must be in \[0, 1\), got 1.0"),
        ("train.epochs=0", r"gr2st: train.epochs must be > 0, got 0"),
        ("model.temperature=-1", r"model.temperature must be > 0, got -1.0"),
        ("train.precision=fp8", r"train.precision='fp8': expected one of fp32, tf32, bf16"),
        ("train.average_last=500", r"gr2st: train.average_last: expected at most train.epochs"),
    ],
)
def test_bad_overrides_raise_a_clear_error(override: str, message: str) -> None:
    with pytest.raises(GR2STConfigError, match=message):
        apply_overrides(get_profile("paper"), [override])


def test_at_least_one_branch_is_required() -> None:
    with pytest.raises(GR2STConfigError, match="at least one branch"):
        apply_overrides(get_profile("default"), ["use_dynamic=0", "use_spatial=0"])


def test_unknown_profile() -> None:
    with pytest.raises(GR2STConfigError, match="'cpu'; it has: paper, paper-cscc, default"):
        get_profile("cpu")


def test_dict_round_trip() -> None:
    cfg = apply_overrides(get_profile("default"), ["model.fusion=max", "train.feature_noise=0.1"])
    assert GR2STConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(GR2STConfigError, match=r"unknown setting\(s\) \['extra'\]"):
        GR2STConfig.from_dict({**cfg.to_dict(), "extra": {}})
    assert dataclasses.is_dataclass(cfg)
    assert cfg.to_json().startswith('{"model"')


def test_paper_profile_has_the_published_cscc_retrieval_rule() -> None:
    from gr2st.methods import METHODS

    her2st, cscc = get_profile("paper"), get_profile("reference-cscc")
    assert (her2st.predict.top_k, her2st.predict.distance) == (200, "l1")
    assert (cscc.predict.top_k, cscc.predict.distance) == (600, "l2")
    assert dataclasses.replace(cscc, predict=her2st.predict) == her2st
    gr2st = METHODS.get("gr2st")
    assert gr2st.profile_for("reference", "cSCC") == "paper-cscc"
    assert gr2st.profile_for("paper", "her2st") == "paper"
    assert METHODS.get("histogene").profile_for("paper", "cscc") == "paper"
