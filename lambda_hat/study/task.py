"""One (problem, method) study as the tuning driver sees it: its search space, payload,
reference(s), content address, guard and stopping rule — and the driver's counts for it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.distributions import BaseDistribution

from lambda_hat.config.tuning import UCB_SIGMAS
from lambda_hat.study.counts import StudyCounts
from lambda_hat.study.grid_sampler import SpaceGridSampler
from lambda_hat.study.guard import FailureGuard
from lambda_hat.study.stopping import StopRule
from lambda_hat.trial.identity import target_location

__all__ = ["StudyTask"]

log = logging.getLogger("lambda_hat.workflow")


@dataclass
class StudyTask:
    """One (problem, method) study: its configuration, set once, and ``counts``, the mutable
    record the driver keeps for it (:class:`~lambda_hat.study.counts.StudyCounts`).

    ``base_payload`` is the static part of every trial payload of this study (problem spec,
    method, budget, seed, reference, artifacts, target); ``space`` the Optuna distributions;
    ``fixed`` the untuned hyperparameters; ``resolve(hp)`` fills defaults (the full dict is what
    a run is hashed by); ``locate(payload) -> (run_id, run_dir)`` is the content address, the
    same one the trial's runner writes to (:func:`lambda_hat.trial.identity.locator`).
    ``refs(params)``, when set, is the reference of a trial's own posterior (params: fixed and
    searched, e.g. a γ choice): the trial's payload carries it and the trial is scored against
    it; None: every trial uses ``ref``.

    ``stop_rule`` is the convergence rule (:mod:`lambda_hat.study.stopping`); the driver's
    verdict (``counts.early_stop``: why the study is done before ``max_trials``, or None) is,
    unlike ``counts.stop_reason`` (the guard's: something is wrong), a success. A grid sampler
    (:class:`~lambda_hat.study.grid_sampler.SpaceGridSampler`) is bound to ``space`` here.
    """

    pid: str
    method: str
    study: optuna.Study
    space: dict[str, BaseDistribution]
    base_payload: dict
    ref: dict
    objective: str = "abs"
    objectives: tuple[str, ...] = ("error",)
    huber_delta: float | None = None
    ucb_sigmas: float = UCB_SIGMAS
    fixed: dict = field(default_factory=dict)
    resolve: Callable[[dict], dict] | None = None
    locate: Callable[[dict], tuple[str, Path]] = target_location
    guard: FailureGuard | None = None
    max_retries: int = 2
    prune: bool = False
    refs: Callable[[dict], dict] | None = None
    stop_rule: StopRule | None = None
    counts: StudyCounts = field(default_factory=StudyCounts)

    def __post_init__(self) -> None:
        if isinstance(getattr(self.study, "sampler", None), SpaceGridSampler):
            self.study.sampler.bind(self.space)

    @property
    def name(self) -> str:
        return f"{self.pid}:{self.method}"

    def trial_ref(self, params: dict) -> dict:
        """The reference a trial with these searched ``params`` is scored against."""
        return self.ref if self.refs is None else self.refs({**self.fixed, **params})

    def stop(self, reason: str) -> None:
        """The per-study stop hook: ask no more trials (in-flight ones are still told)."""
        if self.counts.stop_reason is None:
            self.counts.stop_reason = reason
            log.warning("study %s stopped: %s", self.name, reason)

    @property
    def done(self) -> bool:
        """Asks no more trials: stopped by the guard, converged, or its grid exhausted."""
        return self.counts.done
