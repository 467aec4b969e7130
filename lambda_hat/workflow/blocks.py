"""The record of a run's batch jobs and interchange, so that a driver killed with ``kill -9``
does not leave them running: the next start cancels what the previous one left.

While a Parsl session is open, ``<run dir>/blocks.json`` lists every executor's interchange
pid and the scheduler job ids of its blocks (rewritten atomically whenever they change); a
clean shut-down removes it. :func:`cancel_previous`, called before a new session starts, reads
a file that is still there, kills the interchange if it still runs and cancels the jobs with
the scheduler's own command (one table below, keyed by the provider's class name).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from pathlib import Path

from lambda_hat._io import atomic_write_json, read_json

log = logging.getLogger("lambda_hat.workflow")

RECORD_NAME = "blocks.json"
RECORD_EVERY_SEC = 15.0
#: provider class -> the command that cancels its jobs (job ids appended)
CANCEL_COMMANDS: dict[str, list[str]] = {
    "SlurmProvider": ["scancel"],
    "PBSProProvider": ["qdel"],
    "TorqueProvider": ["qdel"],
}


def snapshot(dfk) -> dict:
    """Interchange pids and block job ids of the loaded executors (plain values)."""
    out: dict = {"driver_pid": os.getpid(), "interchanges": [], "jobs": []}
    for ex in dfk.executors.values():
        proc = getattr(ex, "interchange_proc", None)
        if proc is not None and getattr(proc, "pid", None):
            out["interchanges"].append(int(proc.pid))
        provider = type(getattr(ex, "provider", None)).__name__
        for job_id in dict(getattr(ex, "blocks_to_job_id", {}) or {}).values():
            if job_id is not None:
                out["jobs"].append({"provider": provider, "job_id": str(job_id)})
    return out


class Recorder:
    """Keeps ``<run_dir>/blocks.json`` up to date from a daemon thread while a session runs."""

    def __init__(self, run_dir: str | Path, dfk):
        self.path, self.dfk = Path(run_dir) / RECORD_NAME, dfk
        self._stop, self._last = threading.Event(), None
        self._thread = threading.Thread(target=self._loop, name="lh-blocks", daemon=True)

    def start(self) -> Recorder:
        self.record()
        self._thread.start()
        return self

    def record(self) -> None:
        """Write the record when it changed (errors logged, never raised)."""
        try:
            snap = snapshot(self.dfk)
            if snap != self._last:
                atomic_write_json(self.path, snap)
                self._last = snap
        except Exception as exc:  # a record must never take the run down
            log.debug("could not record blocks: %s", exc)

    def _loop(self) -> None:
        while not self._stop.wait(RECORD_EVERY_SEC):
            self.record()

    def close(self) -> None:
        """Stop recording and remove the record (the session shut its blocks down)."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


def _is_interchange(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return "interchange" in cmdline


def cancel_previous(run_dir: str | Path) -> list[str]:
    """Cancel what a driver that died without shutting down left (what was done, in words)."""
    path = Path(run_dir) / RECORD_NAME
    record = read_json(path)
    if record is None:
        return []
    done = []
    if record.get("driver_pid") and _alive(int(record["driver_pid"])):
        log.warning("blocks of a driver that still runs (pid %s): left alone", record["driver_pid"])
        return []
    for pid in record.get("interchanges", []):
        if _is_interchange(int(pid)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)
                done.append(f"killed interchange {pid}")
    by_command: dict[tuple, list[str]] = {}
    for job in record.get("jobs", []):
        command = CANCEL_COMMANDS.get(job.get("provider", ""))
        if command:
            by_command.setdefault(tuple(command), []).append(job["job_id"])
    for command, ids in by_command.items():
        try:
            subprocess.run([*command, *ids], capture_output=True, timeout=60, check=False)
            done.append(f"{command[0]} {' '.join(ids)}")
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("could not cancel jobs %s with %s: %s", ids, command[0], exc)
    path.unlink(missing_ok=True)
    for line in done:
        log.warning("previous run left blocks behind: %s", line)
    return done


def _alive(pid: int) -> bool:
    """Whether another Python process with this pid runs (a driver still alive)."""
    if pid == os.getpid():
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"python" in cmdline
