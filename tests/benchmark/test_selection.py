"""Model selection by inner cross-validation and prediction smoothing in the fold loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from anndata import AnnData

from gr2st._constants import feature_key
from gr2st.benchmark import run_benchmark, runner
from gr2st.benchmark.selection import (
    Choice,
    parse_grid,
    select_inner,
    spatial_blocks,
    spot_coordinates,
)
from gr2st.config import config_to_dict
from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.evaluation.metrics import pearson_per_gene
from gr2st.genes import align_sections, prepare_section
from gr2st.graph import SmoothConfig, smooth_predictions
from gr2st.methods import METHODS

FEATURES = feature_key("toy")  # filled by the `sections` fixture (conftest.py)


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many models each GR2ST fit or adoption trains, in order (0: it adopted only)."""
    gr2st = METHODS.get("gr2st")
    counts: list[int] = []
    add_members = gr2st._add_members

    def counted(self: Any, workdir: Any) -> None:
        counts.append(max(0, self.config.train.ensemble - len(self.models)))
        add_members(self, workdir)

    monkeypatch.setattr(gr2st, "_add_members", counted)
    return counts


def _run(sections: list[AnnData], out: Path, **options: Any) -> dict[str, Any]:
    options.setdefault("genes", list(sections[0].var_names))
    return run_benchmark(
        sections,
        feature_key=FEATURES,
        out_dir=out,
        progress=False,
        device="cpu",
        figures=False,
        **options,
    )


def _predictions(out: Path, method: str, section: str) -> np.ndarray:
    with np.load(out / "folds" / method / f"{section}.npz") as saved:
        return saved["pred_0"]


def test_parse_grid_routes_keys_and_rejects_malformed_items() -> None:
    grid = parse_grid(["smooth.weight=0,0.5", "knn:top_k=10,20,30"], ["knn", "ridge"])
    assert len(grid["knn"]) == 6
    assert len(grid["ridge"]) == 2
    assert grid["knn"][0] == Choice(overrides=("top_k=10",), smooth=SmoothConfig(weight=0.0))
    assert grid["ridge"][1].smooth == SmoothConfig(weight=0.5)
    with pytest.raises(GR2STConfigError, match="method 'gr2st' is not among"):
        parse_grid(["gr2st:model.dropout=0.1"], ["knn"])
    with pytest.raises(GR2STConfigError, match="expected \\[method:\\]key=value1"):
        parse_grid(["smooth.weight"], ["knn"])
    with pytest.raises(GR2STConfigError, match="weight"):
        parse_grid(["smooth.weight=1.5"], ["knn"])


def test_smoothing_is_applied_to_every_fold_prediction(
    sections: list[AnnData], tmp_path: Path
) -> None:
    _run(sections, tmp_path / "plain", methods=["knn"])
    grid = parse_grid(["smooth.weight=0.5", "smooth.k=4"], ["knn"])
    res = _run(sections, tmp_path / "smooth", methods=["knn"], grid=grid)
    for adata in sections:
        name = str(adata.obs["section"].iloc[0])
        expected = smooth_predictions(
            _predictions(tmp_path / "plain", "knn", name),
            spot_coordinates(adata),
            SmoothConfig(weight=0.5, k=4),
        )
        np.testing.assert_allclose(
            _predictions(tmp_path / "smooth", "knn", name), expected, rtol=1e-6
        )
        chosen = res["methods"]["knn"]["folds"][name]["selection"]["chosen"]
        assert chosen == {"expression.align": "none", "smooth.weight": 0.5, "smooth.k": 4}


def test_inner_selection_never_fits_or_scores_on_the_outer_test_section(
    sections: list[AnnData], tmp_path: Path, tracker: Any
) -> None:
    grid = parse_grid(["smooth.weight=0,0.5"], ["test-tracker"])
    res = _run(sections, tmp_path / "out", methods=["test-tracker"], grid=grid, select="inner")
    # Per outer fold: one fit per inner fold (the smoothing candidates share it), then
    # the final fit on all training sections.
    assert [c["train"] for c in tracker.calls] == [
        ("S2",), ("S1",), ("S1", "S2"),
        ("S2",), ("S0",), ("S0", "S2"),
        ("S1",), ("S0",), ("S0", "S1"),
    ]  # fmt: skip
    for fold in ("S0", "S1", "S2"):
        selection = res["methods"]["test-tracker"]["folds"][fold]["selection"]
        assert fold not in selection["inner_folds"]
        assert len(selection["inner_folds"]) == 2
        assert set(selection["inner_mean_pcc"]) == {c.label for c in grid["test-tracker"]}


