from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from gr2st.encoders import ArrayCache
from gr2st.errors import GR2STConfigError

KEY = {"image": "ab" * 32, "coords": "cd" * 32, "size_px": 224, "stain": "reinhard"}


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return {
        "features": rng.normal(size=(5, 7)).astype(np.float32),
        "cell_type": np.array([0, 3, 3, 5, 1], dtype=np.int64),
        "n_spots": np.array(5),
        "transposed": np.arange(10.0).reshape(2, 5).T,
    }


def test_round_trip(tmp_path, arrays):
    cache = ArrayCache(tmp_path)
    path = cache.save("B4", "features", KEY, arrays)
    assert path.parent == tmp_path / "B4"
    assert path.name.startswith("features-")
    assert path.suffix == ".npz"
    loaded = cache.load("B4", "features", dict(reversed(list(KEY.items()))))
    assert loaded is not None
    assert set(loaded) == set(arrays)
    for name, a in arrays.items():
        np.testing.assert_array_equal(loaded[name], a)
        assert loaded[name].dtype == a.dtype
        assert loaded[name].shape == a.shape


def test_other_key_section_or_kind_misses(tmp_path, arrays):
    cache = ArrayCache(tmp_path)
    cache.save("B4", "features", KEY, arrays)
    assert cache.load("B4", "features", {**KEY, "size_px": 112}) is None
    assert cache.load("B4", "features", {**KEY, "stain": "none"}) is None
    assert cache.load("C2", "features", KEY) is None
    assert cache.load("B4", "nuclei", KEY) is None


def test_truncated_file_is_detected(tmp_path, arrays, caplog):
    cache = ArrayCache(tmp_path)
    path = cache.save("B4", "features", KEY, arrays)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="gr2st.encoders.cache"):
        assert cache.load("B4", "features", KEY) is None
    assert "ignoring cache file" in caplog.text
    assert path.name in caplog.text
    # Saving again repairs the entry.
    cache.save("B4", "features", KEY, arrays)
    assert cache.load("B4", "features", KEY) is not None


def test_flipped_byte_is_detected(tmp_path, arrays, caplog):
    cache = ArrayCache(tmp_path)
    path = cache.save("B4", "features", KEY, arrays)
    data = bytearray(path.read_bytes())
    # Flip one byte inside the stored float32 features (npz is uncompressed).
    pos = bytes(data).find(arrays["features"].tobytes())
    assert pos > 0
    data[pos + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert cache.load("B4", "features", KEY) is None
    assert "ignoring cache file" in caplog.text


def test_rewritten_array_fails_the_checksum(tmp_path, arrays, caplog):
    cache = ArrayCache(tmp_path)
    path = cache.save("B4", "features", KEY, arrays)
    with np.load(path) as npz:
        content = dict(npz)
    content["features"] = content["features"] + 1.0
    with open(path, "wb") as fh:
        np.savez(fh, **content)
    with caplog.at_level(logging.WARNING):
        assert cache.load("B4", "features", KEY) is None
    assert "'features' checksum mismatch" in caplog.text


def test_file_under_another_key_is_rejected(tmp_path, arrays, caplog):
    cache = ArrayCache(tmp_path)
    src = cache.save("B4", "features", KEY, arrays)
    other = {**KEY, "size_px": 448}
    shutil.copy(src, cache.path("B4", "features", other))
    with caplog.at_level(logging.WARNING):
        assert cache.load("B4", "features", other) is None
    assert "stored key differs" in caplog.text


def test_row_count_is_checked(tmp_path, arrays, caplog):
    cache = ArrayCache(tmp_path)
    cache.save("B4", "features", KEY, {"features": arrays["features"]})
    assert cache.load("B4", "features", KEY, n_rows=5) is not None
    with caplog.at_level(logging.WARNING):
        assert cache.load("B4", "features", KEY, n_rows=6) is None
    assert "expected 6 rows" in caplog.text


def test_bad_inputs(tmp_path):
    cache = ArrayCache(tmp_path)
    with pytest.raises(GR2STConfigError, match="object"):
        cache.save("B4", "x", KEY, {"a": np.array(["a", None], dtype=object)})
    with pytest.raises(GR2STConfigError, match="at least one array"):
        cache.save("B4", "x", KEY, {})
    with pytest.raises(GR2STConfigError, match="JSON-serialisable"):
        cache.path("B4", "x", {"a": object()})


def test_section_names_are_made_safe(tmp_path, arrays):
    cache = ArrayCache(tmp_path)
    path = cache.save("../P2 rep/1", "features", KEY, arrays)
    assert path.parent.parent == tmp_path
    assert cache.load("../P2 rep/1", "features", KEY) is not None
