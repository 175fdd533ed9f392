"""Facts about the real HER2ST data (skipped when ../shared/data/her2st is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gr2st._constants import (
    IMAGE_PATH,
    MICRONS_PER_PIXEL,
    PATHOLOGY,
    PATIENT,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNS,
    ZERO_PANEL_SPOTS,
)
from gr2st.genes import check_genes, get_panel, prepare_section
from gr2st.io import list_her2st, read_her2st
from gr2st.io._validate import image_size

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

IMAGED = ["B4", "C2", "C3", "C4", "C5", "C6"]


def test_b4(her2st_root: Path) -> None:
    adata = read_her2st(her2st_root, "B4")
    assert adata.n_obs == 283
    assert adata.obsm[SPATIAL].shape == (283, 2)
    assert set(adata.obs[PATIENT]) == {"B"}
    image = Path(adata.uns[UNS][IMAGE_PATH])
    assert image.name == "BT10737_D2_HE.jpg"
    width, height = image_size(image)
    assert (width, height) == (9272, 9923)
    # The data README: ~0.69 µm/px, so a 100 µm spot is ~145 px wide.
    assert adata.uns[UNS][MICRONS_PER_PIXEL] == pytest.approx(0.69, abs=0.01)
    assert adata.uns[UNS][SPOT_DIAMETER_PX] == pytest.approx(145, abs=3)
    # Every 224-px patch lies inside the image.
    xy = adata.obsm[SPATIAL]
    assert (xy.min(axis=0) >= 112).all()
    assert (xy.max(axis=0) <= np.array([width, height]) - 112).all()


def test_c3(her2st_root: Path) -> None:
    assert read_her2st(her2st_root, "C3").n_obs == 180


def test_a1_pathology(her2st_root: Path) -> None:
    labels = read_her2st(her2st_root, "A1").obs[PATHOLOGY]
    assert labels.notna().all()
    assert labels.value_counts().to_dict() == {
        "invasive cancer": 282,
        "connective tissue": 24,
        "cancer in situ": 21,
        "adipose tissue": 12,
        "undetermined": 5,
        "immune infiltrate": 2,
    }


def test_listing(her2st_root: Path) -> None:
    table = list_her2st(her2st_root)
    assert len(table) == 36
    assert table.loc[table["has_image"], "section"].tolist() == IMAGED
    assert table.loc[table["has_labels"], "section"].tolist() == [
        "A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1"
    ]  # fmt: skip


def test_all_sections_load_with_the_panel(her2st_root: Path) -> None:
    panel = get_panel("her2st-785")
    zero_spots = 0
    for section in list_her2st(her2st_root)["section"]:
        adata = read_her2st(her2st_root, section)
        check_genes(adata, panel, source=section)
        if section in IMAGED:
            prepared = prepare_section(adata, genes=panel)
            zero_spots += len(prepared.uns[UNS][ZERO_PANEL_SPOTS])
            assert np.isfinite(prepared.X).all()
    # Six spots of HER2ST-6 have no count over the 785-gene panel.
    assert zero_spots == 6