def test_inner_selection_picks_the_best_inner_score(
    sections: list[AnnData], tmp_path: Path
) -> None:
    grid = parse_grid(["knn:top_k=1,30"], ["knn"])
    out = tmp_path / "out"
    res = _run(sections, out, methods=["knn"], grid=grid, select="inner")
    genes = list(sections[0].var_names)
    prepared = {str(a.obs["section"].iloc[0]): prepare_section(a, genes=genes) for a in sections}
    for fold, test in prepared.items():
        train = [a for name, a in prepared.items() if name != fold]
        scores = {}
        for choice in grid["knn"]:
            per_inner = []
            for i, held_out in enumerate(train):
                knn = METHODS.get("knn")(feature_key=FEATURES, overrides=choice.overrides)
                knn.fit([a for j, a in enumerate(train) if j != i])
                r = pearson_per_gene(knn.predict(held_out), np.asarray(held_out.X))
                per_inner.append(np.nanmean(r))
            scores[choice.label] = float(np.mean(per_inner))
        selection = res["methods"]["knn"]["folds"][fold]["selection"]
        assert selection["inner_mean_pcc"] == pytest.approx(scores, rel=1e-5)
        best = max(scores, key=lambda label: scores[label])
        assert selection["chosen"]["top_k"] == best.split(",")[0].split("=")[1]
        knn = METHODS.get("knn")(
            feature_key=FEATURES, overrides=[f"top_k={selection['chosen']['top_k']}"]
        )
        knn.fit(train)
        np.testing.assert_allclose(_predictions(out, "knn", fold), knn.predict(test), rtol=1e-6)
    saved = json.loads((out / "results.json").read_text())
    assert saved["methods"]["knn"]["folds"]["S0"]["selection"]["chosen"]["top_k"] in ("1", "30")


def test_select_inner_without_candidates_or_inner_folds_keeps_the_first() -> None:
    def never(*_: Any) -> np.ndarray:
        raise AssertionError("no inner fit is needed")

    choices = [Choice(), Choice(smooth=SmoothConfig(weight=0.5))]
    assert select_inner(choices[:1], [AnnData(), AnnData()], fit_predict=never).choice == choices[0]
    assert select_inner(choices, [AnnData()], fit_predict=never).choice == choices[0]


def test_spatial_blocks_cut_a_section_into_contiguous_stripes_along_its_longer_side() -> None:
    section = synthetic(n_sections=1, n_genes=4, grid=(5, 11), seed=2)[0]
    coords = spot_coordinates(section)
    axis = int(np.argmax(np.ptp(coords, axis=0)))
    assert np.ptp(coords[:, axis]) > np.ptp(coords[:, 1 - axis])
    pairs = spatial_blocks(section, n_blocks=3)
    blocks = [block for _, block in pairs]
    assert [b.n_obs for b in blocks] == [19, 18, 18]
    assert sorted(i for b in blocks for i in b.obs_names) == sorted(section.obs_names)
    for i, (rest, block) in enumerate(pairs, start=1):
        assert set(rest.obs_names) == set(section.obs_names) - set(block.obs_names)
        assert set(rest.obs["section"]) == {f"S0/rest{i}"}
        assert set(block.obs["section"]) == {f"S0/block{i}"}
        np.testing.assert_array_equal(block.X.toarray(), section[block.obs_names].X.toarray())
    along = [spot_coordinates(b)[:, axis] for b in blocks]
    assert along[0].max() <= along[1].min()
    assert along[1].max() <= along[2].min()
    assert set(section.obs["section"]) == {"S0"}  # the section itself is untouched


