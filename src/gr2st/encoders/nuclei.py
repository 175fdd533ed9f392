"""The nuclei side of ``gr2st features``: classical nuclei measured on the shared patches.

:class:`SpotNuclei` collects the measurements of the patches that
:func:`~gr2st.encoders.encode_spots` reads anyway; :class:`KnownNuclei` hands a table
found earlier to :func:`~gr2st.image.nuclei.annotate_nuclei`; :func:`table_arrays` and
:func:`table_from_arrays` are a table's form in the cache.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from anndata import AnnData

from gr2st._constants import MICRONS_PER_PIXEL, UNS
from gr2st.image.nuclei import (
    ClassicalParams,
    NucleiTable,
    NucleusFeatures,
    classify_nuclei,
    measure_patches,
)
from gr2st.image.nuclei.classical import ASSUMED_MPP
from gr2st.image.workers import NucleiJob
from gr2st.sections import section_label


class SpotNuclei:
    """The ``classical`` nuclei source fed with patches that are read anyway.

    Does what :class:`gr2st.image.nuclei.ClassicalNuclei` does, but on the batches of the
    shared pass, so that patches are not read and stain-normalised a second time: measure
    each batch, then type all nuclei of the section together.
    """

    def __init__(self, adata: AnnData, params: ClassicalParams | None = None) -> None:
        mpp = adata.uns.get(UNS, {}).get(MICRONS_PER_PIXEL)
        if mpp is None:
            warnings.warn(
                f"section {section_label(adata)}: uns[{UNS!r}][{MICRONS_PER_PIXEL!r}] is not "
                f"set; nuclei sizes assume {ASSUMED_MPP} µm/px",
                stacklevel=4,
            )
            mpp = ASSUMED_MPP
        self.mpp = float(mpp)
        self.params = params or ClassicalParams()
        self.n_spots = adata.n_obs
        self._spots: list[np.ndarray] = []
        self._features: list[NucleusFeatures] = []

    def add(self, indices: np.ndarray, patches: np.ndarray) -> None:
        spot, features = measure_patches(patches, microns_per_pixel=self.mpp, params=self.params)
        self.add_measured(indices, spot, features)

    def add_measured(
        self, indices: np.ndarray, spot: np.ndarray, features: NucleusFeatures
    ) -> None:
        """Add a batch measured elsewhere (a worker process); batches in spot order."""
        self._spots.append(indices[spot])
        self._features.append(features)

    def job(self) -> NucleiJob:
        """What a worker process needs to measure the batches."""
        return NucleiJob(self.mpp, self.params)

    def table(self) -> NucleiTable:
        features = NucleusFeatures.concat(self._features)
        return features.to_table(
            n_spots=self.n_spots,
            spot=np.concatenate([np.empty(0, np.int64), *self._spots]),
            type_id=classify_nuclei(features, params=self.params),
        )


@dataclass
class KnownNuclei:
    """A nuclei source that returns a table found earlier (cache or shared pass)."""

    name: str
    found: NucleiTable

    def detect(self, adata: AnnData, *, size_px: int, progress: bool) -> NucleiTable:
        return self.found


def table_arrays(table: NucleiTable) -> dict[str, np.ndarray]:
    return {f.name: np.asarray(getattr(table, f.name)) for f in dataclasses.fields(table)}


def table_from_arrays(arrays: dict[str, np.ndarray]) -> NucleiTable:
    names = {f.name for f in dataclasses.fields(NucleiTable)}
    if set(arrays) != names:
        raise ValueError(f"nuclei arrays {sorted(arrays)} do not match {sorted(names)}")
    values: dict[str, Any] = {k: (a.item() if a.ndim == 0 else a) for k, a in arrays.items()}
    return NucleiTable(**values)
