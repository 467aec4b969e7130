"""Trials from the driver's side: the Parsl app that runs
:func:`~lambda_hat.trial.app.execute_trial`, and the submit/collect/retry loop
(:class:`~lambda_hat.parallel.submit.Flights`) judging outcomes as trials are judged."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from lambda_hat.log import Progress
from lambda_hat.parallel import session
from lambda_hat.parallel.submit import Flights
from lambda_hat.trial.app import execute_trial
from lambda_hat.trial.identity import load_valid_metrics
from lambda_hat.trial.outcome import failed_from, is_retryable

__all__ = ["flights", "run_all", "submitter"]

log = logging.getLogger("lambda_hat.workflow")

J = TypeVar("J")


def submitter() -> Callable[[dict], Future]:
    """``submit(payload) -> AppFuture`` running :func:`execute_trial` on the loaded executors."""
    return session.app(execute_trial)


def flights(
    submit: Callable[[dict], Future],
    what: str,
    on_retry: Callable[[Any, dict, int], None] | None = None,
) -> Flights:
    """:class:`~lambda_hat.parallel.submit.Flights` judging outcomes as trials are judged: an
    exception becomes a failure record (:func:`lambda_hat.trial.outcome.failed_from`), and a run lost to the
    infrastructure is resubmitted while it has retries left
    (:func:`lambda_hat.trial.outcome.is_retryable`). ``what`` names what ``submit`` runs in
    the message of an outcome that is not a dict."""
    return Flights(submit, failed_from, is_retryable, what=what, on_retry=on_retry)


def run_all(
    jobs: Sequence[tuple[J, dict, int]],
    submit: Callable[[dict], Future],
    done: Callable[[J, dict, bool], None],
    *,
    what: str,
    label: str,
    summary: str,
) -> int:
    """Give every ``(job, payload, max_retries)`` its outcome, ``done(job, metrics, stored)``:
    the stored metrics of its run when they are reusable (marked ``reused``,
    :func:`~lambda_hat.trial.identity.load_valid_metrics`), else the outcome of its run, all
    submitted at once and waited for (a lost worker's run resubmitted up to ``max_retries``
    times). Logs ``summary % (jobs, reused, submitted)``, then progress as ``label``. Returns
    the number reused."""
    runs: Flights[J] = flights(submit, what)
    reused = 0
    for job, payload, max_retries in jobs:
        stored = load_valid_metrics(payload["run_dir"])
        if stored is not None:
            done(job, dict(stored, reused=True), True)
            reused += 1
        else:
            runs.submit(job, payload, max_retries)
    log.info(summary, len(jobs), reused, len(runs))
    total = len(runs)
    progress = Progress(log, label, total, "runs", every_sec=10.0)
    for job, metrics in runs.drain():
        done(job, metrics, False)
        progress.update(total - len(runs))
    return reused
