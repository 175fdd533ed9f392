from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import gr2st.encoders.nuclei as nuclei_mod
import gr2st.encoders.prefetch as prefetch_mod
from gr2st._constants import (
    CELL_TYPE,
    IMAGE_PATH,
    NUCLEI_COMPOSITION,
    NUCLEI_COUNTS,
    NUCLEI_MORPHOLOGY,
    UNS,
    feature_key,
)
from gr2st.datasets import synthetic
from gr2st.encoders import extract_features, prepare_image_inputs
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.image import get_stain_normalizer
from gr2st.image.nuclei import NUCLEI_SOURCE_KEY, annotate_nuclei

SIZE = 40
NUCLEI_OBSM = (NUCLEI_COUNTS, NUCLEI_COMPOSITION, NUCLEI_MORPHOLOGY)


@pytest.fixture
def sections(tmp_path):
    return synthetic(n_sections=3, n_genes=5, grid=(3, 4), image_dir=tmp_path / "img", seed=1)


def _assert_same_nuclei(a, b):
    for key in NUCLEI_OBSM:
        np.testing.assert_array_equal(a.obsm[key], b.obsm[key])
    np.testing.assert_array_equal(a.obs[CELL_TYPE].to_numpy(), b.obs[CELL_TYPE].to_numpy())
    assert a.uns[UNS][NUCLEI_SOURCE_KEY] == b.uns[UNS][NUCLEI_SOURCE_KEY]


def test_matches_separate_feature_and_nuclei_steps(sections, colour_encoder, tmp_path):
    expected = [s.copy() for s in sections]
    reinhard = get_stain_normalizer("reinhard")
    for s in expected:
        extract_features(s, encoder=colour_encoder, size_px=SIZE, stain=reinhard, progress=False)
        annotate_nuclei(s, source="classical", size_px=SIZE, stain=reinhard, progress=False)
    reports = prepare_image_inputs(
        sections,
        encoder=colour_encoder,
        size_px=SIZE,
        stain="reinhard",
        cache_dir=tmp_path / "cache",
        batch_size=5,
        progress=False,
    )
    assert [r.section for r in reports] == ["S0", "S1", "S2"]
    assert all(not r.features_cached and not r.nuclei_cached for r in reports)
    # Nuclei are measured while the next batch is encoded: the two times overlap.
    assert all(r.total_s >= max(r.encode_s, r.nuclei_s) > 0 for r in reports)
    for got, want in zip(sections, expected, strict=True):
        np.testing.assert_array_equal(
            got.obsm[feature_key("colour")], want.obsm[feature_key("colour")]
        )
        _assert_same_nuclei(got, want)
        assert got.obsm[NUCLEI_COUNTS].sum() > 0


