"""Warm trial processes: one long-lived, killable child per worker thread runs trial after trial.

A fresh ``python -m lambda_hat.trial.process.oneshot`` child pays its start-up (importing JAX and the
runner, loading the problem, tracing) on every trial: 4-7 s on a busy 2-core machine, more than
many short trials run. :func:`run_warm` keeps the same contract as
:func:`lambda_hat.trial.process.oneshot.run_isolated` (same files, same hard limit counted from the end of
start-up, same failure kinds) but sends each trial to a warm child, ``python -m
lambda_hat.trial.process.warm``, that stays alive between trials, so that imports, problems and compiled
programs (:mod:`lambda_hat.llc.engine`'s process cache) are paid once per process.

Protocol (see plans/warm-workers.md): the supervisor writes ``payload.json`` into the trial's
workdir as before, then one JSON line ``{"target", "workdir", "log", "env"}`` on the child's
stdin; the child points its stdout/stderr at ``log``, sets ``env`` (the trial's progress, stop
and start-mark files), runs :func:`lambda_hat.trial.process.oneshot.run_request` (which writes
``result.json``) and answers one JSON line on a reply pipe. The supervisor waits for the reply,
the child's death, a stop request or the deadline, exactly like the one-shot case.

Isolation stays: a trial past its hard limit, pruned past its grace, crashed (signal, exit) or
OOM-killed takes the warm child down (its whole process group is killed) and the trial is
reported with the kind a fresh child would have had; the next trial starts a fresh child.
Recycling (:class:`WarmPolicy`): after ``max_trials`` trials, when the child's RSS exceeds
``max_rss_mb``, after an ``oom`` result, or when the worker's environment for trials changed.

The child dies with its worker: EOF on its stdin (the worker exited) ends an idle child, a
watchdog thread kills a busy one whose parent changed, and an idle child exits by itself after
:data:`IDLE_EXIT_SEC`. In the worker, a child is closed when its thread ends, at interpreter
exit, or by :func:`shutdown`.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lambda_hat import layout
from lambda_hat.llc import channel
from lambda_hat.llc.channel import PROGRESS_ENV, STARTED_ENV, STARTED_NAME, STOP_ENV, STOP_NAME
from lambda_hat.precision import enable_x64
from lambda_hat.trial.outcome import failure_of
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
    wait_for,
)

__all__ = ["IDLE_EXIT_SEC", "WarmPolicy", "WarmProcess", "run_warm", "shutdown"]

IDLE_EXIT_SEC = 900.0
"""An idle warm child exits by itself after this long without a trial (a leak backstop)."""
_WATCHDOG_SEC = 0.5


@dataclass(frozen=True)
class WarmPolicy:
    """When a warm child is replaced by a fresh one (between trials, never during one).

    ``max_trials``: trials one child runs at most; ``max_rss_mb``: its resident memory (MiB)
    after a trial beyond which it is recycled (None: no memory limit).
    """

    max_trials: int = 200
    max_rss_mb: float | None = 4096.0

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None) -> WarmPolicy:
        """The policy of a payload's ``warm`` entry (the config's ``optuna.warm``)."""
        return cls(**{k: v for k, v in (m or {}).items() if k in ("max_trials", "max_rss_mb")})


def _reap(proc: subprocess.Popen, reply_fd: int) -> None:
    """Kill the child's whole process group, reap it and close our ends of its pipes."""
    kill_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    with contextlib.suppress(OSError):
        proc.stdin.close()
    with contextlib.suppress(OSError):
        os.close(reply_fd)


