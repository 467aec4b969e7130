"""Pruning in the driver: the trials waiting on one run, and the intermediate objectives
reported to Optuna while it runs.

A study with ``prune`` set reports intermediate objectives to Optuna while its trials run: the
driver polls each in-flight trial's ``progress.json`` (``report_progress`` in the runner, in the
run directory on a filesystem the driver shares with the workers), maps the intermediate LLC
estimates onto :data:`PRUNING_STEPS` steps (the estimate available at k/10 of the trial's work),
calls ``trial.report`` and ``trial.should_prune`` (the study's pruner), and when the pruner says
so writes a stop request into the run directory
(:func:`lambda_hat.trial.process.oneshot.request_stop`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import optuna

from lambda_hat._io import finite_float
from lambda_hat.llc import channel
from lambda_hat.study.scoring import objective_values
from lambda_hat.study.task import StudyTask
from lambda_hat.trial.identity import trial_workdir
from lambda_hat.trial.outcome import failure_of

__all__ = ["PRUNING_STEPS", "Flight", "poll", "report_final"]

log = logging.getLogger("lambda_hat.workflow")

#: Intermediate objectives are reported at steps 1..PRUNING_STEPS: step k is the estimate the
#: trial had when it first reached k / PRUNING_STEPS of its work, so trials of different lengths
#: are compared at the same fraction of their own work.
PRUNING_STEPS = 10


@dataclass
class Flight:
    """Trials waiting on one run (more than one only for identical manifests)."""

    members: list[tuple[StudyTask, optuna.Trial]]
    run_dir: str
    reported: int = 0  # last pruning step reported to the members' trials
    stop_requested: bool = False

    @property
    def pruned_members(self) -> list[tuple[StudyTask, optuna.Trial]]:
        return [(t, tr) for t, tr in self.members if t.prune]


def poll(flights: Iterable[Flight]) -> None:
    """Report in-flight trials' new intermediate estimates; ask those to prune to stop."""
    for flight in flights:
        members = flight.pruned_members
        if not members:
            continue
        workdir = trial_workdir(flight.run_dir)
        if flight.stop_requested:
            if not (workdir / channel.STOP_NAME).exists():  # a re-run cleared a stale one
                channel.request_stop(workdir, reason="pruned")
            continue
        if not _report(flight, channel.read_progress(workdir)):
            continue
        if all(trial.should_prune() for _, trial in members):
            channel.request_stop(workdir, reason="pruned", step=flight.reported)
            flight.stop_requested = True
            log.info(
                "%s: trial %d pruned at %d/%d of its work; asked it to stop",
                members[0][0].name,
                members[0][1].number,
                flight.reported,
                PRUNING_STEPS,
            )


def report_final(flight: Flight, metrics: dict) -> None:
    """Report what a finished run's history (and, for a success, its final estimate) adds;
    nothing for a run lost to the infrastructure."""
    kind = (failure_of(metrics) or {}).get("kind")
    if flight.pruned_members and kind != "infrastructure":
        progress = channel.read_progress(trial_workdir(flight.run_dir))
        _report(flight, progress, final=metrics)


def _report(flight: Flight, progress: dict | None, final: dict | None = None) -> bool:
    """``trial.report`` the pruning steps newly reached; True when any was reported.

    Step k gets the first intermediate estimate made at or after k/``PRUNING_STEPS`` of the
    work; ``final`` (a successful trial's metrics) fills the steps its history lacks. A trial
    that reported no history gets no intermediate values (nothing to compare with).
    """
    points = list((progress or {}).get("history") or [])
    if points and final is not None and final.get("status") == "ok":
        points.append([1.0, final.get("llc_hat")])
    before = flight.reported
    for fraction, llc_hat in points:
        if finite_float(fraction) is None or finite_float(llc_hat) is None:
            continue
        step = min(PRUNING_STEPS, math.floor(fraction * PRUNING_STEPS + 1e-9))
        if step <= flight.reported:
            continue
        for task, trial in flight.pruned_members:
            ref = task.trial_ref(trial.params)
            values = objective_values(
                {"status": "ok", "llc_hat": llc_hat},
                ref,
                task.objective,
                task.objectives,
                task.huber_delta,
            )
            if values is None:
                continue
            for k in range(flight.reported + 1, step + 1):
                trial.report(values[0], k)
        flight.reported = step
    return flight.reported > before
