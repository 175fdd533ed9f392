from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from anndata import AnnData
from typer.testing import CliRunner

from gr2st._constants import feature_key
from gr2st.benchmark import run_benchmark
from gr2st.cli.benchmark import resolve_data_dir, resolve_methods
from gr2st.cli.main import app
from gr2st.datasets import synthetic, write_her2st_layout
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.genes import get_panel

FEATURES = feature_key("toy")
REPO = Path(__file__).resolve().parents[2]


def _toy_sections(image_dir: Path | None, *, n: int = 3) -> list[AnnData]:
    secs = synthetic(n_sections=n, n_genes=12, grid=(6, 6), signal=2.0, image_dir=image_dir, seed=1)
    rng = np.random.default_rng(0)
    for adata in secs:
        onehot = 2.0 * np.eye(5)[adata.obs["latent_state"].to_numpy()]
        adata.obsm[FEATURES] = (onehot + rng.normal(scale=0.3, size=onehot.shape)).astype(
            np.float32
        )
    return secs


@pytest.fixture
def h5ad_dir(tmp_path: Path) -> Path:
    """Three synthetic sections with stand-in features, one .h5ad each, and a gene panel."""
    folder = tmp_path / "data"
    folder.mkdir()
    for adata in _toy_sections(folder):
        adata.write_h5ad(folder / f"{adata.obs['section'].iloc[0]}.h5ad")
    (tmp_path / "panel.txt").write_text("\n".join(f"GENE{i:03d}" for i in range(6)) + "\n")
    return folder


def _invoke(*args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, ["benchmark", *args])
    return result.exit_code, result.output, result.exception


def test_h5ad_folder_panel_and_all_genes(h5ad_dir: Path, tmp_path: Path) -> None:
    common = ["--data", str(h5ad_dir), "--methods", "knn,mean", "--encoder", "toy"]
    common += ["--panel", str(tmp_path / "panel.txt"), "--no-progress", "--no-figures"]
    code, output, exc = _invoke(*common, "--out", str(tmp_path / "panel"))
    assert code == 0, exc
    assert "knn" in output
    assert "Results in" in output
    res = json.loads((tmp_path / "panel" / "results.json").read_text())
    assert res["dataset"] == "data"
    assert res["sections"] == ["S0", "S1", "S2"]
    assert res["n_genes"] == 6
    assert res["encoder"] == "toy"
    assert res["ranking"] == ["knn", "mean"]
    # --no-progress: one line per finished fold, with the score results.json records
    knn_s0 = res["methods"]["knn"]["sections"]["S0"]["mean_pcc"]
    assert f"knn S0: fold done, mean PCC {knn_s0:.4f} (" in output
    assert "/6 folds) (" in output
    assert sum(": fold done, " in line for line in output.splitlines()) == 6

    code, _, exc = _invoke(*common, "--genes", "all", "--out", str(tmp_path / "all"))
    assert code == 0, exc
    res = json.loads((tmp_path / "all" / "results.json").read_text())
    assert res["n_genes"] == 12
    assert res["genes"].startswith("all 12 genes")


