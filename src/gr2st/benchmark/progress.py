"""A benchmark's progress: one bar weighted by the estimated cost of its tasks.

A network's fit costs hundreds of times a baseline's, so counting (method, fold) pairs
gives an ETA that is hours off; the bar advances by each task's estimated cost
(:meth:`gr2st.benchmark.jobs.FoldJob.cost`) and its ETA is the remaining cost at the
average rate so far. Without a bar, :class:`Progress` reports one line per finished task
(each inner fit group and each fold) with the same estimate.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tqdm.auto import tqdm

__all__ = ["Progress", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``seconds`` as a short duration.

    Examples
    --------
    >>> format_seconds(42), format_seconds(754), format_seconds(7384)
    ('42 s', '12 min 34 s', '2 h 3 min')
    """
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class Progress:
    """Work done out of the estimated total, as a bar or as report lines.

    Parameters
    ----------
    total
        Estimated cost of the tasks left to run.
    desc
        Label of the bar.
    bar
        Draw a bar (else each finished task is passed to ``report``, when given).
    report
        Called with one line per finished task when there is no bar.

    Examples
    --------
    >>> lines = []
    >>> p = Progress(10.0, desc="benchmark", bar=False, report=lines.append)
    >>> p.advance(5.0, "knn S0: fold done")
    >>> lines[0].startswith("knn S0: fold done (50% of the work")
    True
    >>> p.close()
    """

    def __init__(
        self,
        total: float,
        *,
        desc: str,
        bar: bool,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.total = float(total)
        self.done = 0.0
        self.start = time.monotonic()
        self.report = None if bar else report
        self.bar = tqdm(
            total=self.total,
            disable=not bar,
            desc=desc,
            smoothing=0,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}",
        )

    def eta(self) -> float | None:
        """Seconds left at the average rate so far (None before any work is done)."""
        if self.done <= 0:
            return None
        elapsed = time.monotonic() - self.start
        return max(0.0, self.total - self.done) * elapsed / self.done

    def fraction(self) -> float:
        """Share of the estimated work done."""
        return self.done / self.total if self.total > 0 else 1.0

    def retotal(self, change: float) -> None:
        """Correct the estimated total (e.g. once a fold's chosen candidate is known)."""
        self.total += change
        self.bar.total = self.total
        self.bar.refresh()

    def note(self, text: str) -> None:
        """Show what is running (on the bar only)."""
        self.bar.set_postfix_str(text)

    def advance(self, cost: float, line: str) -> None:
        """A task of estimated ``cost`` finished; ``line`` says which."""
        self.done += cost
        self.bar.update(cost)
        self.bar.set_postfix_str(line)
        if self.report is not None:
            eta = self.eta()
            left = "" if eta is None else f", about {format_seconds(eta)} left"
            self.report(f"{line} ({100 * self.fraction():.0f}% of the work{left})")

    def close(self) -> None:
        self.bar.close()
