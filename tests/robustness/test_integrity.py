"""Derived artefacts are checked before reuse: a tampered fold record is recomputed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gr2st.benchmark.store import CHECKSUMS, FoldRecord, FoldStore, rescore


def _bench(cli, bench_args, h5ad_dir: Path, out: Path):
    outcome = cli(*bench_args(h5ad_dir, out))
    assert outcome.code == 0, outcome.err
    return outcome, json.loads((out / "results.json").read_text())


def _scores(results: dict) -> dict:
    """The method's summary scores (all but timings)."""
    knn = results["methods"]["knn"]
    return {k: v for k, v in knn.items() if k not in ("seconds", "folds")}


def test_hand_edited_fold_record_is_recomputed(
    cli, bench_args, h5ad_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    _, first = _bench(cli, bench_args, h5ad_dir, out)
    record = out / "folds" / "knn" / "S1.json"
    meta = json.loads(record.read_text())
    meta["sections"]["S1"]["mean_pcc"] = 0.99  # the case: a flattering edit
    record.write_text(json.dumps(meta))
    again, second = _bench(cli, bench_args, h5ad_dir, out)
    assert again.warnings == [
        f"warning: {record}: content does not match its checksum (edited or damaged); "
        "recomputing this fold"
    ]
    assert _scores(second) == _scores(first)
    assert json.loads(record.read_text())["sections"]["S1"]["mean_pcc"] != 0.99


def test_edited_predictions_are_recomputed(cli, bench_args, h5ad_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    _, first = _bench(cli, bench_args, h5ad_dir, out)
    npz = out / "folds" / "knn" / "S0.npz"
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["pred_0"] = arrays["pred_0"] * 0 + 1
    with open(npz, "wb") as fh:
        np.savez(fh, **arrays)
    again, second = _bench(cli, bench_args, h5ad_dir, out)
    assert again.warnings == [
        f"warning: {out / 'folds' / 'knn' / 'S0.json'}: S0.npz does not match its checksum "
        "(edited or damaged); recomputing this fold"
    ]
    assert _scores(second) == _scores(first)


def test_untouched_records_are_reused_silently(
    cli, bench_args, h5ad_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    _, first = _bench(cli, bench_args, h5ad_dir, out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "folds" / "knn").iterdir()}
    again, second = _bench(cli, bench_args, h5ad_dir, out)
    assert again.warnings == []
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert _scores(second) == _scores(first)


def _record(tmp_path: Path) -> tuple[FoldStore, FoldRecord, dict[str, np.ndarray], list[str]]:
    rng = np.random.default_rng(0)
    truth = rng.poisson(3.0, size=(20, 4)).astype(float)
    pred = truth + rng.normal(scale=1.0, size=truth.shape)
    genes = ["a", "b", "c", "d"]
    meta = {"fingerprint": "f", "method": "m", "fold": "T", "test": ["T"], "sections": {}}
    record = FoldRecord(meta=meta, predictions={"T": pred}, pcc={"T": np.zeros(4)})
    return FoldStore(tmp_path), record, {"T": truth}, genes


def test_rescore_recomputes_from_predictions(tmp_path: Path) -> None:
    _, record, truths, genes = _record(tmp_path)
    scored = rescore(record, truths, genes)
    assert scored is not None
    expected = [
        np.corrcoef(record.predictions["T"][:, j], truths["T"][:, j])[0, 1] for j in range(4)
    ]
    np.testing.assert_allclose(scored.pcc["T"], expected, rtol=1e-6)
    assert scored.meta["sections"]["T"]["mean_pcc"] == pytest.approx(np.mean(expected))
    # A prediction that does not fit its truth cannot be rescored: recompute the fold.
    assert rescore(record, {"T": truths["T"][:5]}, genes) is None


def test_store_round_trip_and_checksums(tmp_path: Path) -> None:
    store, record, _, _ = _record(tmp_path)
    store.save("m", "T", record)
    loaded = store.load("m", "T", fingerprint="f")
    assert loaded is not None
    np.testing.assert_array_equal(
        loaded.predictions["T"], record.predictions["T"].astype(np.float32)
    )
    assert set(loaded.meta[CHECKSUMS]) == {"json_sha256", "npz_sha256"}
    assert store.load("m", "T", fingerprint="other") is None  # another request: not reused
    _, json_path = store.paths("m", "T")
    meta = json.loads(json_path.read_text())
    del meta[CHECKSUMS]  # a record from a gr2st without checksums
    json_path.write_text(json.dumps(meta))
    assert store.load("m", "T", fingerprint="f") is None
