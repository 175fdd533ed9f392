"""Built-in and user gene panels, gene checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.genes import check_genes, common_genes, get_panel, list_panels

_SHARED_GENES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "genes"


def test_builtin_panels() -> None:
    assert list_panels() == ["cscc-171", "her2st-785"]
    her2st = get_panel("her2st-785")
    cscc = get_panel("cscc-171")
    assert len(her2st) == len(set(her2st)) == 785
    assert len(cscc) == len(set(cscc)) == 171
    assert her2st[:3] == ["HPS6", "TNC", "NR1H2"]
    assert cscc[:3] == ["PPP1R12A", "S100P", "IMP4"]


@pytest.mark.parametrize(
    ("name", "published"),
    [("her2st-785", "her_hvg_cut_1000.txt"), ("cscc-171", "skin_hvg_cut_1000.txt")],
)
def test_builtin_panels_match_the_published_lists(name: str, published: str) -> None:
    path = _SHARED_GENES / published
    if not path.is_file():
        pytest.skip(f"published gene list not found at {path}")
    assert get_panel(name) == path.read_text().split()


def test_panel_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("# my genes\nERBB2\n\n  KRT5  # basal\nACTB\n")
    assert get_panel(path) == ["ERBB2", "KRT5", "ACTB"]
    assert get_panel(str(path)) == ["ERBB2", "KRT5", "ACTB"]


def test_panel_errors(tmp_path: Path) -> None:
    with pytest.raises(GR2STConfigError, match="unknown gene panel 'her2st'; expected one of"):
        get_panel("her2st")
    (tmp_path / "dup.txt").write_text("A\nB\nA\nC\nB\n")
    with pytest.raises(GR2STDataError, match=r"dup\.txt: duplicated gene\(s\) 'A', 'B'$"):
        get_panel(tmp_path / "dup.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(GR2STDataError, match=r"empty\.txt: gene panel is empty"):
        get_panel(tmp_path / "empty.txt")


def test_check_genes_names_missing_genes() -> None:
    section = synthetic(n_sections=1, n_genes=3, grid=(2, 2))[0]
    check_genes(section, ["GENE002", "GENE000"], source="S0")
    wanted = ["GENE000", *(f"X{i}" for i in range(7))]
    with pytest.raises(
        GR2STDataError,
        match=r"^S0: 7 of 8 genes missing: 'X0', 'X1', 'X2', 'X3', 'X4', … \(7 in all\); the "
        r"data's genes are e\.g\. 'GENE000', 'GENE001', 'GENE002': choose a panel of this data "
        r"with --panel FILE \(gr2st panel writes one\) or --genes$",
    ):
        check_genes(section, wanted, source="S0")


def test_common_genes_keeps_the_first_sections_order() -> None:
    a, b, c = synthetic(n_sections=3, n_genes=5, grid=(2, 2))
    b = b[:, ["GENE004", "GENE001", "GENE003"]]
    c = c[:, ["GENE003", "GENE004", "GENE000", "GENE001"]]
    assert common_genes([a, b, c]) == ["GENE001", "GENE003", "GENE004"]
    with pytest.raises(GR2STConfigError, match="at least one section"):
        common_genes([])
