"""The single fold loop every benchmarked method goes through.

For each method and each fold: a fresh method instance (seeded from the global seed,
the method name and the fold name) is fitted on the training sections, predicts each
test section, and is scored there. Methods never see a test section's expression
(only ceilings such as ``oracle`` do), and receive nothing from the test section
during fitting, so no checkpoint or hyperparameter can be chosen on it.

Scoring genes outside the model's input panel ("all genes"): methods are still fitted
on the panel, then asked for the other genes through
:meth:`~gr2st.methods.Method.predict_values` (methods with ``supports_values``), where
``values`` holds one AnnData per training section (same spots, same order as in
``fit``) with the genes to predict. Retrieval methods answer it by averaging those
values over the retrieved training spots.

The module is long (≈830 lines) because its three stages — ``_plan`` (folds, fingerprints,
resume), ``_dispatch`` (tasks on an executor, inner selection, progress) and ``_report`` —
share the private plan and selection state; the tasks themselves are in
:mod:`gr2st.benchmark.jobs`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
from anndata import AnnData
from tqdm.auto import tqdm

from gr2st._constants import CELL_TYPE, IMAGE_CHECK, PATCHES, PATIENT, UNS
from gr2st._utils.files import atomic_path, remove_stale_temps, sha256_bytes
from gr2st._utils.lock import lock_folder
from gr2st.benchmark.jobs import WORKDIR_MARKER, FoldJob, fit_fold, inner_fits
from gr2st.benchmark.progress import Progress
from gr2st.benchmark.report import build_results, write_outputs
from gr2st.benchmark.selection import (
    ENCODER_KEY,
    SECTION_BLOCKS,
    SELECTIONS,
    Choice,
    PredictionKey,
    Selection,
    prediction_key,
    score_inner,
)
from gr2st.benchmark.store import FoldRecord, FoldStore, rescore, to_jsonable
from gr2st.config import route_overrides
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.evaluation.splits import Fold, make_folds
from gr2st.executors import Executor, LocalExecutor, Outcome, Task, get_executor
from gr2st.genes import prepare_section
from gr2st.methods import METHODS, Method
from gr2st.methods.base import panel_only_message
from gr2st.sections import section_name, stack_expression
from gr2st.training import DEFAULT_CHECKPOINT_SECONDS

logger = logging.getLogger(__name__)


def fold_seed(seed: int, method: str, fold: str) -> int:
    """Seed of one (method, fold) pair, derived deterministically from ``seed``.

    Examples
    --------
    >>> fold_seed(0, "knn", "B4") == fold_seed(0, "knn", "B4")
    True
    >>> fold_seed(0, "knn", "B4") != fold_seed(0, "knn", "C2")
    True
    """
    digest = hashlib.sha256(f"{seed}\0{method}\0{fold}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _profile_for(cls: type[Method[Any]], requested: str | None, dataset: str) -> str | None:
    """The profile asked of ``cls``: learned methods take ``--profile`` (and fail when
    they lack it; ``paper`` may have a per-dataset variant); the others have one set of
    settings."""
    return cls.profile_for(requested, dataset) if cls.has_profiles else None


def check_profile(profile: str | None, classes: Mapping[str, type[Method[Any]]]) -> None:
    """Refuse a ``profile`` that no method of ``classes`` has (it would apply to none).

    Examples
    --------
    >>> from gr2st.methods.base import METHODS
    >>> check_profile("turbo", {"knn": METHODS.get("knn")})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    gr2st.errors.GR2STConfigError: --profile turbo: none of the methods knn has profiles ...
    """
    if profile is None or any(cls.has_profiles for cls in classes.values()):
        return
    raise GR2STConfigError(
        f"--profile {profile}: none of the methods {', '.join(classes)} has profiles (they "
        "learn nothing and have one set of settings); drop --profile or add a learned method"
    )


def _data_signature(sections: Mapping[str, AnnData], feature_key: str) -> str:
    """Hash of what every method may read: spots, expression, features, cell types."""
    parts = []
    for name, adata in sections.items():
        parts += [name.encode(), "\n".join(map(str, adata.obs_names)).encode()]
        parts.append(np.ascontiguousarray(stack_expression([adata])).tobytes())
        if feature_key in adata.obsm:
            parts.append(np.ascontiguousarray(adata.obsm[feature_key], np.float32).tobytes())
        if CELL_TYPE in adata.obs:
            parts.append(adata.obs[CELL_TYPE].to_numpy(np.int64).tobytes())
    return sha256_bytes(*parts)


def _patches_signature(sections: Mapping[str, AnnData]) -> str | None:
    """Hash of the pixel methods' patch stacks (None when there are none).

    Kept out of the shared signature, so adding a pixel method to a run does not
    invalidate the saved folds of the feature methods.
    """
    if not all(PATCHES in a.obsm for a in sections.values()):
        return None
    return sha256_bytes(
        *(np.ascontiguousarray(a.obsm[PATCHES]).tobytes() for a in sections.values())
    )


def _fingerprint(common: Mapping[str, Any], **specific: Any) -> str:
    payload = json.dumps({**common, **specific}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _prepare(
    sections: Sequence[AnnData],
    genes: Sequence[str],
    target_genes: Sequence[str] | None,
    progress: bool,
) -> tuple[dict[str, AnnData], dict[str, AnnData] | None, dict[str, str]]:
    prepared: dict[str, AnnData] = {}
    targets: dict[str, AnnData] | None = None if target_genes is None else {}
    patients: dict[str, str] = {}
    for adata in tqdm(sections, desc="normalising", unit="section", disable=not progress):
        name = section_name(adata)
        if name in prepared:
            raise GR2STDataError(f"section {name!r} is given twice")
        prepared[name] = prepare_section(adata, genes=list(genes))
        if targets is not None and target_genes is not None:
            # The panel stays the library, so both views drop the same zero-panel spots.
            targets[name] = prepare_section(
                adata, genes=list(target_genes), library_genes=list(genes)
            )
        patients[name] = (
            str(adata.obs[PATIENT].iloc[0]) if PATIENT in adata.obs and adata.n_obs else name
        )
    return prepared, targets, patients


def _remove_workdir(root: Path, method: str, fold: str) -> None:
    """Delete a finished fold's checkpoints, then the parent folders left empty."""
    shutil.rmtree(root / method / fold, ignore_errors=True)
    for folder in (root / method, root):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _hold_output_lock(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``func`` holding the lock of its ``out_dir``, after removing the temporary
    files that interrupted runs left there: two runs never share a fold's work folder
    (re-entrant, so the command line may hold the lock already)."""

    @functools.wraps(func)
    def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        out = Path(str(kwargs["out_dir"]))
        with lock_folder(out, what=f"benchmark folder {out}"):
            remove_stale_temps(out)
            return func(*args, **kwargs)

    return locked


@dataclass
class _Plan:
    """What a benchmark runs: the prepared data, the folds already saved and the jobs left."""

    methods: list[str]
    classes: dict[str, type[Method[Any]]]
    profiles: dict[str, str]
    folds: list[Fold]
    prepared: dict[str, AnnData]
    targets: dict[str, AnnData] | None
    truths: dict[str, np.ndarray]
    genes: list[str]
    done: dict[tuple[str, str], FoldRecord]
    jobs: list[FoldJob]


@_hold_output_lock
def run_benchmark(
    sections: Sequence[AnnData],
    *,
    methods: Sequence[str],
    genes: Sequence[str],
    feature_key: str,
    out_dir: str | Path,
    target_genes: Sequence[str] | None = None,
    profile: str | None = None,
    overrides: Sequence[str] = (),
    split: str = "section",
    seed: int = 0,
    resume: bool = True,
    progress: bool = True,
    device: str = "auto",
    dataset: str = "custom",
    genes_label: str | None = None,
    figures: bool = True,
    figure_section: str | None = None,
    checkpoint_every: float = DEFAULT_CHECKPOINT_SECONDS,
    grid: Mapping[str, Sequence[Choice]] | None = None,
    select: str = "none",
    inner_folds: int | None = None,
    executor: Executor | str | Callable[[], Executor] = "local",
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Cross-validate ``methods`` over ``sections`` and write the report to ``out_dir``.

    Parameters
    ----------
    sections
        Raw sections (counts in ``X``) carrying the image features in
        ``obsm[feature_key]`` and nuclear types in ``obs[CELL_TYPE]``.
    methods
        Registered method names (see ``gr2st.methods.METHODS``).
    genes
        The model's gene panel, in order (e.g. ``gr2st.genes.get_panel("her2st-785")``):
        what methods are fitted on, and what is scored unless ``target_genes`` is given.
    feature_key
        ``obsm`` key of the frozen image features.
    out_dir
        Output folder: ``results.json``, ``per_gene.csv``, ``summary.txt``, figures,
        and the per-fold records under ``folds/`` that make the run resumable.
    target_genes
        Genes to predict and score instead of the panel (e.g. every gene measured in
        all sections, ``gr2st.genes.common_genes``), log-normalised with the panel's
        library size. Needs methods with a ``predict_values`` hook (see above).
    profile
        Hyperparameter profile of the learned methods (``default`` or ``paper``; each
        method fails with the profiles it has when it lacks it); the methods that learn
        nothing have one set of settings.
    overrides
        ``key=value`` (every method) or ``method:key=value`` (one method).
    split
        ``"section"`` (leave one section out) or ``"patient"`` (leave one patient out).
    seed
        Global seed; each (method, fold) gets its own seed derived from it.
    resume
        Reuse finished folds found in ``out_dir`` (``False`` recomputes everything).
    progress
        Show a progress bar, weighted by the estimated cost of each fit
        (:mod:`gr2st.benchmark.progress`).
    device
        Passed to the methods (``"auto"``, ``"cpu"`` or ``"cuda"``).
    dataset, genes_label
        Names recorded in ``results.json``.
    figures
        Draw the PNG figures (``False`` skips them, e.g. for quick runs).
    figure_section
        Section of the spatial-map figure (default: the featured method's best).
    checkpoint_every
        Seconds between training checkpoints of a fold (``0``: every epoch).
    grid
        Candidate settings per method (:func:`gr2st.benchmark.selection.parse_grid`):
        overrides and the spatial smoothing of its predictions. A method absent from it
        runs as configured, unsmoothed.
    select
        ``"none"``: each method runs with its first candidate; ``"inner"``: each outer
        fold picks the candidate with the best inner leave-one-section-out score on its
        training sections only (recorded per fold in ``results.json``).
    inner_folds
        At most this many inner folds (the first training sections of the fold);
        None: one per training section.
    executor
        Where the fits run: ``"local"`` (one after the other in this process),
        ``"pool"`` (a worker process per core, :class:`~gr2st.executors.pool.PoolExecutor`),
        ``"ray"`` (a Ray instance started here with every core), an
        :class:`~gr2st.executors.Executor` (e.g. ``get_executor("pool", num_cpus=4)``;
        the caller closes it), or a function making one (called only when a fold is
        left to run; the executor is closed at the end). Each inner fit (per inner fold
        and candidate group) and each outer fit is one task
        (:mod:`gr2st.benchmark.jobs`); the sections are shared with the tasks once;
        results are saved here, as each task finishes, so resuming and the outputs do
        not depend on the executor, and neither do the numbers when tasks use the same
        threads (``cpus_per_task``).
    report
        Without a progress bar, called with one line per finished task (each fold, and
        each inner fit group) saying how much of the work is done and the time left.

    Returns
    -------
    dict
        The content of ``results.json``.

    Examples
    --------
    >>> from gr2st.datasets import synthetic
    >>> secs = synthetic(n_sections=3, n_genes=8, grid=(4, 4))
    >>> for s in secs:
    ...     s.obsm["X_toy"] = s.obs[["latent_state"]].to_numpy(float)
    >>> import tempfile
    >>> res = run_benchmark(secs, methods=["knn"], genes=list(secs[0].var_names),
    ...                     feature_key="X_toy", out_dir=tempfile.mkdtemp(), progress=False)
    >>> sorted(res["methods"]["knn"]["sections"])
    ['S0', 'S1', 'S2']
    """
    out = Path(out_dir)
    plan = _plan(
        sections,
        methods=methods,
        genes=genes,
        target_genes=target_genes,
        feature_key=feature_key,
        out=out,
        profile=profile,
        overrides=overrides,
        split=split,
        seed=seed,
        resume=resume,
        progress=progress,
        device=device,
        dataset=dataset,
        figure_section=figure_section,
        checkpoint_every=checkpoint_every,
        grid=grid,
        select=select,
        inner_folds=inner_folds,
    )
    with ExitStack() as stack:
        # No executor is started (no Ray instance) when every fold is already saved.
        runner = _executor(executor, stack) if plan.jobs else LocalExecutor()
        _dispatch(plan, runner, out=out, progress=progress, report=report)
    return _report(
        plan,
        out,
        sections=sections,
        dataset=dataset,
        split=split,
        genes_label=genes_label,
        feature_key=feature_key,
        seed=seed,
        figures=figures,
        figure_section=figure_section,
    )


def _plan(
    sections: Sequence[AnnData],
    *,
    methods: Sequence[str],
    genes: Sequence[str],
    target_genes: Sequence[str] | None,
    feature_key: str,
    out: Path,
    profile: str | None,
    overrides: Sequence[str],
    split: str,
    seed: int,
    resume: bool,
    progress: bool,
    device: str,
    dataset: str,
    figure_section: str | None,
    checkpoint_every: float,
    grid: Mapping[str, Sequence[Choice]] | None,
    select: str,
    inner_folds: int | None,
) -> _Plan:
    """Check the request, prepare the sections, load the saved folds, list the jobs left."""
    method_names = list(dict.fromkeys(methods))
    if not method_names:
        raise GR2STConfigError("methods: expected at least one method name")
    if select not in SELECTIONS:
        raise GR2STConfigError(f"select: expected one of {SELECTIONS}, got {select!r}")
    if inner_folds is not None and inner_folds < 1:
        raise GR2STConfigError(f"inner_folds: expected a positive number, got {inner_folds!r}")
    candidates = {name: list((grid or {}).get(name) or [Choice()]) for name in method_names}
    classes = {name: METHODS.get(name) for name in method_names}
    check_profile(profile, classes)
    routed = route_overrides(overrides, method_names)
    settings: dict[str, Any] = {}
    profiles: dict[str, str] = {}
    for name, cls in classes.items():
        # Construct once up front so a bad profile or override fails before any fold
        # runs; the resolved settings also key the saved folds, so changed defaults
        # recompute.
        for choice in candidates[name]:
            method = cls(
                feature_key=choice.feature_key(feature_key),
                profile=_profile_for(cls, profile, dataset),
                overrides=[*routed[name], *choice.overrides],
                seed=seed,
                progress=False,
            )
        profiles[name] = method.profile
        settings[name] = to_jsonable(method.describe())
        if target_genes is not None and not cls.supports_values:
            raise GR2STConfigError(panel_only_message(name))

    prepared, targets, patients = _prepare(sections, genes, target_genes, progress)
    scored = prepared if targets is None else targets
    gene_names = [str(g) for g in next(iter(scored.values())).var_names]
    if figure_section is not None and figure_section not in prepared:
        raise GR2STConfigError(
            f"figure section {figure_section!r} is not among the sections {list(prepared)}"
        )
    folds = make_folds(split, patients)
    truths = {name: stack_expression([a]) for name, a in scored.items()}
    common = {
        "split": split,
        "seed": seed,
        "panel": list(genes),
        "genes": gene_names,
        "feature_key": feature_key,
        "data": _data_signature(prepared, feature_key),
        "scored": None if targets is None else _data_signature(targets, feature_key),
    }

    patches = _patches_signature(prepared)
    store = FoldStore(out)
    done: dict[tuple[str, str], FoldRecord] = {}
    jobs: list[FoldJob] = []
    # Workers may run in another folder (or on another machine): absolute paths.
    work = out.absolute() / "work"
    for name in method_names:
        grid_features = _candidate_features(candidates[name], prepared, feature_key)
        for fold in folds:
            fingerprint = _fingerprint(
                common,
                **({"patches": patches} if classes[name].input == "pixels" else {}),
                method=name,
                profile=profiles[name],
                overrides=routed[name],
                settings=settings[name],
                fold=[fold.name, list(fold.train), list(fold.test)],
                **_selection_fingerprint(
                    candidates[name], select, inner_folds, n_train=len(fold.train)
                ),
                **grid_features,
            )
            record = store.load(name, fold.name, fingerprint=fingerprint) if resume else None
            if record is not None:
                # Scores come from the stored predictions, never from stored numbers.
                record = rescore(record, truths, gene_names)
            if record is not None:
                logger.info("%s %s: loaded the finished fold", name, fold.name)
                done[name, fold.name] = record
                continue
            jobs.append(
                FoldJob(
                    cls=classes[name],
                    name=name,
                    fold=fold,
                    genes=tuple(gene_names),
                    feature_key=feature_key,
                    profile=profiles[name],
                    overrides=tuple(routed[name]),
                    candidates=tuple(candidates[name]),
                    select=select,
                    inner_folds=inner_folds,
                    seed=fold_seed(seed, name, fold.name),
                    device=device,
                    workdir=work / name / fold.name,
                    fresh=not resume,
                    fingerprint=fingerprint,
                    progress=progress,
                    checkpoint_every=checkpoint_every,
                )
            )
    return _Plan(
        methods=method_names,
        classes=classes,
        profiles=profiles,
        folds=folds,
        prepared=prepared,
        targets=targets,
        truths=truths,
        genes=gene_names,
        done=done,
        jobs=jobs,
    )


@dataclass
class _Selecting:
    """A job's inner selection while its fits run."""

    job: FoldJob
    held_out: list[AnnData]
    groups: list[tuple[int, ...]]
    predictions: list[dict[PredictionKey, np.ndarray]]
    fits: int
    fits_done: int = 0


def _dispatch(
    plan: _Plan,
    runner: Executor,
    *,
    out: Path,
    progress: bool,
    report: Callable[[str], None] | None,
) -> None:
    """Run the plan's jobs on ``runner``, saving each fold as it finishes.

    First every inner fit of every selecting job and the outer fits of the others, then
    the outer fits of the selecting jobs with their chosen candidates. Inner predictions
    are kept in the fold's work folder until the fold is saved, so an interrupted run
    resumes without refitting them.
    """
    if not plan.jobs:
        return
    store = FoldStore(out)
    shared = {
        "prepared": runner.share(plan.prepared),
        "targets": runner.share(plan.targets),
        "truths": runner.share(plan.truths),
    }
    jobs = [
        # Bars of tasks running elsewhere would garble the job's bar.
        replace(j, device=runner.device(j.device), progress=progress and runner.in_process)
        for j in plan.jobs
    ]
    spots = {name: a.n_obs for name, a in plan.prepared.items()}
    total_folds = len(plan.methods) * len(plan.folds)
    selecting: dict[str, _Selecting] = {}
    first: dict[str, list[tuple[float, Task]]] = {}
    final_cost: dict[str, float] = {}
    for job in jobs:
        _claim_workdir(job)
        n_train = sum(spots[s] for s in job.fold.train)
        splits = job.splits(plan.prepared)
        # Before the choice is known, its outer fit is costed as the dearest candidate.
        final_cost[job.key] = max(
            job.cost(n_train, (i,)) for i in range(len(job.candidates) if splits else 1)
        )
        first[job.key] = []
        if not splits:
            first[job.key].append(
                (final_cost[job.key], _final_task(job, shared, _first_choice(job)))
            )
            continue
        groups = job.fit_groups()
        state = selecting[job.key] = _Selecting(
            job=job,
            held_out=[held for _, held in splits],
            groups=groups,
            predictions=[{} for _ in splits],
            fits=len(splits) * sum(job.models(g) for g in groups),
        )
        for split, (inner, _) in enumerate(splits):
            n_inner = sum(a.n_obs for a in inner)
            for group in groups:
                saved = _load_inner(job, split, group)
                if saved is not None:
                    _keep_inner(state, split, group, saved)
                    continue
                first[job.key].append(
                    (
                        job.cost(n_inner, group),
                        Task(
                            _inner_key(job, split, group),
                            inner_fits,
                            {
                                "job": job,
                                "prepared": shared["prepared"],
                                "split": split,
                                "group": group,
                            },
                        ),
                    )
                )
    costs = {task.key: cost for items in first.values() for cost, task in items}
    costs.update((_fit_key(s.job), final_cost[k]) for k, s in selecting.items())
    meter = Progress(
        sum(costs.values()),
        desc="benchmark" if runner.in_process else f"benchmark on {runner.describe()}",
        bar=progress,
        report=report,
    )
    finished = len(plan.done)

    def fold_done(job: FoldJob, record: FoldRecord) -> None:
        nonlocal finished
        store.save(job.name, job.fold.name, record)
        _remove_workdir(out.absolute() / "work", job.name, job.fold.name)
        plan.done[job.name, job.fold.name] = record
        finished += 1
        # A method predicting constants has no defined PCC (None in the record).
        pcc = [s["mean_pcc"] for s in record.meta["sections"].values()]
        defined = [float(v) for v in pcc if v is not None and np.isfinite(v)]
        score = f"mean PCC {np.mean(defined):.4f}" if defined else "mean PCC undefined"
        meter.advance(
            costs[_fit_key(job)], f"{job.key}: fold done, {score} ({finished}/{total_folds} folds)"
        )

    # One job after the other in this process (the order and the saved folds of the
    # one-process loop); all at once elsewhere: first the inner fits of every job and
    # the outer fits that need no choice, then the chosen outer fits.
    batches = [[job] for job in jobs] if runner.in_process else [jobs]
    try:
        for batch in batches:
            _run_batch(batch, runner, first, selecting, costs, meter, fold_done, shared, spots)
    finally:
        meter.close()


def _run_batch(
    batch: list[FoldJob],
    runner: Executor,
    first: Mapping[str, list[tuple[float, Task]]],
    selecting: Mapping[str, _Selecting],
    costs: dict[str, float],
    meter: Progress,
    fold_done: Callable[[FoldJob, FoldRecord], None],
    shared: Mapping[str, Any],
    spots: Mapping[str, int],
) -> None:
    """Run the tasks of ``batch``'s jobs: inner fits and unselected outer fits, then the
    outer fits with the candidates the inner fits chose."""

    def run(items: list[tuple[float, Task]]) -> Iterator[Outcome]:
        if not runner.in_process:
            # Dearest first, so that no long fit starts last while other workers idle.
            items = sorted(items, key=lambda item: -item[0])
        return runner.map([t for _, t in items], on_start=lambda t: meter.note(t.key))

    for outcome in run([item for job in batch for item in first[job.key]]):
        kwargs = outcome.task.kwargs
        job = kwargs["job"]
        if outcome.task.fn is not inner_fits:
            fold_done(job, outcome.value)
            continue
        split, group = kwargs["split"], kwargs["group"]
        _save_inner(job, split, group, outcome.value)
        state = selecting[job.key]
        _keep_inner(state, split, group, outcome.value)
        meter.advance(
            costs[outcome.task.key], f"{job.key}: inner fits {state.fits_done}/{state.fits}"
        )
    second = []
    for job in batch:
        if job.key not in selecting:
            continue
        state = selecting[job.key]
        selection = score_inner(job.candidates, state.held_out, state.predictions)
        chosen = job.cost(
            sum(spots[s] for s in job.fold.train), (job.candidates.index(selection.choice),)
        )
        meter.retotal(chosen - costs[_fit_key(job)])
        costs[_fit_key(job)] = chosen
        second.append((chosen, _final_task(job, shared, selection)))
    for outcome in run(second):
        fold_done(outcome.task.kwargs["job"], outcome.value)


def _first_choice(job: FoldJob) -> Selection:
    return Selection(choice=job.candidates[0], scores={}, inner_folds=[])


def _final_task(job: FoldJob, shared: Mapping[str, Any], selection: Selection) -> Task:
    return Task(_fit_key(job), fit_fold, {**shared, "job": job, "selection": selection})


def _fit_key(job: FoldJob) -> str:
    return f"{job.key} fit"


def _inner_key(job: FoldJob, split: int, group: tuple[int, ...]) -> str:
    return f"{job.key} inner {split} {'-'.join(map(str, group))}"


def _keep_inner(
    state: _Selecting, split: int, group: tuple[int, ...], predictions: Sequence[np.ndarray]
) -> None:
    for i, pred in zip(group, predictions, strict=True):
        state.predictions[split][prediction_key(state.job.candidates[i])] = pred
    state.fits_done += state.job.models(group)


def _claim_workdir(job: FoldJob) -> None:
    """Empty ``job``'s work folder unless it holds this very request (checkpoints and
    inner predictions are reused only for it)."""
    marker = job.workdir / WORKDIR_MARKER
    if job.fresh or not marker.is_file() or marker.read_text() != job.fingerprint:
        shutil.rmtree(job.workdir, ignore_errors=True)
    job.workdir.mkdir(parents=True, exist_ok=True)
    marker.write_text(job.fingerprint)


def _inner_path(job: FoldJob, split: int, group: tuple[int, ...]) -> Path:
    return job.workdir / "inner" / f"{split}-{'-'.join(map(str, group))}.npz"


def _save_inner(
    job: FoldJob, split: int, group: tuple[int, ...], predictions: Sequence[np.ndarray]
) -> None:
    path = _inner_path(job, split, group)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, *predictions)


