"""The spot-on-image check, on the real B4 downscaled (``mini_b4``) and damaged copies."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gr2st._constants import IMAGE_CHECK, UNS
from gr2st.errors import GR2STDataError
from gr2st.image import tissue
from gr2st.image.tissue import (
    check_image_colour,
    check_section_image,
    check_spots_on_image,
    detect_tissue,
    read_image_summary,
)
from gr2st.io import read_her2st


def _read(folder: Path):
    return read_her2st(folder, "B4")


def _moved(spots, **columns):
    spots = spots.copy()
    for name, values in columns.items():
        spots[name] = values
    return spots


def test_good_b4_passes_without_warning(mini_b4, tmp_path, caplog) -> None:
    adata = _read(mini_b4.write(tmp_path))
    with caplog.at_level(logging.WARNING, logger="gr2st"):
        check = check_section_image(adata)
    assert check is not None
    assert check.on_tissue >= 0.95
    assert check.hull_tissue >= 0.8
    assert max(check.layouts.values()) < check.on_tissue - 0.2
    assert check.warnings == ()
    assert not caplog.records
    record = adata.uns[UNS][IMAGE_CHECK]
    assert record["on_tissue"] == check.on_tissue
    assert record["n_spots"] == adata.n_obs


def test_swapped_pixel_columns_are_named(mini_b4, tmp_path) -> None:
    s = mini_b4.spots
    folder = mini_b4.write(tmp_path, spots=_moved(s, pixel_x=s.pixel_y, pixel_y=s.pixel_x))
    adata = _read(folder)
    with pytest.raises(
        GR2STDataError,
        match=r"B4: \d+ of 283 spots .* pixel_x and pixel_y "
        r"look swapped .*--allow-off-tissue",
    ):
        check_section_image(adata)


def test_rotated_image_is_named(mini_b4, tmp_path) -> None:
    rotated = np.ascontiguousarray(np.rot90(mini_b4.image, k=-1))  # 90° clockwise
    adata = _read(mini_b4.write(tmp_path, image=rotated))
    with pytest.raises(GR2STDataError, match="rotated by 90° clockwise"):
        check_section_image(adata)


@pytest.mark.parametrize("other", ["C2", "C3"])
def test_another_sections_image_is_an_error(mini_b4, her2st_root, tmp_path, other) -> None:
    [path] = (her2st_root / "ST-imgs" / "C" / other).glob("*.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.draft("RGB", (img.size[0] // mini_b4.SCALE, img.size[1] // mini_b4.SCALE))
            pixels = np.asarray(img.convert("RGB"))
    adata = _read(mini_b4.write(tmp_path, image=pixels))
    with pytest.raises(GR2STDataError, match=r"B4: \d+ of 283 spots \(\d+ %\) lie off the tissue"):
        check_section_image(adata)


@pytest.mark.parametrize(
    ("name", "factor", "shift"),
    [("coordinates in µm", 0.69, 0.0), ("onto glass", 1.0, 800.0)],
)
def test_misplaced_spots_are_an_error(mini_b4, tmp_path, name, factor, shift) -> None:
    s = mini_b4.spots
    spots = _moved(s, pixel_x=s.pixel_x * factor, pixel_y=s.pixel_y * factor - shift)
    adata = _read(mini_b4.write(tmp_path, spots=spots))
    with pytest.raises(GR2STDataError, match=r"lie off the tissue of B4_HE\.jpg"):
        check_section_image(adata)
    # The override: a warning instead, and the numbers recorded.
    check = check_section_image(adata, allow_off_tissue=True)
    assert check is not None
    assert check.on_tissue < 0.75


def test_coordinates_divided_by_ten_are_an_error_when_read(mini_b4, tmp_path) -> None:
    s = mini_b4.spots
    spots = _moved(s, pixel_x=s.pixel_x * 0.1, pixel_y=s.pixel_y * 0.1)
    # The spot pitch then implies ~28 µm/px: the reader's geometry check stops it.
    with pytest.raises(GR2STDataError, match=r"outside the plausible 0\.1–20 µm/px"):
        _read(mini_b4.write(tmp_path, spots=spots))


def test_all_white_image_is_an_error(mini_b4, tmp_path) -> None:
    adata = _read(mini_b4.write(tmp_path, image=np.full_like(mini_b4.image, 255)))
    with pytest.raises(GR2STDataError, match="no tissue detected"):
        check_section_image(adata)


def test_a_few_spots_off_tissue_is_a_warning_logged_once(mini_b4, tmp_path, caplog) -> None:
    s = mini_b4.spots
    moved = s.copy()
    # The 30 top spots (11 %) moved 500 px up, onto glass: a warning, not an error.
    rows = np.argsort(s.pixel_y.to_numpy())[:30]
    moved.loc[moved.index[rows], "pixel_y"] -= 500
    adata = _read(mini_b4.write(tmp_path, spots=moved))
    with caplog.at_level(logging.WARNING, logger="gr2st"):
        first = check_section_image(adata)
        again = check_section_image(adata)
    assert first == again
    assert first is not None
    assert 0.75 <= first.on_tissue < 0.95
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith("B4: ")
    assert "off the tissue" in lines[0]
    assert adata.uns[UNS][IMAGE_CHECK]["warnings"] == [lines[0]]


def test_grey_image_needs_allow_grey(mini_b4, tmp_path) -> None:
    grey = np.asarray(Image.fromarray(mini_b4.image).convert("L"))
    adata = _read(mini_b4.write(tmp_path, image=np.repeat(grey[..., None], 3, axis=2)))
    with pytest.raises(GR2STDataError, match=r"greyscale image .*--allow-grey"):
        check_section_image(adata)
    check = check_section_image(adata, allow_grey=True)
    # Tissue is found by darkness on a grey image: the spots still sit on it.
    assert check is not None
    assert check.grey
    assert check.on_tissue >= 0.9


def test_single_channel_file_is_grey(tmp_path) -> None:
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((30, 40), 180, np.uint8)).save(path)
    assert read_image_summary(path).grey
    with pytest.raises(GR2STDataError, match=r"grey\.png: greyscale image"):
        check_image_colour(path)


def test_truncated_and_corrupted_jpeg_are_errors(mini_b4, tmp_path) -> None:
    folder = mini_b4.write(tmp_path / "good")
    raw = next((folder / "ST-imgs" / "B" / "B4").glob("*.jpg")).read_bytes()
    rng = np.random.default_rng(0)
    corrupted = bytearray(raw)
    for at in rng.integers(len(raw) // 3, len(raw) - 100, 200):
        corrupted[at] = int(rng.integers(0, 256))
    for name, data in [("truncated", raw[: len(raw) // 2]), ("corrupted", bytes(corrupted))]:
        adata = _read(mini_b4.write(tmp_path / name, image_bytes=data))
        with pytest.raises(GR2STDataError, match=r"cannot decode the image .*truncated, corrupted"):
            check_section_image(adata)


def test_image_is_read_once(mini_b4, tmp_path) -> None:
    adata = _read(mini_b4.write(tmp_path))
    tissue._summary.cache_clear()
    check_section_image(adata)
    check_section_image(adata)
    info = tissue._summary.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def test_pillow_warnings_become_one_line(tmp_path, caplog) -> None:
    path = tmp_path / "x.png"
    with caplog.at_level(logging.WARNING, logger="gr2st"), tissue._pillow_messages(path):
        warnings.warn(
            "Image size (99 pixels) exceeds limit", Image.DecompressionBombWarning, stacklevel=1
        )
    [record] = caplog.records
    assert record.getMessage() == (
        f"{path}: a very large image; decoding it whole needs 3 bytes of memory per pixel"
    )


def test_detect_tissue_on_grey_uses_darkness() -> None:
    img = np.full((100, 100, 3), 240, np.uint8)
    img[20:60, 30:80] = 150
    mask = detect_tissue(img)
    assert int(mask.sum()) == 2000
    assert mask[40, 50]
    assert not mask[5, 5]


def test_check_without_image_is_none() -> None:
    from gr2st.datasets import synthetic

    assert check_section_image(synthetic(n_sections=1, n_genes=3, grid=(3, 3))[0]) is None


def test_synthetic_layout_fits(tmp_path) -> None:
    from gr2st.datasets import synthetic

    sec = synthetic(n_sections=1, n_genes=3, grid=(5, 7), image_dir=tmp_path)[0]
    check = check_spots_on_image(
        sec.obsm["spatial"], image=sec.uns[UNS]["image_path"], spot_diameter_px=20, section="S0"
    )
    assert check.on_tissue == 1.0
    assert check.warnings == ()
