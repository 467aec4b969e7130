"""The ask/tell driver: the only code that calls ``study.ask`` and ``study.tell``.

Contract. The driver owns every study. Workers receive a plain dict (the *payload*: problem
spec, method, hyperparameters, budget, seed, reference, run directory) and return a plain
metrics dict; they never touch Optuna. All studies are interleaved: the driver keeps
``batch_size`` trials in flight across them, so a study finishing its tail never idles the
pool. After every completion it tells the trial, then refills the free slot from the study that
has started the fewest trials.

Counting. ``max_trials`` counts *finished* trials (see :func:`studies.counts_as_finished`):
interrupted trials and lost workers do not count, their slots are asked again. Every trial that
is asked is told exactly once (by :func:`_tell`), including trials whose future raised, and
every submitted future is waited for, also in a study that was stopped.

Content addressing. A trial's run directory is named by the hash of its manifest (problem,
method, hyperparameters, budget, seed). If a valid ``metrics.json`` is already there the trial
is told from it without running anything; two in-flight trials with the same manifest share one
future.

Pruning. A study with ``prune`` set reports intermediate objectives to Optuna while its trials
run: the driver polls each in-flight trial's ``progress.json`` (``report_progress`` in the
runner, in the run directory on a filesystem the driver shares with the workers), maps the
intermediate LLC estimates onto :data:`PRUNING_STEPS` steps (the estimate available at k/10 of
the trial's work), calls ``trial.report`` and ``trial.should_prune`` (the study's pruner), and
when the pruner says so writes a stop request into the run directory
(:func:`lambda_hat.trial.process.oneshot.request_stop`). The runner stops at its next chunk boundary and
returns ``status: failed``, kind ``pruned``, with its estimate so far (a trial that does not
check is killed after a grace period); the trial is told ``PRUNED``, which TPE learns from,
and counts as finished.

Resume. On start, trials still RUNNING in the storage (the previous driver died) are told from
their ``metrics.json`` if their worker finished, otherwise told FAIL with failure kind
``interrupted`` and their parameters are enqueued again, so the run ends with exactly
``max_trials`` finished trials per study and no finished trial is lost or run twice.

Stopping early. A study is done before ``max_trials`` when it converged (``stop_after_stale``)
or its grid is exhausted (:mod:`lambda_hat.study.stopping`): checked after every told trial
and on start; it then asks nothing more, its in-flight trials finish and are told, and the
verdict is the study user attr ``early_stop`` (a rerun of it asks nothing). A grid study also
asks no more trials than it has untaken grid points.

Sharing. Several drivers may run one config on one storage at once: trials RUNNING under a live
driver are counted as in flight and never settled by another, and a trial asked for a slot that
another driver took first is told ``interrupted`` unrun (:mod:`lambda_hat.study.sharing`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from lambda_hat import layout
from lambda_hat.parallel import apps as execution
from lambda_hat.study import sharing, stopping
from lambda_hat.study.scoring import objective_values
from lambda_hat.study.storage import counts_as_finished
from lambda_hat.study.task import StudyTask
from lambda_hat.study.tell import tell
from lambda_hat.trial.outcome import (
    TRACEBACK_CHARS,
    failed_metrics,
    failure_of,
    finite_float,
    from_exception,
    is_retryable,
    screen_estimate,
)
from lambda_hat.trial.process import oneshot as isolation

log = logging.getLogger("lambda_hat.workflow")

#: A study whose trials were lost to the infrastructure this many times in a row is stopped.
MAX_INFRASTRUCTURE_STREAK = 5
#: Intermediate objectives are reported at steps 1..PRUNING_STEPS: step k is the estimate the
#: trial had when it first reached k / PRUNING_STEPS of its work, so trials of different lengths
#: are compared at the same fraction of their own work.
PRUNING_STEPS = 10


@dataclass
class _Flight:
    """Trials waiting on one future (more than one only for identical manifests)."""

    members: list[tuple[StudyTask, optuna.Trial]]
    run_dir: str
    payload: dict
    attempts: int = 1
    reported: int = 0  # last pruning step reported to the members' trials
    stop_requested: bool = False

    @property
    def pruned_members(self) -> list[tuple[StudyTask, optuna.Trial]]:
        return [(t, tr) for t, tr in self.members if t.prune]


class Driver:
    """Interleaved batched ask/tell over many studies.

    ``submit(payload) -> Future`` sends one trial to the workers (a Parsl app in production, a
    thread pool in tests); ``on_tick()`` runs every ``tick_sec`` (progress display, periodic
    Parquet); ``sync()`` before
    every wait (fsync of the journal: see :class:`studies.GroupCommitJournalBackend`). In-flight
    trials of pruning studies are polled every ``poll_sec``.
    """

    def __init__(
        self,
        tasks: list[StudyTask],
        submit: Callable[[dict], Future],
        *,
        max_trials: int,
        batch_size: int,
        on_tick: Callable[[], None] | None = None,
        tick_sec: float = 5.0,
        sync: Callable[[], None] | None = None,
        poll_sec: float = 2.0,
    ):
        self.tasks, self.submit = tasks, submit
        self.max_trials, self.batch_size = max_trials, batch_size
        self.on_tick, self.tick_sec = on_tick, tick_sec
        self.sync, self.poll_sec = sync, poll_sec
        self._flights: dict[Future, _Flight] = {}
        self._by_dir: dict[str, Future] = {}
        self._synced: set[str] = set()  # studies whose early_stop attr task.early_stop mirrors
        self.owner = sharing.Owner.this_process()
        self._beat = time.monotonic()

    # ------------------------------------------------------------------ bookkeeping

    def recover(self, task: StudyTask, at_start: bool = True) -> None:
        """Settle the trials dead drivers left RUNNING (:func:`sharing.orphaned`), then count
        the stored trials; ``at_start``: also replay the failure guard."""
        for frozen in task.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not sharing.orphaned(frozen):
                continue
            trial = optuna.Trial(task.study, frozen._trial_id)
            metrics = execution.load_valid_metrics(frozen.user_attrs.get("run_dir"))
            lost = metrics is None
            if lost:
                metrics = failed_metrics("interrupted", "the driver stopped while this trial ran")
            else:  # its worker finished while the driver was down
                metrics = dict(metrics, reused=True)
            try:
                self._settle(task, trial, metrics, count=False)
            except UpdateFinishedTrialError:
                continue  # another driver settled it first
            if lost:
                task.study.enqueue_trial(frozen.params, user_attrs={"requeued_from": frozen.number})
        if at_start and task.guard is not None and not task.guard.replay(task.study).proceed:
            task.stop(task.guard.decision.message)
        trials = task.study.get_trials(deepcopy=False)
        self._recount(task, trials)
        self._check_early_stop(task, trials)

    def _check_early_stop(self, task: StudyTask, trials: list | None = None) -> None:
        """Update ``task.early_stop`` and the study user attr from the stored trials (the attr
        is read once per study, then known to equal ``task.early_stop``)."""
        trials = task.study.get_trials(deepcopy=False) if trials is None else trials
        verdict = stopping.early_stop(task, trials)
        if task.name in self._synced:
            stored = task.early_stop
        else:
            stored = task.study.user_attrs.get(stopping.ATTR)
            self._synced.add(task.name)
        if verdict is not None and task.early_stop is None:
            log.info("study %s is done: %s", task.name, verdict["reason"])
        elif verdict is None and stored is not None:
            log.info("study %s: %s no longer holds; asking again", task.name, stored["rule"])
        task.early_stop = verdict
        if stored != verdict:
            task.study.set_user_attr(stopping.ATTR, verdict)

    def _recount(self, task: StudyTask, trials: list | None = None) -> None:
        """Count the study's stored trials afresh (other drivers tell trials too)."""
        task.finished = task.failed = task.pruned = task.reused = task.others = 0
        task.best_value = task.best_number = None
        for frozen in trials or task.study.get_trials(deepcopy=False):
            attrs = frozen.user_attrs
            if frozen.state == TrialState.RUNNING:
                task.others += not sharing.owned_by(frozen, self.owner)
            elif frozen.state.is_finished():
                self._count(
                    task, frozen.state, attrs, frozen.values, frozen.number, attrs.get("reused")
                )

    def _count(
        self,
        task: StudyTask,
        state: TrialState,
        attrs: dict,
        values: list[float] | None,
        number: int,
        reused: Any,
    ) -> None:
        """Count one told trial (``attrs``: its user attrs as told; ``values``: as told, read
        only for a success, since a parameter failure's values are placeholders)."""
        kind = attrs.get("failure_kind")
        if kind == "pruned":
            task.pruned += 1
        elif kind is not None:
            task.failed += 1
        if counts_as_finished(state, kind):
            task.finished += 1
        task.reused += bool(reused)
        if kind is None and values and len(task.objectives) == 1:
            if task.best_value is None or values[0] < task.best_value:
                task.best_value, task.best_number = values[0], number

    def _need(self, task: StudyTask) -> int:
        if task.done:
            return 0
        need = self.max_trials - task.finished - task.running - task.others
        free = stopping.unclaimed_points(task)
        return need if free is None else min(need, free)

    def _next_task(self) -> StudyTask | None:
        open_tasks = [t for t in self.tasks if self._need(t) > 0]
        if not open_tasks:
            return None
        return min(open_tasks, key=lambda t: t.finished + t.running)

    def in_flight(self) -> int:
        return len(self._flights)

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        """Ask, submit and tell until every study has ``max_trials`` finished, is done early
        (converged, grid exhausted) or is stopped (waiting, when this driver has nothing left
        to run, for other drivers' trials)."""
        self.owner.start()
        try:
            self._loop()
        finally:
            self.owner.stop()
        for task in self.tasks:
            if task.early_stop is not None:
                log.info(
                    "study %s done before max_trials: %s", task.name, task.early_stop["reason"]
                )

    def _loop(self) -> None:
        last_tick = last_poll = time.monotonic()
        pruning = any(t.prune for t in self.tasks)
        timeout = min(self.tick_sec, self.poll_sec) if pruning else self.tick_sec
        while True:
            self._refill()
            if not self._flights:
                if not self._wait_for_others():
                    break
                continue
            if time.monotonic() - self._beat >= sharing.HEARTBEAT_SEC:
                self._heartbeat()
            if self.on_tick and time.monotonic() - last_tick >= self.tick_sec:
                self.on_tick()  # after the refill, so the display counts the slots in use
                last_tick = time.monotonic()
            if pruning and time.monotonic() - last_poll >= self.poll_sec:
                self.poll_progress()
                last_poll = time.monotonic()
            if self.sync is not None:
                self.sync()
            done, _ = wait(list(self._flights), timeout=timeout, return_when=FIRST_COMPLETED)
            for fut in done:
                self._complete(fut)

    def _wait_for_others(self) -> bool:
        """Nothing of ours in flight: wait for other drivers' trials (True), if any (False)."""
        waiting = [t for t in self.tasks if not t.done and t.others]
        if not waiting:
            return False
        time.sleep(min(self.poll_sec, self.tick_sec))
        for task in waiting:
            self.recover(task, at_start=False)
        if self.on_tick:
            self.on_tick()
        return True

    def _heartbeat(self) -> None:
        """Refresh the heartbeat of our running trials; recount (others tell trials too)."""
        sharing.heartbeat(tr for f in self._flights.values() for _, tr in f.members)
        for task in self.tasks:
            self.recover(task, at_start=False)
        self._beat = time.monotonic()

    def _refill(self) -> None:
        while len(self._flights) < self.batch_size:
            task = self._next_task()
            if task is None:
                return
            self._ask_one(task)

    def _ask_one(self, task: StudyTask) -> None:
        try:
            trial = task.study.ask(task.space)
            trial.set_user_attr(sharing.OWNER_ATTR, self.owner.tag)
        except UpdateFinishedTrialError:
            return  # settled by another driver before we tagged it (then requeued)
        trials = task.study.get_trials(deepcopy=False)
        why = sharing.why_not_run(trials, trial, self.owner, self.max_trials)
        if why:
            self._settle(task, trial, failed_metrics("interrupted", why), count=False)
            task.study.sampler.reseed_rng()
            self._recount(task)
            return
        task.running += 1
        self._recount(task, trials)
        try:
            hp = {**task.fixed, **trial.params}
            if task.resolve is not None:
                hp = task.resolve(hp)
            payload = dict(task.base_payload, hyperparams=hp)
            if task.refs is not None:
                payload["ref"] = task.trial_ref(trial.params)
            run_id, run_dir = task.locate(payload)
        except Exception as exc:  # e.g. a warm-start value the method rejects
            task.running -= 1
            self._settle(task, trial, failed_metrics(**from_exception(exc)))
            return
        payload.update(run_id=run_id, run_dir=str(run_dir))
        trial.set_user_attr("run_id", run_id)
        trial.set_user_attr("run_dir", str(run_dir))
        reused = execution.load_valid_metrics(run_dir)
        if reused is not None:
            task.running -= 1
            self._settle(task, trial, dict(reused, reused=True))
            return
        fut = self._by_dir.get(str(run_dir))
        if fut is not None:
            self._flights[fut].members.append((task, trial))
            return
        self._launch(_Flight([(task, trial)], str(run_dir), payload))

    def _launch(self, flight: _Flight) -> None:
        try:
            fut = self.submit(flight.payload)
        except Exception as exc:
            fut = Future()
            fut.set_exception(exc)
        self._flights[fut] = flight
        self._by_dir[flight.run_dir] = fut

    # ------------------------------------------------------------------ pruning

    def poll_progress(self) -> None:
        """Report in-flight trials' new intermediate estimates; ask those to prune to stop."""
        for flight in list(self._flights.values()):
            members = flight.pruned_members
            if not members:
                continue
            workdir = execution.trial_workdir(flight.run_dir)
            if flight.stop_requested:
                if not (workdir / isolation.STOP_NAME).exists():  # a re-run cleared a stale one
                    isolation.request_stop(workdir, reason="pruned")
                continue
            if not self._report(flight, isolation.read_progress(workdir)):
                continue
            if all(trial.should_prune() for _, trial in members):
                isolation.request_stop(workdir, reason="pruned", step=flight.reported)
                flight.stop_requested = True
                log.info(
                    "%s: trial %d pruned at %d/%d of its work; asked it to stop",
                    members[0][0].name,
                    members[0][1].number,
                    flight.reported,
                    PRUNING_STEPS,
                )

    def _report(self, flight: _Flight, progress: dict | None, final: dict | None = None) -> bool:
        """``trial.report`` the pruning steps newly reached; True when any was reported.

        Step k gets the first intermediate estimate made at or after k/``PRUNING_STEPS`` of the
        work; ``final`` (a successful trial's metrics) fills the steps its history lacks. A
        trial that reported no history gets no intermediate values (nothing to compare with).
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
                values = objective_values({"status": "ok", "llc_hat": llc_hat}, task, ref)
                if values is None:
                    continue
                for k in range(flight.reported + 1, step + 1):
                    trial.report(values[0], k)
            flight.reported = step
        return flight.reported > before

    # ------------------------------------------------------------------ outcomes

    def _complete(self, fut: Future) -> None:
        flight = self._flights.pop(fut)
        self._by_dir.pop(flight.run_dir, None)
        try:
            metrics = fut.result()
            if not isinstance(metrics, dict):
                raise TypeError(f"the trial returned {type(metrics).__name__}, not a dict")
        except Exception as exc:
            metrics = failed_metrics(**from_exception(exc, traceback_chars=TRACEBACK_CHARS))
        kind = (failure_of(metrics) or {}).get("kind")
        if flight.pruned_members and kind != "infrastructure":
            workdir = execution.trial_workdir(flight.run_dir)
            self._report(flight, isolation.read_progress(workdir), final=metrics)
        task0 = flight.members[0][0]
        if is_retryable(metrics, flight.attempts, task0.max_retries):
            log.warning(
                "%s: trial %d lost to the infrastructure (%s); resubmitting (%d/%d)",
                task0.name,
                flight.members[0][1].number,
                metrics["failure"].get("message"),
                flight.attempts,
                task0.max_retries,
            )
            flight.attempts += 1
            self._launch(flight)
            return
        for task, trial in flight.members:
            task.running -= 1
            try:
                self._settle(task, trial, dict(metrics))
            except UpdateFinishedTrialError:  # taken for orphaned by another driver, requeued
                log.warning("%s: trial %d was settled by another driver", task.name, trial.number)

    def _settle(
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
        values = objective_values(metrics, task, ref)

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
        if not count:
            return
        self._count(
            task, told.state, told.user_attrs, told.values, trial.number, metrics.get("reused")
        )
        kind = told.user_attrs.get("failure_kind")
        if counts_as_finished(told.state, kind):
            task.finished_this_run += 1
        task.infra_streak = task.infra_streak + 1 if kind == "infrastructure" else 0
        if task.infra_streak >= MAX_INFRASTRUCTURE_STREAK:
            task.stop(
                f"{task.infra_streak} trials in a row were lost to the infrastructure "
                f"(last: {(metrics.get('failure') or {}).get('message')}); check the "
                "Parsl workers' logs under <results>/runinfo."
            )
        if task.guard is not None:
            decision = task.guard.record(
                trial.number, metrics, metrics.get("metrics_path"), trial.params, told=told
            )
            if not decision.proceed:
                task.stop(decision.message)
        if stopping.applies(task):
            self._check_early_stop(task)
