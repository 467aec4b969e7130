"""Run one trial in a child process that can be killed, and always get a metrics dict back.

A trial stuck inside compiled code (an XLA kernel, a BLAS call) cannot be interrupted from
Python, and a trial that segfaults or is OOM-killed takes its process with it. Parsl's
``walltime`` cannot stop either (it raises in the worker thread). So
:func:`run_isolated` starts ``python -m lambda_hat.trial.process.oneshot`` in its own session (process
group), passes the payload and the result through files written atomically with
:mod:`lambda_hat._io`, waits, and kills the whole group once ``hard_timeout_sec`` is spent. The
caller (a Parsl worker or the driver) never dies with the trial: whatever happens, it gets the
runner's metrics shape back, a failure built by :func:`lambda_hat.trial.outcome.failed_metrics`
(an exception in the child through :func:`lambda_hat.trial.outcome.from_exception`):

- ``timeout``: killed after ``hard_timeout_sec``; ``fraction_done`` from the progress file if
  the child reported any (:func:`report_progress`);
- ``crashed``: the child died by a signal (``signal``, ``signal_name``) or exited non-zero
  without a result (``exit_code``); ``log_path`` points to its output (with a faulthandler
  traceback for a segfault);
- ``oom``: ``MemoryError`` or an XLA ``RESOURCE_EXHAUSTED`` in the child, or a SIGKILL with
  evidence of memory exhaustion (the cgroup's ``oom_kill`` counter moved);
- ``error``: an exception escaped the target: ``exc_type``, ``message``, ``traceback_path``
  (``phase: "import"`` when the target itself could not be imported).

- ``pruned``: the caller asked the trial to stop (:func:`request_stop`, e.g. the tuning driver's
  pruner) and it did not return within the stop grace; the last reported ``llc_hat`` and
  ``fraction_done`` are kept.

Files in ``workdir`` (a fresh temporary directory when ``None``): ``payload.json``,
``result.json``, ``progress.json``, ``stop.json`` (a stop request), ``traceback.txt``,
``child.log``.

Progress and stop requests are the channel between a running trial and whoever watches it
(the tuning driver reads ``progress.json`` through a filesystem it shares with the workers):
the trial calls :func:`report_progress` between chunks of work and checks
:func:`stop_requested` (one ``os.path.exists``); a requested stop ends the trial early with
``status: failed``, kind ``pruned`` and the estimate so far.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lambda_hat import layout
from lambda_hat._io import atomic_write_json, read_json
from lambda_hat.trial.outcome import failed_metrics, from_exception
from lambda_hat.trial.process._cgroup import oom_kills as _oom_kills

__all__ = [
    "PROGRESS_ENV",
    "STARTED_ENV",
    "STOP_ENV",
    "mark_started",
    "startup_seconds",
    "read_progress",
    "report_progress",
    "request_stop",
    "resolve_target",
    "run_isolated",
    "stop_requested",
]

PROGRESS_ENV = "LAMBDA_HAT_PROGRESS_FILE"
"""Environment variable naming the progress file of the current isolated trial."""
STOP_ENV = "LAMBDA_HAT_STOP_FILE"
"""Environment variable naming the file whose existence asks the current trial to stop."""
STARTED_ENV = "LAMBDA_HAT_STARTED_FILE"
"""Environment variable naming the file a trial touches when its start-up is over."""
PROGRESS_NAME, STOP_NAME, STARTED_NAME = layout.PROGRESS, layout.STOP, layout.STARTED

_POLL_SEC = 0.02
_TERM_GRACE_SEC = 1.0
_LOG_TAIL_CHARS = 2000
_STOP_POLL_SEC = 0.25
_history: dict[str, list] = {}  # progress file -> [[fraction_done, llc_hat], ...] so far


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


#: Modules a trial target could name before the stage packages (issue 18): stored configs and
#: scripts that pass ``--trial-target lambda_hat.workflow.synthetic:synthetic_trial`` still run.
MOVED_TARGET_MODULES = {
    "lambda_hat.workflow.synthetic": "lambda_hat.trial.synthetic",
    "lambda_hat.workflow.execution": "lambda_hat.parallel.apps",
}


def resolve_target(target: str) -> Callable[..., Any]:
    """The function named by ``target`` (``"package.module:function"``; the function part may be
    dotted, ``module:Class.method``). Raises ``ValueError`` for a malformed target, the import's
    own error for a missing module or attribute, ``TypeError`` when it is not callable."""
    module_name, sep, func_name = target.partition(":")
    if not sep or not module_name or not func_name:
        raise ValueError(f"target must look like 'package.module:function', got {target!r}")
    module_name = MOVED_TARGET_MODULES.get(module_name, module_name)
    func = importlib.import_module(module_name)
    for part in func_name.split("."):
        func = getattr(func, part)
    if not callable(func):
        raise TypeError(f"target {target!r} is not callable")
    return func


def _exception_metrics(exc: BaseException, phase: str, tb_path: Path) -> dict:
    return failed_metrics(
        **from_exception(exc, phase=phase, traceback_path=tb_path, traceback_chars=_LOG_TAIL_CHARS)
    )


def run_request(target: str, workdir: Path) -> bool:
    """Run one trial in this (child) process: load ``workdir/payload.json``, call ``target``,
    write ``result.json`` (every failure as metrics). Shared by the one-shot child and the warm
    one (:mod:`lambda_hat.trial.process.warm`). Returns False when the process should not run another trial
    (an exception that is not an ``Exception``, e.g. ``SystemExit``, escaped the target)."""
    result_path, tb_path = workdir / layout.RESULT, workdir / layout.TRACEBACK
    payload = read_json(workdir / layout.PAYLOAD)
    if payload is None:
        atomic_write_json(result_path, failed_metrics("error", "payload.json missing or corrupt"))
        return True
    try:
        func = resolve_target(target)
    except BaseException as exc:  # noqa: BLE001 - every failure must become metrics
        atomic_write_json(result_path, _exception_metrics(exc, "import", tb_path))
        return isinstance(exc, Exception)
    mark_started("imported")
    try:
        result = func(**payload)
    except BaseException as exc:  # noqa: BLE001
        atomic_write_json(result_path, _exception_metrics(exc, "run", tb_path))
        return isinstance(exc, Exception)
    if not isinstance(result, Mapping):
        result = failed_metrics(
            "error",
            f"target {target} returned {type(result).__name__}, expected a metrics dict",
            exc_type="TypeError",
        )
    atomic_write_json(result_path, dict(result))
    return True


def _child_main(argv: list[str] | None = None) -> int:
    """Entry point of the one-shot child process: run the one trial in ``workdir``."""
    parser = argparse.ArgumentParser(prog="python -m lambda_hat.trial.process.oneshot")
    parser.add_argument("target")
    parser.add_argument("workdir")
    args = parser.parse_args(argv)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    run_request(args.target, Path(args.workdir))
    return 0


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _log_tail(path: Path) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - _LOG_TAIL_CHARS))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


class _Limit:
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


def _fixed(deadline: float) -> _Limit:
    limit = _Limit(None, 0.0, 0.0)
    limit.deadline = deadline
    return limit


def _wait(pid: int, limit: _Limit, stop_file: Path | None = None) -> tuple[int, Any] | None:
    """Reap ``pid`` (returning its wait status and rusage) or ``None`` at ``limit.deadline``,
    or as soon as ``stop_file`` exists (both checked every ``_STOP_POLL_SEC``)."""
    next_check = time.monotonic() + _STOP_POLL_SEC
    while True:
        reaped, status, rusage = os.wait4(pid, os.WNOHANG)
        if reaped == pid:
            return status, rusage
        now = time.monotonic()
        if now >= next_check:
            limit.poll()
            if stop_file is not None and stop_file.exists():
                return None
            next_check = now + _STOP_POLL_SEC
        if now >= limit.deadline:
            return None
        time.sleep(_POLL_SEC)


def _timing(limit: _Limit, log_path) -> dict:
    """The outcome fields every supervised trial has: wall time, start-up, its log."""
    startup = None if limit.startup_sec is None else round(limit.startup_sec, 3)
    return {
        "elapsed_sec": round(time.monotonic() - limit.spawned, 3),
        "startup_sec": startup,
        "log_path": str(log_path),
    }


def run_isolated(
    target: str,
    payload: Mapping[str, Any],
    hard_timeout_sec: float,
    workdir: str | os.PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stop_grace_sec: float | None = None,
    startup_timeout_sec: float | None = None,
) -> dict:
    """Call ``target(**payload)`` in a killable child process; always return a metrics dict.

    Args:
        target: ``"package.module:function"``, importable in a fresh interpreter.
        payload: keyword arguments, plain JSON (non-finite floats become ``None``).
        hard_timeout_sec: wall-clock limit, counted from the end of the child's start-up (its
            last :func:`mark_started`: imports done, or the target's own "ready"); past it the
            child's whole process group is sent SIGTERM, then SIGKILL a second later, even when
            it is stuck in native code.
        workdir: where the exchange files, traceback and child log go; a new temporary
            directory when ``None`` (kept, since failures point into it).
        env: extra environment variables for the child.
        stop_grace_sec: after a stop request (:func:`request_stop` on ``workdir``) the child
            has this long to return by itself (a trial that checks :func:`stop_requested`
            returns its estimate so far) before it is killed and reported ``pruned``; default
            10% of ``hard_timeout_sec``, at least 5 s.
        startup_timeout_sec: how long start-up may take before the child is killed and the
            trial reported ``infrastructure`` (a node or filesystem too slow to import from:
            retried, not learned); default max(120 s, ``hard_timeout_sec``).

    Returns:
        The target's return value on success; otherwise a failed-metrics dict (see the module
        docstring) that also carries ``elapsed_sec``, ``log_path`` and ``startup_sec`` (the
        measured start-up; None if it never ended). A caller reads a successful trial's
        start-up with :func:`startup_seconds`.
    """
    if not (hard_timeout_sec > 0):
        raise ValueError(f"hard_timeout_sec must be > 0, got {hard_timeout_sec}")
    wd = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="lh_trial_"))
    wd.mkdir(parents=True, exist_ok=True)
    paths, child_env = _prepare(wd, payload, env)
    if stop_grace_sec is None:
        stop_grace_sec = max(5.0, 0.1 * hard_timeout_sec)
    if startup_timeout_sec is None:
        startup_timeout_sec = max(120.0, hard_timeout_sec)
    oom_before, log_path = _oom_kills(), wd / layout.CHILD_LOG
    limit = _Limit(paths[STARTED_NAME], hard_timeout_sec, startup_timeout_sec)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lambda_hat.trial.process.oneshot", target, str(wd)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
        )
    timed_out, stopped = _supervise(proc, limit, paths[STOP_NAME], stop_grace_sec)
    common = _timing(limit, log_path)
    limits = (hard_timeout_sec, startup_timeout_sec, stop_grace_sec)
    return _outcome(paths, common, limit, limits, (timed_out, stopped), proc.returncode, oom_before)


def _prepare(wd: Path, payload: Mapping[str, Any], env: Mapping[str, str] | None):
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


def _outcome(paths, common, limit, limits, ended, returncode, oom_before) -> dict:
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
        return _pruned_metrics(progress, stop_grace_sec, common)
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
    return _death_metrics(returncode, oom_before, _log_tail(Path(common["log_path"])), common)


def _pruned_metrics(progress: dict, stop_grace_sec: float, common: dict) -> dict:
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


def _supervise(
    proc: subprocess.Popen, limit: _Limit, stop_path: Path, stop_grace_sec: float
) -> tuple[bool, bool]:
    """Wait for the child until ``limit.deadline`` (or a stop request plus its grace), killing
    its group past it; reap it and set ``proc.returncode``. Returns ``(timed_out, stopped)``.

    If the caller is interrupted meanwhile (``KeyboardInterrupt``, a signal), the child's group
    is killed before the exception goes on: a trial never outlives whoever runs it.
    """
    timed_out = stopped = False
    try:
        waited = _wait(proc.pid, limit, stop_path)
        if waited is None and time.monotonic() < limit.deadline:  # stop requested
            grace = _fixed(min(limit.deadline, time.monotonic() + stop_grace_sec))
            waited = _wait(proc.pid, grace)
            stopped = waited is None
        if waited is None:
            timed_out = not stopped
            _kill_group(proc.pid, signal.SIGTERM)
            waited = _wait(proc.pid, _fixed(time.monotonic() + _TERM_GRACE_SEC))
            if waited is None:
                _kill_group(proc.pid, signal.SIGKILL)
                waited = _wait(proc.pid, _fixed(float("inf")))
    except BaseException:
        _kill_group(proc.pid, signal.SIGKILL)  # the caller is going down: take the trial along
        with contextlib.suppress(ChildProcessError):
            os.waitpid(proc.pid, 0)
        proc.returncode = -signal.SIGKILL
        raise
    status, _rusage = waited
    proc.returncode = os.waitstatus_to_exitcode(status)
    _kill_group(proc.pid, signal.SIGKILL)  # grandchildren left behind by the trial
    return timed_out, stopped


def _death_metrics(code: int, oom_before: int | None, tail: str, common: dict) -> dict:
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
    oom_after = _oom_kills()
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


if __name__ == "__main__":
    code = _child_main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: a hang or crash there must not lose the result
