"""``gr2st data fetch`` end to end, against a local HTTP server (never the internet)."""

from __future__ import annotations

import hashlib
import shlex
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gr2st.cli.main import app, main
from gr2st.io import download
from gr2st.io.download import Manifest, RemoteFile
from range_server import RangeServer

FILES = {"ST-cnts/A1.tsv.gz": b"counts" * 1000, "ST-spotfiles/A1_selection.tsv": b"x\ty\n1\t2\n"}


@pytest.fixture
def mirror(range_server: RangeServer) -> str:
    """URL of a local server holding ``FILES`` under their relative paths."""
    range_server.files.update(FILES)
    return range_server.url


@pytest.fixture
def tiny_her2st(monkeypatch: pytest.MonkeyPatch) -> Manifest:
    """Replace the built-in HER2ST manifest by two files (the real one lists 118)."""
    files = tuple(RemoteFile(p, len(b), hashlib.sha256(b).hexdigest()) for p, b in FILES.items())
    manifest = Manifest(name="her2st", base_url="https://unreachable.invalid/", files=files)
    monkeypatch.setattr(download, "get_manifest", lambda name, sections=None: manifest)
    return manifest


def test_fetch_prints_destination_and_the_benchmark_argument(
    tiny_her2st: Manifest, mirror: str, tmp_path: Path
) -> None:
    dest = tmp_path / "my data"  # a space, so the printed argument must be quoted
    args = ["data", "fetch", "her2st", "--dest", str(dest), "--mirror", mirror, "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == f"Fetching her2st into {dest.resolve()}"
    assert lines[1] == f"her2st: downloading 2 files (0.0 MiB) from {mirror} into {dest.resolve()}"
    assert lines[2] == "Done: 2 downloaded (0.0 MiB), 0 already present, 0 extracted."
    assert lines[-1] == f"Use it with: gr2st benchmark --data {shlex.quote(str(dest.resolve()))}"
    assert {p: (dest / p).read_bytes() for p in FILES} == FILES

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert f"her2st: every file is already in {dest.resolve()}" in again.output
    assert "Done: 0 downloaded (0.0 MiB), 2 already present, 0 extracted." in again.output


def test_a_missing_file_exits_with_a_one_line_error(
    tiny_her2st: Manifest,
    mirror: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broken = Manifest(
        name="her2st",
        base_url=tiny_her2st.base_url,
        files=(*tiny_her2st.files, RemoteFile("ST-cnts/Z9.tsv.gz")),
    )
    monkeypatch.setattr(download, "get_manifest", lambda name, sections=None: broken)
    argv = ["gr2st", "data", "fetch", "her2st", "--dest", str(tmp_path / "d"), "--mirror", mirror]
    monkeypatch.setattr(sys, "argv", [*argv, "--no-progress"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: {mirror}ST-cnts/Z9.tsv.gz was not found (HTTP 404)\n"


def test_an_unknown_dataset_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["gr2st", "data", "fetch", "visium", "--dest", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: unknown dataset 'visium'; known: cscc, her2st, hest\n"
    assert list(tmp_path.iterdir()) == []


def test_help_says_where_each_dataset_comes_from() -> None:
    group = CliRunner().invoke(app, ["data", "--help"])
    assert group.exit_code == 0
    assert "fetch" in group.output
    result = CliRunner().invoke(app, ["data", "fetch", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for fact in (
        "github.com/almaan/her2st at commit 85df741",
        "copy data/ST-imgs into DEST/ST-imgs",
        "GEO GSE144240_RAW.tar",
        "--mirror",
    ):
        assert fact in text


def test_data_check_on_her2st_layout(tmp_path: Path) -> None:
    from gr2st._constants import SECTION
    from gr2st.datasets import synthetic, write_her2st_layout

    genes_file = tmp_path / "panel.txt"
    secs = synthetic(n_sections=2, n_genes=6, grid=(3, 3), image_dir=tmp_path / "img", seed=0)
    for name, s in zip(["A1", "B1"], secs, strict=True):
        s.obs[SECTION] = name
    secs[1].uns["gr2st"]["image_path"] = None
    genes_file.write_text("\n".join(secs[0].var_names[:4]) + "\n")
    root = write_her2st_layout(secs, tmp_path / "her2st")
    result = CliRunner().invoke(
        app, ["data", "check", "--data", str(root), "--panel", str(genes_file)]
    )
    assert result.exit_code == 0, result.output
    assert "A1: 9 spots, image yes" in result.output
    assert "B1: 9 spots, image no" in result.output
    assert "Sections with an image (the benchmark's default): A1" in result.output

    genes_file.write_text("GENE000\nNOT_A_GENE\n")
    result = CliRunner().invoke(
        app, ["data", "check", "--data", str(root), "--panel", str(genes_file)]
    )
    assert result.exit_code != 0
    assert "NOT_A_GENE" in str(result.exception)


def _legacy_2k(folder: Path) -> tuple[Path, Path, Path]:
    """A 2k legacy-ST section (diagonal neighbours, 100 µm steps) at 4.37 µm/px, imaged."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    grid = np.array([[x, y] for y in range(1, 9) for x in range(1, 9) if (x + y) % 2 == 0])
    pixels = 30 + grid * 100 / 4.37
    pd.DataFrame(
        {"x": grid[:, 0], "y": grid[:, 1], "pixel_x": pixels[:, 0], "pixel_y": pixels[:, 1]}
    ).to_csv(folder / "spots.tsv", sep="\t", index=False)
    ids = [f"{x}x{y}" for x, y in grid]
    counts = np.arange(len(ids) * 3).reshape(-1, 3) % 5 + 1
    pd.DataFrame(counts, index=ids, columns=["Actb", "Gapdh", "Ptprc"]).to_csv(
        folder / "M1.tsv", sep="\t"
    )
    Image.new("RGB", (260, 260), (220, 150, 190)).save(folder / "M1.png")
    return folder / "M1.tsv", folder / "spots.tsv", folder / "M1.png"


def test_data_import_st_infers_the_2k_geometry_and_data_check_reads_h5ad(
    tmp_path: Path,
) -> None:
    import anndata

    counts, spots, image = _legacy_2k(tmp_path / "raw")
    out = tmp_path / "sections" / "M1.h5ad"
    args = ["data", "import", "st", "--counts", str(counts), "--spots", str(spots)]
    result = CliRunner().invoke(app, [*args, "--image", str(image), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (
        f"{out}: 32 spots × 3 genes; st-2k (100 µm per array step), 4.37 µm/px "
        "(x 4.37, y 4.37), spot 22.9 px; image"
    ) in result.output
    written = anndata.read_h5ad(out)
    assert written.uns["gr2st"]["microns_per_pixel"] == pytest.approx(4.37)
    assert written.uns["gr2st"]["geometry"]["platform"] == "st-2k"
    # a contradicting override fails with one line and writes nothing
    bad = tmp_path / "bad.h5ad"
    result = CliRunner().invoke(app, [*args, "--mpp", "8.7", "--out", str(bad)])
    assert result.exit_code != 0
    assert "--mpp gives 8.7 µm/px but the st-2k pitch (100 µm per array step) gives 4.37" in (
        str(result.exception) + result.output
    )
    assert not bad.exists()

    panel = tmp_path / "panel.txt"
    panel.write_text("Actb\nPtprc\n")
    check = ["data", "check", "--data", str(out.parent), "--panel", str(panel)]
    result = CliRunner().invoke(app, check)
    assert result.exit_code == 0, result.output
    assert (
        "M1: 32 spots, image yes (100 % of spots on tissue), 4.37 µm/px, 0 spot(s) with zero"
        in (result.output)
    )
    assert "1 sections read; all contain the 2" in result.output


def test_panel_is_chosen_from_the_named_sections_only(tmp_path: Path) -> None:
    from gr2st.datasets import synthetic
    from gr2st.genes import hvg_panel
    from gr2st.io import read_h5ad

    folder = tmp_path / "h5ad"
    folder.mkdir()
    for adata in synthetic(n_sections=3, n_genes=30, grid=(6, 6), seed=3):
        adata.write_h5ad(folder / f"{adata.obs['section'].iloc[0]}.h5ad")
    out = tmp_path / "panel.txt"
    args = ["panel", "--data", str(folder), "--n-top", "5", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--sections", "S0,S1"])
    assert result.exit_code == 0, result.output
    train = [read_h5ad(folder / f"{s}.h5ad") for s in ("S0", "S1")]
    expected = hvg_panel(train, n_top=5)
    assert out.read_text().splitlines() == expected
    assert f"{out}: {len(expected)} genes from 2 section(s) (S0, S1), 5 per section" in (
        result.output
    )
    # the test section changes the panel: choosing it on every section would leak
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines() != expected
