"""Turn finished folds into ``results.json``, ``per_gene.csv``, a ranking table and figures."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from rich.console import Console
from rich.table import Table

from gr2st._utils.files import atomic_path
from gr2st.benchmark.figures import plot_pcc_boxplots, plot_spatial_maps
from gr2st.benchmark.store import to_jsonable, write_json
from gr2st.evaluation.metrics import summarize
from gr2st.evaluation.splits import Fold
from gr2st.evaluation.stats import paired_wilcoxon

if TYPE_CHECKING:
    from gr2st.benchmark.store import FoldRecord
    from gr2st.methods.base import Method

#: Method every other one is compared with by the paired Wilcoxon test.
REFERENCE_METHOD = "gr2st"
#: Number of best-predicted genes drawn in the spatial-map figure.
N_MAP_GENES = 4
#: Per-section fields of ``results.json`` (copied from each fold's metrics).
SECTION_FIELDS = (
    "mean_pcc",
    "strict_mean_pcc",
    "n_spots",
    "nan_genes",
    "mse",
    "mae",
    "heg50_pcc",
    "hvg50_pcc",
)

_COUNT_FIELDS = ("n_spots", "nan_genes")
#: Per-section scores whose plain mean over sections is reported per method.
_AVERAGED_FIELDS = ("strict_mean_pcc", "heg50_pcc", "hvg50_pcc", "mse", "mae")


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _mean(values: Sequence[float] | np.ndarray) -> float:
    return summarize(values)["mean"]


def build_results(
    records: Mapping[str, Mapping[str, FoldRecord]],
    *,
    classes: Mapping[str, type[Method]],
    profiles: Mapping[str, str],
    folds: Sequence[Fold],
    sections: Sequence[str],
    dataset: str,
    split: str,
    genes: Sequence[str],
    genes_label: str | None,
    feature_key: str,
    seed: int,
) -> dict[str, Any]:
    """Assemble the ``results.json`` content from every method's fold records.

    Per method: the mean, sample sd and median over sections of the per-section mean
    PCC (sections with no defined PCC left out), the strict mean (undefined genes as 0),
    section means of HEG50/HVG50 PCC, MSE and MAE, total wall time over folds, the
    per-fold seed/time/config, and the paired Wilcoxon p-value against ``gr2st`` when
    it was benchmarked too. Undefined numbers are ``None``, so the returned dict equals
    the JSON written from it.
    """
    methods: dict[str, dict[str, Any]] = {}
    for name, by_fold in records.items():
        per_section: dict[str, dict[str, Any]] = {}
        fold_info: dict[str, dict[str, Any]] = {}
        for fold in folds:
            meta = by_fold[fold.name].meta
            fold_info[fold.name] = {
                "seed": meta["seed"],
                "seconds": meta["seconds"],
                "config": meta["config"],
            }
            for extra in ("training", "selection"):
                if extra in meta:
                    fold_info[fold.name][extra] = meta[extra]
            for section in fold.test:
                scores = meta["sections"][section]
                per_section[section] = {
                    k: int(scores[k]) if k in _COUNT_FIELDS else _number(scores[k])
                    for k in SECTION_FIELDS
                }
        ordered = {s: per_section[s] for s in sections}
        table = pd.DataFrame.from_dict(ordered, orient="index", dtype=float)
        pcc = summarize(table["mean_pcc"].to_numpy())
        methods[name] = {
            "profile": profiles[name],
            "is_ceiling": bool(classes[name].is_ceiling),
            "mean_pcc": pcc["mean"],
            "sd_pcc": pcc["sd"],
            "median_pcc": pcc["median"],
            "n_scored_sections": pcc["n"],
            **{key: _mean(table[key].to_numpy()) for key in _AVERAGED_FIELDS},
            "nan_genes": int(table["nan_genes"].sum()),
            "seconds": float(sum(f["seconds"] for f in fold_info.values())),
            **_training_summary(fold_info),
            "sections": ordered,
            "folds": fold_info,
        }
    if REFERENCE_METHOD in methods:
        ref = [_number(v["mean_pcc"]) for v in methods[REFERENCE_METHOD]["sections"].values()]
        for name, entry in methods.items():
            if name == REFERENCE_METHOD:
                continue
            other = [_number(v["mean_pcc"]) for v in entry["sections"].values()]
            test = paired_wilcoxon(other, ref)
            entry["wilcoxon_vs_gr2st_p"] = test.p_value
            entry["wilcoxon_vs_gr2st_n"] = test.n
    ranked = sorted(
        (n for n, e in methods.items() if not e["is_ceiling"]),
        key=lambda n: (-_finite_or(methods[n]["mean_pcc"], -math.inf), n),
    )
    return to_jsonable(
        {
            "dataset": dataset,
            "sections": list(sections),
            "split": split,
            "genes": genes_label or f"{len(genes)} genes",
            "n_genes": len(genes),
            "encoder": feature_key.removeprefix("X_"),
            "feature_key": feature_key,
            "seed": seed,
            "ranking": ranked,
            "ceilings": [n for n, e in methods.items() if e["is_ceiling"]],
            "methods": methods,
        }
    )


def _training_summary(folds: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """A learned method's step time and checkpoint overhead over its folds (else empty)."""
    stats = [f["training"] for f in folds.values() if "training" in f]
    if not stats:
        return {}
    steps = sum(int(s["steps"]) for s in stats)
    train = sum(float(s["train_seconds"]) for s in stats)
    summary = {
        "seconds_per_step": train / steps if steps else math.nan,
        # The worst fold: the share must stay small for every one of them.
        "checkpoint_share": max(float(s["checkpoint_share"]) for s in stats),
    }
    peaks = [s["peak_gpu_bytes"] for s in stats if s.get("peak_gpu_bytes")]
    if peaks:
        summary["peak_gpu_gb"] = max(peaks) / 1e9
    return summary


