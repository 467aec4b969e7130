"""The channel between a running trial and whoever watches it: progress, start-up and stop files.

A supervisor (:mod:`lambda_hat.trial.process`) names three files through the environment; the
run inside reports its progress and the λ̂ so far (:func:`report_progress`, called by the chunk
loop :func:`lambda_hat.llc.engine.drive` between chunks), marks the end of its start-up
(:func:`mark_started`) and checks for a stop request (:func:`stop_requested`, one
``os.path.exists``). Outside a supervised trial the variables are unset and every call is a
no-op. The watcher reads the same files (:func:`read_progress`, :func:`startup_seconds`) and
asks for a stop (:func:`request_stop`); the tuning driver does so through a filesystem it shares
with the workers. Writes are atomic, so a kill mid-write leaves the previous record intact.

It lives beside the engine, the lowest layer that reports, so the engine and the supervisors
import it without the engine importing the supervisor.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from lambda_hat import layout
from lambda_hat._io import atomic_write_json, read_json

__all__ = [
    "PROGRESS_ENV",
    "PROGRESS_NAME",
    "STARTED_ENV",
    "STARTED_NAME",
    "STOP_ENV",
    "STOP_NAME",
    "active",
    "clear_history",
    "mark_started",
    "read_progress",
    "report_progress",
    "request_stop",
    "startup_seconds",
    "stop_requested",
]

PROGRESS_ENV = "LAMBDA_HAT_PROGRESS_FILE"
"""Environment variable naming the progress file of the current isolated trial."""
STOP_ENV = "LAMBDA_HAT_STOP_FILE"
"""Environment variable naming the file whose existence asks the current trial to stop."""
STARTED_ENV = "LAMBDA_HAT_STARTED_FILE"
"""Environment variable naming the file a trial touches when its start-up is over."""
PROGRESS_NAME, STOP_NAME, STARTED_NAME = layout.PROGRESS, layout.STOP, layout.STARTED

_history: dict[str, list] = {}  # progress file -> [[fraction_done, llc_hat], ...] so far


def active() -> bool:
    """Whether this process runs a supervised trial (its progress file is named)."""
    return bool(os.environ.get(PROGRESS_ENV))


def clear_history() -> None:
    """Forget earlier trials' progress histories (a warm process between trials)."""
    _history.clear()


def report_progress(fraction_done: float, **info: Any) -> None:
    """Record how much of its work the current trial has done (no-op outside isolation).

    Call it from the trial every so often (e.g. after each chunk of steps); a ``timeout`` then
    carries the last ``fraction_done`` and ``info``. An intermediate estimate passed as
    ``llc_hat`` is also appended to ``history`` (``[[fraction_done, llc_hat], ...]``), so that
    a reader polling now and then (the tuning driver's pruner) sees every intermediate estimate.
    The write is atomic, so a kill mid-write leaves the previous report intact.
    """
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    record: dict[str, Any] = {"fraction_done": float(fraction_done), **info}
    if info.get("llc_hat") is not None:
        points = _history.setdefault(path, [])
        if points and points[-1][0] >= fraction_done:  # a new trial reusing the path
            points.clear()
        points.append([float(fraction_done), float(info["llc_hat"])])
        record["history"] = points
    atomic_write_json(path, record)


def mark_started(phase: str) -> None:
    """Tell the supervisor that start-up (imports, loading the problem) is over: the hard time
    limit counts from the last mark, so start-up never eats a trial's budget (no-op outside
    isolation). The child marks ``imported`` itself; a target may mark ``ready`` later."""
    path = os.environ.get(STARTED_ENV)
    if path:
        atomic_write_json(path, {"phase": phase, "at": time.time()})


def startup_seconds(workdir: str | os.PathLike, spawned_at: float) -> float | None:
    """How long the trial in ``workdir`` took to start (its last :func:`mark_started`, in
    seconds after ``spawned_at``, a ``time.time()`` reading); None when it never marked."""
    mark = read_json(Path(workdir) / STARTED_NAME)
    at = None if mark is None else mark.get("at")
    return None if not isinstance(at, int | float) else max(0.0, at - spawned_at)


def stop_requested() -> bool:
    """Whether whoever runs this trial asked it to stop (e.g. pruned); False outside isolation.

    One ``os.path.exists``: cheap enough to call between every chunk of work.
    """
    path = os.environ.get(STOP_ENV)
    return bool(path) and os.path.exists(path)


def request_stop(workdir: str | os.PathLike, **info: Any) -> Path:
    """Ask the trial running in ``workdir`` to stop (it sees :func:`stop_requested`)."""
    return atomic_write_json(Path(workdir) / STOP_NAME, {"requested_at": time.time(), **info})


def read_progress(workdir: str | os.PathLike) -> dict | None:
    """The last :func:`report_progress` of the trial in ``workdir`` (None when there is none)."""
    return read_json(Path(workdir) / PROGRESS_NAME)
