"""Per-spot reduction of nuclei: counts, proportions, morphology and the spot type rule."""

from __future__ import annotations

import numpy as np
import pytest

from gr2st._constants import NUCLEAR_TYPES
from gr2st.image.nuclei import MORPHOLOGY_NAMES, NucleiTable, composition, dominant_type, summarise


def test_dominant_type_hand_example() -> None:
    counts = np.array(
        [
            [0, 0, 5, 1, 0, 0],  # clear neopla
            [0, 0, 3, 3, 1, 0],  # tie neopla/inflam → first in order: neopla
            [2, 0, 0, 0, 0, 2],  # tie nolabe/no-neo → nolabe
            [0, 0, 0, 0, 0, 0],  # no nuclei → nolabe
            [0, 1, 0, 0, 1, 0],  # tie necros/connec → necros
            [0, 0, 0, 0, 0, 7],  # no-neo
        ]
    )
    assert dominant_type(counts).tolist() == [2, 2, 0, 0, 1, 5]
    assert [NUCLEAR_TYPES[t] for t in dominant_type(counts)][:2] == ["neopla", "neopla"]


def test_dominant_type_same_on_proportions_and_counts() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 4, (200, 6))
    assert np.array_equal(dominant_type(counts), dominant_type(composition(counts)))


def test_dominant_type_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"shape \(n_spots, 6\)"):
        dominant_type(np.zeros((3, 5)))


def test_composition_rows_sum_to_one_or_zero() -> None:
    counts = np.array([[1, 0, 3, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 2, 0, 2, 0, 4]])
    comp = composition(counts)
    assert comp[0].tolist() == [0.25, 0.0, 0.75, 0.0, 0.0, 0.0]
    assert comp[1].tolist() == [0.0] * 6
    assert comp[2].tolist() == [0.0, 0.25, 0.0, 0.25, 0.0, 0.5]


def test_summarise_matches_a_loop() -> None:
    rng = np.random.default_rng(1)
    n_spots, n_nuclei = 7, 60
    spot = rng.integers(0, n_spots - 1, n_nuclei)  # the last spot has no nuclei
    type_id = rng.integers(0, 6, n_nuclei)
    area = rng.uniform(10, 100, n_nuclei)
    area[3] = np.nan  # an unmeasured nucleus is left out of the mean only
    hema = rng.uniform(0.1, 0.3, n_nuclei)
    table = NucleiTable(
        n_spots=n_spots, spot=spot, type_id=type_id, area_um2=area, hematoxylin=hema
    )
    result = summarise(table, source="test")
    for s in range(n_spots):
        mine = spot == s
        assert result.counts[s].tolist() == np.bincount(type_id[mine], minlength=6).tolist()
        assert result.morphology[s, 0] == mine.sum()
        if mine.any():
            assert result.morphology[s, 1] == pytest.approx(np.nanmean(area[mine]))
            assert result.morphology[s, 4] == pytest.approx(hema[mine].mean())
    assert np.isnan(result.morphology[-1, 1:]).all()  # no nuclei: means undefined
    # Measures the source did not provide stay NaN for every spot.
    assert np.isnan(result.morphology[:, MORPHOLOGY_NAMES.index("mean_solidity")]).all()
    assert result.cell_type.tolist() == dominant_type(result.counts).tolist()
    assert result.cell_type[-1] == 0
    np.testing.assert_allclose(result.composition.sum(axis=1)[:-1], 1.0)
    assert result.counts.dtype == np.int64
    assert result.cell_type.dtype == np.int64
    assert result.n_missing == 0
    assert result.source == "test"


def test_summarise_keeps_missing_spots() -> None:
    table = NucleiTable(
        n_spots=3,
        spot=np.array([1]),
        type_id=np.array([4]),
        missing=np.array([True, False, False]),
    )
    result = summarise(table, source="x")
    assert result.missing.tolist() == [True, False, False]
    assert result.n_missing == 1
    assert result.cell_type.tolist() == [0, 4, 0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spot": np.array([3]), "type_id": np.array([0])}, "spot indices"),
        ({"spot": np.array([0]), "type_id": np.array([6])}, "type ids"),
        ({"spot": np.array([0, 1]), "type_id": np.array([0])}, "type_id has 1"),
        (
            {"spot": np.array([0]), "type_id": np.array([0]), "area_um2": np.ones(2)},
            "area_um2 has 2",
        ),
        (
            {"spot": np.array([0]), "type_id": np.array([0]), "missing": np.ones(2, bool)},
            "missing has 2",
        ),
    ],
)
def test_table_validates(kwargs: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NucleiTable(n_spots=3, **kwargs)


def test_concat_joins_and_drops_partial_measures() -> None:
    a = NucleiTable(
        n_spots=4, spot=np.array([0, 0]), type_id=np.array([1, 2]), area_um2=np.array([5.0, 6.0])
    )
    b = NucleiTable(
        n_spots=4,
        spot=np.array([2]),
        type_id=np.array([3]),
        missing=np.array([False, False, False, True]),
    )
    joined = NucleiTable.concat([a, b], n_spots=4)
    assert joined.spot.tolist() == [0, 0, 2]
    assert joined.type_id.tolist() == [1, 2, 3]
    assert len(joined.area_um2) == 0  # b has no areas: all or nothing
    assert joined.missing.tolist() == [False, False, False, True]
    both = NucleiTable.concat([a, a], n_spots=4)
    assert both.area_um2.tolist() == [5.0, 6.0, 5.0, 6.0]
    assert NucleiTable.concat([], n_spots=2).n_nuclei == 0