def test_warm_run_reads_only_the_cache(sections, colour_encoder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    prepare_image_inputs(
        sections, encoder=colour_encoder, size_px=SIZE, cache_dir=cache, progress=False
    )
    fresh = [s.copy() for s in sections]
    for s in fresh:
        del s.obsm[feature_key("colour")]
        for key in NUCLEI_OBSM:
            del s.obsm[key]
        s.obs[CELL_TYPE] = -1
    calls = colour_encoder.calls

    def forbidden(*args, **kwargs):
        raise AssertionError("computed on a warm run")

    monkeypatch.setattr(prefetch_mod, "open_slide", forbidden)
    monkeypatch.setattr(nuclei_mod, "measure_patches", forbidden)
    reports = prepare_image_inputs(
        fresh, encoder=colour_encoder, size_px=SIZE, cache_dir=cache, progress=False
    )
    assert colour_encoder.calls == calls
    assert all(r.features_cached and r.nuclei_cached for r in reports)
    for got, want in zip(fresh, sections, strict=True):
        np.testing.assert_array_equal(
            got.obsm[feature_key("colour")], want.obsm[feature_key("colour")]
        )
        _assert_same_nuclei(got, want)


def test_new_encoder_reuses_cached_nuclei(sections, colour_encoder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    prepare_image_inputs(
        sections[:1], encoder=colour_encoder, size_px=SIZE, cache_dir=cache, progress=False
    )

    class OtherEncoder(type(colour_encoder)):
        name = "colour2"

    def forbidden(*args, **kwargs):
        raise AssertionError("nuclei measured again")

    monkeypatch.setattr(nuclei_mod, "measure_patches", forbidden)
    other = OtherEncoder()
    (report,) = prepare_image_inputs(
        sections[:1], encoder=other, size_px=SIZE, cache_dir=cache, progress=False
    )
    assert (report.features_cached, report.nuclei_cached) == (False, True)
    assert other.patches == sections[0].n_obs


def test_no_nuclei(sections, colour_encoder):
    (report,) = prepare_image_inputs(
        sections[:1], encoder=colour_encoder, nuclei="none", size_px=SIZE, progress=False
    )
    assert report.nuclei_s == 0
    assert NUCLEI_COUNTS not in sections[0].obsm
    assert feature_key("colour") in sections[0].obsm


def test_truncated_nuclei_cache_is_recomputed(sections, colour_encoder, tmp_path, caplog):
    cache = tmp_path / "cache"
    prepare_image_inputs(
        sections[:1], encoder=colour_encoder, size_px=SIZE, cache_dir=cache, progress=False
    )
    expected = sections[0].copy()
    (path,) = cache.rglob("nuclei-*.npz")
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        (report,) = prepare_image_inputs(
            sections[:1], encoder=colour_encoder, size_px=SIZE, cache_dir=cache, progress=False
        )
    assert "ignoring cache file" in caplog.text
    assert (report.features_cached, report.nuclei_cached) == (True, False)
    _assert_same_nuclei(sections[0], expected)


def test_hovernet_results_are_imported_and_cached(sections, colour_encoder, tmp_path):
    folder = tmp_path / "hovernet"
    folder.mkdir()
    adata = sections[0]
    for i, spot in enumerate(adata.obs_names[:-1]):  # the last spot has no record
        rows = "".join(
            f"{k}\t{k}\t\t{name}\n" for k, name in enumerate(["inflam", "neopla"][: 1 + i % 2])
        )
        (folder / f"{spot}.tsv").write_text("x\ty\tclass\tname\n" + rows)
    want = adata.copy()
    with pytest.warns(UserWarning, match="1 of 12 spots have no nuclei record"):
        annotate_nuclei(want, source="hovernet", hovernet_path=folder, progress=False)
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="no nuclei record"):
        prepare_image_inputs(
            [adata],
            encoder=colour_encoder,
            nuclei=f"hovernet:{folder}",
            size_px=SIZE,
            cache_dir=cache,
            progress=False,
        )
    _assert_same_nuclei(adata, want)
    # inflam (3) alone, then an inflam-neopla tie, which goes to neopla (2, first in order)
    assert adata.obs[CELL_TYPE].tolist()[:3] == [3, 2, 3]
    with pytest.warns(UserWarning, match="no nuclei record"):
        (report,) = prepare_image_inputs(
            [adata],
            encoder=colour_encoder,
            nuclei=f"hovernet:{folder}",
            size_px=SIZE,
            cache_dir=cache,
            progress=False,
        )
    assert report.nuclei_cached
    # Editing a results file invalidates the cached nuclei.
    spot_file = folder / f"{adata.obs_names[0]}.tsv"
    spot_file.write_text("x\ty\tclass\tname\n1\t1\t\tconnec\n")
    os.utime(spot_file, ns=(1, 1))
    with pytest.warns(UserWarning, match="no nuclei record"):
        (report,) = prepare_image_inputs(
            [adata],
            encoder=colour_encoder,
            nuclei=f"hovernet:{folder}",
            size_px=SIZE,
            cache_dir=cache,
            progress=False,
        )
    assert not report.nuclei_cached
    assert adata.obs[CELL_TYPE].iloc[0] == 4  # connec


def test_error_stops_the_run_and_writes_nothing(sections, colour_encoder, tmp_path):
    class Broken(type(colour_encoder)):
        def _encode(self, batch):
            raise RuntimeError("encoder crashed")

    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="encoder crashed"):
        prepare_image_inputs(
            sections, encoder=Broken(), size_px=SIZE, cache_dir=cache, progress=False
        )
    assert not list(cache.rglob("*.npz"))
    assert feature_key("colour") not in sections[0].obsm


def test_missing_image_fails_before_any_work(sections, colour_encoder, tmp_path):
    sections[2].uns[UNS][IMAGE_PATH] = str(tmp_path / "gone.png")
    with pytest.raises(GR2STDataError, match=r"section S2: image file .*gone\.png does not exist"):
        prepare_image_inputs(sections, encoder=colour_encoder, size_px=SIZE, progress=False)
    assert colour_encoder.calls == 0


# ------------------------------------------------------------------ worker processes


@pytest.mark.parametrize("stain", ["reinhard", "macenko", None])
def test_workers_give_the_serial_results_bit_for_bit(sections, colour_encoder, tmp_path, stain):
    serial = [s.copy() for s in sections]
    prepare_image_inputs(
        serial, encoder=colour_encoder, size_px=SIZE, stain=stain, batch_size=5, progress=False
    )
    reports = prepare_image_inputs(
        sections,
        encoder=colour_encoder,
        size_px=SIZE,
        stain=stain,
        batch_size=5,
        cache_dir=tmp_path / "cache",
        progress=False,
        workers=2,
    )
    assert [r.section for r in reports] == ["S0", "S1", "S2"]
    for got, want in zip(sections, serial, strict=True):
        np.testing.assert_array_equal(
            got.obsm[feature_key("colour")], want.obsm[feature_key("colour")]
        )
        _assert_same_nuclei(got, want)
        assert got.obsm[NUCLEI_COUNTS].sum() > 0
    # The parallel run filled the cache under the serial run's keys.
    warm = prepare_image_inputs(
        serial, encoder=colour_encoder, size_px=SIZE, stain=stain, cache_dir=tmp_path / "cache",
        progress=False,
    )  # fmt: skip
    assert all(r.features_cached and r.nuclei_cached for r in warm)