def _finite_or(value: float | None, default: float) -> float:
    return default if value is None or not math.isfinite(value) else float(value)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def render_table(results: Mapping[str, Any]) -> Table:
    """The ranking as a rich table: methods by mean PCC, then ceilings (never ranked).

    Examples
    --------
    >>> res = {"dataset": "d", "split": "section", "sections": ["S0"], "genes": "g",
    ...        "ranking": ["knn"], "ceilings": [], "methods": {"knn": {
    ...        "profile": "default", "mean_pcc": 0.2, "sd_pcc": float("nan"),
    ...        "strict_mean_pcc": 0.2, "median_pcc": 0.2, "nan_genes": 0, "seconds": 1.0}}}
    >>> render_table(res).row_count
    1
    """
    has_ref = any("wilcoxon_vs_gr2st_p" in e for e in results["methods"].values())
    has_training = any("seconds_per_step" in e for e in results["methods"].values())
    table = Table(
        title=(
            f"{results['dataset']}: {len(results['sections'])} sections, "
            f"leave-one-{results['split']}-out, {results['genes']}"
        )
    )
    table.add_column("#", justify="right")
    table.add_column("method")
    table.add_column("profile")
    table.add_column("mean PCC", justify="right")
    table.add_column("sd", justify="right")
    table.add_column("strict mean", justify="right")
    table.add_column("median", justify="right")
    table.add_column("NaN genes", justify="right")
    table.add_column("seconds", justify="right")
    if has_training:
        table.add_column("s/step", justify="right")
        table.add_column("ckpt %", justify="right")
    if has_ref:
        table.add_column(f"p vs {REFERENCE_METHOD}", justify="right")

    def row(rank: str, name: str, end_section: bool = False) -> None:
        e = results["methods"][name]
        cells = [
            rank,
            name,
            e["profile"],
            _fmt(e["mean_pcc"]),
            _fmt(e["sd_pcc"]),
            _fmt(e["strict_mean_pcc"]),
            _fmt(e["median_pcc"]),
            str(e["nan_genes"]),
            f"{e['seconds']:.1f}",
        ]
        if has_training:
            learned = "seconds_per_step" in e
            cells.append(_fmt(e["seconds_per_step"], 3) if learned else "")
            cells.append(_fmt(100 * e["checkpoint_share"], 1) if learned else "")
        if has_ref:
            p = e.get("wilcoxon_vs_gr2st_p")
            cells.append("—" if name == REFERENCE_METHOD else _fmt(p, 3))
        table.add_row(*cells, end_section=end_section)

    ranking, ceilings = results["ranking"], results["ceilings"]
    for i, name in enumerate(ranking, start=1):
        row(str(i), name, end_section=bool(ceilings) and i == len(ranking))
    for name in ceilings:
        row("ceiling", name)
    return table


