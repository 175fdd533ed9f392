from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from gr2st._constants import SECTION
from gr2st.cli.main import app
from gr2st.datasets import synthetic, write_her2st_layout
from gr2st.image.contact_sheet import HEADER_PX, LABEL_PX

runner = CliRunner()


def test_patches_command_writes_a_sheet(tmp_path: Path) -> None:
    (section,) = synthetic(n_sections=1, grid=(4, 4), image_dir=tmp_path / "img", seed=1)
    section.obs[SECTION] = "C2"
    root = write_her2st_layout([section], tmp_path / "her2st")
    out = tmp_path / "grid.png"
    args = ["patches", "--data", str(root), "--section", "C2", "--n", "4", "--size", "40"]
    result = runner.invoke(app, [*args, "--stain", "macenko", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    assert Image.open(out).size == (2 * 160, HEADER_PX + 2 * (160 + LABEL_PX))


def test_patches_command_rejects_an_unknown_stain(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "patches",
            "--data",
            str(tmp_path),
            "--section",
            "C2",
            "--stain",
            "nope",
            "--out",
            str(tmp_path / "g.png"),
        ],
    )
    assert result.exit_code != 0
    assert "unknown stain normaliser 'nope'" in str(result.exception)
    assert not (tmp_path / "g.png").exists()


@pytest.mark.realdata
@pytest.mark.slow
def test_patches_command_on_real_c2(real_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "c2.png"
    result = runner.invoke(
        app, ["patches", "--data", str(real_root), "--section", "C2", "--n", "9", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (3 * 160, HEADER_PX + 3 * (160 + LABEL_PX))


def test_patches_from_any_predict_input(tmp_path: Path, make_squidpy_visium) -> None:
    import pandas as pd

    (section,) = synthetic(n_sections=1, grid=(6, 6), image_dir=tmp_path / "img", seed=2)
    image = section.uns["gr2st"]["image_path"]
    xy = section.obsm["spatial"]
    csv = tmp_path / "spots.csv"
    pd.DataFrame({"id": section.obs_names, "x": xy[:, 0], "y": xy[:, 1]}).to_csv(csv, index=False)
    sheets = []
    for seed in ("0", "0", "1"):
        out = tmp_path / f"csv{len(sheets)}.png"
        result = runner.invoke(
            app,
            ["patches", "--spots", str(csv), "--image", image, "--n", "4", "--size", "40",
             "--seed", seed, "--out", str(out)],
        )  # fmt: skip
        assert result.exit_code == 0, result.exception
        assert "(4 of 36 spots of spots, 40 px patches)" in result.output
        assert Image.open(out).size == (2 * 160, HEADER_PX + 2 * (160 + LABEL_PX))
        sheets.append(out.read_bytes())
    assert sheets[0] == sheets[1]  # a seed picks the same spots
    assert sheets[0] != sheets[2]
    h5ad, _ = make_squidpy_visium(Path(image), tmp_path / "visium")
    result = runner.invoke(
        app, ["patches", "--h5ad", str(h5ad), "--n", "9", "--out", str(tmp_path / "v.png")]
    )
    assert result.exit_code == 0, result.exception
    assert "(9 of 42 spots of V1, 224 px patches)" in result.output


def test_patches_input_errors(tmp_path: Path) -> None:
    out = ["--out", str(tmp_path / "x.png")]
    result = runner.invoke(app, ["patches", "--data", str(tmp_path), *out])
    assert "--data and --section go together" in str(result.exception)
    result = runner.invoke(
        app, ["patches", "--data", str(tmp_path), "--section", "C2", "--grid", *out]
    )
    assert "either --data/--section or one predict input" in str(result.exception)
    result = runner.invoke(app, ["patches", *out])
    assert "give exactly one of --spots, --visium, --h5ad, --spatialdata, --grid" in str(
        result.exception
    )
    assert not (tmp_path / "x.png").exists()
