"""The one submit/collect/retry loop: jobs sent to the workers, each as one future; their
outcomes collected as they finish; those lost to the infrastructure sent again.

Used by the tuning driver, the validation stage and ``lambda-hat run``. A job is whatever the
caller tracks (a trial, a run); its *payload* is the plain dict the worker receives and its
outcome the plain dict the worker returns. What an outcome means is the caller's: ``failure``
turns an exception (a future that raised, a submitter that raised, an app that returned no
dict) into an outcome, and ``retryable(outcome, attempts, max_retries)`` says whether to
submit the job again (the trial stage passes
:func:`lambda_hat.trial.outcome.is_retryable`). This module knows nothing of trials.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Flights"]

J = TypeVar("J")


@dataclass
class _Entry(Generic[J]):
    job: J
    payload: dict
    max_retries: int
    attempts: int = 1  # times submitted


class Flights(Generic[J]):
    """Jobs in flight, one future each.

    ``submit(payload) -> Future`` sends one payload to the workers (a Parsl app, or a thread
    pool in tests); ``what`` names what the app returns in the message of a non-dict outcome
    (``"the trial returned list, not a dict"``); ``on_retry(job, outcome, attempts)`` runs
    before a job is submitted again (``attempts``: times it ran so far).
    """

    def __init__(
        self,
        submit: Callable[[dict], Future],
        failure: Callable[[BaseException], dict],
        retryable: Callable[[dict, int, int], bool],
        *,
        what: str = "job",
        on_retry: Callable[[J, dict, int], None] | None = None,
    ) -> None:
        self._submit, self._failure, self._retryable = submit, failure, retryable
        self._what, self._on_retry = what, on_retry
        self._entries: dict[Future, _Entry[J]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def jobs(self) -> list[J]:
        """The jobs in flight, in submission order."""
        return [e.job for e in self._entries.values()]

    def submit(self, job: J, payload: dict, max_retries: int) -> None:
        """Send ``payload`` for ``job``; resubmitted up to ``max_retries`` times when lost. A
        submitter that raises gives the job a failed future (collected like any other)."""
        self._send(_Entry(job, payload, max_retries))

    def _send(self, entry: _Entry[J]) -> None:
        try:
            fut = self._submit(entry.payload)
        except Exception as exc:
            fut = Future()
            fut.set_exception(exc)
        self._entries[fut] = entry

    def collect(self, timeout: float | None = None) -> Iterator[tuple[J, dict]]:
        """Wait up to ``timeout`` seconds (None: until one finishes) and yield ``(job,
        outcome)`` for each finished job, resubmitting the retryable ones instead. Each job
        leaves the flights just before it is yielded."""
        done, _ = wait(list(self._entries), timeout=timeout, return_when=FIRST_COMPLETED)
        for fut in done:
            entry = self._entries.pop(fut)
            outcome = self._outcome(fut)
            if self._retryable(outcome, entry.attempts, entry.max_retries):
                if self._on_retry is not None:
                    self._on_retry(entry.job, outcome, entry.attempts)
                entry.attempts += 1
                self._send(entry)
                continue
            yield entry.job, outcome

    def drain(self) -> Iterator[tuple[J, dict]]:
        """Every outcome, as jobs finish, until nothing is in flight."""
        while self._entries:
            yield from self.collect()

    def _outcome(self, fut: Future) -> dict:
        return result_of(fut, self._what, self._failure)


def result_of(fut: Future, what: str, failure: Callable[[Exception], dict]) -> dict:
    """The dict a finished app returned; its exception, or anything but a dict, as
    ``failure(exc)`` (``what`` names the app in the message)."""
    try:
        out = fut.result()
        if not isinstance(out, dict):
            raise TypeError(f"the {what} returned {type(out).__name__}, not a dict")
        return out
    except Exception as exc:
        return failure(exc)
