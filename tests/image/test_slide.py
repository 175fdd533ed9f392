from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import tifffile.zarr
from imagefixtures import KINDS, coded_image, write_image, write_pyramid
from PIL import Image

from gr2st.errors import GR2STDataError
from gr2st.image import open_slide
from gr2st.image import slide as slide_module

BACKEND = {
    "png": "_PillowSlide",
    "jpg": "_PillowSlide",
    "tiff-strips": "_TiffSlide",
    "tiff-tiled": "_TiffSlide",
    "openslide": "_OpenSlideSlide",
}


@pytest.mark.parametrize("kind", KINDS)
def test_read_region_equals_numpy_crop(tmp_path: Path, kind: str) -> None:
    path, truth = write_image(kind, tmp_path, coded_image(70, 90))
    with open_slide(path) as slide:
        assert type(slide).__name__ == BACKEND[kind]
        assert slide.dimensions == (90, 70)
        for x, y, w, h in [(0, 0, 90, 70), (13, 5, 40, 33), (89, 69, 1, 1), (31, 40, 59, 30)]:
            region = slide.read_region(x, y, w, h)
            assert region.dtype == np.uint8
            np.testing.assert_array_equal(region, truth[y : y + h, x : x + w])


@pytest.mark.parametrize("kind", KINDS)
def test_border_regions_are_reflect_padded_not_shifted(tmp_path: Path, kind: str) -> None:
    path, truth = write_image(kind, tmp_path, coded_image(40, 50))
    pad = 120
    padded = np.pad(truth, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    with open_slide(path) as slide:
        # left, top, right, bottom, a corner, and regions larger than the image itself
        for x, y, w, h in [
            (-7, 10, 20, 9),
            (3, -5, 9, 12),
            (41, 2, 20, 6),
            (5, 30, 8, 25),
            (-3, -4, 10, 10),
            (-60, -50, 170, 140),
        ]:
            expected = padded[pad + y : pad + y + h, pad + x : pad + x + w]
            np.testing.assert_array_equal(slide.read_region(x, y, w, h), expected)


def test_reflection_of_a_ramp_does_not_repeat_the_edge(tmp_path: Path) -> None:
    ramp = np.repeat(np.arange(6, dtype=np.uint8)[None, :, None] * 10, 3, axis=2)
    Image.fromarray(np.repeat(ramp, 3, axis=0)).save(tmp_path / "ramp.png")
    with open_slide(tmp_path / "ramp.png") as slide:
        assert slide.read_region(-3, 0, 12, 1)[0, :, 0].tolist() == [
            30,
            20,
            10,
            0,
            10,
            20,
            30,
            40,
            50,
            40,
            30,
            20,
        ]


def test_region_off_the_image_or_empty_raises(tmp_path: Path) -> None:
    path, _ = write_image("png", tmp_path, coded_image(20, 30))
    with open_slide(path) as slide:
        with pytest.raises(
            GR2STDataError, match=r"image\.png: region x=30 y=0 .* outside the 30x20"
        ):
            slide.read_region(30, 0, 5, 5)
        with pytest.raises(GR2STDataError, match="outside"):
            slide.read_region(-5, -5, 5, 5)
        with pytest.raises(GR2STDataError, match="size must be positive"):
            slide.read_region(0, 0, 0, 4)


def _chunk_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    keys: list[str] = []
    original = tifffile.zarr.ZarrTiffStore.get

    async def counting_get(self, key, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not key.endswith(("json", ".zarray", ".zattrs")):
            keys.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(tifffile.zarr.ZarrTiffStore, "get", counting_get)
    return keys


def test_tiled_tiff_decodes_only_the_tiles_a_region_touches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    truth = coded_image(320, 320)  # 10 x 10 tiles of 32 px
    write_pyramid(tmp_path / "wsi.tif", [truth, truth[::2, ::2]])
    keys = _chunk_reads(monkeypatch)
    with open_slide(tmp_path / "wsi.tif") as slide:
        keys.clear()
        np.testing.assert_array_equal(slide.read_region(40, 70, 20, 20), truth[70:90, 40:60])
        assert keys == ["2.1.0"]  # tile row 2, column 1 only
        keys.clear()
        slide.read_region(60, 60, 10, 10)
        assert len(keys) == 4  # the region straddles a tile corner


def test_thumbnail_uses_the_smallest_large_enough_pyramid_level(tmp_path: Path) -> None:
    # Each level a different flat grey, so the thumbnail shows which one was read.
    levels = [
        np.full((256 // f, 384 // f, 3), v, np.uint8) for f, v in [(1, 50), (2, 120), (4, 200)]
    ]
    write_pyramid(tmp_path / "wsi.tif", levels)
    with open_slide(tmp_path / "wsi.tif") as slide:
        small, scale = slide.thumbnail(90)
        assert small.shape == (60, 90, 3)
        assert scale == pytest.approx(90 / 384)
        assert np.all(small == 200)
        medium, _ = slide.thumbnail(150)
        assert np.all(medium == 120)
        large, _ = slide.thumbnail(300)
        assert large.shape == (200, 300, 3)
        assert np.all(large == 50)


@pytest.mark.parametrize("kind", ["png", "tiff-tiled", "openslide"])
def test_thumbnail_is_a_box_average(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    path, truth = write_image(kind, tmp_path, pixels)
    with open_slide(path) as slide:
        thumb, scale = slide.thumbnail(24)
        assert scale == 0.25
        expected = truth.reshape(16, 4, 24, 4, 3).mean(axis=(1, 3))
        if kind == "tiff-tiled":  # level 2 (every 4th pixel) is stored: read that one
            expected = truth[::4, ::4]
        np.testing.assert_allclose(thumb, expected, atol=1)
        full, scale = slide.thumbnail(500)
        assert scale == 1.0
        np.testing.assert_array_equal(full, truth)


def test_mpp_from_tiff_resolution_tags(tmp_path: Path) -> None:
    pixels = coded_image(16, 16)
    tifffile.imwrite(
        tmp_path / "cm.tif",
        pixels,
        photometric="rgb",
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    tifffile.imwrite(
        tmp_path / "inch.tif",
        pixels,
        photometric="rgb",
        resolution=(101600, 101600),
        resolutionunit="INCH",
    )
    tifffile.imwrite(
        tmp_path / "screen.tif",
        pixels,
        photometric="rgb",
        resolution=(72, 72),
        resolutionunit="INCH",
    )
    tifffile.imwrite(tmp_path / "none.tif", pixels, photometric="rgb")
    assert open_slide(tmp_path / "cm.tif").mpp == pytest.approx(0.5)
    assert open_slide(tmp_path / "inch.tif").mpp == pytest.approx(0.25)
    assert open_slide(tmp_path / "screen.tif").mpp is None
    assert open_slide(tmp_path / "none.tif").mpp is None


def test_mpp_from_openslide_properties(tmp_path: Path) -> None:
    pixels = coded_image(64, 64)
    description = (
        "Aperio Image Library v12.0.15\r\n64x64 [0,0 64x64] (32x32) JPEG/RGB Q=70|MPP = 0.4990"
    )
    tifffile.imwrite(
        tmp_path / "aperio.svs",
        pixels,
        photometric="rgb",
        tile=(32, 32),
        compression="zlib",
        description=description,
        metadata=None,
    )
    with open_slide(tmp_path / "aperio.svs") as slide:
        assert slide.mpp == pytest.approx(0.499)
        np.testing.assert_array_equal(slide.read_region(3, 4, 40, 50), pixels[4:54, 3:43])
    path, _ = write_image("png", tmp_path, pixels)
    assert open_slide(path).mpp is None


def test_vendor_tiff_goes_to_openslide(tmp_path: Path) -> None:
    description = "Aperio Image Library v12.0.15\r\n64x64|MPP = 0.25"
    tifffile.imwrite(
        tmp_path / "aperio.tif",
        coded_image(64, 64),
        photometric="rgb",
        tile=(32, 32),
        compression="zlib",
        description=description,
        metadata=None,
    )
    with open_slide(tmp_path / "aperio.tif") as slide:
        assert type(slide).__name__ == "_OpenSlideSlide"
        assert slide.mpp == 0.25


@pytest.mark.parametrize(
    ("kind", "fallback"), [("tiff-tiled", "_OpenSlideSlide"), ("tiff-strips", "_PillowSlide")]
)
def test_tiff_that_tifffile_cannot_decode_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, fallback: str
) -> None:
    path, truth = write_image(kind, tmp_path, coded_image(64, 80))

    def undecodable(*args: object) -> np.ndarray:
        raise slide_module._UndecodableError("JPEG requires imagecodecs")

    monkeypatch.setattr(slide_module._TiffSlide, "_decode", undecodable)
    with open_slide(path) as slide:
        assert type(slide).__name__ == fallback
        np.testing.assert_array_equal(slide.read_region(5, 6, 30, 20), truth[6:26, 5:35])


def test_lzw_tiff_is_readable(tmp_path: Path) -> None:
    # LZW needs imagecodecs in tifffile; without it, the strip TIFF goes to Pillow.
    pixels = coded_image(30, 40)
    Image.fromarray(pixels).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    with open_slide(tmp_path / "lzw.tif") as slide:
        np.testing.assert_array_equal(
            slide.read_region(-2, 3, 10, 10),
            np.pad(pixels, ((0, 0), (2, 0), (0, 0)), mode="reflect")[3:13, :10],
        )


def test_alpha_is_composited_on_white_and_grey_becomes_rgb(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red-ish, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(np.full((4, 4), 77, np.uint8), "L").save(tmp_path / "grey.png")
    region = open_slide(tmp_path / "alpha.png").read_region(0, 0, 4, 4)
    assert region[0, 0].tolist() == [200, 0, 0]
    assert region[3, 0].tolist() == [255, 255, 255]
    assert open_slide(tmp_path / "grey.png").read_region(0, 0, 2, 2)[0, 0].tolist() == [77] * 3


def test_16_bit_images_are_refused(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "deep.tif", np.zeros((8, 8, 3), np.uint16), photometric="rgb")
    with pytest.raises(GR2STDataError, match=r"deep\.tif: expected an 8-bit RGB"):
        open_slide(tmp_path / "deep.tif")


def test_pillow_decompression_bomb_limit_does_not_block_and_is_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, truth = write_image("png", tmp_path, coded_image(60, 60))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 3600 px is a "bomb" now
    with open_slide(path) as slide:
        np.testing.assert_array_equal(slide.read_region(0, 0, 60, 60), truth)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_bad_files_raise_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(GR2STDataError, match=r"missing\.png: no such image file"):
        open_slide(tmp_path / "missing.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(GR2STDataError, match=r"unsupported image type '\.txt'; expected .*\.jpg"):
        open_slide(tmp_path / "notes.txt")
    for name in ("broken.jpg", "broken.tif", "broken.svs"):
        (tmp_path / name).write_bytes(b"not an image at all")
        with pytest.raises(GR2STDataError, match=re.escape(f"{name}: ")):
            open_slide(tmp_path / name)


def test_content_hash_is_sha256_of_the_bytes_and_computed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = write_image("tiff-tiled", tmp_path, coded_image(50, 50))
    calls = []
    real = slide_module.sha256_file

    def counting(p: Path) -> str:
        calls.append(p)
        return real(p)

    monkeypatch.setattr(slide_module, "sha256_file", counting)
    with open_slide(path) as slide:
        digest = slide.content_hash()
        assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
        assert slide.content_hash() == digest
    assert len(calls) == 1


@pytest.mark.realdata
@pytest.mark.slow
def test_real_her2st_image_opens_with_pillow(real_root: Path) -> None:
    (path,) = (real_root / "ST-imgs" / "C" / "C2").glob("*.jpg")
    with open_slide(path) as slide:
        assert slide.dimensions == (9274, 9911)
        assert slide.mpp is None
        patch = slide.read_region(6930 - 112, 3510 - 112, 224, 224)
        assert patch.shape == (224, 224, 3)
        assert patch.mean() < 200  # a spot patch is tissue, not white glass


def test_regions_are_copies_the_caller_may_modify(tmp_path: Path) -> None:
    path, truth = write_image("png", tmp_path, coded_image(20, 30))
    with open_slide(path) as slide:
        row = slide.read_region(0, 5, 30, 1)  # full-width rows: a view would be possible
        row[:] = 0
        np.testing.assert_array_equal(slide.read_region(0, 5, 30, 1), truth[5:6])


def test_planar_rgba_and_greyscale_tiffs(tmp_path: Path) -> None:
    pixels = coded_image(24, 32)
    planar = np.moveaxis(pixels, -1, 0)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    rgba = np.concatenate([pixels, np.full((24, 32, 1), 255, np.uint8)], axis=-1)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples="unassalpha")
    tifffile.imwrite(tmp_path / "grey.tif", pixels[..., 0], photometric="minisblack")
    for name, expected in [
        ("planar", pixels),
        ("rgba", pixels),
        ("grey", np.repeat(pixels[..., :1], 3, axis=2)),
    ]:
        with open_slide(tmp_path / f"{name}.tif") as slide:
            assert slide.dimensions == (32, 24)
            np.testing.assert_array_equal(
                slide.read_region(-3, 2, 20, 30),
                np.pad(expected, ((0, 8), (3, 0), (0, 0)), mode="reflect")[2:32, :20],
            )


def test_jpeg_header_suffices_for_size_and_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = write_image("jpg", tmp_path, coded_image(40, 60))

    def no_decoding(*args: object) -> np.ndarray:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(slide_module, "_to_rgb", no_decoding)
    with open_slide(path) as slide:
        assert slide.dimensions == (60, 40)
        assert slide.content_hash() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_truncated_jpeg_fails_on_first_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path, _ = write_image("jpg", tmp_path, rng.integers(0, 256, (200, 200, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:2000])
    with open_slide(path) as slide:
        assert slide.dimensions == (200, 200)
        with pytest.raises(GR2STDataError, match=r"image\.jpg: cannot decode image"):
            slide.read_region(0, 0, 10, 10)
