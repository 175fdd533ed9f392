"""Importing HoVer-Net results: type mapping, file layouts and spot assignment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from gr2st._constants import (
    CELL_TYPE,
    MICRONS_PER_PIXEL,
    NUCLEAR_TYPES,
    NUCLEI_COUNTS,
    NUCLEI_MORPHOLOGY,
    SPATIAL,
    UNS,
)
from gr2st.errors import GR2STDataError
from gr2st.image.nuclei import (
    HOVERNET_PANNUKE_TYPES,
    MORPHOLOGY_NAMES,
    NUCLEI_MISSING_KEY,
    NUCLEI_SOURCE_KEY,
    HoVerNetImport,
    annotate_nuclei,
    hovernet_type_ids,
    type_ids_from_names,
)

# HoVer-Net's pannuke type_info.json: 0 nolabe, 1 neopla, 2 inflam, 3 connec, 4 necros,
# 5 no-neo (written out here independently of the package's table).
HOVERNET_NAMES = {0: "nolabe", 1: "neopla", 2: "inflam", 3: "connec", 4: "necros", 5: "no-neo"}


def section(ids: list[str], centres: list[tuple[float, float]], mpp: float = 0.5) -> AnnData:
    adata = AnnData(obs=pd.DataFrame(index=ids))
    adata.obsm[SPATIAL] = np.array(centres, dtype=float)
    adata.uns[UNS] = {MICRONS_PER_PIXEL: mpp}
    return adata


def square(cx: float, cy: float, half: float) -> list[list[float]]:
    return [
        [cx - half, cy - half],
        [cx + half, cy - half],
        [cx + half, cy + half],
        [cx - half, cy + half],
    ]


def nucleus(cx: float, cy: float, hv_type: int | None, half: float = 4.0) -> dict:
    return {
        "bbox": [[cy - half, cx - half], [cy + half, cx + half]],
        "centroid": [cx, cy],
        "contour": square(cx, cy, half),
        "type_prob": 0.9,
        "type": hv_type,
    }


def write_json(path: Path, nuclei: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"mag": None, "nuc": {str(i + 1): n for i, n in enumerate(nuclei)}}))


def test_hovernet_integers_map_to_our_names() -> None:
    ours = hovernet_type_ids(list(HOVERNET_NAMES))
    assert [NUCLEAR_TYPES[i] for i in ours] == [HOVERNET_NAMES[k] for k in HOVERNET_NAMES]
    assert ours.tolist() == [0, 2, 3, 4, 1, 5]
    assert tuple(HOVERNET_NAMES.values()) == HOVERNET_PANNUKE_TYPES


@pytest.mark.parametrize(
    ("types", "message"),
    [([1, None], "without a type"), ([6], "0..5"), ([-1], "0..5"), ([1.5], "0..5")],
)
def test_hovernet_integers_rejected(types: list, message: str) -> None:
    with pytest.raises(GR2STDataError, match=message):
        hovernet_type_ids(types, where="f.json")


def test_type_names_and_aliases() -> None:
    names = ["nolabe", "NECROS", " neopla ", "Inflammatory", "connective", "Epithelial", "Dead"]
    assert type_ids_from_names(names, where="t").tolist() == [0, 1, 2, 3, 4, 5, 1]
    with pytest.raises(GR2STDataError, match=r"t\.tsv: unknown nuclear type name\(s\) \['tumor'\]"):
        type_ids_from_names(["neopla", "Tumor"], where="t.tsv")


def test_per_spot_qupath_tsv_and_csv(tmp_path: Path) -> None:
    # HoVer-Net's QuPath export: empty 'class', type in 'name'.
    (tmp_path / "a.tsv").write_text(
        "x\ty\tclass\tname\tcolor\n1\t2\t\tneopla\t-65536\n3\t4\t\tneopla\t-65536\n"
        "5\t6\t\tinflam\t-16711936\n"
    )
    # A QuPath measurement export: object kind in 'Name', type in 'Class'.
    (tmp_path / "b.csv").write_text(
        "Image,Name,Class,Centroid X\nimg,PathCellObject,connec,1\nimg,PathCellObject,no-neo,2\n"
    )
    (tmp_path / "c.tsv").write_text("x\ty\tclass\tname\tcolor\n")  # no nuclei
    adata = section(["a", "b", "c"], [(0, 0)] * 3)
    result = annotate_nuclei(adata, source="hovernet", hovernet_path=tmp_path, progress=False)
    assert result.counts.tolist() == [
        [0, 0, 2, 1, 0, 0],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 0],
    ]
    assert adata.obs[CELL_TYPE].tolist() == [2, 4, 0]
    assert result.n_missing == 0
    assert np.isnan(adata.obsm[NUCLEI_MORPHOLOGY][:, 1:]).all()  # tables carry no shapes
    assert adata.uns[UNS][NUCLEI_SOURCE_KEY] == "hovernet"


def test_per_spot_json_in_hovernet_subfolders(tmp_path: Path) -> None:
    write_json(tmp_path / "json" / "s1.json", [nucleus(10, 10, 1), nucleus(30, 30, 4)])
    write_json(tmp_path / "json" / "s2.json", [])
    # Both layouts for s1: the JSON wins; the TSV says something else on purpose.
    (tmp_path / "qupath").mkdir()
    (tmp_path / "qupath" / "s1.tsv").write_text("x\ty\tclass\tname\n1\t1\t\tinflam\n")
    (tmp_path / "qupath" / "s3.tsv").write_text("x\ty\tclass\tname\n1\t1\t\tinflam\n")
    adata = section(["s1", "s2", "s3"], [(0, 0)] * 3, mpp=0.5)
    result = annotate_nuclei(adata, source="hovernet", hovernet_path=tmp_path, progress=False)
    assert result.counts[0].tolist() == [0, 1, 1, 0, 0, 0]  # neopla (1) + necros (4)
    assert result.counts[1].sum() == 0
    assert result.counts[2].tolist() == [0, 0, 0, 1, 0, 0]
    assert result.cell_type.tolist() == [1, 0, 3]  # tie necros/neopla → necros (first)
    # Areas come from the 8x8 px square contours at 0.5 µm/px (s3's TSV has none, so the
    # all-or-nothing rule drops areas for the section).
    assert np.isnan(result.morphology[:, MORPHOLOGY_NAMES.index("mean_area_um2")]).all()
    only_json = section(["s1", "s2"], [(0, 0)] * 2, mpp=0.5)
    result = annotate_nuclei(only_json, source="hovernet", hovernet_path=tmp_path, progress=False)
    area = result.morphology[:, MORPHOLOGY_NAMES.index("mean_area_um2")]
    assert area[0] == pytest.approx(64 * 0.25)
    assert result.morphology[0, MORPHOLOGY_NAMES.index("mean_eccentricity")] == pytest.approx(0)


def test_contour_eccentricity_of_an_ellipse(tmp_path: Path) -> None:
    t = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    a, b, rot = 20.0, 8.0, 0.7
    # Far from the origin, as in whole-slide coordinates.
    x = 9050 + a * np.cos(t) * np.cos(rot) - b * np.sin(t) * np.sin(rot)
    y = 8050 + a * np.cos(t) * np.sin(rot) + b * np.sin(t) * np.cos(rot)
    contour = np.column_stack([x, y])[::-1].tolist()  # clockwise: sign must not matter
    write_json(tmp_path / "e.json", [{"centroid": [50, 50], "contour": contour, "type": 3}])
    adata = section(["e"], [(0, 0)], mpp=1.0)
    result = annotate_nuclei(adata, source="hovernet", hovernet_path=tmp_path, progress=False)
    ecc = result.morphology[0, MORPHOLOGY_NAMES.index("mean_eccentricity")]
    assert ecc == pytest.approx(np.sqrt(1 - (b / a) ** 2), abs=1e-4)
    area = result.morphology[0, MORPHOLOGY_NAMES.index("mean_area_um2")]
    assert area == pytest.approx(np.pi * a * b, rel=1e-3)


def test_missing_records_warn_and_get_type_zero(tmp_path: Path) -> None:
    write_json(tmp_path / "s1.json", [nucleus(5, 5, 2)])
    adata = section(["s1", "s2", "s3"], [(0, 0)] * 3)
    with pytest.warns(UserWarning, match="2 of 3 spots have no nuclei record"):
        result = annotate_nuclei(adata, source="hovernet", hovernet_path=tmp_path, progress=False)
    assert result.missing.tolist() == [False, True, True]
    assert adata.obs[CELL_TYPE].tolist() == [3, 0, 0]
    assert adata.obsm[NUCLEI_COUNTS][1:].sum() == 0
    assert adata.uns[UNS][NUCLEI_MISSING_KEY] == 2


def test_folder_without_any_spot_file_is_an_error(tmp_path: Path) -> None:
    write_json(tmp_path / "unrelated.json", [])
    with pytest.raises(GR2STDataError, match=r"no HoVer-Net file named by a spot id \(e\.g\. 's1"):
        HoVerNetImport(tmp_path).detect(section(["s1"], [(0, 0)]), size_px=224, progress=False)


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GR2STDataError, match="HoVer-Net results not found"):
        HoVerNetImport(tmp_path / "nope")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("s1.json", "{not json", "not a readable HoVer-Net JSON"),
        ("s1.json", '{"mag": 40}', "'nuc' object"),
        ("s1.tsv", "x\ty\tcolour\n1\t2\tred\n", "needs a 'name' or 'class' column"),
        ("s1.tsv", "x\ty\tname\n1\t2\ttumour\n", r"unknown nuclear type name\(s\) \['tumour'\]"),
        ("s1.tsv", "", "not a readable nuclei table"),
        (
            "s1.csv",
            "Name,Class\nPathCellObject,neopla\nPathCellObject,Tumor\n",
            r"column 'Class': unknown nuclear type name\(s\) \['tumor'\]",
        ),
        (
            "s1.json",
            '{"nuc": {"1": {"type": 1, "contour": [[0, "a"], [1, 1], [2, 0]]}}}',
            "contour",
        ),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(GR2STDataError, match=message) as info:
        HoVerNetImport(tmp_path).detect(section(["s1"], [(0, 0)]), size_px=224, progress=False)
    assert "s1." in str(info.value)


def test_whole_slide_json_assigns_by_patch_square(tmp_path: Path) -> None:
    # Patch of side 10 around centre (100, 100): origin 95 → pixels 95..104, i.e. the
    # centroid range [94.5, 104.5]. Second spot at (200.4, 100) → origin 195.
    nuclei = [
        nucleus(100, 100, 1),  # centre of spot 0
        nucleus(94.6, 104.4, 2),  # inside spot 0, near the corner
        nucleus(94.4, 100, 3),  # just left of spot 0: nowhere
        nucleus(199.5, 96, 2),  # spot 1
        nucleus(150, 150, 5),  # between spots: nowhere
    ]
    slide = tmp_path / "slide.json"
    write_json(slide, nuclei)
    adata = section(["p", "q", "r"], [(100.0, 100.0), (200.4, 100.0), (400.0, 400.0)])
    result = annotate_nuclei(
        adata, source="hovernet", hovernet_path=slide, size_px=10, progress=False
    )
    assert result.counts.tolist() == [
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ]
    assert result.cell_type.tolist() == [2, 3, 0]
    assert result.n_missing == 0  # the slide covers every spot: empty, not missing
    assert result.morphology[0, MORPHOLOGY_NAMES.index("mean_area_um2")] == pytest.approx(16.0)


def test_whole_slide_json_needs_centroids(tmp_path: Path) -> None:
    write_json(tmp_path / "slide.json", [{"type": 1}])
    with pytest.raises(GR2STDataError, match="needs a 'centroid'"):
        HoVerNetImport(tmp_path / "slide.json").detect(
            section(["p"], [(5, 5)]), size_px=10, progress=False
        )
