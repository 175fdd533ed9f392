"""From detected nuclei to one summary per spot.

Every nuclei source (classical segmentation, imported HoVer-Net results) produces a
:class:`NucleiTable`: one row per nucleus, tagged with the spot it belongs to. This module
reduces it to per-spot type counts, proportions, a small morphology matrix and the
reference's spot type (:func:`dominant_type`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gr2st._constants import NUCLEAR_TYPES

N_TYPES = len(NUCLEAR_TYPES)

#: Columns of the per-spot morphology matrix (``obsm[NUCLEI_MORPHOLOGY]``). Means are over
#: the spot's nuclei; NaN where a spot has no nuclei or the source does not measure it.
MORPHOLOGY_NAMES: tuple[str, ...] = (
    "n_nuclei",
    "mean_area_um2",
    "mean_eccentricity",
    "mean_solidity",
    "mean_hematoxylin",
    "mean_eosin",
)

# Per-nucleus measurements averaged into MORPHOLOGY_NAMES[1:], in that order.
_MEASURES = ("area_um2", "eccentricity", "solidity", "hematoxylin", "eosin")


_NO_INT = np.empty(0, dtype=np.int64)


def _empty_float() -> np.ndarray:
    return np.empty(0, dtype=np.float64)


@dataclass(frozen=True)
class NucleiTable:
    """Nuclei found in the patches of one section, one entry per nucleus.

    Parameters
    ----------
    n_spots
        Number of spots of the section (rows of the per-spot outputs).
    spot
        Row index of the spot each nucleus belongs to (int, ``0 <= spot < n_spots``).
    type_id
        Nuclear type id 0..5 in :data:`gr2st._constants.NUCLEAR_TYPES` order.
    area_um2, eccentricity, solidity, hematoxylin, eosin
        Per-nucleus measurements; empty (length 0) when the source does not provide
        one, otherwise one value per nucleus (NaN allowed).
    missing
        Boolean per spot: the source has no record at all for it (not the same as a
        record with zero nuclei). Empty means no spot is missing.
    """

    n_spots: int
    spot: np.ndarray
    type_id: np.ndarray
    area_um2: np.ndarray = field(default_factory=_empty_float)
    eccentricity: np.ndarray = field(default_factory=_empty_float)
    solidity: np.ndarray = field(default_factory=_empty_float)
    hematoxylin: np.ndarray = field(default_factory=_empty_float)
    eosin: np.ndarray = field(default_factory=_empty_float)
    missing: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))

    def __post_init__(self) -> None:
        n = len(self.spot)
        if len(self.type_id) != n:
            raise ValueError(f"type_id has {len(self.type_id)} entries, spot has {n}")
        if n and (self.spot.min() < 0 or self.spot.max() >= self.n_spots):
            raise ValueError(f"spot indices must lie in [0, {self.n_spots})")
        if n and (self.type_id.min() < 0 or self.type_id.max() >= N_TYPES):
            raise ValueError(f"type ids must lie in [0, {N_TYPES})")
        for name in _MEASURES:
            if len(getattr(self, name)) not in (0, n):
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, expected {n}")
        if len(self.missing) not in (0, self.n_spots):
            raise ValueError(f"missing has {len(self.missing)} entries, expected {self.n_spots}")

    @property
    def n_nuclei(self) -> int:
        return len(self.spot)

    @classmethod
    def concat(cls, tables: list[NucleiTable], *, n_spots: int) -> NucleiTable:
        """Join tables of disjoint spot subsets of the same section.

        A measurement missing from any table is dropped from the result (all or nothing,
        so that values stay aligned with nuclei).
        """
        parts = [t for t in tables if t.n_nuclei]
        measures = {
            name: (
                np.concatenate([getattr(t, name) for t in parts])
                if parts and all(len(getattr(t, name)) for t in parts)
                else _empty_float()
            )
            for name in _MEASURES
        }
        missing = np.zeros(n_spots, dtype=bool)
        for t in tables:
            if len(t.missing):
                missing |= t.missing
        return cls(
            n_spots=n_spots,
            spot=np.concatenate([_NO_INT, *(t.spot for t in tables)]).astype(np.int64),
            type_id=np.concatenate([_NO_INT, *(t.type_id for t in tables)]).astype(np.int64),
            missing=missing,
            **measures,
        )


@dataclass(frozen=True)
class NucleiResult:
    """Per-spot nuclear summary of one section (what :func:`annotate_nuclei` writes).

    Attributes
    ----------
    counts
        ``(n_spots, 6)`` int64, nuclei of each type per spot (``NUCLEAR_TYPES`` order).
    composition
        ``(n_spots, 6)`` float64, ``counts`` as proportions; all-zero rows for spots
        without nuclei.
    morphology
        ``(n_spots, len(morphology_names))`` float64 (see :data:`MORPHOLOGY_NAMES`).
    morphology_names
        Column names of ``morphology``.
    cell_type
        ``(n_spots,)`` int64, :func:`dominant_type` of ``counts``.
    missing
        ``(n_spots,)`` bool, spots the source had no record for (type 0, zero counts).
    source
        Name of the nuclei source.
    """

    counts: np.ndarray
    composition: np.ndarray
    morphology: np.ndarray
    morphology_names: tuple[str, ...]
    cell_type: np.ndarray
    missing: np.ndarray
    source: str

    @property
    def n_missing(self) -> int:
        return int(self.missing.sum())


def dominant_type(counts: np.ndarray) -> np.ndarray:
    """Spot type of the reference: the type with the largest proportion.

    Ties go to the first type in ``NUCLEAR_TYPES`` order, and a spot without nuclei is
    ``nolabe`` (0). Proportions and counts share their arg-max, so counts are used
    directly (no division, no rounding ties).

    Parameters
    ----------
    counts
        ``(n_spots, 6)`` non-negative counts (or proportions).

    Returns
    -------
    numpy.ndarray
        ``(n_spots,)`` int64 type ids.

    Examples
    --------
    >>> dominant_type(np.array([[0, 0, 3, 3, 1, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 2]]))
    array([2, 0, 5])
    """
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != N_TYPES:
        raise ValueError(f"counts must have shape (n_spots, {N_TYPES}), got {counts.shape}")
    # np.argmax returns the first maximum, which is the reference's tie rule; an all-zero
    # row has its first maximum at 0 (nolabe), which is the no-nuclei rule.
    return np.asarray(counts.argmax(axis=1), dtype=np.int64)


def composition(counts: np.ndarray) -> np.ndarray:
    """Row-normalise type counts to proportions; rows without nuclei stay all-zero.

    Examples
    --------
    >>> composition(np.array([[1, 0, 3, 0, 0, 0], [0, 0, 0, 0, 0, 0]]))[:, [0, 2]]
    array([[0.25, 0.75],
           [0.  , 0.  ]])
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def summarise(table: NucleiTable, *, source: str) -> NucleiResult:
    """Reduce a per-nucleus table to per-spot counts, proportions and morphology.

    Examples
    --------
    >>> t = NucleiTable(n_spots=3, spot=np.array([0, 0, 2]), type_id=np.array([3, 3, 4]))
    >>> r = summarise(t, source="demo")
    >>> r.cell_type.tolist(), r.counts[0].tolist()
    ([3, 0, 4], [0, 0, 0, 2, 0, 0])
    """
    n = table.n_spots
    flat = table.spot * N_TYPES + table.type_id
    counts = np.bincount(flat, minlength=n * N_TYPES).reshape(n, N_TYPES).astype(np.int64)
    per_spot = counts.sum(axis=1)
    morphology = np.full((n, len(MORPHOLOGY_NAMES)), np.nan)
    morphology[:, 0] = per_spot
    for col, name in enumerate(_MEASURES, start=1):
        values = getattr(table, name)
        if not len(values):
            continue
        ok = ~np.isnan(values)
        sums = np.bincount(table.spot[ok], weights=values[ok], minlength=n)
        seen = np.bincount(table.spot[ok], minlength=n)
        np.divide(sums, seen, out=morphology[:, col], where=seen > 0)
    missing = table.missing if len(table.missing) else np.zeros(n, dtype=bool)
    return NucleiResult(
        counts=counts,
        composition=composition(counts),
        morphology=morphology,
        morphology_names=MORPHOLOGY_NAMES,
        cell_type=dominant_type(counts),
        missing=missing.copy(),
        source=source,
    )
