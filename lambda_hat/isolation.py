"""Run one trial in a child process that can be killed, and always get a metrics dict back.

A trial stuck inside compiled code (an XLA kernel, a BLAS call) cannot be interrupted from
Python, and a trial that segfaults or is OOM-killed takes its process with it. Parsl's
``walltime`` cannot stop either (it raises in the worker thread; see prior-art.md). So
:func:`run_isolated` starts ``python -m lambda_hat.isolation`` in its own session (process
group), passes the payload and the result through files written atomically with
:mod:`lambda_hat._io`, waits, and kills the whole group once ``hard_timeout_sec`` is spent. The
caller (a Parsl worker or the driver) never dies with the trial: whatever happens, it gets the
runner's metrics shape back, a failure built by :func:`lambda_hat.failures.failed_metrics`:

- ``timeout``: killed after ``hard_timeout_sec``; ``fraction_done`` from the progress file if
  the child reported any (:func:`report_progress`);
- ``crashed``: the child died by a signal (``signal``, ``signal_name``) or exited non-zero
  without a result (``exit_code``); ``log_path`` points to its output (with a faulthandler
  traceback for a segfault);
- ``oom``: ``MemoryError`` or an XLA ``RESOURCE_EXHAUSTED`` in the child, or a SIGKILL with
  evidence of memory exhaustion (the cgroup's ``oom_kill`` counter moved);
- ``error``: an exception escaped the target: ``exc_type``, ``message``, ``traceback_path``
  (``phase: "import"`` when the target itself could not be imported).

Files in ``workdir`` (a fresh temporary directory when ``None``): ``payload.json``,
``result.json``, ``progress.json``, ``traceback.txt``, ``child.log``.
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
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lambda_hat._io import atomic_write_json, read_json
from lambda_hat.failures import failed_metrics

__all__ = ["PROGRESS_ENV", "report_progress", "run_isolated"]

PROGRESS_ENV = "LAMBDA_HAT_PROGRESS_FILE"
"""Environment variable naming the progress file of the current isolated trial."""

_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM when allocating")
_POLL_SEC = 0.02
_TERM_GRACE_SEC = 1.0
_LOG_TAIL_CHARS = 2000


def report_progress(fraction_done: float, **info: Any) -> None:
    """Record how much of its work the current trial has done (no-op outside isolation).

    Call it from the trial every so often (e.g. after each chunk of steps); a ``timeout`` then
    carries the last ``fraction_done`` and ``info``. The write is atomic, so a kill mid-write
    leaves the previous report intact.
    """
    path = os.environ.get(PROGRESS_ENV)
    if path:
        atomic_write_json(path, {"fraction_done": float(fraction_done), **info})


def _resolve(target: str):
    module_name, sep, func_name = target.partition(":")
    if not sep or not module_name or not func_name:
        raise ValueError(f"target must look like 'package.module:function', got {target!r}")
    func = importlib.import_module(module_name)
    for part in func_name.split("."):
        func = getattr(func, part)
    if not callable(func):
        raise TypeError(f"target {target!r} is not callable")
    return func


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(m in str(exc) for m in _OOM_MARKERS)


def _exception_metrics(exc: BaseException, phase: str, tb_path: Path) -> dict:
    tb_text = "".join(traceback.format_exception(exc))
    tb_path.write_text(tb_text)
    kind = "oom" if _is_oom(exc) else "error"
    return failed_metrics(
        kind,
        f"{type(exc).__name__}: {exc}",
        exc_type=type(exc).__name__,
        phase=phase,
        traceback_path=str(tb_path),
        traceback=tb_text[-_LOG_TAIL_CHARS:],
    )


def _child_main(argv: list[str] | None = None) -> int:
    """Entry point of the child process: load the payload, call the target, write the result."""
    parser = argparse.ArgumentParser(prog="python -m lambda_hat.isolation")
    parser.add_argument("target")
    parser.add_argument("workdir")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    result_path, tb_path = workdir / "result.json", workdir / "traceback.txt"
    payload = read_json(workdir / "payload.json")
    if payload is None:
        atomic_write_json(result_path, failed_metrics("error", "payload.json missing or corrupt"))
        return 0
    try:
        func = _resolve(args.target)
    except BaseException as exc:  # noqa: BLE001 - every failure must become metrics
        atomic_write_json(result_path, _exception_metrics(exc, "import", tb_path))
        return 0
    try:
        result = func(**payload)
    except BaseException as exc:  # noqa: BLE001
        atomic_write_json(result_path, _exception_metrics(exc, "run", tb_path))
        return 0
    if not isinstance(result, Mapping):
        result = failed_metrics(
            "error",
            f"target {args.target} returned {type(result).__name__}, expected a metrics dict",
            exc_type="TypeError",
        )
    atomic_write_json(result_path, dict(result))
    return 0


def _oom_kills() -> int | None:
    """The cgroup v2 ``oom_kill`` counter of this process's cgroup (children inherit it)."""
    try:
        rel = Path("/proc/self/cgroup").read_text().strip().split("\n")[0].split("::", 1)[1]
        text = Path("/sys/fs/cgroup", rel.lstrip("/"), "memory.events").read_text()
    except (OSError, IndexError):
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return None


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


