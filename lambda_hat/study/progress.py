"""What the driver shows: a progress table per study while it runs, the best trials at the end."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from lambda_hat.log import fmt_seconds, fmt_value, format_table
from lambda_hat.results.tables import study_label

log = logging.getLogger("lambda_hat.workflow")


def eta_seconds(remaining: int, finished_this_run: int, elapsed: float) -> float | None:
    """Remaining trials at the rate seen so far in this run; None before the first finish."""
    if remaining <= 0:
        return 0.0
    if finished_this_run <= 0 or elapsed <= 0:
        return None
    return remaining * elapsed / finished_this_run


#: The ETA column of a study done before max_trials (``StudyCounts.early_stop["rule"]``).
_EARLY = {"stale": "converged", "grid": "grid done"}


class StudyTable:
    """Prints one line per study: its label, finished / running / failed / pruned, best so
    far, ETA — when it changed.

    A call shows the rows of the studies whose outcome counts (finished, failed, pruned,
    best, verdicts) changed since the last shown table, and nothing when none did: a trial
    starting or the ETA moving is not news. ``force`` (the start and the end of a run) shows
    every row. ``labels`` maps a pid to its readable problem label
    (:func:`lambda_hat.results.tables.problem_labels`; a study's label is
    :func:`~lambda_hat.results.tables.study_label`); ``clock`` is the one time source (tests
    substitute it); ``emit`` receives the text.
    """

    def __init__(
        self,
        tasks: Sequence,
        max_trials: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str], None] | None = None,
        labels: Mapping[str, str] | None = None,
    ):
        self.tasks, self.max_trials, self.clock = tasks, max_trials, clock
        self.labels = dict(labels or {})
        self.emit = emit or (lambda text: log.info("progress\n%s", text))
        self.start = clock()
        self._last: list[tuple] | None = None

    def render(self, only: Sequence[int] | None = None) -> str:
        """The table: every study, or the studies at indices ``only``."""
        elapsed = self.clock() - self.start
        rows = []
        for i, t in enumerate(self.tasks):
            if only is None or i in only:
                rows.append(self._row(t, elapsed))
        return format_table(
            ["label", "study", "finished", "running", "failed", "pruned", "reused", "best", "ETA"],
            rows,
        )

    def _row(self, t, elapsed: float) -> list[str]:
        c = t.counts
        remaining = 0 if t.done else self.max_trials - c.finished
        eta = eta_seconds(remaining, c.finished_this_run, elapsed)
        best = "-" if c.best_value is None else f"{c.best_value:.4g} (#{c.best_number})"
        state = (
            "stopped"
            if c.stop_reason
            else _EARLY.get((c.early_stop or {}).get("rule"))
            or ("done" if remaining == 0 else ("?" if eta is None else fmt_seconds(eta)))
        )
        return [
            label_of(t.name, self.labels),
            t.name,
            f"{c.finished}/{self.max_trials}",
            str(c.running),
            str(c.failed),
            str(c.pruned),
            str(c.reused),
            best,
            state,
        ]

    def __call__(self, force: bool = False) -> None:
        """Show the rows that changed (every row with ``force`` or the first time)."""
        keys = [
            (c.finished, c.failed, c.pruned, c.best_value, c.stop_reason, c.early_stop)
            for c in (t.counts for t in self.tasks)
        ]
        last, self._last = self._last, keys
        if force or last is None:
            self.emit(self.render())
            return
        changed = [i for i, (a, b) in enumerate(zip(keys, last, strict=True)) if a != b]
        if changed:
            self.emit(self.render(changed))


def label_of(study: str, labels: Mapping[str, str]) -> str:
    """The readable label of study ``<pid>:<method>`` (``-`` when its pid has none)."""
    pid, _, method = study.rpartition(":")
    return study_label(labels[pid], method) if pid in labels else "-"


def best_table(rows: list[dict], labels: Mapping[str, str] | None = None) -> str:
    """The final table: best successful trial per (problem, method) and its hyperparameters.

    ``rows`` are dicts with ``study``, ``number``, ``objective``, ``llc_hat``, ``llc_ref``,
    ``params`` (or ``note`` when the study has no successful trial); ``labels`` as in
    :class:`StudyTable`.
    """
    labels = labels or {}
    out = []
    for r in rows:
        label = label_of(r["study"], labels)
        if r.get("number") is None:
            note = r.get("note", "no successful trial")
            out.append([label, r["study"], "-", "-", "-", "-", note])
            continue
        params = ", ".join(
            f"{k}={fmt_value(v, '.4g', '-', floats=True)}" for k, v in sorted(r["params"].items())
        )
        out.append(
            [
                label,
                r["study"],
                f"#{r['number']}",
                f"{r['objective']:.4g}",
                fmt_value(r.get("llc_hat"), ".4g", "-", floats=True),
                fmt_value(r.get("llc_ref"), ".4g", "-", floats=True),
                params,
            ]
        )
    return format_table(
        ["label", "study", "trial", "objective", "llc_hat", "llc_ref", "hyperparameters"], out
    )