def _load_inner(job: FoldJob, split: int, group: tuple[int, ...]) -> list[np.ndarray] | None:
    path = _inner_path(job, split, group)
    if not path.is_file():
        return None
    try:
        with np.load(path) as saved:
            arrays = [saved[f"arr_{i}"] for i in range(len(group))]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        logger.warning("%s: unreadable inner predictions, fitting them again", path)
        return None
    return arrays


def _report(
    plan: _Plan,
    out: Path,
    *,
    sections: Sequence[AnnData],
    dataset: str,
    split: str,
    genes_label: str | None,
    feature_key: str,
    seed: int,
    figures: bool,
    figure_section: str | None,
) -> dict[str, Any]:
    """Write ``results.json`` and the other outputs of the finished folds; return the results."""
    # Tasks finish in any order; the report lists methods and folds in the asked order.
    records = {name: {f.name: plan.done[name, f.name] for f in plan.folds} for name in plan.methods}
    results = build_results(
        records,
        classes=plan.classes,
        profiles=plan.profiles,
        folds=plan.folds,
        sections=list(plan.prepared),
        dataset=dataset,
        split=split,
        genes=plan.genes,
        genes_label=genes_label,
        feature_key=feature_key,
        seed=seed,
    )
    # The spot-on-image check of each section, where the command line ran it.
    image_checks = {
        section_name(a): a.uns[UNS][IMAGE_CHECK]
        for a in sections
        if IMAGE_CHECK in a.uns.get(UNS, {})
    }
    if image_checks:
        results["image_checks"] = to_jsonable(image_checks)
    write_outputs(
        out,
        results,
        records=records,
        prepared=plan.prepared if plan.targets is None else plan.targets,
        truths=plan.truths,
        genes=plan.genes,
        figures=figures,
        figure_section=figure_section,
    )
    return results


