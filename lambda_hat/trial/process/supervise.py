"""What the one-shot and the warm supervisor share: the hard limit, waiting, killing, and the
metrics of how a supervised trial ended (its result, or a failure kind)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lambda_hat import layout
from lambda_hat._io import atomic_write_json, read_json
from lambda_hat.llc.channel import (
    PROGRESS_ENV,
    PROGRESS_NAME,
    STARTED_ENV,
    STARTED_NAME,
    STOP_ENV,
    STOP_NAME,
    startup_seconds,
)
from lambda_hat.trial.outcome import failed_metrics
from lambda_hat.trial.process._cgroup import oom_kills

__all__ = [
    "LOG_TAIL_CHARS",
    "TERM_GRACE_SEC",
    "Limit",
    "death_metrics",
    "fixed_limit",
    "kill_group",
    "log_tail",
    "oom_kills",
    "outcome",
    "prepare",
    "pruned_metrics",
    "timing",
    "wait_for",
    "wait_pid",
]

_POLL_SEC = 0.02
TERM_GRACE_SEC = 1.0
"""Seconds between SIGTERM and SIGKILL for a trial's process group."""
LOG_TAIL_CHARS = 2000
"""How much of a child's log (and a traceback) a failure record keeps."""
STOP_POLL_SEC = 0.25
"""How often a supervisor checks the start mark and the stop file."""


def kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def log_tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - LOG_TAIL_CHARS))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


class Limit:
    """The hard deadline of a trial: ``startup_sec`` from its spawn until it marks the end of
    its start-up (:func:`mark_started`), then ``hard_sec`` from its latest mark."""

    def __init__(self, started_path: Path | None, hard_sec: float, startup_sec: float):
        self.path, self.hard_sec = started_path, hard_sec
        self.spawned, self.spawned_wall = time.monotonic(), time.time()
        self.started: float | None = None
        self.deadline = self.spawned + startup_sec
        self._seen: int | None = None

    def poll(self) -> None:
        """Move the deadline when the child marked a (new) end of start-up."""
        if self.path is None:
            return
        try:
            stamp = self.path.stat().st_mtime_ns
        except OSError:
            return
        if stamp != self._seen:
            self._seen, self.started = stamp, time.monotonic()
            self.deadline = self.started + self.hard_sec

    @property
    def startup_sec(self) -> float | None:
        """Seconds from the spawn to the child's last start mark (its own clock reading)."""
        return None if self.path is None else startup_seconds(self.path.parent, self.spawned_wall)


def fixed_limit(deadline: float) -> Limit:
    limit = Limit(None, 0.0, 0.0)
    limit.deadline = deadline
    return limit


def wait_for(check: Callable[[float], Any], limit: Limit, stop_file: Path | None = None) -> Any:
    """``check(timeout)`` (an answer, or None after waiting at most ``timeout`` s) until it
    answers; None at ``limit.deadline`` or as soon as ``stop_file`` exists (both looked at
    every ``STOP_POLL_SEC``, when the start mark may also move the deadline)."""
    next_check = time.monotonic() + STOP_POLL_SEC
    while True:
        answer = check(max(0.0, min(limit.deadline, next_check) - time.monotonic()))
        if answer is not None:
            return answer
        now = time.monotonic()
        if now >= next_check:
            limit.poll()
            if stop_file is not None and stop_file.exists():
                return None
            next_check = now + STOP_POLL_SEC
        if now >= limit.deadline:
            return None


def wait_pid(pid: int, limit: Limit, stop_file: Path | None = None) -> tuple[int, Any] | None:
    """Reap ``pid`` (its wait status and rusage) with :func:`wait_for`."""

    def reaped(timeout: float) -> tuple[int, Any] | None:
        got, status, rusage = os.wait4(pid, os.WNOHANG)
        if got == pid:
            return status, rusage
        time.sleep(min(_POLL_SEC, timeout))
        return None

    return wait_for(reaped, limit, stop_file)


