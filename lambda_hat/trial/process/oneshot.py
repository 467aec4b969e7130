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
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lambda_hat import layout
from lambda_hat.llc.channel import STARTED_NAME, STOP_NAME
from lambda_hat.precision import enable_x64
from lambda_hat.trial.process import supervise
from lambda_hat.trial.process.request import run_request
from lambda_hat.trial.process.supervise import (
    TERM_GRACE_SEC,
    Limit,
    fixed_limit,
    kill_group,
    outcome,
    prepare,
    timing,
    wait_pid,
)

__all__ = ["run_isolated"]


def _child_main(argv: list[str] | None = None) -> int:
    """Entry point of the one-shot child process: run the one trial in ``workdir``."""
    parser = argparse.ArgumentParser(prog="python -m lambda_hat.trial.process.oneshot")
    parser.add_argument("target")
    parser.add_argument("workdir")
    args = parser.parse_args(argv)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    enable_x64()  # a process lambda_hat owns: float64 before any array
    run_request(args.target, Path(args.workdir))
    return 0


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
    paths, child_env = prepare(wd, payload, env)
    if stop_grace_sec is None:
        stop_grace_sec = max(5.0, 0.1 * hard_timeout_sec)
    if startup_timeout_sec is None:
        startup_timeout_sec = max(120.0, hard_timeout_sec)
    oom_before, log_path = supervise.oom_kills(), wd / layout.CHILD_LOG
    limit = Limit(paths[STARTED_NAME], hard_timeout_sec, startup_timeout_sec)
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
    common = timing(limit, log_path)
    limits = (hard_timeout_sec, startup_timeout_sec, stop_grace_sec)
    return outcome(paths, common, limit, limits, (timed_out, stopped), proc.returncode, oom_before)


def _supervise(
    proc: subprocess.Popen, limit: Limit, stop_path: Path, stop_grace_sec: float
) -> tuple[bool, bool]:
    """Wait for the child until ``limit.deadline`` (or a stop request plus its grace), killing
    its group past it; reap it and set ``proc.returncode``. Returns ``(timed_out, stopped)``.

    If the caller is interrupted meanwhile (``KeyboardInterrupt``, a signal), the child's group
    is killed before the exception goes on: a trial never outlives whoever runs it.
    """
    timed_out = stopped = False
    try:
        waited = wait_pid(proc.pid, limit, stop_path)
        if waited is None and time.monotonic() < limit.deadline:  # stop requested
            grace = fixed_limit(min(limit.deadline, time.monotonic() + stop_grace_sec))
            waited = wait_pid(proc.pid, grace)
            stopped = waited is None
        if waited is None:
            timed_out = not stopped
            kill_group(proc.pid, signal.SIGTERM)
            waited = wait_pid(proc.pid, fixed_limit(time.monotonic() + TERM_GRACE_SEC))
            if waited is None:
                kill_group(proc.pid, signal.SIGKILL)
                waited = wait_pid(proc.pid, fixed_limit(float("inf")))
    except BaseException:
        kill_group(proc.pid, signal.SIGKILL)  # the caller is going down: take the trial along
        with contextlib.suppress(ChildProcessError):
            os.waitpid(proc.pid, 0)
        proc.returncode = -signal.SIGKILL
        raise
    status, _rusage = waited
    proc.returncode = os.waitstatus_to_exitcode(status)
    kill_group(proc.pid, signal.SIGKILL)  # grandchildren left behind by the trial
    return timed_out, stopped


if __name__ == "__main__":
    code = _child_main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: a hang or crash there must not lose the result
