"""The class studies' ask/tell loop: a trial is one setting, run on every train member.

A trial's member runs go out in rungs (:func:`lambda_hat.study.classes.rungs`): with halving,
the first third of the members (smallest d first); when they are in, a setting whose mean
objective there is worse than the median of earlier successful settings on the same members
is told ``PRUNED`` and its other members are never run; otherwise the rest go out. Runs of
started trials go out before a new trial is asked, and at most ``batch_size`` runs are in
flight, across all class studies. A member run that fails ends the trial as that failure
(told with its graded constraint, :func:`lambda_hat.study.tell.tell`, so the sampler learns
where settings fail); when all members succeed the trial is told the mean of their values.

Resume. Member runs are content-addressed: a stored run is reused, never run again. A trial a
killed driver left ``RUNNING`` is told ``interrupted`` (not counted) and its setting asked
again first, so its finished member runs are reused and nothing is lost. One driver runs a
class study at a time.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from lambda_hat.study.classes import MEMBERS_ATTR, ClassTask, Member, rungs
from lambda_hat.study.tell import counts_as_finished, tell
from lambda_hat.trial import submit as trial_submit
from lambda_hat.trial.identity import load_valid_metrics
from lambda_hat.trial.outcome import failure_of

__all__ = ["ClassDriver"]

log = logging.getLogger("lambda_hat.workflow")


@dataclass
class _Trial:
    task: ClassTask
    trial: optuna.Trial
    units: dict
    results: dict[str, dict] = field(default_factory=dict)
    rung: int = 0  # index into rungs(): the rung whose runs are out
    waiting: int = 0


class ClassDriver:
    """Batched ask/tell over class studies (``submit(payload) -> Future`` runs one member run)."""

    def __init__(
        self, tasks: list[ClassTask], submit: Callable[[dict], Future], *, batch_size: int
    ) -> None:
        self.tasks, self.batch_size = tasks, batch_size
        self.flights = trial_submit.flights(submit, "run")
        self.queue: collections.deque[tuple[_Trial, Member]] = collections.deque()
        self.reused = 0

    def run(self) -> None:
        for task in self.tasks:
            _requeue_interrupted(task)
            task.counted()
            if task.guard is not None and not task.guard.replay(task.study).proceed:
                task.stop_reason = task.guard.decision.message
        while True:
            self._refill()
            if not self.flights:
                break
            for (ct, member), metrics in self.flights.collect(10.0):
                self._record(ct, member, metrics)
        for task in self.tasks:
            log.info(
                "class study %s: %d finished trials (%d member runs reused)",
                task.label,
                task.finished,
                self.reused,
            )

    def _refill(self) -> None:
        while len(self.flights) < self.batch_size:
            if self.queue:
                ct, member = self.queue.popleft()
                self._send(ct, member)
                continue
            open_tasks = [t for t in self.tasks if not t.done]
            if not open_tasks:
                return
            self._ask(min(open_tasks, key=lambda t: t.finished + t.running))

    def _ask(self, task: ClassTask) -> None:
        trial = task.study.ask(task.space)
        task.running += 1
        ct = _Trial(task, trial, {**task.fixed, **trial.params})
        self._open_rung(ct)

    def _open_rung(self, ct: _Trial) -> None:
        """Queue the runs of ``ct``'s current rung; a later rung's go first (that trial is
        already partly paid for)."""
        bounds = self._bounds(ct.task)
        start = 0 if ct.rung == 0 else bounds[ct.rung - 1]
        members = ct.task.members[start : bounds[ct.rung]]
        ct.waiting = len(members)
        if ct.rung == 0:
            self.queue.extend((ct, m) for m in members)
        else:
            self.queue.extendleft((ct, m) for m in reversed(members))

    @staticmethod
    def _bounds(task: ClassTask) -> list[int]:
        """Halving needs one objective (a pruned trial's value is its last report)."""
        return rungs(len(task.members), task.config.halving and len(task.objectives) == 1)

    def _send(self, ct: _Trial, member: Member) -> None:
        try:
            payload = ct.task.payload(ct.units, member)
        except Exception as exc:  # a value the method rejects on this member
            self._record(ct, member, _failed("error", f"{type(exc).__name__}: {exc}"))
            return
        ct.trial.set_user_attr(f"run_{len(ct.results)}", payload["run_id"])
        stored = load_valid_metrics(payload["run_dir"])
        if stored is not None:
            self.reused += 1
            self._record(ct, member, dict(stored, reused=True))
            return
        self.flights.submit((ct, member), payload, ct.task.max_retries)

    def _record(self, ct: _Trial, member: Member, metrics: dict) -> None:
        ct.results[member.pid] = metrics
        ct.waiting -= 1
        if ct.waiting > 0:
            return
        task = ct.task
        bounds = self._bounds(task)
        failed = next((m for m in ct.results.values() if failure_of(m) is not None), None)
        if failed is not None:
            return self._tell(ct, failed)
        if ct.rung + 1 < len(bounds):
            partial = _mean(self._values(ct))
            median, n = task.median_at(bounds[ct.rung])
            if partial is not None and median is not None and n >= 2 and partial > median:
                return self._prune(ct, partial, median, bounds[ct.rung])
            ct.rung += 1
            return self._open_rung(ct)
        values = self._values(ct)
        agg = _mean(values)
        if agg is None:
            return self._tell(ct, _failed("error", "a member run could not be scored"))
        seconds = sum(_seconds(m) for m in ct.results.values())
        self._tell(ct, {"status": "ok"}, [agg, seconds][: len(task.objectives)])

    def _values(self, ct: _Trial) -> list[float | None]:
        return [ct.task.value(ct.results[m.pid], m) for m in ct.task.members if m.pid in ct.results]

    def _attrs(self, ct: _Trial) -> None:
        record = {}
        for m in ct.task.members:
            if m.pid in ct.results:
                got = ct.results[m.pid]
                record[m.pid] = {
                    "value": ct.task.value(got, m),
                    "llc_hat": got.get("llc_hat"),
                    "se_hat": got.get("se_hat"),
                    "status": got.get("status"),
                    "run_id": got.get("run_id"),
                }
        ct.trial.set_user_attr(MEMBERS_ATTR, record)

    def _tell(self, ct: _Trial, metrics: dict, values: list[float] | None = None) -> None:
        self._attrs(ct)
        args = tell(ct.task.study, ct.trial, metrics, lambda _m: values)
        self._finish(ct, args.state, args.user_attrs.get("failure_kind"))
        guard = ct.task.guard
        if guard is not None and ct.task.stop_reason is None:
            decision = guard.record(ct.trial.number, metrics, None, ct.trial.params, told=args)
            if not decision.proceed:
                ct.task.stop_reason = decision.message
                log.warning("class study %s stopped: %s", ct.task.label, decision.message)

    def _prune(self, ct: _Trial, partial: float, median: float, count: int) -> None:
        self._attrs(ct)
        why = (
            f"worse on the first {count} members ({partial:.4g}) than the median of earlier "
            f"settings there ({median:.4g})"
        )
        ct.trial.set_user_attr("status", "failed")
        ct.trial.set_user_attr("failure_kind", "pruned")
        ct.trial.set_user_attr("failure_message", why)
        ct.trial.report(partial, step=count)
        ct.task.study.tell(ct.trial, state=TrialState.PRUNED)
        self._finish(ct, TrialState.PRUNED, "pruned")

    def _finish(self, ct: _Trial, state: TrialState, kind: str | None) -> None:
        task = ct.task
        task.running -= 1
        if counts_as_finished(state, kind):
            task.finished += 1
        else:  # interrupted, lost: its slot is asked again
            task.study.enqueue_trial(ct.trial.params, skip_if_exists=False)
        log.info(
            "%s trial %d: %s (%d/%d finished)",
            task.label,
            ct.trial.number,
            kind or state.name.lower(),
            task.finished,
            task.max_trials,
        )


def _requeue_interrupted(task: ClassTask) -> None:
    """Tell trials a killed driver left RUNNING ``interrupted`` and ask their settings again."""
    for t in task.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        why = _failed("interrupted", "its driver stopped before the trial was told")
        tell(task.study, t.number, why, lambda _m: None)
        task.study.enqueue_trial(t.params, skip_if_exists=False)
        log.info("%s: trial %d was interrupted; its setting is asked again", task.label, t.number)


def _mean(values: list[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def _seconds(metrics: dict) -> float:
    s = metrics.get("seconds")
    s = s.get("total") if isinstance(s, dict) else s
    return float(s) if isinstance(s, int | float) else 0.0


def _failed(kind: str, message: str) -> dict:
    return {"status": "failed", "failure": {"kind": kind, "message": message}}