@pytest.mark.slow
def test_pixel_methods_get_cached_patches(h5ad_dir: Path, tmp_path: Path) -> None:
    tiny = ["epochs=1", "dim=16", "depth=1", "heads=2", "dim_head=8", "mlp_dim=16"]
    code, _, exc = _invoke(
        "--data", str(h5ad_dir), "--methods", "histogene,knn", "--encoder", "toy",
        "--profile", "default", "--panel", str(tmp_path / "panel.txt"),
        *[a for t in tiny for a in ("--set", f"histogene:{t}")],
        "--cache", str(tmp_path / "cache"), "--no-progress", "--no-figures",
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 0, exc
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert set(res["methods"]) == {"histogene", "knn"}
    assert res["methods"]["histogene"]["profile"] == "default"
    assert res["methods"]["histogene"]["sections"]["S0"]["n_spots"] == 36
    cached = sorted(p.parent.name for p in (tmp_path / "cache").rglob("patches-*.npz"))
    assert cached == ["S0", "S1", "S2"]


def test_cli_options_reach_the_fold_loop(h5ad_dir: Path, tmp_path: Path) -> None:
    code, _, exc = _invoke(
        "--data", str(h5ad_dir), "--methods", "knn", "--encoder", "toy", "--sections", "S0,S2",
        "--genes", "GENE000,GENE001,GENE002", "--split", "patient", "--seed", "5",
        "--set", "knn:top_k=9", "--no-progress", "--no-figures", "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 0, exc
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["sections"] == ["S0", "S2"]
    assert (res["split"], res["seed"], res["n_genes"]) == ("patient", 5, 3)
    assert res["methods"]["knn"]["folds"]["P0"]["config"]["top_k"] == 9


def test_grid_and_inner_selection_reach_results_json(h5ad_dir: Path, tmp_path: Path) -> None:
    code, _, exc = _invoke(
        "--data", str(h5ad_dir), "--methods", "knn,mean", "--encoder", "toy",
        "--grid", "smooth.weight=0,0.5", "--grid", "knn:top_k=5,50", "--select", "inner",
        "--inner-folds", "1", "--panel", str(tmp_path / "panel.txt"), "--no-progress",
        "--no-figures", "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 0, exc
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    for fold in ("S0", "S1", "S2"):
        selection = res["methods"]["knn"]["folds"][fold]["selection"]
        assert len(selection["inner_mean_pcc"]) == 4
        assert selection["inner_folds"] == [next(s for s in ("S0", "S1", "S2") if s != fold)]
        assert selection["chosen"]["top_k"] in ("5", "50")
    _, _, exc = _invoke(
        "--data", str(h5ad_dir), "--methods", "knn", "--encoder", "toy", "--select", "best",
        "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert isinstance(exc, GR2STConfigError)
    assert "--select: expected one of none, inner, got 'best'" in str(exc)


def test_cli_errors(h5ad_dir: Path, tmp_path: Path) -> None:
    _, _, exc = _invoke("--data", str(h5ad_dir), "--methods", "nope")
    assert isinstance(exc, GR2STConfigError)
    assert "unknown method 'nope'" in str(exc)
    _, _, exc = _invoke("--data", str(h5ad_dir), "--methods", "knn", "--sections", "S9")
    assert isinstance(exc, GR2STDataError)
    assert "no .h5ad section named ['S9']" in str(exc)
    _, _, exc = _invoke("--data", str(tmp_path), "--methods", "knn")
    assert isinstance(exc, GR2STDataError)
    assert "neither a HER2ST folder" in str(exc)


def test_data_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GR2ST_DATA", raising=False)
    with pytest.raises(GR2STDataError, match="or use --data auto "):
        resolve_data_dir(None)
    (tmp_path / "store" / "her2st" / "ST-cnts").mkdir(parents=True)
    monkeypatch.setenv("GR2ST_DATA", str(tmp_path / "store"))
    assert resolve_data_dir(None) == tmp_path / "store" / "her2st"
    monkeypatch.delenv("GR2ST_DATA")
    (tmp_path / "work").mkdir()
    (tmp_path / "shared" / "data" / "her2st").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert resolve_data_dir(None).resolve() == tmp_path / "shared" / "data" / "her2st"
    with pytest.raises(GR2STDataError, match="no such folder"):
        resolve_data_dir(tmp_path / "missing")


def test_resolve_methods() -> None:
    everything = resolve_methods("all")
    assert {"gr2st", "mean", "ridge", "knn", "oracle"} <= set(everything)
    assert resolve_methods("ridge,knn") == ["ridge", "knn"]
    with pytest.raises(GR2STConfigError, match="expected method names"):
        resolve_methods(" , ")


@pytest.mark.slow
def test_her2st_layout_defaults_to_imaged_sections_and_computes_features(
    tmp_path: Path,
) -> None:
    imaged = _toy_sections(tmp_path / "img", n=3)
    plain = _toy_sections(None, n=1)
    for adata, name in zip([*imaged, *plain], ["B1", "C1", "C2", "D1"], strict=True):
        adata.obs["section"] = name
    root = write_her2st_layout([*imaged, *plain], tmp_path / "her2st")
    panel = tmp_path / "panel.txt"
    panel.write_text("\n".join(f"GENE{i:03d}" for i in range(12)) + "\n")
    code, _, exc = _invoke(
        "--data", str(root), "--methods", "knn", "--nuclei", "none", "--panel", str(panel),
        "--cache", str(tmp_path / "cache"), "--no-progress", "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 0, exc
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["dataset"] == "her2st"
    assert res["sections"] == ["B1", "C1", "C2"]  # D1 has no image
    assert res["encoder"] == "efficientnet-lite0"
    assert any((tmp_path / "cache").rglob("*")), "features were not cached"
    assert (tmp_path / "o" / "pcc_boxplots.png").is_file()


_PLUGIN = """
import time
from gr2st.methods import METHODS
from gr2st.methods.knn import KNNBaseline


@METHODS.register("slow-knn")
class SlowKNN(KNNBaseline):
    def fit(self, train, *, workdir=None):
        time.sleep(1.5)
        super().fit(train, workdir=workdir)
"""


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_resumes(h5ad_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "slow_knn_plugin.py").write_text(textwrap.dedent(_PLUGIN))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "plugin")}
    out = tmp_path / "out"
    command = [
        sys.executable, "-c", "import slow_knn_plugin; from gr2st.cli.main import main; main()",
        "benchmark", "--data", str(h5ad_dir), "--methods", "slow-knn", "--encoder", "toy",
        "--panel", str(tmp_path / "panel.txt"), "--no-progress", "--no-figures",
        "--out", str(out),
    ]  # fmt: skip
    first_fold = out / "folds" / "slow-knn" / "S0.json"
    proc = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 180
        while not first_fold.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the first fold never finished"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()
    saved = first_fold.read_text()

    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert first_fold.read_text() == saved  # loaded, not recomputed
    resumed = json.loads((out / "results.json").read_text())["methods"]["slow-knn"]

    # Same numbers as an uninterrupted run of the same algorithm.
    sections = _toy_sections(tmp_path / "img2")
    reference = run_benchmark(
        sections, methods=["knn"], genes=get_panel(tmp_path / "panel.txt"), feature_key=FEATURES,
        out_dir=tmp_path / "ref", progress=False, figures=False,
    )["methods"]["knn"]  # fmt: skip
    assert resumed["sections"] == reference["sections"]
    assert resumed["mean_pcc"] == reference["mean_pcc"]


@pytest.mark.slow
def test_hest_folder_runs_end_to_end_with_the_patient_split(tmp_path: Path) -> None:
    from gr2st.datasets import write_hest_layout

    secs = synthetic(
        n_sections=4, sections_per_patient=2, n_genes=12, grid=(5, 5), signal=2.0,
        image_dir=tmp_path / "img", seed=7,
    )  # fmt: skip
    root = write_hest_layout(secs, tmp_path / "hest")
    panel = tmp_path / "panel.txt"
    panel.write_text("\n".join(f"GENE{i:03d}" for i in range(8)) + "\n")
    code, output, exc = _invoke(
        "--data", str(root), "--methods", "knn,mean", "--split", "patient", "--nuclei", "none",
        "--panel", str(panel), "--cache", str(tmp_path / "cache"), "--no-progress",
        "--no-figures", "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 0, exc
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["dataset"] == "hest"
    assert res["split"] == "patient"
    assert res["sections"] == ["S0", "S1", "S2", "S3"]
    assert res["n_genes"] == 8
    folds = res["methods"]["knn"]["folds"]
    assert sorted(folds) == ["P0 (synthetic)", "P1 (synthetic)"]
    for method in ("knn", "mean"):
        assert sorted(res["methods"][method]["sections"]) == ["S0", "S1", "S2", "S3"]
    # Every held-out section is scored (a constant mean prediction has no PCC, only errors).
    assert all(np.isfinite(s["mean_pcc"]) for s in res["methods"]["knn"]["sections"].values())
    assert all(s["n_spots"] == 25 for s in res["methods"]["mean"]["sections"].values())
    assert all(np.isfinite(s["mse"]) for s in res["methods"]["mean"]["sections"].values())
    assert "Results in" in output


@pytest.mark.slow
def test_grid_of_encoders_extracts_each_candidate_and_selects_per_fold(
    h5ad_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GR2ST_CACHE_DIR", str(tmp_path / "user-cache"))
    layers = "efficientnet-lite0@s2"
    code, _, exc = _invoke(
        "--data", str(h5ad_dir), "--methods", "knn", "--encoder", "toy",
        "--grid", f"features.encoder=toy,{layers}", "--select", "inner", "--inner-folds", "1",
        "--size", "32", "--nuclei", "none", "--cache", str(tmp_path / "cache"),
        "--panel", str(tmp_path / "panel.txt"), "--no-progress", "--no-figures",
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 0, exc
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    for fold in ("S0", "S1", "S2"):
        selection = res["methods"]["knn"]["folds"][fold]["selection"]
        assert selection["chosen"]["features.encoder"] in ("toy", layers)
        assert sorted(selection["inner_mean_pcc"]) == [
            f"features.encoder={name}, expression.align=none, smooth.weight=0.0, smooth.k=6"
            for name in (layers, "toy")
        ]
    # The candidate's features were extracted once per section, into the cache.
    assert len(list((tmp_path / "cache").rglob("features-*.npz"))) == 3


def test_grid_encoders_take_the_runs_views_and_context() -> None:
    from gr2st.benchmark.selection import Choice
    from gr2st.cli.benchmark import _with_views

    choice = Choice(encoder="efficientnet-lite0@s4.s6+efficientnet-lite2")
    assert _with_views(choice, tta=8, context=448, size=None).encoder == (
        "efficientnet-lite0@s4.s6-tta8+efficientnet-lite2-tta8-ctx2x"
    )
    assert _with_views(choice, tta=1, context=None, size=None) == choice
    assert _with_views(Choice(), tta=8, context=None, size=None) == Choice()


def test_a_panel_the_data_lacks_fails_before_the_image_work(tmp_path: Path) -> None:
    folder = tmp_path / "mouse"
    folder.mkdir()
    for adata in _toy_sections(folder):
        adata.var_names = [g.capitalize() for g in adata.var_names]  # 'Gene000': mouse style
        del adata.obsm[FEATURES]  # features would have to be computed first
        adata.write_h5ad(folder / f"{adata.obs['section'].iloc[0]}.h5ad")
    cache = tmp_path / "cache"
    code, _, exc = _invoke(
        "--data", str(folder), "--methods", "knn", "--cache", str(cache), "--no-progress",
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code != 0
    assert str(exc).startswith("section S0 (her2st-785): 785 of 785 genes missing: ")
    assert str(exc).endswith(
        "; the data's genes are symbols in mouse/rat style (e.g. 'Gene000', 'Gene001', "
        "'Gene002', … (12 in all)): choose a panel of this data with --panel FILE (gr2st "
        "panel writes one) or --genes"
    )
    assert not cache.exists()
