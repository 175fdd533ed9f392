"""annotate_nuclei end to end: what it writes, its errors, custom sources, real data."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from anndata import AnnData

from gr2st._constants import (
    CELL_TYPE,
    IMAGE_PATH,
    MICRONS_PER_PIXEL,
    NUCLEAR_TYPES,
    NUCLEI_COMPOSITION,
    NUCLEI_COUNTS,
    NUCLEI_MORPHOLOGY,
    SPATIAL,
    UNS,
)
from gr2st.datasets import synthetic
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.image.nuclei import (
    MORPHOLOGY_NAMES,
    NUCLEI_MORPHOLOGY_NAMES_KEY,
    NUCLEI_PATCH_PX_KEY,
    NUCLEI_SOURCE_KEY,
    NUCLEI_SOURCES,
    ClassicalNuclei,
    ClassicalParams,
    NucleiTable,
    annotate_nuclei,
    dominant_type,
    measure_patches,
)
from gr2st.image.patches import iter_patches


@pytest.fixture
def imaged_section(tmp_path: Path) -> AnnData:
    return synthetic(n_sections=1, grid=(5, 5), n_states=5, image_dir=tmp_path, seed=3)[0]


def test_classical_writes_every_output(imaged_section: AnnData) -> None:
    adata = imaged_section
    result = annotate_nuclei(adata, size_px=48, progress=False)
    n = adata.n_obs
    counts = adata.obsm[NUCLEI_COUNTS]
    assert counts.shape == (n, 6)
    assert counts.dtype == np.int64
    assert counts.sum() > n  # the synthetic spots hold several nuclei each
    comp = adata.obsm[NUCLEI_COMPOSITION]
    has = counts.sum(axis=1) > 0
    np.testing.assert_allclose(comp[has].sum(axis=1), 1.0)
    assert (comp[~has] == 0).all()
    np.testing.assert_allclose(comp * counts.sum(axis=1, keepdims=True), counts)
    morph = adata.obsm[NUCLEI_MORPHOLOGY]
    assert morph.shape == (n, len(MORPHOLOGY_NAMES))
    assert morph[:, 0].tolist() == counts.sum(axis=1).tolist()
    assert np.isfinite(morph[has]).all()  # the classical source measures everything
    assert adata.obs[CELL_TYPE].dtype == np.int64
    assert adata.obs[CELL_TYPE].tolist() == dominant_type(counts).tolist()
    meta = adata.uns[UNS]
    assert meta[NUCLEI_SOURCE_KEY] == "classical"
    assert meta[NUCLEI_MORPHOLOGY_NAMES_KEY] == list(MORPHOLOGY_NAMES)
    assert meta[NUCLEI_PATCH_PX_KEY] == 48
    assert np.array_equal(result.counts, counts)


def test_section_is_typed_as_a_whole(imaged_section: AnnData) -> None:
    # Batching must not change the result: nuclei are measured per batch but typed
    # with the section's median darkness.
    a = annotate_nuclei(imaged_section.copy(), size_px=48, batch_size=4, progress=False)
    b = annotate_nuclei(imaged_section.copy(), size_px=48, batch_size=64, n_jobs=2, progress=False)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_allclose(a.morphology, b.morphology)
    # And it equals measuring all patches in one go.
    [(_, patches)] = list(
        iter_patches(
            imaged_section.uns[UNS][IMAGE_PATH],
            imaged_section.obsm[SPATIAL],
            size_px=48,
            batch_size=100,
        )
    )
    spot, _ = measure_patches(patches, microns_per_pixel=imaged_section.uns[UNS][MICRONS_PER_PIXEL])
    assert (
        np.bincount(spot, minlength=imaged_section.n_obs).tolist() == a.counts.sum(axis=1).tolist()
    )


def test_custom_params_through_a_source_object(imaged_section: AnnData) -> None:
    strict = ClassicalNuclei(params=ClassicalParams(min_area_um2=1e6))
    result = annotate_nuclei(imaged_section, source=strict, size_px=48, progress=False)
    assert result.counts.sum() == 0
    assert imaged_section.obs[CELL_TYPE].eq(0).all()


class _FixedSource:
    name = "fixed"

    def detect(self, adata: AnnData, *, size_px: int, progress: bool) -> NucleiTable:
        return NucleiTable(
            n_spots=adata.n_obs, spot=np.array([0, 0, 1]), type_id=np.array([4, 3, 3])
        )


def test_any_object_with_detect_is_a_source(imaged_section: AnnData) -> None:
    result = annotate_nuclei(imaged_section, source=_FixedSource(), progress=False)
    assert result.cell_type[:3].tolist() == [3, 3, 0]  # tie inflam/connec → inflam
    assert imaged_section.uns[UNS][NUCLEI_SOURCE_KEY] == "fixed"


def test_source_object_refuses_named_source_options(imaged_section: AnnData) -> None:
    with pytest.raises(GR2STConfigError, match="configure a named source"):
        annotate_nuclei(imaged_section, source=_FixedSource(), hovernet_path="x", progress=False)


def test_registry_lists_both_sources() -> None:
    assert NUCLEI_SOURCES.names() == ["classical", "hovernet"]


def test_failure_leaves_adata_untouched(imaged_section: AnnData) -> None:
    class Broken:
        name = "broken"

        def detect(self, adata: AnnData, *, size_px: int, progress: bool) -> NucleiTable:
            raise GR2STDataError("boom")

    before = set(imaged_section.obsm)
    cell_type = imaged_section.obs[CELL_TYPE].copy()
    with pytest.raises(GR2STDataError, match="boom"):
        annotate_nuclei(imaged_section, source=Broken(), progress=False)
    assert set(imaged_section.obsm) == before
    assert imaged_section.obs[CELL_TYPE].equals(cell_type)


def test_section_without_image_is_an_error() -> None:
    adata = synthetic(n_sections=1, grid=(2, 2))[0]  # no image written
    with pytest.raises(GR2STDataError, match="needs the section's H&E image"):
        annotate_nuclei(adata, progress=False)


def test_unknown_mpp_warns(imaged_section: AnnData) -> None:
    imaged_section.uns[UNS][MICRONS_PER_PIXEL] = None
    with pytest.warns(UserWarning, match=r"nuclei sizes assume 0\.5"):
        annotate_nuclei(imaged_section, size_px=48, progress=False)


def test_bad_spatial_is_an_error(imaged_section: AnnData) -> None:
    imaged_section.obsm[SPATIAL] = np.zeros((imaged_section.n_obs, 3))
    with pytest.raises(GR2STDataError, match=r"obsm\['spatial'\] must hold \(n_spots, 2\)"):
        annotate_nuclei(imaged_section, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "stardist"}, "unknown nuclei source 'stardist'; known: classical, hovernet"),
        ({"source": "hovernet"}, "needs hovernet_path"),
        ({"source": "classical", "hovernet_path": "x"}, "only used by source='hovernet'"),
        ({"batch_size": 0}, "batch_size and n_jobs must be >= 1"),
        ({"size_px": 0}, "size_px must be a positive"),
    ],
)
def test_config_errors(imaged_section: AnnData, kwargs: dict, message: str) -> None:
    with pytest.raises(GR2STConfigError, match=message):
        annotate_nuclei(imaged_section, progress=False, **kwargs)


@pytest.mark.slow
@pytest.mark.realdata
def test_her2st6_classical_types_are_varied(her2st_root: Path) -> None:
    """All six imaged HER2ST sections: not one class everywhere (speed: printed; the
    benchmarks measure it)."""
    from gr2st.io import read_her2st

    dominant = np.zeros(6, dtype=np.int64)
    spots, seconds = 0, 0.0
    for name in ("B4", "C2", "C3", "C4", "C5", "C6"):
        adata = read_her2st(her2st_root, name)
        start = time.perf_counter()
        result = annotate_nuclei(adata, n_jobs=2, progress=False)
        seconds += time.perf_counter() - start
        spots += adata.n_obs
        dominant += np.bincount(result.cell_type, minlength=6)
        assert result.counts.sum(axis=1).mean() > 20  # dense tissue: tens of nuclei a spot
        # Each section mixes at least two spot types.
        assert (np.bincount(result.cell_type, minlength=6) > 0).sum() >= 2
    share = dominant / dominant.sum()
    print(
        dict(zip(NUCLEAR_TYPES, dominant.tolist(), strict=True)), f"{spots / seconds:.0f} spots/s"
    )
    assert share.max() < 0.8
    assert (dominant > 0.05 * dominant.sum()).sum() >= 3
