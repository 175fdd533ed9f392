"""results.json records each section's spot-on-image check, as the command line ran it."""

from __future__ import annotations

import json
from pathlib import Path

from gr2st._constants import IMAGE_CHECK, UNS
from gr2st.benchmark import run_benchmark
from gr2st.datasets import synthetic
from gr2st.image.tissue import check_section_image


def test_results_record_the_image_checks(tmp_path: Path) -> None:
    secs = synthetic(n_sections=3, n_genes=6, grid=(4, 4), image_dir=tmp_path / "img")
    for s in secs:
        s.obsm["X_toy"] = s.obs[["latent_state"]].to_numpy(float)
    checks = [check_section_image(s) for s in secs[:2]]  # the third section: not checked
    results = run_benchmark(
        secs,
        methods=["knn"],
        genes=list(secs[0].var_names),
        feature_key="X_toy",
        out_dir=tmp_path / "out",
        progress=False,
        figures=False,
    )
    assert IMAGE_CHECK not in secs[2].uns[UNS]
    expected = {c.section: c.to_dict() for c in checks if c is not None}
    assert set(expected) == {"S0", "S1"}
    assert results["image_checks"] == expected
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["image_checks"]["S0"]["on_tissue"] == 1.0