def test_a_lone_training_section_is_cross_validated_over_its_stripes() -> None:
    raw = synthetic(n_sections=1, n_genes=6, grid=(8, 8), seed=4)[0]
    section = prepare_section(raw, genes=list(raw.var_names))
    choices = [Choice(overrides=("noise=3",)), Choice(overrides=("noise=0",))]
    seen: list[tuple[list[str], str, int]] = []

    def fit_predict(choice: Choice, inner: list[AnnData], test: AnnData) -> np.ndarray:
        names = [str(a.obs["section"].iloc[0]) for a in inner]
        seen.append((names, str(test.obs["section"].iloc[0]), inner[0].n_obs + test.n_obs))
        assert not set(inner[0].obs_names) & set(test.obs_names)
        noise = float(choice.overrides[0].split("=")[1])
        rng = np.random.default_rng(0)
        return np.asarray(test.X) + rng.normal(scale=noise + 0.1, size=test.shape)

    sel = select_inner(choices, [section], fit_predict=fit_predict, max_folds=2)
    assert sel.inner_folds == ["S0/block1", "S0/block2"]
    assert sel.choice == choices[1]
    assert sel.scores[choices[1].label] > sel.scores[choices[0].label]
    assert seen == [
        (["S0/rest1"], "S0/block1", 64), (["S0/rest1"], "S0/block1", 64),
        (["S0/rest2"], "S0/block2", 64), (["S0/rest2"], "S0/block2", 64),
    ]  # fmt: skip
    # Too few spots for three stripes of ten: nothing to cross-validate.
    tiny = synthetic(n_sections=1, n_genes=6, grid=(5, 5))[0]
    assert select_inner(choices, [tiny], fit_predict=fit_predict).choice == choices[0]


