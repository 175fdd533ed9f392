"""Does a downscaled image predict as well as the full-resolution one when patches are in µm?

C6 (HER2ST) is written again with its H&E image downscaled ``--factor`` times and its spot
pixel positions divided by the same factor; its resolution is then inferred by the reader
(no override). The kNN baseline (top-200 retrieval over EfficientNet-Lite0 features,
Reinhard stain, no TTA) is fitted on B4 and C2–C5 and predicts C6 from the full-resolution
image and from the downscaled one, with patches of the same side in µm (``--patch-um``,
default 224 px at B4's resolution, the published patch); both are scored against C6's
measured counts over the 785-gene panel (mean Pearson r per gene). For comparison, the
downscaled image is also scored with 224-px patches (the pixel default before patches
in µm: five times the area at ×5).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/geometry_downscaled.py --data ../shared/data/her2st \\
        --out benchmarks/results/geometry_downscaled.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from gr2st._constants import DEFAULT_PANEL, IMAGE_PATH, MICRONS_PER_PIXEL, UNS, feature_key
from gr2st._utils.files import atomic_path, user_cache_dir
from gr2st.encoders import extract_features
from gr2st.evaluation.metrics import pearson_per_gene
from gr2st.genes import get_panel, prepare_section
from gr2st.io import read_her2st, read_st_legacy
from gr2st.methods.knn import KNNBaseline

TRAIN = ("B4", "C2", "C3", "C4", "C5")
TEST = "C6"
ENCODER = "efficientnet-lite0"


def _downscaled(root: Path, factor: int, folder: Path) -> Path:
    spots = pd.read_csv(root / "ST-spotfiles" / f"{TEST}_selection.tsv", sep="\t")
    spots["pixel_x"] /= factor
    spots["pixel_y"] /= factor
    spots.to_csv(folder / "spots.tsv", sep="\t", index=False)
    Image.MAX_IMAGE_PIXELS = None  # a ~90-Mpx H&E scan
    image = next((root / "ST-imgs" / TEST[0] / TEST).glob("*.jpg"))
    with Image.open(image) as img:
        small = img.resize((img.width // factor, img.height // factor), Image.Resampling.LANCZOS)
    small.save(folder / "small.png")
    return folder / "spots.tsv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/her2st"))
    parser.add_argument("--factor", type=int, default=5)
    parser.add_argument("--patch-um", type=float, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--cache", type=Path, default=user_cache_dir() / "features", help="Feature cache."
    )
    args = parser.parse_args()

    panel = get_panel(DEFAULT_PANEL)
    train = [read_her2st(args.data, s) for s in TRAIN]
    full = read_her2st(args.data, TEST)
    patch_um = args.patch_um or 224 * train[0].uns[UNS][MICRONS_PER_PIXEL]
    with tempfile.TemporaryDirectory() as tmp:
        spots = _downscaled(args.data, args.factor, Path(tmp))
        counts = args.data / "ST-cnts" / f"{TEST}.tsv.gz"
        small = read_st_legacy(counts, spots, image=Path(tmp) / "small.png", section=TEST)
        for adata in (*train, full, small):
            extract_features(
                adata, encoder=ENCODER, patch_um=patch_um, cache_dir=args.cache, progress=False
            )
        # the px default of before: 224 px whatever the resolution (5× the area here)
        small_px = small.copy()
        extract_features(
            small_px, encoder=ENCODER, size_px=224, cache_dir=args.cache, progress=False
        )
        sections = [prepare_section(a, genes=panel) for a in (*train, full, small, small_px)]
    method = KNNBaseline(feature_key=feature_key(ENCODER), device="cpu", progress=False)
    method.fit(sections[: len(TRAIN)])
    scores = {}
    runs = (("full", sections[-3], None), ("downscaled", sections[-2], None))
    for name, test, px in (*runs, ("downscaled_224px", sections[-1], 224)):
        r = pearson_per_gene(method.predict(test), test.X)
        mpp = float(test.uns[UNS][MICRONS_PER_PIXEL])
        side = px or round(patch_um / mpp)
        scores[name] = {
            "mean_pcc": float(np.nanmean(r)),
            "microns_per_pixel": mpp,
            "patch_px": side,
            "patch_um": side * mpp,
            "image": Path(str(test.uns[UNS][IMAGE_PATH])).name,
        }
    result = {
        "train": list(TRAIN),
        "test": TEST,
        "method": "knn (top_k=200)",
        "encoder": ENCODER,
        "patch_um": patch_um,
        "factor": args.factor,
        "scores": scores,
        "mean_pcc_difference": scores["downscaled"]["mean_pcc"] - scores["full"]["mean_pcc"],
    }
    with atomic_path(args.out) as tmp_out:
        tmp_out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