def table_text(results: Mapping[str, Any], *, width: int = 120) -> str:
    """Plain-text rendering of :func:`render_table` (for ``summary.txt``)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    console.print(render_table(results))
    return console.export_text()


def per_gene_table(
    records: Mapping[str, Mapping[str, FoldRecord]], genes: Sequence[str]
) -> pd.DataFrame:
    """Long table ``method, section, gene, pcc`` of every method's per-gene Pearson r."""
    frames = []
    gene_index = np.asarray(genes, dtype=object)
    for name, by_fold in records.items():
        for record in by_fold.values():
            for section, pcc in record.pcc.items():
                frames.append(
                    pd.DataFrame(
                        {"method": name, "section": section, "gene": gene_index, "pcc": pcc}
                    )
                )
    if not frames:
        return pd.DataFrame(columns=["method", "section", "gene", "pcc"])
    return pd.concat(frames, ignore_index=True)


def _featured(results: Mapping[str, Any], figure_section: str | None) -> tuple[str, str] | None:
    ranking = results["ranking"]
    if not ranking:
        return None
    method = REFERENCE_METHOD if REFERENCE_METHOD in ranking else ranking[0]
    if figure_section is not None:
        return method, figure_section
    scores = results["methods"][method]["sections"]
    finite = {
        s: float(v["mean_pcc"])
        for s, v in scores.items()
        if v["mean_pcc"] is not None and math.isfinite(v["mean_pcc"])
    }
    if not finite:
        return None
    return method, max(finite, key=lambda s: finite[s])


def write_outputs(
    out_dir: Path,
    results: Mapping[str, Any],
    *,
    records: Mapping[str, Mapping[str, FoldRecord]],
    prepared: Mapping[str, AnnData],
    truths: Mapping[str, np.ndarray],
    genes: Sequence[str],
    figures: bool = True,
    figure_section: str | None = None,
) -> None:
    """Write ``results.json``, ``per_gene.csv``, ``summary.txt``, ``report.html`` (with the
    data it is drawn from, :mod:`gr2st.benchmark.html`) and (``figures``) the figures.

    Figures: ``pcc_boxplots.png`` (every method, every section) and
    ``spatial_<section>_<method>.png``: measured vs predicted maps of the best-predicted
    genes for ``gr2st`` (or the top-ranked method) on ``figure_section`` (default: the
    section where that method scores best).
    """
    write_json(out_dir / "results.json", results)
    per_gene = per_gene_table(records, genes)
    with atomic_path(out_dir / "per_gene.csv") as tmp:
        per_gene.to_csv(tmp, index=False)
    with atomic_path(out_dir / "summary.txt") as tmp:
        tmp.write_text(table_text(results))
    from gr2st.benchmark.html import save_report_data, write_report

    save_report_data(out_dir, sections=prepared, truths=truths, genes=genes)
    write_report(out_dir)
    if not figures:
        return
    names = list(results["ranking"]) + list(results["ceilings"])
    plot_pcc_boxplots(
        per_gene,
        methods=names,
        sections=results["sections"],
        path=out_dir / "pcc_boxplots.png",
        ceilings=results["ceilings"],
    )
    featured = _featured(results, figure_section)
    if featured is None:
        return
    method, section = featured
    record = next(r for r in records[method].values() if section in r.pcc)
    pcc = record.pcc[section]
    order = np.argsort(-np.nan_to_num(pcc, nan=-np.inf), kind="stable")
    top = [int(i) for i in order[:N_MAP_GENES] if np.isfinite(pcc[i])]
    if not top:
        return
    plot_spatial_maps(
        prepared[section],
        truth=truths[section][:, top],
        pred=record.predictions[section][:, top],
        genes=[genes[i] for i in top],
        pcc=[float(pcc[i]) for i in top],
        method=method,
        path=out_dir / f"spatial_{section}_{method}.png",
    )