def test_patient_split_selects_within_a_patients_only_section(
    sections: list[AnnData], tmp_path: Path, tracker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # synthetic: S0, S1 → patient P0; S2 → P1 (so the P0 fold trains on S2 alone).
    grid = parse_grid(["smooth.weight=0,0.5"], ["test-tracker"])
    options = {"grid": grid, "select": "inner", "split": "patient", "inner_folds": 2}
    res = _run(sections, tmp_path / "out", methods=["test-tracker"], **options)
    folds = res["methods"]["test-tracker"]["folds"]
    assert folds["P0"]["selection"]["inner_folds"] == ["S2/block1", "S2/block2"]
    assert folds["P1"]["selection"]["inner_folds"] == ["S0", "S1"]
    assert [c["train"] for c in tracker.calls] == [
        ("S2/rest1",), ("S2/rest2",), ("S2",),
        ("S1",), ("S0",), ("S0", "S1"),
    ]  # fmt: skip
    # A result of the lone-section fold depends on how it is cut: other cuts (or the
    # first-choice fallback of older versions) are not resumed, the other fold is.
    tracker.calls.clear()
    monkeypatch.setattr(runner, "SECTION_BLOCKS", 4)
    _run(sections, tmp_path / "out", methods=["test-tracker"], **options)
    assert [c["train"] for c in tracker.calls] == [("S2/rest1",), ("S2/rest2",), ("S2",)]


def test_run_benchmark_rejects_an_unknown_selection(
    sections: list[AnnData], tmp_path: Path
) -> None:
    with pytest.raises(GR2STConfigError, match="select: expected one of"):
        _run(sections, tmp_path / "out", methods=["knn"], select="outer")


def test_candidates_that_a_fit_can_adopt_share_it_within_an_inner_fold(
    sections: list[AnnData],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    trained: list[int],
) -> None:
    gr2st = METHODS.get("gr2st")
    grid = parse_grid(
        ["gr2st:predict.top_k=3,40", "gr2st:train.ensemble=1,2", "gr2st:predict.bank=spots,both"],
        ["gr2st"],
    )
    options: dict[str, Any] = {
        "methods": ["gr2st"],
        "grid": grid,
        "select": "inner",
        "inner_folds": 1,
        "overrides": ["gr2st:train.epochs=2", "gr2st:model.proj_dim=16", "gr2st:model.heads=2"],
    }
    shared = _run(sections, tmp_path / "shared", **options)
    chosen = [
        int(shared["methods"]["gr2st"]["folds"][f]["selection"]["chosen"]["train.ensemble"])
        for f in ("S0", "S1", "S2")
    ]
    # Per outer fold: one model, one more when the first 2-model candidate comes, then
    # the outer fit of the chosen size.
    assert sum(trained) == sum(1 + 1 + n for n in chosen)
    trained.clear()
    monkeypatch.setattr(gr2st, "prediction_fields", ())
    monkeypatch.setattr(gr2st, "fit_settings", lambda self: config_to_dict(self.config))
    refit = _run(sections, tmp_path / "refit", **options)
    assert sum(trained) == sum(4 * (1 + 2) + n for n in chosen)
    for fold in ("S0", "S1", "S2"):
        a = shared["methods"]["gr2st"]["folds"][fold]["selection"]
        b = refit["methods"]["gr2st"]["folds"][fold]["selection"]
        assert a["inner_mean_pcc"] == pytest.approx(b["inner_mean_pcc"], abs=1e-6)
        assert len(set(a["inner_mean_pcc"].values())) > 1
        assert a["chosen"] == b["chosen"]


def test_a_fitted_method_adopts_only_what_leaves_its_fit_unchanged(
    sections: list[AnnData],
) -> None:
    gr2st = METHODS.get("gr2st")
    small = ["train.epochs=2", "model.proj_dim=16", "model.heads=2"]
    train = [prepare_section(a, genes=list(a.var_names)) for a in sections[:2]]
    fitted = gr2st(feature_key=FEATURES, overrides=[*small, "predict.top_k=5"])
    with pytest.raises(GR2STConfigError, match=r"gr2st: adopt\(\) called before fit\(\)"):
        fitted.adopt(gr2st(feature_key=FEATURES, overrides=small))
    fitted.fit(train)
    wider = gr2st(
        feature_key=FEATURES,
        overrides=[*small, "predict.top_k=9", "predict.bank=images", "train.ensemble=2"],
    )
    fitted.adopt(wider)
    assert (fitted.config.predict.top_k, fitted.config.predict.bank) == (9, "images")
    assert [m.config.predict.top_k for m in fitted.models] == [9, 9]
    fresh = gr2st(feature_key=FEATURES, overrides=wider.overrides)
    fresh.fit(train)
    test = prepare_section(sections[2], genes=list(sections[2].var_names))
    np.testing.assert_allclose(fitted.predict(test), fresh.predict(test), rtol=1e-5, atol=1e-6)
    # Back to one model: the first member alone predicts.
    fitted.adopt(gr2st(feature_key=FEATURES, overrides=[*small, "predict.top_k=9"]))
    np.testing.assert_allclose(fitted.predict(test), fitted.models[0].predict(test).mean, rtol=1e-6)
    with pytest.raises(GR2STConfigError, match=r"^gr2st: train differ from the fitted settings"):
        fitted.adopt(gr2st(feature_key=FEATURES, overrides=[*small, "train.epochs=3"]))
    # Early stopping validates with the prediction settings, so they become fit settings.
    stopping = gr2st(feature_key=FEATURES, overrides=["train.early_stopping=true"])
    assert "predict" in stopping.fit_settings()
    other = gr2st(feature_key=FEATURES, overrides=["train.early_stopping=true", "predict.top_k=9"])
    assert stopping.fit_settings() != other.fit_settings()


def test_alignment_fits_every_method_on_aligned_training_sections(
    sections: list[AnnData], tmp_path: Path
) -> None:
    grid = parse_grid(["expression.align=standardize"], ["knn"])
    res = _run(sections, tmp_path / "out", methods=["knn"], grid=grid)
    genes = list(sections[0].var_names)
    prepared = {str(a.obs["section"].iloc[0]): prepare_section(a, genes=genes) for a in sections}
    for fold, test in prepared.items():
        train = align_sections([a for n, a in prepared.items() if n != fold], how="standardize")
        knn = METHODS.get("knn")(feature_key=FEATURES)
        knn.fit(train)
        np.testing.assert_allclose(
            _predictions(tmp_path / "out", "knn", fold), knn.predict(test), rtol=1e-6
        )
        chosen = res["methods"]["knn"]["folds"][fold]["selection"]["chosen"]
        assert chosen["expression.align"] == "standardize"
    with pytest.raises(GR2STConfigError, match=r"^--grid expression.align=zscore: expected one"):
        parse_grid(["expression.align=none,zscore"], ["knn"])


def test_inner_selection_fits_each_alignment_on_aligned_inner_sections(
    sections: list[AnnData],
) -> None:
    prepared = [prepare_section(a, genes=list(a.var_names)) for a in sections]
    choices = parse_grid(["expression.align=none,center", "smooth.weight=0,0.5"], ["knn"])["knn"]
    seen: list[tuple[str, list[np.ndarray]]] = []

    def fit_predict(choice: Choice, inner: list[AnnData], test: AnnData) -> np.ndarray:
        seen.append((choice.align, [np.asarray(a.X).mean(0) for a in inner]))
        return np.tile(np.asarray(inner[0].X).mean(0), (test.n_obs, 1))

    select_inner(choices, prepared, fit_predict=fit_predict, max_folds=1)
    # One fit per alignment (the smoothing candidates share it), on the aligned sections.
    assert [align for align, _ in seen] == ["none", "center"]
    plain, centred = seen[0][1], seen[1][1]
    assert not np.allclose(plain[0], plain[1], atol=1e-3)
    np.testing.assert_allclose(centred[0], centred[1], atol=1e-5)
    np.testing.assert_allclose(centred[0], np.mean(plain, axis=0), atol=1e-5)


def test_gr2st_fits_are_shared_within_an_alignment_only(
    four_sections: list[AnnData], tmp_path: Path, trained: list[int]
) -> None:
    grid = parse_grid(
        ["expression.align=none,standardize", "gr2st:predict.bank=spots,both"], ["gr2st"]
    )
    res = _run(
        four_sections,
        tmp_path / "out",
        methods=["gr2st"],
        grid=grid,
        select="inner",
        inner_folds=1,
        overrides=[
            "gr2st:train.epochs=2",
            "gr2st:model.proj_dim=16",
            "gr2st:model.heads=2",
            "gr2st:predict.top_k=5",
        ],
    )
    # Per outer fold: one model per alignment in the inner fold (the bank candidates
    # adopt it), then the outer fit.
    assert sum(trained) == 4 * 3
    for fold in ("S0", "S1", "S2", "S3"):
        scores = res["methods"]["gr2st"]["folds"][fold]["selection"]["inner_mean_pcc"]
        assert len(scores) == 4
        assert len(set(scores.values())) == 4


def test_parse_grid_makes_encoders_a_choice() -> None:
    grid = parse_grid(["features.encoder=toy,noise", "knn:top_k=5,10"], ["knn", "ridge"])
    assert [c.encoder for c in grid["ridge"]] == ["toy", "noise"]
    assert [(c.encoder, c.overrides) for c in grid["knn"]] == [
        ("toy", ("top_k=5",)), ("toy", ("top_k=10",)),
        ("noise", ("top_k=5",)), ("noise", ("top_k=10",)),
    ]  # fmt: skip
    assert grid["ridge"][1].label == (
        "features.encoder=noise, expression.align=none, smooth.weight=0.0, smooth.k=6"
    )
    assert grid["ridge"][1].feature_key(FEATURES) == "X_noise"
    # No encoder key: the run's own features, and labels as before.
    plain = parse_grid(["smooth.weight=0"], ["knn"])["knn"][0]
    assert plain.encoder is None
    assert plain.feature_key(FEATURES) == FEATURES
    assert "features.encoder" not in plain.label


def test_inner_selection_chooses_the_informative_features(
    sections: list[AnnData], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    for adata in sections:
        # Stand-ins: features that mirror the expression, and features that know nothing.
        adata.obsm["X_mirror"] = np.log1p(adata.X.toarray()).astype(np.float32)
        adata.obsm["X_noise"] = rng.normal(size=(adata.n_obs, 4))
    grid = parse_grid(["features.encoder=noise,mirror"], ["knn"])
    out = tmp_path / "out"
    res = _run(sections, out, methods=["knn"], grid=grid, select="inner")
    genes = list(sections[0].var_names)
    prepared = {str(a.obs["section"].iloc[0]): prepare_section(a, genes=genes) for a in sections}
    for fold, test in prepared.items():
        selection = res["methods"]["knn"]["folds"][fold]["selection"]
        assert selection["chosen"]["features.encoder"] == "mirror"
        scores = selection["inner_mean_pcc"]
        assert scores[grid["knn"][1].label] > scores[grid["knn"][0].label]
        # The fold's prediction is knn fitted on the chosen features of its training sections.
        knn = METHODS.get("knn")(feature_key="X_mirror")
        knn.fit([a for name, a in prepared.items() if name != fold])
        np.testing.assert_allclose(_predictions(out, "knn", fold), knn.predict(test), rtol=1e-6)
    # The other candidates' features are inputs too: they key the saved folds.
    named = {str(a.obs["section"].iloc[0]): a for a in sections}
    before = runner._candidate_features(grid["knn"], named, FEATURES)
    assert list(before["grid_features"]) == ["X_mirror", "X_noise"]
    sections[0].obsm["X_noise"] = sections[0].obsm["X_noise"] + 1.0
    assert runner._candidate_features(grid["knn"], named, FEATURES) != before
    assert runner._candidate_features([Choice()], named, FEATURES) == {}
    del sections[1].obsm["X_noise"]
    with pytest.raises(GR2STDataError, match=r"^section 'S1': obsm\['X_noise'\] is missing"):
        _run(sections, tmp_path / "missing", methods=["knn"], grid=grid, select="inner")
