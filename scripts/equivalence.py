"""Fit every registered method on fixed data and save its predictions, or compare two runs.

A refactoring that must not change behaviour is checked by running this script on the
code before and after it and comparing the two outputs bit for bit::

    python scripts/equivalence.py run --out /tmp/before     # on the old code
    python scripts/equivalence.py run --out /tmp/after      # on the new code
    python scripts/equivalence.py compare /tmp/before /tmp/after

Each method of the ``gr2st.methods`` registry is fitted with ``--profile default``,
seed 0 and one torch thread on seeded synthetic sections (image-like features in
``obsm["X_toy"]`` and uint8 patches in ``obsm["patches"]``), trained on three sections
and predicting the fourth. The learned methods are made small (narrow networks, a few
epochs, small patches) through overrides so that the whole run takes minutes on one
core; both runs must use the same settings, which this script fixes. A few extra cases
cover paths the plain default does not (GR2ST's early stopping and ensemble, a resumed
checkpoint). ``--her2st ROOT`` adds the feature methods (gr2st, ridge, knn, mean,
oracle) on one HER2ST section-out fold with colour-histogram features.

The output folder holds ``predictions.npz`` (one array per case) and ``hashes.json``
(sha256 of each array's bytes, shape and dtype).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from gr2st._constants import PATCHES
from gr2st.datasets import synthetic
from gr2st.genes import prepare_section
from gr2st.methods import METHODS

KEY = "X_toy"
SEED = 0
_COLOURS = np.array(
    [[230, 120, 160], [120, 60, 170], [250, 220, 230], [90, 140, 200], [200, 200, 90]]
)

#: Overrides that make each method small and quick (the same before and after).
SMALL: dict[str, tuple[str, ...]] = {
    "gr2st": (
        "model.proj_dim=32",
        "model.heads=2",
        "model.n_positions=64",
        "predict.top_k=20",
        "train.epochs=6",
        "train.feature_noise=0.1",
    ),
    "mclstexp": (
        "projection_dim=32",
        "heads=2",
        "dim_head=16",
        "top_k=20",
        "batch_size=32",
        "epochs=4",
        "dropout=0.1",
    ),
    "reg2st": (
        "hidden_dim=32",
        "gene_encoder_dim=32",
        "decoder_mlp_dim=32",
        "decoder_depth=1",
        "decoder_heads=2",
        "warmup_epochs=1",
        "epochs=4",
    ),
    "histogene": (
        "dim=32",
        "depth=1",
        "heads=2",
        "dim_head=16",
        "mlp_dim=64",
        "epochs=4",
        "aug_hflip=0.5",
        "aug_rotation=90",
    ),
    "hist2st": (
        "channels=8",
        "patch_size=8",
        "reduced_channels=4",
        "transformer_depth=1",
        "heads=2",
        "dim_head=16",
        "gnn_depth=2",
        "views=1",
        "epochs=3",
        "lr_step_epochs=2",
    ),
    "thitogene": (
        "dynamic_channels=4",
        "stem_channels=4,8,8,8",
        "primary_dim=4",
        "capsules=4",
        "capsule_dim=8",
        "depth=1",
        "heads=2",
        "dim_head=8",
        "mlp_dim=32",
        "gat_heads=2",
        "gat_hidden=16",
        "gat_out=16",
        "head_hidden=32",
        "epochs=3",
    ),
    "hggep": (
        "dim=32",
        "tap_channels=4",
        "vit_depth=1",
        "heads=2",
        "dim_head=16",
        "lstm_layers=1",
        "dropout=0",
        "hypergraph_dropout=0",
        "epochs=2",
        "views=1",
        "view_pool=1",
    ),
    "knn": ("top_k=20",),
    "ridge": ("n_components=8",),
    "oracle": ("top_k=20",),
    "mean": (),
}
#: Patch side of the pixel methods here (their default is 112 px).
PATCH_PX = {"histogene": 32, "hist2st": 32, "hggep": 32, "thitogene": 48}
#: The methods that train a network (fitted once more through a work folder).
TRAINED = ("gr2st", "hggep", "hist2st", "histogene", "mclstexp", "reg2st", "thitogene")
#: Extra cases: (case name, method, additional overrides).
EXTRA = [
    ("gr2st+early_stopping", "gr2st", ("train.early_stopping=true", "train.validate_every=2")),
    ("gr2st+ensemble2", "gr2st", ("train.ensemble=2",)),
]


def sections(seed: int = SEED) -> list[AnnData]:
    """Four synthetic sections whose features and patches carry the latent state."""
    raw = synthetic(
        n_sections=4, n_genes=12, grid=(10, 10), signal=3.0, state_scale=1.0, depth=200, seed=seed
    )
    rng = np.random.default_rng(seed + 100)
    codes = rng.normal(size=(5, 64))
    out = []
    for adata in raw:
        section = prepare_section(adata, genes=list(adata.var_names))
        state = adata.obs["latent_state"].to_numpy()[adata.obs_names.get_indexer(section.obs_names)]
        section.obsm[KEY] = (3.0 * codes[state] + rng.normal(0, 0.3, (section.n_obs, 64))).astype(
            np.float32
        )
        patches = _COLOURS[state][:, None, None, :] + rng.normal(0, 12, (section.n_obs, 48, 48, 3))
        section.obsm[PATCHES] = np.clip(patches, 0, 255).astype(np.uint8)
        out.append(section)
    return out


def make(name: str, *overrides: str, feature_key: str = KEY, small: bool = True) -> Any:
    cls = METHODS.get(name)
    if name in PATCH_PX:
        cls = type(f"Small{cls.__name__}", (cls,), {"patch_px": PATCH_PX[name]})
    return cls(
        feature_key=feature_key,
        profile="default",
        overrides=[*(SMALL[name] if small else ()), *overrides],
        seed=SEED,
        device="cpu",
        progress=False,
    )


def _fit_predict(method: Any, train: list[AnnData], test: AnnData, **fit: Any) -> np.ndarray:
    method.fit(train, **fit)
    return np.asarray(method.predict(test))


def run_synthetic(results: dict[str, np.ndarray], *, only: set[str] | None) -> None:
    data = sections()
    train, test = data[:3], data[3]
    names = [n for n in METHODS.names() if METHODS.get(n).__module__.startswith("gr2st.")]
    for name in names:
        if only and name not in only:
            continue
        start = time.perf_counter()
        results[f"synthetic/{name}"] = _fit_predict(make(name), train, test)
        print(f"synthetic/{name}: {time.perf_counter() - start:.1f} s", flush=True)
    for case, name, extra in EXTRA:
        if only and name not in only:
            continue
        results[f"synthetic/{case}"] = _fit_predict(make(name, *extra), train, test)
        print(f"synthetic/{case}", flush=True)
    # A fit through a work folder (checkpoints, progress log) predicts the same again.
    for name in names:
        if (only and name not in only) or name not in TRAINED:
            continue
        with tempfile.TemporaryDirectory() as work:
            results[f"synthetic/{name}+workdir"] = _fit_predict(
                make(name), train, test, workdir=Path(work)
            )
        print(f"synthetic/{name}+workdir", flush=True)


def run_her2st(results: dict[str, np.ndarray], root: Path, *, only: set[str] | None) -> None:
    """The feature methods on HER2ST section C6 held out, trained on C2-C5.

    Features: a 48-bin colour histogram of each spot's 112-px patch (no encoder weights
    needed); the gene panel is the 785-gene HER2ST list.
    """
    from gr2st._constants import IMAGE_PATH, SPATIAL, UNS
    from gr2st.genes import get_panel
    from gr2st.image.patches import iter_patches
    from gr2st.io.her2st import read_her2st

    genes = get_panel(root.parent / "genes" / "her_hvg_cut_1000.txt")
    prepared = []
    for name in ("C2", "C3", "C4", "C5", "C6"):
        raw = read_her2st(root, name)
        section = prepare_section(raw, genes=genes)
        feats = np.zeros((section.n_obs, 48), np.float32)
        for index, patches in iter_patches(
            section.uns[UNS][IMAGE_PATH],
            np.asarray(section.obsm[SPATIAL]),
            size_px=224,
            out_px=64,
        ):
            for row, patch in zip(index, patches, strict=True):
                hist = [np.histogram(patch[..., c], bins=16, range=(0, 256))[0] for c in range(3)]
                feats[row] = np.concatenate(hist) / patch[..., 0].size
        section.obsm["X_hist"] = feats
        prepared.append(section)
    train, test = prepared[:4], prepared[4]
    for name in ("gr2st", "ridge", "knn", "mean", "oracle"):
        if only and name not in only:
            continue
        start = time.perf_counter()
        overrides = ("train.epochs=20",) if name == "gr2st" else ()
        method = make(name, *overrides, feature_key="X_hist", small=False)
        results[f"her2st/{name}"] = _fit_predict(method, train, test)
        print(f"her2st/{name}: {time.perf_counter() - start:.1f} s", flush=True)


def digest(array: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(array).tobytes())
    h.update(f"{array.shape}{array.dtype}".encode())
    return h.hexdigest()


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    only = set(args.only) if args.only else None
    results: dict[str, np.ndarray] = {}
    run_synthetic(results, only=only)
    if args.her2st is not None:
        run_her2st(results, Path(args.her2st), only=only)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "predictions.npz", **{k.replace("/", "__"): v for k, v in results.items()})
    hashes = {k: digest(v) for k, v in results.items()}
    (out / "hashes.json").write_text(json.dumps(hashes, indent=1, sort_keys=True))
    print(f"{len(hashes)} cases -> {out}")
    return 0


def compare(args: argparse.Namespace) -> int:
    a = json.loads((Path(args.a) / "hashes.json").read_text())
    b = json.loads((Path(args.b) / "hashes.json").read_text())
    arrays_a = np.load(Path(args.a) / "predictions.npz")
    arrays_b = np.load(Path(args.b) / "predictions.npz")
    bad = 0
    for case in sorted(a.keys() | b.keys()):
        if case not in a or case not in b:
            print(f"MISSING  {case} (only in {'a' if case in a else 'b'})")
            bad += 1
            continue
        key = case.replace("/", "__")
        same = a[case] == b[case] and np.array_equal(arrays_a[key], arrays_b[key])
        if not same:
            diff = np.abs(arrays_a[key].astype(np.float64) - arrays_b[key]).max()
            print(f"DIFFERENT {case} (max abs diff {diff:.3g})")
            bad += 1
        else:
            print(f"identical {case}")
    print(f"{len(a.keys() | b.keys()) - bad} identical, {bad} not")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="fit every method and save its predictions")
    r.add_argument("--out", required=True)
    r.add_argument("--her2st", help="HER2ST root (…/data/her2st) for the real-data fold")
    r.add_argument("--only", nargs="*", help="method names (default: all)")
    r.set_defaults(func=run)
    c = sub.add_parser("compare", help="assert two runs are bit-identical")
    c.add_argument("a")
    c.add_argument("b")
    c.set_defaults(func=compare)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
