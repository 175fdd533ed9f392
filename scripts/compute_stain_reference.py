"""Compute gr2st's shipped Reinhard reference from the six imaged HER2ST sections.

Source pixels: the 224 × 224 px spot patches of B4, C2, C3, C4, C5 and C6 (all selected
spots of ``ST-spotfiles/<SECTION>_selection.tsv``, patches centred on
``pixel_x, pixel_y``), each pixel weighted by :func:`gr2st.image.tissue_weight`. Spot
patches rather than whole images: they are what gets normalised, and they leave out
the tinted glass of B4 that a lightness threshold alone would count as tissue.

- ``mean``: the weighted CIELAB mean of all those pixels, pooled over the sections;
- ``std``: the within-patch standard deviation, i.e. the square root of the weighted
  mean of each patch's own variance. Reinhard matches every patch's own statistics to
  the reference, so the reference describes a typical patch; the pooled standard
  deviation (also recorded, ``std_pooled``) adds the variation between patches and
  would raise every patch's contrast (a* by about 15 % on these data).

Usage (about a minute of CPU)::

    nice .venv/bin/python scripts/compute_stain_reference.py \\
        --data ../shared/data/her2st --out src/gr2st/image/data/reinhard_reference.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from gr2st import __version__
from gr2st._constants import DEFAULT_PATCH_PX
from gr2st._utils.files import atomic_path
from gr2st.image import LabMoments, iter_patches, open_slide
from gr2st.image.stain import DEFAULT_TISSUE_LIGHTNESS

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("B4", "C2", "C3", "C4", "C5", "C6")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = os.environ.get("GR2ST_DATA", str(REPO / "../shared/data/her2st"))
    parser.add_argument("--data", type=Path, default=Path(default_data))
    parser.add_argument(
        "--out", type=Path, default=REPO / "src/gr2st/image/data/reinhard_reference.json"
    )
    args = parser.parse_args()

    total = LabMoments(tissue_lightness=DEFAULT_TISSUE_LIGHTNESS)
    within = np.zeros(3)
    images = []
    for section in SECTIONS:
        (image_path,) = sorted((args.data / "ST-imgs").glob(f"*/{section}/*.jpg"))
        spots = pd.read_csv(args.data / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t")
        spots = spots[spots["selected"] == 1]
        centres = spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
        moments = LabMoments(tissue_lightness=DEFAULT_TISSUE_LIGHTNESS)
        with open_slide(image_path) as slide:
            for _, batch in iter_patches(slide, centres, size_px=DEFAULT_PATCH_PX):
                for patch in batch:
                    one = LabMoments(tissue_lightness=DEFAULT_TISSUE_LIGHTNESS)
                    one.add(patch)
                    moments.merge(one)
                    within += one.spread
            images.append(
                {
                    "section": section,
                    "file": str(image_path.relative_to(args.data)),
                    "sha256": slide.content_hash(),
                    "spots": len(centres),
                    "tissue_share": round(moments.weight / moments.pixels, 4),
                    "mean": np.round(moments.mean, 4).tolist(),
                    "std_pooled": np.round(moments.std, 4).tolist(),
                }
            )
        total.merge(moments)
        print(section, images[-1]["mean"], images[-1]["std_pooled"], images[-1]["tissue_share"])

    reference = {
        "method": "reinhard",
        "color_space": "CIELAB, D65 2°, skimage.color.rgb2lab of RGB / 255",
        "mean": np.round(total.mean, 4).tolist(),
        "std": np.round(np.sqrt(within / total.weight), 4).tolist(),
        "std_pooled": np.round(total.std, 4).tolist(),
        "tissue_lightness": list(DEFAULT_TISSUE_LIGHTNESS),
        "computed_from": (
            f"the {DEFAULT_PATCH_PX} px spot patches of the selected spots of HER2ST "
            "sections " + ", ".join(SECTIONS) + " (almaan/her2st, ST-imgs and ST-spotfiles), "
            "pixels weighted by gr2st.image.stain.tissue_weight; mean: pooled weighted mean; "
            "std: within-patch standard deviation (square root of the weighted mean of the "
            "patches' own variances); std_pooled: pooled standard deviation, for reference"
        ),
        "script": "scripts/compute_stain_reference.py",
        "gr2st_version": __version__,
        "images": images,
    }
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(reference, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print("wrote", args.out, reference["mean"], reference["std"])


if __name__ == "__main__":
    main()
