"""Train GR2ST on a few sections and predict another one from its image, in a notebook's lines.

With ``--data DIR`` (a HER2ST folder) it trains on B4 and C2–C5 and predicts C6; without,
it runs on seeded synthetic sections (``gr2st.synthetic``), in about a minute on a laptop.

Usage::

    python examples/quickstart.py [--data ../shared/data/her2st] [--out models/quickstart]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import gr2st


def main(data: Path | None, out: Path, epochs: int) -> float:
    """Train, predict the held-out section, and return the mean per-gene Pearson r."""
    if data is None:
        sections = gr2st.synthetic(n_sections=4, n_genes=40, image_dir=tempfile.mkdtemp())
        panel = list(sections[0].var_names)
    else:
        sections = [gr2st.read_her2st(data, s) for s in ("B4", "C2", "C3", "C4", "C5", "C6")]
        panel = gr2st.get_panel("her2st-785")
    *train, test = sections

    # The five lines: features and nuclei are computed (and cached), GR2ST is trained and
    # saved as a bundle, and the held-out section is predicted from its image alone.
    folder = gr2st.train_bundle(train, out, panel=panel, overrides=[f"train.epochs={epochs}"])
    bundle = gr2st.load_bundle(folder)
    prediction = bundle.predict(test)
    prediction.write_h5ad(out / "prediction.h5ad")

    measured = prediction.layers["measured"]
    pcc = float(np.nanmean(gr2st.pearson_per_gene(prediction.X, measured)))
    print(f"{prediction.n_obs} spots × {prediction.n_vars} genes; mean PCC {pcc:.3f}")
    return pcc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("models/quickstart"))
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    main(args.data, args.out, args.epochs)