class WarmProcess:
    """One warm child in its own session; ``env`` is what it was started with (on top of this
    process's environment), and a trial needing another environment gets another child."""

    def __init__(self, env: Mapping[str, str], log_path: Path):
        self.env = dict(env)
        self.trials = 0
        reply_r, reply_w = os.pipe()
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lambda_hat.trial.process.warm", str(reply_w)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
                pass_fds=(reply_w,),
            )
        os.close(reply_w)
        self.reply_fd, self._buf = reply_r, b""
        self._close = weakref.finalize(self, _reap, self.proc, reply_r)
        _ALL.add(self)

    @property
    def os_pid(self) -> int:
        """The child's OS process id."""
        return self.proc.pid

    def alive(self) -> bool:
        return self._close.alive and self.proc.poll() is None

    def send(self, request: dict) -> bool:
        """Write one request line; False when the child is gone (the pipe is broken)."""
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True

    def reply(self, timeout: float) -> dict | None:
        """The child's answer if one arrives within ``timeout``; ``{}`` at EOF (it died)."""
        while b"\n" not in self._buf:
            ready, _, _ = select.select([self.reply_fd], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self.reply_fd, 4096)
            if not chunk:
                return {}
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def rss_mb(self) -> float | None:
        """The child's resident set size in MiB (None when it cannot be read)."""
        try:
            pages = int(Path(f"/proc/{self.os_pid}/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            return None
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def close(self) -> None:
        """Kill the child (and anything it started) and reap it; idempotent."""
        self._close()


_ALL: weakref.WeakSet[WarmProcess] = weakref.WeakSet()
_local = threading.local()  # .process: this thread's WarmProcess (dropped when the thread ends)


def shutdown() -> None:
    """Close every warm child of this process (tests, and a worker that wants them gone now)."""
    for proc in list(_ALL):
        proc.close()
    _local.__dict__.pop("process", None)


def _acquire(env: Mapping[str, str], log_path: Path, fresh: bool = False) -> WarmProcess:
    """This thread's warm child for ``env``: a new one when ``fresh``, when there is none, when
    it died, or when it was started with another environment."""
    proc = getattr(_local, "process", None)
    if not fresh and proc is not None and proc.alive() and proc.env == dict(env):
        log_path.open("wb").close()  # a fresh log per trial, as a fresh child would have
        return proc
    if proc is not None:
        proc.close()
    _local.process = WarmProcess(env, log_path)
    return _local.process


def _await(proc: WarmProcess, limit: Limit, stop_file: Path | None) -> dict | None:
    """The child's reply (``{}`` when it died), or None at ``limit.deadline`` or on a stop
    request (:func:`~lambda_hat.trial.process.supervise.wait_for`)."""
    return wait_for(proc.reply, limit, stop_file)


def _supervise(proc: WarmProcess, limit: Limit, stop_path: Path, stop_grace_sec: float):
    """Wait for the trial like :func:`lambda_hat.trial.process.oneshot.run_isolated`: ``(timed_out, stopped,
    returncode, answer)``; the child is killed past the limit or the stop grace, or when the
    caller is interrupted (then the exception goes on)."""
    timed_out = stopped = False
    try:
        answer = _await(proc, limit, stop_path)
        if answer is None and time.monotonic() < limit.deadline:  # stop requested
            grace = fixed_limit(min(limit.deadline, time.monotonic() + stop_grace_sec))
            answer = _await(proc, grace, None)
            stopped = answer is None
        if answer is None:
            timed_out = not stopped
            kill_group(proc.os_pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.proc.wait(timeout=TERM_GRACE_SEC)
        if answer == {} or answer is None:
            proc.close()  # dead or killed: reap it (SIGKILL to what is left of its group)
    except BaseException:
        proc.close()
        raise
    return timed_out, stopped, proc.proc.returncode, answer


def _recycle_reason(proc: WarmProcess, answer: dict, result: dict, policy: WarmPolicy):
    """Why ``proc`` must not run another trial after returning ``result`` (None: it may)."""
    if not answer.get("keep", True):
        return "exit"
    if (failure_of(result) or {}).get("kind") == "oom":
        return "oom"
    if proc.trials >= policy.max_trials:
        return "max_trials"
    rss = proc.rss_mb()
    if policy.max_rss_mb is not None and rss is not None and rss > policy.max_rss_mb:
        return "max_rss_mb"
    return None


def run_warm(
    target: str,
    payload: Mapping[str, Any],
    hard_timeout_sec: float,
    workdir: str | os.PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stop_grace_sec: float | None = None,
    startup_timeout_sec: float | None = None,
    policy: WarmPolicy | None = None,
) -> dict:
    """:func:`lambda_hat.trial.process.oneshot.run_isolated`, in this thread's warm child.

    Same arguments, files and outcomes; ``policy`` says when the child is recycled. The
    returned metrics also carry ``warm``: ``{"pid", "trial", "rss_mb", "recycled"}`` (the
    child's OS process id, its how-many-th trial this was, its RSS after the trial, and why it was
    replaced afterwards: None, ``"killed"``, ``"max_trials"``, ``"max_rss_mb"``, ``"oom"``).
    """
    if not (hard_timeout_sec > 0):
        raise ValueError(f"hard_timeout_sec must be > 0, got {hard_timeout_sec}")
    policy = policy or WarmPolicy()
    wd = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="lh_trial_"))
    wd.mkdir(parents=True, exist_ok=True)
    paths, child_env = prepare(wd, payload, None)
    channel = {k: child_env[k] for k in (PROGRESS_ENV, STOP_ENV, STARTED_ENV)}
    stop_grace_sec = max(5.0, 0.1 * hard_timeout_sec) if stop_grace_sec is None else stop_grace_sec
    startup_timeout_sec = startup_timeout_sec or max(120.0, hard_timeout_sec)
    log_path = wd / layout.CHILD_LOG
    request = {"target": target, "workdir": str(wd), "log": str(log_path), "env": channel}
    oom_before = supervise.oom_kills()
    limit = Limit(paths[STARTED_NAME], hard_timeout_sec, startup_timeout_sec)
    proc = _acquire(env or {}, log_path)
    if not proc.send(request):  # it died while idle: a fresh child, as in the one-shot case
        proc = _acquire(env or {}, log_path, fresh=True)
        proc.send(request)
    proc.trials += 1
    timed_out, stopped, code, answer = _supervise(proc, limit, paths[STOP_NAME], stop_grace_sec)
    common = timing(limit, log_path)
    limits = (hard_timeout_sec, startup_timeout_sec, stop_grace_sec)
    ended = (timed_out, stopped)
    result = outcome(paths, common, limit, limits, ended, 0 if code is None else code, oom_before)
    info = {"pid": proc.os_pid, "trial": proc.trials, "rss_mb": None, "recycled": "killed"}
    if answer:
        info["rss_mb"] = proc.rss_mb()
        info["recycled"] = _recycle_reason(proc, answer, result, policy)
        if info["recycled"]:
            proc.close()
    if info["rss_mb"] is not None:
        info["rss_mb"] = round(info["rss_mb"], 1)
    return {**result, "warm": info}


# ------------------------------------------------------------------------------ the child


def _watch_parent(parent: int) -> None:
    """Kill this child's whole group once its parent (the worker) is gone, even mid-trial."""
    while os.getppid() == parent:
        time.sleep(_WATCHDOG_SEC)
    kill_group(os.getpgrp(), signal.SIGKILL)


def _redirect_output(log: str) -> None:
    """Point fds 1 and 2 (and so faulthandler) at this trial's log."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _child_main(reply_fd: int) -> int:
    """The warm child's loop: one request line in, one trial, one reply line out, until EOF."""
    faulthandler.enable(file=sys.stderr, all_threads=True)
    enable_x64()  # a process lambda_hat owns: float64 before any array
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    stdin, done = sys.stdin.buffer, 0
    while select.select([stdin], [], [], IDLE_EXIT_SEC)[0]:
        line = stdin.readline()
        if not line:
            break
        req = json.loads(line)
        _redirect_output(req["log"])
        os.environ.update(req["env"])
        channel.clear_history()  # progress histories of earlier trials
        keep = run_request(req["target"], Path(req["workdir"]))
        done += 1
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(reply_fd, json.dumps({"done": done, "keep": keep}).encode() + b"\n")
        if not keep:
            break
    return 0


if __name__ == "__main__":
    code = _child_main(int(sys.argv[1]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
