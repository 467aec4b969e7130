"""The ask/tell driver: the only code that calls ``study.ask`` and ``study.tell``.

Contract. The driver owns every study. Workers receive a plain dict (the *payload*: problem
spec, method, hyperparameters, budget, seed, reference, run directory) and return a plain
metrics dict; they never touch Optuna. All studies are interleaved: the driver keeps
``batch_size`` trials in flight across them, so a study finishing its tail never idles the
pool. After every completion it tells the trial, then refills the free slot from the study that
has started the fewest trials.

Counting. ``max_trials`` counts *finished* trials (see :func:`lambda_hat.study.tell.counts_as_finished`):
interrupted trials and lost workers do not count, their slots are asked again. Every trial that
is asked is told exactly once (by :meth:`Settler.settle <lambda_hat.study.settle.Settler.settle>`),
including trials whose future raised, and every submitted future is waited for, also in a study
that was stopped. The counts are each study's :class:`~lambda_hat.study.counts.StudyCounts`.

Content addressing. A trial's run directory is named by the hash of its manifest (problem,
method, hyperparameters, budget, seed). If a valid ``metrics.json`` is already there the trial
is told from it without running anything; two in-flight trials with the same manifest share one
run. Runs are submitted, collected and (when lost to the infrastructure) resubmitted by
:class:`lambda_hat.parallel.submit.Flights`.

Pruning (:mod:`lambda_hat.study.pruning`). A pruned trial is asked to stop: the runner stops at
its next chunk boundary and returns ``status: failed``, kind ``pruned``, with its estimate so far
(a trial that does not check is killed after a grace period); the trial is told ``PRUNED``,
which TPE learns from, and counts as finished.

Resume and stopping early (:mod:`lambda_hat.study.settle`). A study done early asks nothing
more; its in-flight trials finish and are told. A grid study also asks no more trials than it
has untaken grid points.

Sharing. Several drivers may run one config on one storage at once: trials RUNNING under a live
driver are counted as in flight and never settled by another, and a trial asked for a slot that
another driver took first is told ``interrupted`` unrun (:mod:`lambda_hat.study.sharing`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial

from lambda_hat.parallel.submit import Flights
from lambda_hat.study import pruning, sharing, stopping
from lambda_hat.study.pruning import Flight
from lambda_hat.study.settle import Settler
from lambda_hat.study.task import StudyTask
from lambda_hat.trial import submit as trial_submit
from lambda_hat.trial.identity import load_valid_metrics
from lambda_hat.trial.outcome import failed_metrics, from_exception

__all__ = ["Driver", "StudyTask"]

log = logging.getLogger("lambda_hat.workflow")


class Driver:
    """Interleaved batched ask/tell over many studies.

    ``submit(payload) -> Future`` sends one trial to the workers (a Parsl app in production, a
    thread pool in tests); ``on_tick()`` runs every ``tick_sec`` (progress display, periodic
    Parquet); ``sync()`` before every wait (fsync of the journal: see
    :class:`studies.GroupCommitJournalBackend`). In-flight trials of pruning studies are polled
    every ``poll_sec``.
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
        self.tasks = tasks
        self.max_trials, self.batch_size = max_trials, batch_size
        self.on_tick, self.tick_sec = on_tick, tick_sec
        self.sync, self.poll_sec = sync, poll_sec
        self.flights: Flights[Flight] = trial_submit.flights(submit, "trial", on_retry=_log_retry)
        self._by_dir: dict[str, Flight] = {}
        self.owner = sharing.Owner.this_process()
        self.settler = Settler(self.owner)
        self._beat = time.monotonic()

    def recover(self, task: StudyTask, at_start: bool = True) -> None:
        """Settle the trials dead drivers left RUNNING, then count the stored trials
        (:meth:`Settler.recover <lambda_hat.study.settle.Settler.recover>`)."""
        self.settler.recover(task, at_start)

    def in_flight(self) -> int:
        return len(self.flights)

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
            if task.counts.early_stop is not None:
                reason = task.counts.early_stop["reason"]
                log.info("study %s done before max_trials: %s", task.name, reason)

    def _loop(self) -> None:
        last_tick = last_poll = time.monotonic()
        prunes = any(t.prune for t in self.tasks)
        timeout = min(self.tick_sec, self.poll_sec) if prunes else self.tick_sec
        while True:
            self._refill()
            if not self.flights:
                if not self._wait_for_others():
                    break
                continue
            if time.monotonic() - self._beat >= sharing.HEARTBEAT_SEC:
                self._heartbeat()
            if self.on_tick and time.monotonic() - last_tick >= self.tick_sec:
                self.on_tick()  # after the refill, so the display counts the slots in use
                last_tick = time.monotonic()
            if prunes and time.monotonic() - last_poll >= self.poll_sec:
                pruning.poll(self.flights.jobs())
                last_poll = time.monotonic()
            if self.sync is not None:
                self.sync()
            for flight, metrics in self.flights.collect(timeout):
                self._complete(flight, metrics)

    def _wait_for_others(self) -> bool:
        """Nothing of ours in flight: wait for other drivers' trials (True), if any (False)."""
        waiting = [t for t in self.tasks if not t.done and t.counts.others]
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
        sharing.heartbeat(tr for f in self.flights.jobs() for _, tr in f.members)
        for task in self.tasks:
            self.recover(task, at_start=False)
        self._beat = time.monotonic()

    # ------------------------------------------------------------------ asking

    def _need(self, task: StudyTask) -> int:
        if task.done:
            return 0
        c = task.counts
        need = self.max_trials - c.finished - c.running - c.others
        free = stopping.unclaimed_points(task.study)
        return need if free is None else min(need, free)

    def _next_task(self) -> StudyTask | None:
        open_tasks = [t for t in self.tasks if self._need(t) > 0]
        if not open_tasks:
            return None
        return min(open_tasks, key=lambda t: t.counts.finished + t.counts.running)

    def _refill(self) -> None:
        while len(self.flights) < self.batch_size:
            task = self._next_task()
            if task is None:
                return
            self._ask_one(task)

    def _ask_one(self, task: StudyTask) -> None:
        asked = self._ask(task)
        if asked is None:
            return
        trial, trials = asked
        task.counts.running += 1
        self.settler.recount(task, trials)
        payload = self._payload(task, trial)
        if payload is not None:
            self._dispatch(task, trial, payload)

    def _ask(self, task: StudyTask) -> tuple[optuna.Trial, list[FrozenTrial]] | None:
        """A new trial of ``task`` and the study's trials then; None when it is not to run
        (settled by another driver, or told ``interrupted`` unrun: :func:`sharing.why_not_run`)."""
        try:
            trial = task.study.ask(task.space)
            trial.set_user_attr(sharing.OWNER_ATTR, self.owner.tag)
        except UpdateFinishedTrialError:
            return None  # settled by another driver before we tagged it (then requeued)
        trials = task.study.get_trials(deepcopy=False)
        why = sharing.why_not_run(trials, trial, self.owner, self.max_trials)
        if why:
            self.settler.settle(task, trial, failed_metrics("interrupted", why), count=False)
            task.study.sampler.reseed_rng()
            self.settler.recount(task)
            return None
        return trial, trials

    def _payload(self, task: StudyTask, trial: optuna.Trial) -> dict | None:
        """The trial's payload at its content address (user attrs ``run_id``, ``run_dir``);
        None when building it failed (the trial is then told the error)."""
        try:
            hp = {**task.fixed, **trial.params}
            if task.resolve is not None:
                hp = task.resolve(hp)
            payload = dict(task.base_payload, hyperparams=hp)
            if task.refs is not None:
                payload["ref"] = task.trial_ref(trial.params)
            run_id, run_dir = task.locate(payload)
        except Exception as exc:  # e.g. a warm-start value the method rejects
            task.counts.running -= 1
            self.settler.settle(task, trial, failed_metrics(**from_exception(exc)))
            return None
        payload.update(run_id=run_id, run_dir=str(run_dir))
        trial.set_user_attr("run_id", run_id)
        trial.set_user_attr("run_dir", str(run_dir))
        return payload

    def _dispatch(self, task: StudyTask, trial: optuna.Trial, payload: dict) -> None:
        """Tell a stored outcome, join an identical run in flight, or submit a new run."""
        run_dir = payload["run_dir"]
        reused = load_valid_metrics(run_dir)
        if reused is not None:
            task.counts.running -= 1
            self.settler.settle(task, trial, dict(reused, reused=True))
            return
        flight = self._by_dir.get(run_dir)
        if flight is not None:
            flight.members.append((task, trial))
            return
        flight = self._by_dir[run_dir] = Flight([(task, trial)], run_dir)
        self.flights.submit(flight, payload, task.max_retries)

    # ------------------------------------------------------------------ outcomes

    def _complete(self, flight: Flight, metrics: dict) -> None:
        """Tell a finished run's outcome to every trial waiting on it."""
        self._by_dir.pop(flight.run_dir, None)
        pruning.report_final(flight, metrics)
        for task, trial in flight.members:
            task.counts.running -= 1
            try:
                self.settler.settle(task, trial, dict(metrics))
            except UpdateFinishedTrialError:  # taken for orphaned by another driver, requeued
                log.warning("%s: trial %d was settled by another driver", task.name, trial.number)


def _log_retry(flight: Flight, metrics: dict, attempts: int) -> None:
    task, trial = flight.members[0]
    log.warning(
        "%s: trial %d lost to the infrastructure (%s); resubmitting (%d/%d)",
        task.name,
        trial.number,
        metrics["failure"].get("message"),
        attempts,
        task.max_retries,
    )
