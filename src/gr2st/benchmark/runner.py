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
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from copy import deepcopy
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
from anndata import AnnData
from tqdm.auto import tqdm

from gr2st._constants import CELL_TYPE, IMAGE_CHECK, PATCHES, PATIENT, UNS
from gr2st._utils.files import remove_stale_temps, sha256_bytes
from gr2st._utils.lock import lock_folder
from gr2st._utils.seed import seed_everything
from gr2st.benchmark.report import build_results, write_outputs
from gr2st.benchmark.selection import (
    ENCODER_KEY,
    SECTION_BLOCKS,
    SELECTIONS,
    Choice,
    Selection,
    select_inner,
    smoothed,
)
from gr2st.benchmark.store import FoldRecord, FoldStore, rescore, to_jsonable
from gr2st.config import route_overrides
from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.evaluation.metrics import section_metrics
from gr2st.evaluation.splits import Fold, make_folds
from gr2st.executors import Executor, LocalExecutor, Task, get_executor
from gr2st.genes import align_sections, prepare_section
from gr2st.methods import METHODS, Method
from gr2st.methods.base import panel_only_message
from gr2st.sections import section_name, stack_expression
from gr2st.training import DEFAULT_CHECKPOINT_SECONDS

logger = logging.getLogger(__name__)

#: File in a fold's work folder naming the request its checkpoints belong to.
_WORKDIR_MARKER = ".gr2st-fold"


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


