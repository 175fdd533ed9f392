from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from PIL import Image

from gr2st._constants import PATCHES, feature_key
from gr2st.benchmark import fold_seed, run_benchmark
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.evaluation import section_metrics
from gr2st.genes import prepare_section
from gr2st.methods import METHODS

FEATURES = feature_key("toy")  # filled by the `sections` fixture (conftest.py)
SECTION_KEYS = {
    "mean_pcc",
    "strict_mean_pcc",
    "n_spots",
    "nan_genes",
    "mse",
    "mae",
    "heg50_pcc",
    "hvg50_pcc",
}


def _run(sections: list[AnnData], out: Path, **options: Any) -> dict[str, Any]:
    options.setdefault("methods", ["test-tracker", "knn"])
    options.setdefault("genes", list(sections[0].var_names))
    options.setdefault("figures", False)
    return run_benchmark(
        sections, feature_key=FEATURES, out_dir=out, progress=False, device="cpu", **options
    )


def _without_seconds(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_seconds(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [_without_seconds(v) for v in obj]
    return obj


def test_fold_loop_fits_on_training_sections_and_scores_each_test(
    sections: list[AnnData], tmp_path: Path, tracker: Any
) -> None:
    res = _run(sections, tmp_path / "out", seed=7)
    calls = tracker.calls
    assert [c["train"] for c in calls] == [("S1", "S2"), ("S0", "S2"), ("S0", "S1")]
    assert [c["seed"] for c in calls] == [
        fold_seed(7, "test-tracker", f) for f in ("S0", "S1", "S2")
    ]
    assert calls[0]["workdir"] == tmp_path / "out" / "work" / "test-tracker" / "S0"
    assert not (tmp_path / "out" / "work").exists()  # checkpoints removed once folds finish

    genes = list(sections[0].var_names)
    for name in ("test-tracker", "knn"):
        for section, adata in zip(["S0", "S1", "S2"], sections, strict=True):
            truth = prepare_section(adata, genes=genes).X
            with np.load(tmp_path / "out" / "folds" / name / f"{section}.npz") as saved:
                pred = saved["pred_0"]
                np.testing.assert_array_equal(
                    saved["pcc_0"], section_metrics(pred, truth, genes)["pcc"]
                )
            expected = section_metrics(pred, truth, genes)
            got = res["methods"][name]["sections"][section]
            for key in SECTION_KEYS:
                assert got[key] == pytest.approx(expected[key]), (name, section, key)
        per_section = [res["methods"][name]["sections"][s]["mean_pcc"] for s in ("S0", "S1", "S2")]
        assert res["methods"][name]["mean_pcc"] == pytest.approx(np.mean(per_section))
        assert res["methods"][name]["sd_pcc"] == pytest.approx(np.std(per_section, ddof=1))
        assert res["methods"][name]["median_pcc"] == pytest.approx(np.median(per_section))
    assert res["ranking"] == ["knn", "test-tracker"]  # retrieval beats mean + noise


def test_results_json_schema(sections: list[AnnData], tmp_path: Path) -> None:
    res = _run(sections, tmp_path, methods=["knn", "oracle"], genes_label="toy panel")
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == res
    assert {"dataset", "sections", "split", "genes", "encoder", "seed", "methods"} <= set(res)
    assert res["sections"] == ["S0", "S1", "S2"]
    assert (res["split"], res["genes"], res["encoder"], res["seed"]) == (
        "section",
        "toy panel",
        "toy",
        0,
    )
    for entry in res["methods"].values():
        assert {
            "profile",
            "mean_pcc",
            "sd_pcc",
            "median_pcc",
            "strict_mean_pcc",
            "seconds",
            "sections",
        } <= set(entry)
        assert entry["profile"] == "default"
        assert entry["seconds"] == pytest.approx(sum(f["seconds"] for f in entry["folds"].values()))
        for scores in entry["sections"].values():
            assert set(scores) == SECTION_KEYS
    assert res["methods"]["oracle"]["is_ceiling"] is True
    assert res["ranking"] == ["knn"]
    assert res["ceilings"] == ["oracle"]
    assert res["methods"]["knn"]["folds"]["S0"]["config"] == {"profile": "default", "top_k": 200}


@pytest.mark.slow
def test_outputs_per_gene_csv_summary_and_figures(sections: list[AnnData], tmp_path: Path) -> None:
    res = _run(sections, tmp_path, methods=["knn", "mean", "oracle"], figures=True)
    table = pd.read_csv(tmp_path / "per_gene.csv")
    assert list(table.columns) == ["method", "section", "gene", "pcc"]
    assert len(table) == 3 * 3 * 12
    knn_s1 = table[(table.method == "knn") & (table.section == "S1")]
    assert knn_s1["pcc"].mean() == pytest.approx(
        res["methods"]["knn"]["sections"]["S1"]["mean_pcc"]
    )
    assert table[table.method == "mean"]["pcc"].isna().all()  # the NaN policy, visible

    rows = [line.split("│")[1:3] for line in (tmp_path / "summary.txt").read_text().splitlines()]
    rows = [(rank.strip(), name.strip()) for rank, name in (r for r in rows if len(r) == 2)]
    assert rows == [("1", "knn"), ("2", "mean"), ("ceiling", "oracle")]

    box = Image.open(tmp_path / "pcc_boxplots.png")
    assert box.format == "PNG"
    assert box.size[0] > 300
    best = max(
        res["methods"]["knn"]["sections"],
        key=lambda s: res["methods"]["knn"]["sections"][s]["mean_pcc"],
    )
    spatial = Image.open(tmp_path / f"spatial_{best}_knn.png")
    assert spatial.format == "PNG"
    assert spatial.size[0] > 300


def test_mean_baseline_nan_policy_in_results(sections: list[AnnData], tmp_path: Path) -> None:
    res = _run(sections, tmp_path, methods=["mean", "knn"])
    mean = res["methods"]["mean"]
    assert mean["mean_pcc"] is None  # undefined: every gene dropped
    assert mean["strict_mean_pcc"] == 0.0
    assert mean["nan_genes"] == 3 * 12
    assert res["ranking"] == ["knn", "mean"]  # undefined scores rank last


def test_resume_recomputes_only_the_missing_fold(
    sections: list[AnnData], tmp_path: Path, tracker: Any
) -> None:
    first = _run(sections, tmp_path)
    before = (tmp_path / "folds" / "test-tracker" / "S0.json").read_text()
    (tmp_path / "folds" / "test-tracker" / "S1.json").unlink()
    tracker.calls.clear()
    second = _run(sections, tmp_path)
    assert [c["train"] for c in tracker.calls] == [("S0", "S2")]  # only fold S1 refitted
    assert (tmp_path / "folds" / "test-tracker" / "S0.json").read_text() == before
    assert _without_seconds(second) == _without_seconds(first)
    assert (
        second["methods"]["test-tracker"]["folds"]["S0"]["seconds"]
        == (first["methods"]["test-tracker"]["folds"]["S0"]["seconds"])
    )


def test_new_patches_refit_only_the_pixel_methods(
    sections: list[AnnData], tmp_path: Path, tracker: Any
) -> None:
    rng = np.random.default_rng(0)
    for a in sections:
        a.obsm[PATCHES] = rng.integers(0, 256, (a.n_obs, 8, 8, 3), dtype=np.uint8)
    methods = ["test-tracker", "test-pixel-tracker"]
    _run(sections, tmp_path, methods=methods)
    assert len(tracker.calls) == 6
    tracker.calls.clear()
    _run(sections, tmp_path, methods=methods)
    assert tracker.calls == []  # everything resumed
    sections[0].obsm[PATCHES] = 255 - sections[0].obsm[PATCHES]
    _run(sections, tmp_path, methods=methods)
    # Other patches change what the pixel method reads, not what the feature method reads.
    assert [c["method"] for c in tracker.calls] == ["PixelTracker"] * 3


def test_crash_mid_run_then_rerun_matches_uninterrupted(
    sections: list[AnnData], tmp_path: Path, flaky: Any
) -> None:
    reference = _run(sections, tmp_path / "ref", methods=["test-flaky"], seed=3)
    flaky.fits, flaky.armed = 0, True
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(sections, tmp_path / "run", methods=["test-flaky"], seed=3)
    done = sorted(p.name for p in (tmp_path / "run" / "folds" / "test-flaky").iterdir())
    assert done == ["S0.json", "S0.npz"]  # nothing half-written for the crashed fold
    assert not (tmp_path / "run" / "results.json").exists()
    assert (tmp_path / "run" / "work" / "test-flaky" / "S1" / "ckpt").is_file()
    flaky.armed = False
    flaky.calls.clear()
    resumed = _run(sections, tmp_path / "run", methods=["test-flaky"], seed=3)
    assert [c["train"] for c in flaky.calls] == [("S0", "S2"), ("S0", "S1")]
    # The interrupted fold's checkpoint is handed back to the method; the next fold starts clean.
    assert [c["found_checkpoint"] for c in flaky.calls] == [True, False]
    assert _without_seconds(resumed) == _without_seconds(reference)


def test_checkpoints_of_another_request_are_discarded(
    sections: list[AnnData], tmp_path: Path, flaky: Any
) -> None:
    flaky.armed = True
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(sections, tmp_path, methods=["test-flaky"], seed=3)
    flaky.armed = False
    flaky.calls.clear()
    _run(sections, tmp_path, methods=["test-flaky"], seed=4)  # another request
    assert not any(c["found_checkpoint"] for c in flaky.calls)


def test_no_resume_and_changed_request_recompute(
    sections: list[AnnData], tmp_path: Path, tracker: Any
) -> None:
    _run(sections, tmp_path, methods=["test-tracker"])
    tracker.calls.clear()
    _run(sections, tmp_path, methods=["test-tracker"], resume=False)
    assert len(tracker.calls) == 3
    tracker.calls.clear()
    changed = _run(sections, tmp_path, methods=["test-tracker"], seed=1)  # stale fingerprint
    assert len(tracker.calls) == 3
    assert changed["seed"] == 1
    tracker.calls.clear()
    _run(sections, tmp_path, methods=["test-tracker"], seed=1)
    assert tracker.calls == []
    tracker.version = 2  # the method's resolved settings changed (e.g. new defaults)
    _run(sections, tmp_path, methods=["test-tracker"], seed=1)
    assert len(tracker.calls) == 3


def test_damaged_record_is_recomputed(
    sections: list[AnnData], tmp_path: Path, tracker: Any
) -> None:
    first = _run(sections, tmp_path, methods=["test-tracker"])
    (tmp_path / "folds" / "test-tracker" / "S2.npz").write_bytes(b"not a zip")
    tracker.calls.clear()
    again = _run(sections, tmp_path, methods=["test-tracker"])
    assert [c["train"] for c in tracker.calls] == [("S0", "S1")]
    assert _without_seconds(again) == _without_seconds(first)


def test_patient_split(sections: list[AnnData], tmp_path: Path, tracker: Any) -> None:
    res = _run(sections, tmp_path, split="patient", methods=["test-tracker"])
    # synthetic: S0, S1 → patient P0; S2 → P1.
    assert [c["train"] for c in tracker.calls] == [("S2",), ("S0", "S1")]
    assert res["split"] == "patient"
    assert sorted(res["methods"]["test-tracker"]["sections"]) == ["S0", "S1", "S2"]
    assert sorted(res["methods"]["test-tracker"]["folds"]) == ["P0", "P1"]
    assert (tmp_path / "folds" / "test-tracker" / "P0.npz").exists()


def test_target_genes_predicted_through_the_hook(
    sections: list[AnnData], tmp_path: Path, tracker: Any
) -> None:
    genes = list(sections[0].var_names)
    res = _run(sections, tmp_path, methods=["knn"], genes=genes[:6], target_genes=genes)
    assert res["n_genes"] == 12
    table = pd.read_csv(tmp_path / "per_gene.csv")
    assert table["gene"].unique().tolist() == genes
    with pytest.raises(GR2STConfigError, match="predicts only its input panel"):
        _run(
            sections, tmp_path / "x", methods=["test-tracker"], genes=genes[:6], target_genes=genes
        )


def test_profile_applies_to_learned_methods_and_is_never_a_silent_fallback(
    sections: list[AnnData], tmp_path: Path
) -> None:
    # knn learns nothing: a --profile that would apply to no method is refused...
    with pytest.raises(GR2STConfigError, match="--profile paper: none of the methods knn has"):
        _run(sections, tmp_path / "none", methods=["knn"], profile="paper")
    assert not (tmp_path / "none" / "folds").exists()
    # ...and beside a learned method it keeps its one set of settings.
    res = _run(
        sections, tmp_path, methods=["knn", "gr2st"], profile="default",
        overrides=["gr2st:train.epochs=1"],
    )  # fmt: skip
    assert res["methods"]["knn"]["profile"] == "default"
    # A learned method without the profile fails before any fold, naming its profiles.
    with pytest.raises(GR2STConfigError, match="'fancy'; it has: paper, paper-cscc, default"):
        _run(sections, tmp_path / "x", methods=["knn", "gr2st"], profile="fancy")
    assert not (tmp_path / "x" / "folds").exists()


def test_overrides_routed_and_validated_before_any_fold(
    sections: list[AnnData], tmp_path: Path
) -> None:
    res = _run(sections, tmp_path / "ok", methods=["knn", "oracle"], overrides=["knn:top_k=5"])
    assert res["methods"]["knn"]["folds"]["S0"]["config"]["top_k"] == 5
    assert res["methods"]["oracle"]["folds"]["S0"]["config"]["top_k"] == 50
    with pytest.raises(GR2STConfigError, match="unknown override 'alpha'"):
        _run(sections, tmp_path / "bad", methods=["knn"], overrides=["alpha=1"])
    assert not (tmp_path / "bad").exists()
    with pytest.raises(GR2STConfigError, match="not among the selected methods"):
        _run(sections, tmp_path / "bad", methods=["knn"], overrides=["ridge:alphas=1"])


def test_input_errors(sections: list[AnnData], tmp_path: Path) -> None:
    with pytest.raises(GR2STConfigError, match="unknown method 'nope'"):
        _run(sections, tmp_path, methods=["nope"])
    with pytest.raises(GR2STDataError, match="given twice"):
        _run([sections[0], sections[0]], tmp_path, methods=["knn"])
    with pytest.raises(GR2STConfigError, match="figure section 'Z9'"):
        _run(sections, tmp_path, methods=["knn"], figure_section="Z9")
    with pytest.raises(GR2STDataError, match="obsm\\['X_other'\\] is missing"):
        run_benchmark(
            sections,
            methods=["knn"],
            genes=list(sections[0].var_names),
            feature_key="X_other",
            out_dir=tmp_path,
            progress=False,
        )


@pytest.mark.parametrize(
    "name", ["gr2st", "mclstexp", "reg2st", "histogene", "hist2st", "thitogene", "hggep"]
)
def test_progress_is_an_option_of_every_method(name: str) -> None:
    cls = METHODS.get(name)
    assert cls(progress=False, feature_key="X_f").progress is False
    assert cls(progress=True, feature_key="X_f").progress is True