def _wait(pid: int, deadline: float) -> tuple[int, Any] | None:
    """Reap ``pid`` (returning its wait status and rusage) or ``None`` at ``deadline``."""
    while True:
        reaped, status, rusage = os.wait4(pid, os.WNOHANG)
        if reaped == pid:
            return status, rusage
        if time.monotonic() >= deadline:
            return None
        time.sleep(_POLL_SEC)


def run_isolated(
    target: str,
    payload: Mapping[str, Any],
    hard_timeout_sec: float,
    workdir: str | os.PathLike | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> dict:
    """Call ``target(**payload)`` in a killable child process; always return a metrics dict.

    Args:
        target: ``"package.module:function"``, importable in a fresh interpreter.
        payload: keyword arguments, plain JSON (non-finite floats become ``None``).
        hard_timeout_sec: wall-clock limit; past it the child's whole process group is sent
            SIGTERM, then SIGKILL a second later, even when it is stuck in native code.
        workdir: where the exchange files, traceback and child log go; a new temporary
            directory when ``None`` (kept, since failures point into it).
        env: extra environment variables for the child.

    Returns:
        The target's return value on success; otherwise a failed-metrics dict (see the module
        docstring) that also carries ``elapsed_sec`` and ``log_path``.
    """
    if not (hard_timeout_sec > 0):
        raise ValueError(f"hard_timeout_sec must be > 0, got {hard_timeout_sec}")
    wd = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="lh_trial_"))
    wd.mkdir(parents=True, exist_ok=True)
    result_path, progress_path, log_path = (
        wd / "result.json",
        wd / "progress.json",
        wd / "child.log",
    )
    for stale in (result_path, progress_path):
        stale.unlink(missing_ok=True)
    atomic_write_json(wd / "payload.json", dict(payload))
    child_env = {**os.environ, **(env or {}), PROGRESS_ENV: str(progress_path)}
    oom_before = _oom_kills()
    start = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lambda_hat.isolation", target, str(wd)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
        )
    timed_out = False
    try:
        waited = _wait(proc.pid, start + hard_timeout_sec)
        if waited is None:
            timed_out = True
            _kill_group(proc.pid, signal.SIGTERM)
            waited = _wait(proc.pid, time.monotonic() + _TERM_GRACE_SEC)
            if waited is None:
                _kill_group(proc.pid, signal.SIGKILL)
                waited = _wait(proc.pid, float("inf"))
    except BaseException:
        _kill_group(proc.pid, signal.SIGKILL)  # the caller is going down: take the trial along
        with contextlib.suppress(ChildProcessError):
            os.waitpid(proc.pid, 0)
        proc.returncode = -signal.SIGKILL
        raise
    status, _rusage = waited
    proc.returncode = os.waitstatus_to_exitcode(status)
    _kill_group(proc.pid, signal.SIGKILL)  # grandchildren left behind by the trial
    elapsed = time.monotonic() - start
    common = {"elapsed_sec": round(elapsed, 3), "log_path": str(log_path)}

    result = read_json(result_path)
    if result is not None:  # the target finished, even if the process then hung or died on exit
        if result.get("status") == "failed" and isinstance(result.get("failure"), dict):
            result["failure"] = {**common, **result["failure"]}
        return result
    if timed_out:
        progress = read_json(progress_path) or {}
        extra = {k: v for k, v in progress.items() if k != "fraction_done"}
        return failed_metrics(
            "timeout",
            f"killed after the hard limit of {hard_timeout_sec:g} s",
            fraction_done=progress.get("fraction_done"),
            hard_timeout_sec=hard_timeout_sec,
            progress=extra or None,
            **common,
        )
    tail = _log_tail(log_path)
    code = proc.returncode
    if code < 0:
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
    return failed_metrics(
        "crashed",
        f"trial process exited with code {code} without writing a result",
        exit_code=code,
        log_tail=tail,
        **common,
    )


if __name__ == "__main__":
    code = _child_main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: a hang or crash there must not lose the result