def test_workers_on_a_tiled_tiff_and_nuclei_only(colour_encoder, tmp_path):
    import tifffile

    [section] = synthetic(n_sections=1, n_genes=5, grid=(4, 5), image_dir=tmp_path, seed=2)
    png = section.uns[UNS][IMAGE_PATH]
    tiff = tmp_path / "tiled.tif"
    from PIL import Image

    tifffile.imwrite(tiff, np.asarray(Image.open(png).convert("RGB")), tile=(64, 64))
    serial = section.copy()
    serial.uns[UNS][IMAGE_PATH] = str(tiff)
    section.uns[UNS][IMAGE_PATH] = str(tiff)
    prepare_image_inputs([serial], encoder=colour_encoder, size_px=SIZE, progress=False)
    # Features cached, nuclei not: the workers measure nuclei and send no patches back.
    cache = tmp_path / "cache"
    prepare_image_inputs(
        [section.copy()], encoder=colour_encoder, size_px=SIZE, cache_dir=cache, nuclei="none",
        progress=False,
    )  # fmt: skip
    calls = colour_encoder.calls
    (report,) = prepare_image_inputs(
        [section], encoder=colour_encoder, size_px=SIZE, cache_dir=cache, progress=False, workers=2
    )
    assert (report.features_cached, report.nuclei_cached) == (True, False)
    assert colour_encoder.calls == calls
    _assert_same_nuclei(section, serial)


def test_workers_report_errors_and_free_shared_images(sections, colour_encoder, tmp_path):
    class Broken(type(colour_encoder)):
        def _encode(self, batch):
            raise RuntimeError("encoder crashed")

    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    with pytest.raises(RuntimeError, match="encoder crashed"):
        prepare_image_inputs(
            sections, encoder=Broken(), size_px=SIZE, cache_dir=tmp_path, progress=False, workers=2
        )
    if os.path.isdir("/dev/shm"):
        assert set(os.listdir("/dev/shm")) <= before
    # An unreadable image: the worker's error reaches the caller as the same message.
    sections[1].uns[UNS][IMAGE_PATH] = str(tmp_path / "broken.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(GR2STDataError, match=r"broken\.png: cannot read image"):
        prepare_image_inputs(
            sections, encoder=colour_encoder, size_px=SIZE, progress=False, workers=2
        )


def test_workers_must_be_a_count(sections, colour_encoder):
    with pytest.raises(GR2STConfigError, match="workers must be a non-negative integer"):
        prepare_image_inputs(sections, encoder=colour_encoder, workers=-1, progress=False)


def test_cache_written_before_worker_processes_still_hits(colour_encoder, tmp_path, monkeypatch):
    """A cache written by gr2st before the worker processes (and the frozen PIXEL_CODE)
    came: its keys must still match, so nothing is decoded or computed again."""
    from anndata import AnnData

    from gr2st._constants import MICRONS_PER_PIXEL, SECTION, SPATIAL

    fixture = Path(__file__).parent / "data" / "cache_before_workers"
    spots = json.loads((fixture / "spots.json").read_text())
    shutil.copytree(fixture / "cache", tmp_path / "cache")
    image = tmp_path / "elsewhere.png"  # keys hold the image's content, not its path
    shutil.copy(fixture / "he.png", image)
    n = len(spots["spatial"])
    adata = AnnData(np.zeros((n, 1), np.float32))
    adata.obs[SECTION] = spots["section"]
    adata.obsm[SPATIAL] = np.asarray(spots["spatial"])
    adata.uns[UNS] = {IMAGE_PATH: str(image), MICRONS_PER_PIXEL: spots["mpp"]}

    def forbidden(*args, **kwargs):
        raise AssertionError("computed although cached")

    monkeypatch.setattr(prefetch_mod, "open_slide", forbidden)
    monkeypatch.setattr(nuclei_mod, "measure_patches", forbidden)
    (report,) = prepare_image_inputs(
        [adata], encoder=colour_encoder, size_px=SIZE, stain="reinhard",
        cache_dir=tmp_path / "cache", progress=False, workers=2,
    )  # fmt: skip
    assert (report.features_cached, report.nuclei_cached) == (True, True)
    assert colour_encoder.calls == 0
    np.testing.assert_array_equal(adata.obsm[feature_key("colour")], spots["features"])
    np.testing.assert_array_equal(adata.obs[CELL_TYPE].to_numpy(), spots["cell_type"])
    np.testing.assert_array_equal(adata.obsm[NUCLEI_COUNTS], spots["nuclei_counts"])
