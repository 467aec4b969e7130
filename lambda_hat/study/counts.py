"""What the tuning driver knows of one study while it runs: its counts, its best trial so far
and its verdicts (stopped by the guard, done early). The driver writes them; the progress
table and the pipeline read them (``StudyTask.counts``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from lambda_hat.study.tell import counts_as_finished

__all__ = ["StudyCounts"]


@dataclass
class StudyCounts:
    """The driver's bookkeeping for one study.

    ``finished`` counts trials toward ``max_trials`` (:func:`counts_as_finished`); ``running``
    this driver's trials in flight, ``others`` those RUNNING under other live drivers;
    ``finished_this_run`` what this driver finished (the ETA's rate); ``infra_streak`` the
    trials lost to the infrastructure in a row. ``stop_reason`` is the guard's verdict
    (something is wrong), ``early_stop`` the convergence or grid verdict (a success).
    """

    finished: int = 0
    failed: int = 0
    pruned: int = 0
    running: int = 0
    others: int = 0
    reused: int = 0
    finished_this_run: int = 0
    infra_streak: int = 0
    best_value: float | None = None
    best_number: int | None = None
    stop_reason: str | None = None
    early_stop: dict | None = None

    @property
    def done(self) -> bool:
        """Asks no more trials: stopped by the guard, converged, or its grid exhausted."""
        return self.stop_reason is not None or self.early_stop is not None

    def count(
        self,
        state: TrialState,
        attrs: dict,
        values: list[float] | None,
        number: int,
        reused: Any,
        single_objective: bool,
    ) -> None:
        """Count one told trial (``attrs``: its user attrs as told; ``values``: as told, read
        only for a success, since a parameter failure's values are placeholders)."""
        kind = attrs.get("failure_kind")
        if kind == "pruned":
            self.pruned += 1
        elif kind is not None:
            self.failed += 1
        if counts_as_finished(state, kind):
            self.finished += 1
        self.reused += bool(reused)
        if kind is None and values and single_objective:
            if self.best_value is None or values[0] < self.best_value:
                self.best_value, self.best_number = values[0], number

    def recount(
        self,
        trials: Iterable[FrozenTrial],
        ours: Callable[[FrozenTrial], bool],
        single_objective: bool,
    ) -> None:
        """Count the study's stored ``trials`` afresh (other drivers tell trials too); a
        RUNNING trial not ``ours`` is in flight elsewhere."""
        self.finished = self.failed = self.pruned = self.reused = self.others = 0
        self.best_value = self.best_number = None
        for frozen in trials:
            attrs = frozen.user_attrs
            if frozen.state == TrialState.RUNNING:
                self.others += not ours(frozen)
            elif frozen.state.is_finished():
                self.count(
                    frozen.state,
                    attrs,
                    frozen.values,
                    frozen.number,
                    attrs.get("reused"),
                    single_objective,
                )
