"""``report.html`` of a benchmark folder, rebuilt from what the folder holds.

At the end of a run the benchmark saves, under ``report_data/``, what the page needs
beyond ``results.json``, ``per_gene.csv`` and the fold records: each section's spot
centres, spot diameter, measured (scored) expression and H&E thumbnail, plus the
command and versions (``meta.json``). :func:`write_report` then draws the page from the
folder alone, so ``gr2st report DIR`` gives the same page again at any time.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from gr2st._constants import IMAGE_PATH, SPATIAL, SPOT_DIAMETER_PX, UNS
from gr2st._utils.files import atomic_path
from gr2st.benchmark.store import FoldStore, write_json
from gr2st.errors import GR2STDataError, GR2STError
from gr2st.report import SectionMaps, benchmark_page, write_page
from gr2st.report.maps import THUMBNAIL_PX

log = logging.getLogger(__name__)

#: The page's file name in the benchmark folder.
REPORT_HTML = "report.html"
#: Folder of the per-section data the page is drawn from.
REPORT_DATA = "report_data"
#: Methods whose predictions are mapped per section (the featured one and the next
#: ranked ones; every method is in the tables and the distributions).
N_MAP_METHODS = 3
#: Method mapped first when benchmarked.
FEATURED = "gr2st"


def save_report_data(
    out_dir: Path,
    *,
    sections: Mapping[str, AnnData],
    truths: Mapping[str, np.ndarray],
    genes: Sequence[str],
    command: Sequence[str] | None = None,
) -> None:
    """Save what the page needs of each scored section under ``out_dir/report_data``."""
    from gr2st._utils.versions import version_report
    from gr2st.image import open_slide

    folder = out_dir / REPORT_DATA
    for name, section in sections.items():
        arrays: dict[str, np.ndarray] = {
            "centres": np.asarray(section.obsm[SPATIAL], dtype=np.float64)[:, :2],
            "diameter": np.asarray(float(section.uns[UNS][SPOT_DIAMETER_PX])),
            "truth": np.asarray(truths[name], dtype=np.float32),
        }
        image = section.uns[UNS].get(IMAGE_PATH)
        if image is not None:
            try:
                with open_slide(image) as slide:
                    thumbnail, scale = slide.thumbnail(THUMBNAIL_PX)
                arrays["thumbnail"] = thumbnail
                arrays["scale"] = np.asarray(scale)
            except (GR2STError, OSError) as err:
                log.warning("%s: no thumbnail in the report (%s)", name, err)
        with atomic_path(folder / f"{name}.npz") as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, allow_pickle=False, **arrays)
    write_json(
        folder / "meta.json",
        {
            "sections": list(sections),
            "genes": list(genes),
            "command": list(sys.argv if command is None else command),
            "versions": version_report(),
        },
    )


def write_report(out_dir: str | Path) -> Path:
    """Draw ``report.html`` of a finished benchmark folder; return its path.

    Raises
    ------
    GR2STDataError
        The folder holds no finished benchmark (``results.json``, ``per_gene.csv``).

    Examples
    --------
    >>> write_report("results/her2st")  # doctest: +SKIP
    PosixPath('results/her2st/report.html')
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise GR2STDataError(f"{out}: not a folder; expected a gr2st benchmark folder")
    missing = [n for n in ("results.json", "per_gene.csv") if not (out / n).is_file()]
    if missing:
        raise GR2STDataError(
            f"{out}: no {' or '.join(missing)}; expected a finished gr2st benchmark folder "
            "(gr2st benchmark --out)"
        )
    try:
        results = json.loads((out / "results.json").read_text())
        per_gene = pd.read_csv(out / "per_gene.csv")
    except (OSError, ValueError) as err:
        raise GR2STDataError(f"{out}: unreadable results ({' '.join(str(err).split())})") from None
    meta_path = out / REPORT_DATA / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    maps = _maps(out, results, per_gene, meta) if meta else []
    page = benchmark_page(
        results,
        per_gene=per_gene,
        maps=maps,
        command=meta.get("command", "(not recorded)"),
        versions=meta.get("versions", "(not recorded)"),
    )
    return write_page(page, out / REPORT_HTML)


def map_methods(results: Mapping[str, Any]) -> list[str]:
    """The methods mapped per section: the featured one first, then by rank.

    Examples
    --------
    >>> map_methods({"ranking": ["knn", "gr2st", "ridge", "mean"]})
    ['gr2st', 'knn', 'ridge']
    """
    ranking = list(results["ranking"])
    ordered = [FEATURED] if FEATURED in ranking else []
    ordered += [m for m in ranking if m != FEATURED]
    return ordered[:N_MAP_METHODS]


def _maps(
    out: Path, results: Mapping[str, Any], per_gene: pd.DataFrame, meta: Mapping[str, Any]
) -> list[SectionMaps]:
    genes = list(meta["genes"])
    methods = map_methods(results)
    predictions: dict[str, dict[str, np.ndarray]] = {m: {} for m in methods}
    store = FoldStore(out)
    for method in methods:
        for fold in results["methods"][method]["folds"]:
            _, json_path = store.paths(method, fold)
            fingerprint = json.loads(json_path.read_text()).get("fingerprint", "")
            record = store.load(method, fold, fingerprint=fingerprint)
            if record is None:
                raise GR2STDataError(f"{json_path}: fold record missing or damaged")
            predictions[method].update(record.predictions)
    maps = []
    for section in results["sections"]:
        path = out / REPORT_DATA / f"{section}.npz"
        if not path.is_file():
            continue
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        order = _gene_order(per_gene, methods[0] if methods else None, section, genes)
        panels = {"measured": arrays["truth"][:, order]}
        for method in methods:
            if section in predictions[method]:
                panels[f"predicted: {method}"] = predictions[method][section][:, order]
        maps.append(
            SectionMaps(
                name=section,
                centres=arrays["centres"],
                diameter_px=float(arrays["diameter"]),
                genes=[genes[i] for i in order],
                panels=panels,
                thumbnail=arrays.get("thumbnail"),
                scale=float(arrays["scale"]) if "scale" in arrays else 1.0,
                note=(
                    f"Genes in the order of {methods[0]}'s Pearson r on this section (best "
                    "first); the methods here give no uncertainty."
                    if methods
                    else None
                ),
            )
        )
    return maps


def _gene_order(
    per_gene: pd.DataFrame, method: str | None, section: str, genes: Sequence[str]
) -> np.ndarray:
    """Gene indices by ``method``'s PCC on ``section``, best first (undefined last)."""
    if method is None:
        return np.arange(len(genes))
    rows = per_gene[(per_gene["method"] == method) & (per_gene["section"] == section)]
    pcc = rows.set_index("gene")["pcc"].reindex(list(genes)).to_numpy(dtype=float)
    key = np.where(np.isfinite(pcc), -pcc, math.inf)
    return np.argsort(key, kind="stable")
