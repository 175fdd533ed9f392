"""The two reports: a benchmark's (methods, sections, genes, maps) and a prediction's."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from gr2st._constants import (
    MEASURED_LAYER,
    MICRONS_PER_PIXEL,
    SECTION,
    SPATIAL,
    SPOT_DIAMETER_PX,
    UNCERTAINTY_LAYER,
    UNS,
)
from gr2st.report.html import Figure, Table, render_page
from gr2st.report.maps import SectionMaps

#: Method the benchmark's p-values compare with (as in ``results.json``).
REFERENCE_METHOD = "gr2st"
#: Bytes of quantised map values a prediction report carries at most (one per spot,
#: gene and map); beyond, the genes whose prediction varies most are kept.
MAX_MAP_BYTES = 20_000_000
#: ``obs`` column of a prediction: the spot lies on the detected tissue.
IN_TISSUE = "in_tissue"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _p(value: Any) -> str:
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.2g}"


def benchmark_page(
    results: Mapping[str, Any],
    *,
    per_gene: pd.DataFrame,
    maps: Sequence[SectionMaps],
    command: Sequence[str] | str,
    versions: str,
) -> str:
    """The benchmark report as one HTML page.

    Parameters
    ----------
    results
        The content of ``results.json``.
    per_gene
        The long table of ``per_gene.csv`` (``method, section, gene, pcc``).
    maps
        One :class:`SectionMaps` per held-out section (measured and predicted panels).
    command, versions
        The command that ran the benchmark and the versions it ran with.

    Examples
    --------
    >>> res = {"dataset": "d", "split": "section", "sections": ["S0"], "genes": "2 genes",
    ...        "ranking": ["knn"], "ceilings": [], "methods": {"knn": {
    ...        "profile": "default", "mean_pcc": 0.2, "sd_pcc": None, "median_pcc": 0.2,
    ...        "strict_mean_pcc": 0.2, "heg50_pcc": 0.1, "hvg50_pcc": 0.1, "seconds": 1.0,
    ...        "sections": {"S0": {"mean_pcc": 0.2}}, "folds": {}}}}
    >>> per_gene = pd.DataFrame({"method": ["knn"] * 2, "section": ["S0"] * 2,
    ...                          "gene": ["A", "B"], "pcc": [0.1, 0.3]})
    >>> page = benchmark_page(res, per_gene=per_gene, maps=[], command="gr2st", versions="")
    >>> '<td class="text">knn</td>' in page
    True
    """
    import plotly.graph_objects as go

    methods = results["methods"]
    names = [*results["ranking"], *results["ceilings"]]
    has_p = any("wilcoxon_vs_gr2st_p" in methods[n] for n in names)
    columns = ["#", "method", "profile", "mean PCC", "sd", "median", "strict mean", "HEG50",
               "HVG50", "seconds"] + ([f"p vs {REFERENCE_METHOD}"] if has_p else [])  # fmt: skip
    rows, css = [], []
    for i, name in enumerate(names, start=1):
        entry = methods[name]
        ceiling = name in results["ceilings"]
        row = [
            "ceiling" if ceiling else str(i),
            name,
            str(entry["profile"]),
            _fmt(entry["mean_pcc"]),
            _fmt(entry.get("sd_pcc")),
            _fmt(entry.get("median_pcc")),
            _fmt(entry.get("strict_mean_pcc")),
            _fmt(entry.get("heg50_pcc")),
            _fmt(entry.get("hvg50_pcc")),
            _fmt(entry.get("seconds"), 1),
        ]
        if has_p:
            row.append("—" if name == REFERENCE_METHOD else _p(entry.get("wilcoxon_vs_gr2st_p")))
        rows.append(row)
        css.append("ceiling" if ceiling else "")
    table = Table(
        id="methods",
        title="Methods",
        columns=columns,
        rows=rows,
        text_columns=3,
        css=css,
        note="Mean over held-out sections of each section's mean Pearson r over genes; "
        "ceilings (e.g. the oracle) use the truth and are never ranked; p: paired "
        f"Wilcoxon test of the per-section means against {REFERENCE_METHOD}.",
    )
    sections = list(results["sections"])
    bars = go.Figure(
        [
            go.Bar(
                name=name,
                x=sections,
                y=[methods[name]["sections"][s]["mean_pcc"] for s in sections],
            )
            for name in names
        ]
    )
    bars.update_layout(
        barmode="group", height=380, yaxis_title="mean PCC", margin={"t": 20, "b": 40}
    )
    boxes = go.Figure(
        [
            go.Box(
                name=name,
                y=per_gene.loc[per_gene["method"] == name, "pcc"].dropna().round(4).to_numpy(),
                boxpoints=False,
            )
            for name in names
        ]
    )
    boxes.update_layout(
        height=380, yaxis_title="PCC per gene and section", showlegend=False,
        margin={"t": 20, "b": 40},
    )  # fmt: skip
    return render_page(
        title=f"gr2st benchmark: {results['dataset']}",
        subtitle=(
            f"{len(sections)} sections, leave-one-{results['split']}-out, {results['genes']}, "
            f"encoder {results.get('encoder', 'n/a')}, seed {results.get('seed', 'n/a')}"
        ),
        tables=[table],
        figures=[
            Figure("sections", "Mean PCC per held-out section", bars),
            Figure("genes", "Per-gene PCC per method (every held-out section)", boxes),
        ],
        sections=maps,
        after_tables=_selection_tables(results),
        command=command,
        versions=versions,
    )


def _selection_tables(results: Mapping[str, Any]) -> list[Table]:
    rows = []
    for name, entry in results["methods"].items():
        for fold, info in entry.get("folds", {}).items():
            selection = info.get("selection")
            if not selection:
                continue
            chosen = ", ".join(f"{k}={v}" for k, v in selection["chosen"].items())
            scores = selection.get("inner_mean_pcc") or {}
            scored = "; ".join(f"{label}: {_fmt(s, 3)}" for label, s in scores.items())
            rows.append([name, fold, chosen, scored])
    if not rows:
        return []
    return [
        Table(
            id="selection",
            title="Inner selection per fold",
            columns=["method", "fold", "chosen", "inner mean PCC per candidate"],
            rows=rows,
            text_columns=4,
            note="Each outer fold chose its setting on its training sections only.",
        )
    ]


def prediction_page(
    adata: AnnData,
    *,
    command: Sequence[str] | str,
    versions: str,
    max_bytes: int = MAX_MAP_BYTES,
) -> str:
    """A prediction's report: what was predicted, maps of any gene, tissue / off-tissue.

    Examples
    --------
    >>> page = prediction_page(pred, command="gr2st predict …", versions="")  # doctest: +SKIP
    """
    meta = adata.uns.get(UNS, {})
    genes = [str(g) for g in adata.var_names]
    n_maps = 1 + sum(k in adata.layers for k in (UNCERTAINTY_LAYER, MEASURED_LAYER))
    note = None
    if n_maps * adata.n_obs * len(genes) > max_bytes:
        keep = max(1, max_bytes // (n_maps * adata.n_obs))
        spread = np.nan_to_num(np.asarray(adata.X, dtype=np.float64)).var(axis=0)
        chosen = np.sort(np.argsort(-spread, kind="stable")[:keep])
        note = (
            f"The {keep:,} genes (of {len(genes):,}) whose prediction varies most are "
            "shown, to keep the page small; every gene is in the .h5ad."
        )
    else:
        chosen = np.arange(len(genes))
    panels = {"predicted": np.asarray(adata.X, dtype=np.float32)[:, chosen]}
    if UNCERTAINTY_LAYER in adata.layers:
        panels["uncertainty"] = np.asarray(adata.layers[UNCERTAINTY_LAYER])[:, chosen]
    if MEASURED_LAYER in adata.layers:
        panels["measured"] = np.asarray(adata.layers[MEASURED_LAYER])[:, chosen]
    library = next(iter((adata.uns.get(SPATIAL) or {}).values()), None)
    thumbnail, scale = None, 1.0
    if library is not None and "hires" in library.get("images", {}):
        thumbnail = np.asarray(library["images"]["hires"])
        scale = float(library["scalefactors"]["tissue_hires_scalef"])
    categories = {}
    in_tissue = None
    if IN_TISSUE in adata.obs:
        in_tissue = adata.obs[IN_TISSUE].to_numpy(dtype=bool)
        categories["tissue"] = np.where(in_tissue, "on tissue", "off tissue")
    name = str(adata.obs[SECTION].iloc[0]) if SECTION in adata.obs else "prediction"
    maps = SectionMaps(
        name=name,
        centres=np.asarray(adata.obsm[SPATIAL], dtype=np.float64)[:, :2],
        diameter_px=float(meta.get(SPOT_DIAMETER_PX) or 1.0),
        genes=[genes[i] for i in chosen],
        panels=panels,
        thumbnail=thumbnail,
        scale=scale,
        categories=categories,
        note=note,
    )
    mpp = meta.get(MICRONS_PER_PIXEL)
    diameter = meta.get(SPOT_DIAMETER_PX)
    facts = [
        ["section", name],
        ["spots", f"{adata.n_obs:,}"],
        [
            "on tissue",
            "n/a" if in_tissue is None else f"{int(in_tissue.sum()):,} of {adata.n_obs:,}",
        ],
        ["genes predicted", f"{len(genes):,}"],
        ["measured values", "yes" if MEASURED_LAYER in adata.layers else "no"],
        ["µm per pixel", _fmt(mpp, 4)],
        [
            "spot diameter",
            "n/a"
            if diameter is None
            else f"{float(diameter):.1f} px"
            + ("" if mpp is None else f" = {float(diameter) * float(mpp):.0f} µm"),
        ],
        ["slide", str(meta.get("image_path", "n/a"))],
        ["bundle", str(meta.get("bundle", "n/a"))],
        ["bundle fingerprint", str(meta.get("bundle_fingerprint", "n/a"))[:16]],
    ]
    table = Table(id="summary", title="Prediction", columns=["", ""], rows=facts, text_columns=2)
    return render_page(
        title=f"gr2st prediction: {name}",
        subtitle=f"{adata.n_obs:,} spots × {len(genes):,} genes",
        tables=[table],
        sections=[maps],
        command=command,
        versions=versions,
    )
