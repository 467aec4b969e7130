"""The per-study guard: abort on systematic failures, stop a study that never succeeds.

:class:`FailureGuard` watches one study. It aborts on *systematic* failures (the same exception
from the first trials, import and config errors: not a property of the parameters, so never
learned) and stops a study that has produced ``max_consecutive_failures`` counted failures
without a single success, saying what failed, where, and what to change
(:mod:`lambda_hat.study.diagnosis`). Which kinds count is the *guarded* column of
:data:`lambda_hat.trial.outcome.KINDS`.

On resume (:meth:`FailureGuard.replay`) a stop is not carried over: the stored trials are
replayed through the same rules, but a stop or abort they reach ends their evidence, and the
rerun starts a fresh window (the user reran because the cause may be fixed, often in the
environment, which nothing stored can show). A rerun where nothing changed stops again after
the same few trials, with the reason. Trials asked in another search space are not evidence.
See ``plans/failures.md`` (Replay).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from lambda_hat import layout
from lambda_hat.study.diagnosis import Record
from lambda_hat.study.diagnosis import diagnosis as diagnose
from lambda_hat.study.diagnosis import suggestion as suggest
from lambda_hat.study.tell import TellArgs, failure_from_attrs
from lambda_hat.trial.outcome import KINDS, failure_of

__all__ = ["CONTINUE", "SYSTEMATIC_EXC_TYPES", "Decision", "FailureGuard"]

log = logging.getLogger("lambda_hat.workflow")

SYSTEMATIC_EXC_TYPES: frozenset[str] = frozenset(
    {"ImportError", "ModuleNotFoundError", "SyntaxError", "ConfigError", "AttributeError"}
)
"""Exception types that cannot depend on the sampled parameters: the study aborts at once."""


@dataclass(frozen=True)
class Decision:
    """What the driver does after a trial: ``continue``, ``abort`` (systematic failure: stop the
    study now, not learned) or ``stop`` (all-fail guard). ``message`` says why."""

    action: str
    message: str = ""

    @property
    def proceed(self) -> bool:
        return self.action == "continue"


CONTINUE = Decision("continue")


def _signature(failure: Mapping[str, Any]) -> tuple:
    """What makes two failures "the same": kind plus exception type / signal / exit code."""
    return (
        failure["kind"],
        failure.get("exc_type") or failure.get("signal") or failure.get("exit_code"),
    )


def _counted(r: Record) -> bool:
    return r.failure is None or KINDS[r.failure["kind"]].guarded


@dataclass
class FailureGuard:
    """Per-study watchdog deciding, after each finished trial, whether the study goes on.

    Args:
        max_consecutive_failures: stop the study after this many counted failures while it has
            not produced a single success (``None`` disables the all-fail guard). Default 10.
        systematic_after: abort when the study's first this-many counted trials all failed with
            the same ``error``/``crashed`` signature (same exception type, signal or exit code).
            Default 3.
        culprits: failure kind -> the study's method's hyperparameters that usually cause it
            when too large (``lambda_hat.methods.culprits(method)``); they break ties in the
            suggestion. Default: none.
        step_limits: step-size name -> its stability limit ε_max on this problem (from the
            curvature, :func:`lambda_hat.study.resolved_space.study_space`); a study whose failures
            are all divergences is told that limit. Default: none.
        space: the study's search space in this run; :meth:`replay` skips stored trials whose
            parameters were drawn from other distributions (an earlier space). Default: none
            (every stored trial is evidence).

    Kinds that are not *guarded* (``interrupted``, ``infrastructure``, ``pruned``) are recorded
    for the diagnosis but do not count. Import and config errors (:data:`SYSTEMATIC_EXC_TYPES`,
    or ``phase == "import"``) abort at once. Once a study has stopped or aborted, every later
    call returns that decision.
    """

    max_consecutive_failures: int | None = 10
    systematic_after: int = 3
    culprits: Mapping[str, Sequence[str]] = field(default_factory=dict)
    step_limits: Mapping[str, float] = field(default_factory=dict)
    space: Mapping[str, BaseDistribution] | None = None
    records: list[Record] = field(default_factory=list)
    decision: Decision = CONTINUE
    #: the stop or abort the replayed trials reached last (lifted for this run), if any
    previous: Decision | None = None

    def __post_init__(self) -> None:
        if self.max_consecutive_failures is not None and self.max_consecutive_failures < 1:
            raise ValueError(
                f"max_consecutive_failures must be >= 1 or None, got {self.max_consecutive_failures}"
            )
        if self.systematic_after < 1:
            raise ValueError(f"systematic_after must be >= 1, got {self.systematic_after}")

    @property
    def n_success(self) -> int:
        return sum(r.failure is None for r in self.records)

    def record(
        self,
        trial_number: int,
        metrics: Mapping[str, Any] | None,
        metrics_path: str | None = None,
        params: Mapping[str, Any] | None = None,
        told: TellArgs | None = None,
    ) -> Decision:
        """Record one finished trial and return what the study should do next.

        Pass ``told`` (what :func:`lambda_hat.study.tell.tell` returned) so that a run whose
        metrics say ``ok`` but whose objective could not be computed is recorded as the
        ``error`` it was told as.
        """
        failure = failure_of(metrics)
        if failure is None and told is not None and told.user_attrs.get("status") == "failed":
            failure = failure_from_attrs(told.user_attrs)
        path = None if metrics_path is None else str(metrics_path)
        rec = Record(trial_number, failure, path, dict(params or {}))
        self.records.append(rec)
        if not self.decision.proceed or not (failure and KINDS[failure["kind"]].guarded):
            return self.decision
        if failure["kind"] == "error" and (
            failure.get("exc_type") in SYSTEMATIC_EXC_TYPES or failure.get("phase") == "import"
        ):
            why = "cannot import or configure the trial"
            self.decision = Decision("abort", self._systematic_message([rec], why))
            return self.decision
        counted = [r for r in self.records if _counted(r)]
        if self.n_success == 0 and len(counted) == self.systematic_after:
            sigs = {_signature(r.failure) for r in counted}  # type: ignore[arg-type]
            if len(sigs) == 1 and failure["kind"] in ("error", "crashed"):
                why = f"the first {len(counted)} trials all failed the same way"
                self.decision = Decision("abort", self._systematic_message(counted, why))
                return self.decision
        if (
            self.max_consecutive_failures is not None
            and self.n_success == 0
            and len(counted) >= self.max_consecutive_failures
        ):
            self.decision = Decision(
                "stop",
                f"{len(counted)} failed trials and no success: study stopped.\n{self.diagnosis()}",
            )
        return self.decision

    def replay(self, study: optuna.Study) -> Decision:
        """Re-record a resumed study's finished trials (in trial order) from their user attrs,
        so that a restarted driver keeps the counts.

        Evidence is the trials since the last stop or abort they reach, of the current
        :attr:`space`: a stop of the previous run is lifted (kept in :attr:`previous`, logged)
        and this run gets a fresh window of ``systematic_after`` / ``max_consecutive_failures``
        trials to show whether its cause is fixed. Returns the decision (``continue``).
        """
        for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
            if not t.state.is_finished() or not self._same_space(t):
                continue
            run_dir = t.user_attrs.get("run_dir")
            path = f"{run_dir}/{layout.METRICS}" if run_dir else None
            ok = t.state == TrialState.COMPLETE and t.user_attrs.get("status", "ok") == "ok"
            metrics = (
                {"status": "ok"}
                if ok
                else {"status": "failed", "failure": failure_from_attrs(t.user_attrs)}
            )
            if not self.record(t.number, metrics, path, t.params).proceed:
                self.previous, self.records, self.decision = self.decision, [], CONTINUE
        if self.previous is not None:
            log.warning(
                "%s: the previous run stopped this study (%s); trying again: it stops after "
                "the same few trials if the cause is not fixed",
                study.study_name,
                self.previous.message.splitlines()[0],
            )
        return self.decision

    def _same_space(self, t: FrozenTrial) -> bool:
        """Whether the trial's parameters were drawn from this run's :attr:`space`."""
        if self.space is None:
            return True
        return all(self.space.get(k) == d for k, d in t.distributions.items())

    def _systematic_message(self, recs: list[Record], why: str) -> str:
        f = recs[-1].failure or {}
        lines = [
            f"systematic failure ({why}); not a property of the parameters, so it is not learned.",
            f"  {f.get('kind')}: {f.get('message', '')}",
        ]
        for key in ("traceback_path", "log_path"):
            if f.get(key):
                lines.append(f"  {key.replace('_', ' ')}: {f[key]}")
        tb = f.get("traceback")
        if tb:
            lines.append("  traceback:\n" + "\n".join("    " + ln for ln in str(tb).splitlines()))
        paths = [r.path for r in recs if r.path]
        if paths:
            lines.append("  failing metrics.json: " + ", ".join(paths))
        return "\n".join(lines)

    def diagnosis(self) -> str:
        """What failed, where, and what to change (:func:`lambda_hat.study.diagnosis.diagnosis`)."""
        return diagnose(self.records, self.culprits, self.step_limits)

    def suggestion(self) -> str:
        """A concrete next step (:func:`lambda_hat.study.diagnosis.suggestion`)."""
        return suggest(self.records, self.culprits, self.step_limits)
