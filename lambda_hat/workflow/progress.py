"""What the driver shows: a progress table per study while it runs, the best trials at the end."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from lambda_hat.log import fmt_seconds, format_table

log = logging.getLogger("lambda_hat.workflow")


def eta_seconds(remaining: int, finished_this_run: int, elapsed: float) -> float | None:
    """Remaining trials at the rate seen so far in this run; None before the first finish."""
    if remaining <= 0:
        return 0.0
    if finished_this_run <= 0 or elapsed <= 0:
        return None
    return remaining * elapsed / finished_this_run


#: The ETA column of a study done before max_trials (``StudyTask.early_stop["rule"]``).
_EARLY = {"stale": "converged", "grid": "grid done"}


class StudyTable:
    """Prints one line per study: finished / running / failed / pruned, best so far, ETA.

    ``clock`` is the one time source (tests substitute it); ``emit`` receives the text.
    """

    quiet_sec = 60.0  # a table that did not change is shown again after this long

    def __init__(
        self,
        tasks: Sequence,
        max_trials: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str], None] | None = None,
    ):
        self.tasks, self.max_trials, self.clock = tasks, max_trials, clock
        self.emit = emit or (lambda text: log.info("progress\n%s", text))
        self.start = clock()
        self._last: tuple | None = None
        self._last_at = -float("inf")

    def render(self) -> str:
        elapsed = self.clock() - self.start
        rows = []
        for t in self.tasks:
            remaining = 0 if t.done else self.max_trials - t.finished
            eta = eta_seconds(remaining, t.finished_this_run, elapsed)
            best = "-" if t.best_value is None else f"{t.best_value:.4g} (#{t.best_number})"
            state = (
                "stopped"
                if t.stop_reason
                else _EARLY.get((t.early_stop or {}).get("rule"))
                or ("done" if remaining == 0 else ("?" if eta is None else fmt_seconds(eta)))
            )
            rows.append(
                [
                    t.name,
                    f"{t.finished}/{self.max_trials}",
                    str(t.running),
                    str(t.failed),
                    str(t.pruned),
                    str(t.reused),
                    best,
                    state,
                ]
            )
        return format_table(
            ["study", "finished", "running", "failed", "pruned", "reused", "best", "ETA"], rows
        )

    def __call__(self, force: bool = False) -> None:
        """Show the table when a count changed, or every ``quiet_sec`` seconds regardless."""
        key = tuple(
            (t.finished, t.running, t.failed, t.pruned, t.best_value, t.stop_reason, t.early_stop)
            for t in self.tasks
        )
        now = self.clock()
        if force or key != self._last or now - self._last_at >= self.quiet_sec:
            self._last, self._last_at = key, now
            self.emit(self.render())


def best_table(rows: list[dict]) -> str:
    """The final table: best successful trial per (problem, method) and its hyperparameters.

    ``rows`` are dicts with ``study``, ``number``, ``objective``, ``llc_hat``, ``llc_ref``,
    ``params`` (or ``note`` when the study has no successful trial).
    """
    out = []
    for r in rows:
        if r.get("number") is None:
            out.append([r["study"], "-", "-", "-", "-", r.get("note", "no successful trial")])
            continue
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(r["params"].items()))
        out.append(
            [
                r["study"],
                f"#{r['number']}",
                f"{r['objective']:.4g}",
                _fmt(r.get("llc_hat")),
                _fmt(r.get("llc_ref")),
                params,
            ]
        )
    return format_table(
        ["study", "trial", "objective", "llc_hat", "llc_ref", "hyperparameters"], out
    )


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)