def _executor(executor: Executor | str | Callable[[], Executor], stack: ExitStack) -> Executor:
    """``executor`` itself, or the one it names or makes (closed when ``stack`` closes)."""
    if isinstance(executor, Executor):
        return executor
    if isinstance(executor, str):
        return stack.enter_context(get_executor(executor))
    if callable(executor):
        made = executor()
        if isinstance(made, Executor):
            return stack.enter_context(made)
    raise GR2STConfigError(f"executor must be a name, an Executor or a factory, got {executor!r}")


def _selection_fingerprint(
    choices: Sequence[Choice], select: str, inner_folds: int | None, *, n_train: int
) -> dict[str, Any]:
    """What of the selection settings a fold's result depends on (nothing by default, so
    folds saved before selection existed still count)."""
    if len(choices) == 1 and choices[0] == Choice():
        return {}
    labels = [c.label for c in choices]
    if select == "none" or len(choices) == 1:
        return {"choice": labels[0]}
    inner = {"choices": labels, "select": select, "inner_folds": inner_folds}
    if n_train == 1:
        # Such folds kept the first choice before lone sections were cut into stripes.
        inner["section_blocks"] = SECTION_BLOCKS
    return inner


def _candidate_features(
    choices: Sequence[Choice], sections: Mapping[str, AnnData], feature_key: str
) -> dict[str, Any]:
    """Hashes of the features of the grid's encoders other than the run's (nothing when
    the grid has none); a section lacking them is an error."""
    keys = sorted({c.feature_key(feature_key) for c in choices} - {feature_key})
    for key in keys:
        for name, adata in sections.items():
            if key not in adata.obsm:
                raise GR2STDataError(
                    f"section {name!r}: obsm[{key!r}] is missing (features of a "
                    f"--grid {ENCODER_KEY} candidate)"
                )
    adatas = list(sections.values())
    hashes = {
        key: sha256_bytes(
            *(np.ascontiguousarray(a.obsm[key], np.float32).tobytes() for a in adatas)
        )
        for key in keys
    }
    return {"grid_features": hashes} if hashes else {}
