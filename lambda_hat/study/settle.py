"""Settling trials: an outcome told to its study (exactly once), counted, guarded and checked
for an early stop; the trials a dead driver left RUNNING settled from their run directories.

Resume. On start, trials still RUNNING in the storage (the previous driver died) are told from
their ``metrics.json`` if their worker finished, otherwise told FAIL with failure kind
``interrupted`` and their parameters are enqueued again, so the run ends with exactly
``max_trials`` finished trials per study and no finished trial is lost or run twice.

Stopping early. A study is done before ``max_trials`` when it converged (``stop_after_stale``)
or its grid is exhausted (:mod:`lambda_hat.study.stopping`): checked after every told trial
and on start; the verdict is the study user attr ``early_stop`` (a rerun of it asks nothing).
"""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from lambda_hat import layout
from lambda_hat._io import finite_float
from lambda_hat.study import sharing, stopping
from lambda_hat.study.scoring import objective_values
from lambda_hat.study.task import StudyTask
from lambda_hat.study.tell import counts_as_finished, tell
from lambda_hat.trial.identity import load_valid_metrics
from lambda_hat.trial.outcome import failed_metrics, screen_estimate

__all__ = ["MAX_INFRASTRUCTURE_STREAK", "Settler"]

log = logging.getLogger("lambda_hat.workflow")

#: A study whose trials were lost to the infrastructure this many times in a row is stopped.
MAX_INFRASTRUCTURE_STREAK = 5


class Settler:
    """The studies' side of one driver (``owner``): outcomes in, ``task.counts`` kept."""

    def __init__(self, owner: sharing.Owner) -> None:
        self.owner = owner
        self._synced: set[str] = set()  # studies whose early_stop attr counts.early_stop mirrors

    def recover(self, task: StudyTask, at_start: bool = True) -> None:
        """Settle the trials dead drivers left RUNNING (:func:`sharing.orphaned`), then count
        the stored trials; ``at_start``: also replay the failure guard."""
        for frozen in task.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if sharing.orphaned(frozen):
                self._settle_orphan(task, frozen)
        if at_start and task.guard is not None and not task.guard.replay(task.study).proceed:
            task.stop(task.guard.decision.message)
        trials = task.study.get_trials(deepcopy=False)
        self.recount(task, trials)
        self.check_early_stop(task, trials)

    def _settle_orphan(self, task: StudyTask, frozen: FrozenTrial) -> None:
        trial = optuna.Trial(task.study, frozen._trial_id)
        metrics = load_valid_metrics(frozen.user_attrs.get("run_dir"))
        lost = metrics is None
        if lost:
            metrics = failed_metrics("interrupted", "the driver stopped while this trial ran")
        else:  # its worker finished while the driver was down
            metrics = dict(metrics, reused=True)
        try:
            self.settle(task, trial, metrics, count=False)
        except UpdateFinishedTrialError:
            return  # another driver settled it first
        if lost:
            task.study.enqueue_trial(frozen.params, user_attrs={"requeued_from": frozen.number})

    def recount(self, task: StudyTask, trials: list | None = None) -> None:
        """Count the study's stored trials afresh (other drivers tell trials too)."""
        task.counts.recount(
            trials or task.study.get_trials(deepcopy=False),
            lambda frozen: sharing.owned_by(frozen, self.owner),
            len(task.objectives) == 1,
        )

    def check_early_stop(self, task: StudyTask, trials: list | None = None) -> None:
        """Update ``counts.early_stop`` and the study user attr from the stored trials (the
        attr is read once per study, then known to equal ``counts.early_stop``)."""
        trials = task.study.get_trials(deepcopy=False) if trials is None else trials
        verdict = stopping.early_stop(
            trials,
            task.study.sampler,
            task.stop_rule,
            ref=task.ref,
            ref_of=task.trial_ref,
            objective=task.objective,
            huber_delta=task.huber_delta,
            n_objectives=len(task.objectives),
        )
        counts = task.counts
        if task.name in self._synced:
            stored = counts.early_stop
        else:
            stored = task.study.user_attrs.get(stopping.ATTR)
            self._synced.add(task.name)
        if verdict is not None and counts.early_stop is None:
            log.info("study %s is done: %s", task.name, verdict["reason"])
        elif verdict is None and stored is not None:
            log.info("study %s: %s no longer holds; asking again", task.name, stored["rule"])
        counts.early_stop = verdict
        if stored != verdict:
            task.study.set_user_attr(stopping.ATTR, verdict)

    def settle(
        self, task: StudyTask, trial: optuna.Trial, metrics: dict, count: bool = True
    ) -> None:
        """Screen, score, tell (exactly once), count, and run the guard for one outcome.

        The one place outcomes reach Optuna (:func:`lambda_hat.study.tell.tell`): a failure
        is never ``inf`` (a constant worst score makes TPE degrade to random search). Besides
        what ``tell`` records, the user attrs carry ``llc_hat`` and ``reused``; everything else
        is in the trial's ``metrics.json`` (user attr ``run_dir``): every attr is one journal
        write. ``count=False`` (crash recovery) tells without counting: :meth:`recover` counts
        every stored trial afterwards in one pass.
        """
        run_dir = trial.user_attrs.get("run_dir")
        if run_dir:
            metrics.setdefault("metrics_path", str(Path(run_dir) / layout.METRICS))
        ref = task.trial_ref(trial.params)
        metrics = screen_estimate(metrics, ref)
        values = objective_values(
            metrics, ref, task.objective, task.objectives, task.huber_delta, task.ucb_sigmas
        )

        def objective_fn(m: dict) -> list[float]:
            if values is None:
                raise ValueError("the trial reported no finite llc_hat to score")
            return values

        llc_hat = finite_float(metrics.get("llc_hat"))
        if llc_hat is not None:
            trial.set_user_attr("llc_hat", llc_hat)
        if metrics.get("reused"):
            trial.set_user_attr("reused", True)
        told = tell(task.study, trial, metrics, objective_fn)
        if count:
            self._after_tell(task, trial, metrics, told)

    def _after_tell(
        self, task: StudyTask, trial: optuna.Trial, metrics: dict, told: FrozenTrial
    ) -> None:
        """Count a told trial, then the infrastructure streak, the guard and early stopping."""
        counts = task.counts
        single = len(task.objectives) == 1
        reused = metrics.get("reused")
        counts.count(told.state, told.user_attrs, told.values, trial.number, reused, single)
        kind = told.user_attrs.get("failure_kind")
        if counts_as_finished(told.state, kind):
            counts.finished_this_run += 1
        counts.infra_streak = counts.infra_streak + 1 if kind == "infrastructure" else 0
        if counts.infra_streak >= MAX_INFRASTRUCTURE_STREAK:
            task.stop(
                f"{counts.infra_streak} trials in a row were lost to the infrastructure "
                f"(last: {(metrics.get('failure') or {}).get('message')}); check the "
                "Parsl workers' logs under <results>/runinfo."
            )
        if task.guard is not None:
            decision = task.guard.record(
                trial.number, metrics, metrics.get("metrics_path"), trial.params, told=told
            )
            if not decision.proceed:
                task.stop(decision.message)
        if stopping.applies(task.study.sampler, task.stop_rule):
            self.check_early_stop(task)