def _blind(adata: AnnData) -> AnnData:
    """The test section as a method sees it: everything but the measured expression."""
    return AnnData(
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        obsm={k: v for k, v in adata.obsm.items()},
        uns=deepcopy(adata.uns),
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
    on_fold: Callable[[FoldRecord, int, int], None] | None = None,
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
        Show a progress bar over (method, fold) pairs.
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
        Where the (method, fold) pairs run: ``"local"`` (one after the other in this
        process), ``"ray"`` (a Ray instance started here with every core, one task per
        pair), an :class:`~gr2st.executors.Executor` (e.g.
        ``get_executor("ray", address="auto", gpus_per_task=1)``; the caller closes
        it), or a function making one (called only when a fold is left to run; the
        executor is closed at the end). The sections are shared with the tasks once;
        results are saved here, as each task finishes, so resuming and the outputs do
        not depend on the executor, and neither do the numbers when tasks use the same
        threads (``cpus_per_task``).
    on_fold
        Called as ``on_fold(record, n_done, n_total)`` when a (method, fold) pair has
        finished and been saved (e.g. one log line per fold without a progress bar).

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
    out = Path(out_dir)
    store = FoldStore(out)
    done: dict[tuple[str, str], FoldRecord] = {}
    todo: dict[str, tuple[str, Fold, str]] = {}
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
            if record is None:
                todo[f"{name} {fold.name}"] = (name, fold, fingerprint)
            else:
                logger.info("%s %s: loaded the finished fold", name, fold.name)
                done[name, fold.name] = record
    with ExitStack() as stack:
        # No executor is started (no Ray instance) when every fold is already saved.
        runner = _executor(executor, stack) if todo else LocalExecutor()
        shared = {
            "prepared": runner.share(prepared),
            "targets": runner.share(targets),
            "truths": runner.share(truths),
        }
        # Workers may run in another folder (or on another machine): absolute paths.
        work = out.absolute() / "work"
        tasks = [
            Task(
                key,
                _select_and_run_fold,
                {
                    **shared,
                    "cls": classes[name],
                    "name": name,
                    "fold": fold,
                    "genes": gene_names,
                    "feature_key": feature_key,
                    "profile": profiles[name],
                    "overrides": routed[name],
                    "candidates": candidates[name],
                    "select": select,
                    "inner_folds": inner_folds,
                    "seed": fold_seed(seed, name, fold.name),
                    "device": runner.device(device),
                    "workdir": work / name / fold.name,
                    "fresh": not resume,
                    "fingerprint": fingerprint,
                    # Bars of tasks running elsewhere would garble the job's bar.
                    "progress": progress and runner.in_process,
                    "checkpoint_every": checkpoint_every,
                },
            )
            for key, (name, fold, fingerprint) in todo.items()
        ]
        bar = tqdm(
            total=len(method_names) * len(folds),
            initial=len(done),
            disable=not progress,
            desc="benchmark" if runner.in_process else f"benchmark on {runner.describe()}",
        )
        try:
            for outcome in runner.map(tasks, on_start=lambda t: bar.set_postfix_str(t.key)):
                name, fold, _ = todo[outcome.task.key]
                store.save(name, fold.name, outcome.value)
                _remove_workdir(work, name, fold.name)
                done[name, fold.name] = outcome.value
                bar.update()
                if on_fold is not None:
                    on_fold(outcome.value, len(done), len(method_names) * len(folds))
        finally:
            bar.close()
    # Tasks finish in any order; the report lists methods and folds in the asked order.
    records = {name: {f.name: done[name, f.name] for f in folds} for name in method_names}

    results = build_results(
        records,
        classes=classes,
        profiles=profiles,
        folds=folds,
        sections=list(prepared),
        dataset=dataset,
        split=split,
        genes=gene_names,
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
        prepared=scored,
        truths=truths,
        genes=gene_names,
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


def _select(
    cls: type[Method[Any]],
    choices: Sequence[Choice],
    train: Sequence[AnnData],
    *,
    select: str,
    inner_folds: int | None,
    overrides: Sequence[str],
    seed: int,
    feature_key: str,
    profile: str,
    device: str,
    progress: bool,
    checkpoint_every: float,
) -> Selection:
    """The candidate a fold runs with: the first, or the inner-CV winner."""
    if select == "none" or len(choices) == 1:
        return Selection(choice=choices[0], scores={}, inner_folds=[])

    # Candidates whose fits differ only in what a fitted method can adopt (prediction
    # settings; GR2ST's ensemble size) share one fit per inner fold and alignment (an
    # aligned section is other training data).
    fitted: dict[str, Method[Any]] = {}
    fitted_on: list[str] = []

    def fit_predict(choice: Choice, inner: list[AnnData], test: AnnData) -> np.ndarray:
        method = cls(
            feature_key=choice.feature_key(feature_key),
            profile=profile,
            overrides=[*overrides, *choice.overrides],
            seed=seed,
            device=device,
            progress=False,
            checkpoint_every=checkpoint_every,
        )
        inner_names = [section_name(a) for a in inner]
        if inner_names != fitted_on:
            fitted.clear()
            fitted_on[:] = inner_names
        key = json.dumps([choice.align, choice.encoder, method.fit_settings()], sort_keys=True)
        if key in fitted:
            fitted[key].adopt(method)
            method = fitted[key]
        else:
            seed_everything(seed)
            method.fit(inner)
            fitted[key] = method
        return method.predict(test if cls.is_ceiling else _blind(test))

    return select_inner(choices, train, fit_predict=fit_predict, max_folds=inner_folds)


def _select_and_run_fold(
    cls: type[Method[Any]],
    *,
    name: str,
    fold: Fold,
    prepared: Mapping[str, AnnData],
    targets: Mapping[str, AnnData] | None,
    truths: Mapping[str, np.ndarray],
    genes: Sequence[str],
    feature_key: str,
    profile: str,
    overrides: Sequence[str],
    candidates: Sequence[Choice],
    select: str,
    inner_folds: int | None,
    seed: int,
    device: str,
    workdir: Path,
    fresh: bool,
    fingerprint: str,
    progress: bool,
    checkpoint_every: float,
) -> FoldRecord:
    """One (method, fold) task of every executor: pick the fold's candidate on its
    training sections (:func:`_select`), then fit, predict and score (:func:`_run_fold`).
    """
    run_options: dict[str, Any] = {
        "feature_key": feature_key,
        "profile": profile,
        "device": device,
        "progress": progress,
        "checkpoint_every": checkpoint_every,
    }
    selection = _select(
        cls,
        candidates,
        [prepared[s] for s in fold.train],
        select=select,
        inner_folds=inner_folds,
        overrides=overrides,
        seed=seed,
        **run_options,
    )
    return _run_fold(
        cls,
        name=name,
        fold=fold,
        prepared=prepared,
        targets=targets,
        truths=truths,
        genes=genes,
        overrides=overrides,
        selection=selection,
        seed=seed,
        workdir=workdir,
        fresh=fresh,
        fingerprint=fingerprint,
        **run_options,
    )


def _run_fold(
    cls: type[Method[Any]],
    *,
    name: str,
    fold: Fold,
    prepared: Mapping[str, AnnData],
    targets: Mapping[str, AnnData] | None,
    truths: Mapping[str, np.ndarray],
    genes: Sequence[str],
    feature_key: str,
    profile: str,
    overrides: Sequence[str],
    selection: Selection,
    seed: int,
    device: str,
    workdir: Path,
    fresh: bool,
    fingerprint: str,
    progress: bool,
    checkpoint_every: float,
) -> FoldRecord:
    """Fit ``cls`` on the training sections of ``fold``, predict and score its test ones.

    It reads the shared sections and writes only checkpoints to ``workdir``; the caller
    saves the returned record.
    """
    # Checkpoints of an interrupted fit are reused only for the very same request.
    marker = workdir / _WORKDIR_MARKER
    if fresh or not marker.is_file() or marker.read_text() != fingerprint:
        shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)
    seed_everything(seed)
    choice = selection.choice
    method = cls(
        feature_key=choice.feature_key(feature_key),
        profile=profile,
        overrides=[*overrides, *choice.overrides],
        seed=seed,
        device=device,
        progress=progress,
        checkpoint_every=checkpoint_every,
    )
    start = time.perf_counter()
    method.fit(align_sections([prepared[s] for s in fold.train], how=choice.align), workdir=workdir)
    values = (
        None
        if targets is None
        else align_sections([targets[s] for s in fold.train], how=choice.align)
    )
    predictions: dict[str, np.ndarray] = {}
    for section in fold.test:
        test = prepared[section] if cls.is_ceiling else _blind(prepared[section])
        raw = method.predict(test) if values is None else method.predict_values(test, values)
        pred = smoothed(np.asarray(raw, dtype=np.float32), prepared[section], choice)
        expected = truths[section].shape
        if pred.shape != expected:
            raise GR2STDataError(
                f"method {name!r}, section {section!r}: predicted shape {pred.shape}, "
                f"expected {expected}"
            )
        if not np.isfinite(pred).all():
            raise GR2STDataError(
                f"method {name!r}, section {section!r}: predictions contain NaN or inf"
            )
        predictions[section] = pred
    seconds = time.perf_counter() - start

    scores: dict[str, dict[str, Any]] = {}
    pcc: dict[str, np.ndarray] = {}
    for section, pred in predictions.items():
        metrics = section_metrics(pred, truths[section], genes)
        pcc[section] = metrics.pop("pcc").to_numpy()
        scores[section] = metrics
    meta = {
        "fingerprint": fingerprint,
        "method": name,
        "fold": fold.name,
        "train": list(fold.train),
        "test": list(fold.test),
        "seed": seed,
        "seconds": seconds,
        "config": method.describe(),
        "sections": scores,
    }
    if method.training_stats is not None:
        meta["training"] = method.training_stats.as_dict()
    if choice != Choice() or selection.scores:
        meta["selection"] = selection.describe()
    return FoldRecord(meta=meta, predictions=predictions, pcc=pcc)
