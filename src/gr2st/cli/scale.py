"""Options and helpers shared by the commands that scale out (``--executor ray``).

``gr2st benchmark`` runs one task per (method, fold); ``gr2st features`` and ``gr2st
predict`` run one task per input (section or slide). The latter go through
:func:`run_inputs`: one progress bar for the job, failed inputs retried and reported,
the others finished, and a done / skipped / failed summary at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import typer
from tqdm.auto import tqdm

from gr2st.errors import GR2STConfigError, GR2STDataError
from gr2st.executors import DEFAULT_MAX_RETRIES, Executor, Task, available_cpus, get_executor

EXECUTOR_OPTION = typer.Option(
    "local",
    "--executor",
    metavar="NAME",
    help="local (this machine: --jobs worker processes, or this process with --jobs 1) "
    'or ray (Ray tasks; pip install "gr2st[ray]").',
)
JOBS_OPTION = typer.Option(
    None,
    "--jobs",
    "-j",
    min=1,
    metavar="N",
    help="Tasks run at once by --executor local, each in a worker process with "
    "cores/N torch/BLAS threads (default: one per core; 1: one after the other, in this "
    "process).",
)
ADDRESS_OPTION = typer.Option(
    None,
    "--address",
    metavar="ADDRESS",
    help="Ray cluster to use: auto (the one `ray start` made here), host:port or "
    "ray://host:port; default: start a Ray instance on this machine.",
)
RAY_CPUS_OPTION = typer.Option(
    None, "--ray-cpus", min=1, metavar="N", help="Cores of the Ray instance started here."
)
CPUS_PER_TASK_OPTION = typer.Option(
    None,
    "--cpus-per-task",
    min=1,
    metavar="N",
    help="Cores (torch/BLAS threads) per task; Ray default 1, local default: cores / "
    "--jobs (--jobs 1: unchanged).",
)
GPUS_PER_TASK_OPTION = typer.Option(
    0.0,
    "--gpus-per-task",
    min=0.0,
    metavar="N",
    help="GPUs Ray reserves per task (0.5: two share).",
)
MAX_RETRIES_OPTION = typer.Option(
    DEFAULT_MAX_RETRIES,
    "--max-retries",
    min=0,
    metavar="N",
    help="Runs of a task again after its worker died or it failed (input errors are not retried).",
)


def make_executor(
    executor: str,
    *,
    address: str | None,
    ray_cpus: int | None,
    cpus_per_task: int | None,
    gpus_per_task: float,
    max_retries: int,
    jobs: int | None = 1,
) -> Executor:
    """The executor the command-line options ask for.

    ``--executor local`` runs ``jobs`` tasks at once in worker processes (the ``pool``
    executor; None: one per core), or in this process with ``jobs=1`` or on one core.
    """
    if executor not in ("local", "ray"):
        raise GR2STConfigError(f"--executor: expected local or ray, got {executor!r}")
    if executor == "ray" and jobs not in (None, 1):
        raise GR2STConfigError("--jobs needs --executor local (Ray sizes with --ray-cpus)")
    if executor == "local" and ray_cpus is None and (jobs or available_cpus()) > 1:
        executor, ray_cpus = "pool", jobs
    return get_executor(
        executor,
        address=address,
        num_cpus=ray_cpus,
        cpus_per_task=cpus_per_task,
        gpus_per_task=gpus_per_task,
        max_retries=max_retries,
    )


def list_inputs(path: Path, *, suffixes: Sequence[str], what: str) -> list[Path]:
    """The inputs named by ``path``: a folder's files ending in ``suffixes``, or a list file.

    A list file holds one path per line (relative ones are taken from the list file's
    folder; blank lines and lines starting with ``#`` are skipped). Paths are returned
    absolute, so that workers in other folders or on other machines find them.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("b.h5ad", "a.h5ad", "notes.txt"):
    ...     _ = (d / name).write_text("")
    >>> [p.name for p in list_inputs(d, suffixes=[".h5ad"], what=".h5ad files")]
    ['a.h5ad', 'b.h5ad']
    >>> _ = (d / "list.txt").write_text("# mine\\nb.h5ad\\n\\n")
    >>> [p.name for p in list_inputs(d / "list.txt", suffixes=[".h5ad"], what=".h5ad files")]
    ['b.h5ad']
    """
    if path.is_dir():
        found = sorted(
            p.absolute() for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes
        )
        if not found:
            raise GR2STDataError(f"--inputs {path}: no {what} in this folder")
        return found
    if not path.is_file():
        raise GR2STDataError(f"--inputs {path}: no such folder or list file")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise GR2STDataError(f"--inputs {path}: cannot read the list file ({err})") from None
    found = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        item = Path(entry).expanduser()
        item = (item if item.is_absolute() else path.parent / item).absolute()
        if not item.exists():
            raise GR2STDataError(f"--inputs {path}, line {number}: {item} does not exist")
        found.append(item)
    if not found:
        raise GR2STDataError(f"--inputs {path}: the list file names no {what}")
    return found


@dataclass(frozen=True)
class InputResult:
    """What a task did with its input: ``done`` (computed) or ``skipped`` (found)."""

    status: Literal["done", "skipped"]
    detail: str = ""


@dataclass
class JobSummary:
    """Inputs computed, found already done, and failed (key → one-line reason)."""

    done: list[str]
    skipped: list[str]
    failed: dict[str, str]

    def line(self) -> str:
        return f"{len(self.done)} done, {len(self.skipped)} skipped, {len(self.failed)} failed"


def run_inputs(
    executor: Executor,
    tasks: Sequence[Task],
    *,
    skipped: Sequence[str] = (),
    desc: str,
    progress: bool,
    echo: Callable[[str], None] = typer.echo,
) -> JobSummary:
    """Run one task per input; report each failure as it comes and count the rest.

    ``skipped`` are inputs found finished before any task ran (they count as done
    work on the bar). Raises :class:`~gr2st.errors.GR2STDataError` after the summary
    when any input failed.
    """
    summary = JobSummary(done=[], skipped=list(skipped), failed={})
    total = len(tasks) + len(skipped)
    with tqdm(
        total=total, initial=len(skipped), desc=desc, unit="input", disable=not progress
    ) as bar:

        def say(message: str) -> None:
            if progress:
                bar.write(message)
            else:
                echo(message)

        for outcome in executor.map(tasks, keep_going=True):
            key = outcome.task.key
            if outcome.error is not None:
                reason = " ".join(str(outcome.error).split()) or type(outcome.error).__name__
                tries = f" after {outcome.attempts} tries" if outcome.attempts > 1 else ""
                summary.failed[key] = reason
                say(f"{key}: failed{tries}: {reason}")
            else:
                result: InputResult = outcome.value
                (summary.done if result.status == "done" else summary.skipped).append(key)
                if not progress:
                    say(
                        f"{key}: {result.status}" + (f" ({result.detail})" if result.detail else "")
                    )
            bar.update()
    echo(f"Summary: {summary.line()} (of {total}).")
    if summary.failed:
        first, reason = next(iter(summary.failed.items()))
        raise GR2STDataError(
            f"{len(summary.failed)} of {total} inputs failed (first: {first}: {reason}); "
            "the others are written, and running the command again redoes only the failed ones"
        )
    return summary