def timing(limit: Limit, log_path) -> dict:
    """The outcome fields every supervised trial has: wall time, start-up, its log."""
    startup = None if limit.startup_sec is None else round(limit.startup_sec, 3)
    return {
        "elapsed_sec": round(time.monotonic() - limit.spawned, 3),
        "startup_sec": startup,
        "log_path": str(log_path),
    }


def prepare(wd: Path, payload: Mapping[str, Any], env: Mapping[str, str] | None):
    """The exchange files (stale ones removed, the payload written) and the child's environment."""
    paths = {n: wd / n for n in (layout.RESULT, PROGRESS_NAME, STOP_NAME, STARTED_NAME)}
    for stale in paths.values():
        stale.unlink(missing_ok=True)
    atomic_write_json(wd / layout.PAYLOAD, dict(payload))
    child_env = {
        **os.environ,
        **(env or {}),
        PROGRESS_ENV: str(paths[PROGRESS_NAME]),
        STOP_ENV: str(paths[STOP_NAME]),
        STARTED_ENV: str(paths[STARTED_NAME]),
    }
    return paths, child_env


def outcome(paths, common, limit, limits, ended, returncode, oom_before) -> dict:
    """The metrics of a finished child: its result, or the failure of how it ended."""
    hard_timeout_sec, startup_timeout_sec, stop_grace_sec = limits
    timed_out, stopped = ended
    startup = common["startup_sec"]
    result = read_json(paths[layout.RESULT])
    if result is not None:  # the target finished, even if the process then hung or died on exit
        if result.get("status") == "failed" and isinstance(result.get("failure"), dict):
            result["failure"] = {**common, **result["failure"]}
        return result
    progress = read_json(paths[PROGRESS_NAME]) or {}
    if stopped:
        return pruned_metrics(progress, stop_grace_sec, common)
    if timed_out and startup is None:
        return failed_metrics(
            "infrastructure",
            f"the trial process did not finish starting (imports, loading the problem) within "
            f"{startup_timeout_sec:g} s: a slow node or filesystem",
            **common,
        )
    if timed_out:
        extra = {k: v for k, v in progress.items() if k != "fraction_done"}
        return failed_metrics(
            "timeout",
            f"killed after the hard limit of {hard_timeout_sec:g} s (start-up of "
            f"{startup:g} s not counted)",
            fraction_done=progress.get("fraction_done"),
            hard_timeout_sec=hard_timeout_sec,
            progress=extra or None,
            **common,
        )
    return death_metrics(returncode, oom_before, log_tail(Path(common["log_path"])), common)


def pruned_metrics(progress: dict, stop_grace_sec: float, common: dict) -> dict:
    """A child killed after a stop request: ``pruned``, with its last reported estimate."""
    metrics = failed_metrics(
        "pruned",
        f"stopped on request; killed after a grace of {stop_grace_sec:g} s",
        fraction_done=progress.get("fraction_done"),
        step=progress.get("step"),
        **common,
    )
    metrics["llc_hat"] = progress.get("llc_hat")
    return metrics


def death_metrics(code: int, oom_before: int | None, tail: str, common: dict) -> dict:
    """The failure of a child that exited with ``code`` without writing a result: ``crashed``
    (a signal, or a non-zero exit), or ``oom`` for a SIGKILL while the cgroup's ``oom_kill``
    counter rose."""
    if code >= 0:
        return failed_metrics(
            "crashed",
            f"trial process exited with code {code} without writing a result",
            exit_code=code,
            log_tail=tail,
            **common,
        )
    sig = -code
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
    oom_after = oom_kills()
    if sig == signal.SIGKILL and None not in (oom_before, oom_after) and oom_after > oom_before:
        return failed_metrics(
            "oom",
            f"killed by SIGKILL while the cgroup's oom_kill counter rose "
            f"({oom_before} -> {oom_after}): the kernel OOM killer",
            signal=sig,
            signal_name=name,
            log_tail=tail,
            **common,
        )
    return failed_metrics(
        "crashed",
        f"trial process died by {name}",
        signal=sig,
        signal_name=name,
        log_tail=tail,
        **common,
    )
