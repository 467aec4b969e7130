"""The record of a run's batch jobs and interchange, so that a driver killed with ``kill -9``
does not leave them running, and the clean-up of a worker pool that died under a running driver.

While a Parsl session is open, ``<run dir>/blocks-<host>-<os_pid>.json`` (one file per driver:
several drivers may share one results directory) lists the driver's interchange process id and the
scheduler job ids of its blocks. It is rewritten atomically whenever they change and touched
every :data:`RECORD_EVERY_SEC` (its age is the driver's sign of life for other hosts); a clean
shut-down removes it. :func:`cancel_previous`, called before a new session starts, reads every
record whose driver is gone (on this host: its process, by process id and start time; on another: a
record older than :data:`STALE_SEC`), kills the interchange if it still runs on this host and
cancels the jobs with the scheduler's own command (one table below, keyed by the provider's
class name). A live driver's record is left alone.

A worker pool killed under a running session (a node failure, the OOM killer, ``kill -9``)
leaves processes Parsl does not stop: its multiprocessing manager and resource tracker, and
workers still running a trial that is meanwhile retried elsewhere. The recorder watches the
session's pools on this host (``process_worker_pool`` processes whose command line names the
session's run directory) and kills what a dead pool left (:class:`PoolReaper`). On a remote
node the scheduler's process tracking does that when the job ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil

from lambda_hat import layout
from lambda_hat._io import atomic_write_json, read_json

log = logging.getLogger("lambda_hat.workflow")

RECORD_NAME = layout.BLOCKS_RECORD
"""The single record of earlier versions (still read and cancelled by :func:`cancel_previous`)."""
RECORD_GLOB = layout.BLOCKS_GLOB
RECORD_EVERY_SEC = 5.0
#: A record from another host whose driver has not touched it for this long is a dead driver's.
STALE_SEC = 120.0
#: The process title Parsl's HTEX interchange gives itself (parsl/executors/high_throughput/).
INTERCHANGE_TITLE = "parsl: HTEX interchange"
#: provider class -> the command that cancels its jobs (job ids appended)
CANCEL_COMMANDS: dict[str, list[str]] = {
    "SlurmProvider": ["scancel"],
    "PBSProProvider": ["qdel"],
    "TorqueProvider": ["qdel"],
}


def record_path(run_dir: str | Path, host: str | None = None, os_pid: int | None = None) -> Path:
    """``<run_dir>/blocks-<host>-<os_pid>.json``: this driver's record (default: this process)."""
    host = host or socket.gethostname()
    return layout.blocks_record(run_dir, host, os.getpid() if os_pid is None else os_pid)


def _start_time(os_pid: int) -> float | None:
    try:
        return psutil.Process(os_pid).create_time()
    except psutil.Error:
        return None


def snapshot(dfk) -> dict:
    """This driver, the interchange process ids and block job ids of the loaded executors."""
    out: dict = {
        "host": socket.gethostname(),
        "driver_pid": os.getpid(),
        "driver_started": _start_time(os.getpid()),
        "interchanges": [],
        "jobs": [],
    }
    for ex in dfk.executors.values():
        proc = getattr(ex, "interchange_proc", None)
        if proc is not None and getattr(proc, "pid", None):
            out["interchanges"].append(int(proc.pid))
        provider = type(getattr(ex, "provider", None)).__name__
        for job_id in dict(getattr(ex, "blocks_to_job_id", {}) or {}).values():
            if job_id is not None:
                out["jobs"].append({"provider": provider, "job_id": str(job_id)})
    return out


class PoolReaper:
    """Kills what a dead worker pool of this session left on this host.

    Each :meth:`scan` notes the pools whose command line names ``run_dir`` and their
    descendants (process id and start time, so a reused process id is never killed); a pool gone since the
    last scan has its noted descendants that still run killed, with their own descendants
    (a trial process started after the last scan is a child of its worker).
    """

    def __init__(self, run_dir: str | Path):
        self.marker = os.path.abspath(run_dir)  # as Parsl writes it into the pool's command
        self.pools: dict[tuple[int, float], dict[int, float]] = {}

    def _find_pools(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "process_worker_pool" in cmd and self.marker in cmd:
                found.append(p)
        return found

    def scan(self, level: int = logging.WARNING) -> list[int]:
        """Note the live pools, reap the dead ones; the process ids killed (logged at ``level``)."""
        live = set()
        for pool in self._find_pools():
            with contextlib.suppress(psutil.Error):
                key = (pool.pid, pool.create_time())
                live.add(key)
                noted = self.pools.setdefault(key, {})
                for child in pool.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        noted.setdefault(child.pid, child.create_time())
        killed: list[int] = []
        for key in [k for k in self.pools if k not in live and _gone(*k)]:
            gone = _kill_noted(self.pools.pop(key))
            if gone:
                msg = "worker pool %d is gone; killed the %d process(es) it left"
                log.log(level, msg, key[0], len(gone))
            killed += gone
        return killed


def _gone(os_pid: int, started: float) -> bool:
    """Whether the process noted as (process id, start time) has ended (a zombie has)."""
    try:
        p = psutil.Process(os_pid)
        return p.create_time() != started or p.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _kill_noted(noted: dict[int, float]) -> list[int]:
    procs: dict[int, psutil.Process] = {}
    for os_pid, started in noted.items():
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(os_pid)
            if p.create_time() == started:
                procs[os_pid] = p
                procs.update({c.pid: c for c in p.children(recursive=True)})
    for p in procs.values():
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(list(procs.values()), timeout=5)
    return sorted(procs)


class Recorder:
    """Keeps this driver's record up to date and reaps dead local worker pools, from a daemon
    thread while a session runs."""

    def __init__(self, run_dir: str | Path, dfk, every_sec: float = RECORD_EVERY_SEC):
        self.path, self.dfk, self.every_sec = record_path(run_dir), dfk, every_sec
        self.reaper = PoolReaper(getattr(dfk, "run_dir", None) or run_dir)
        self._stop, self._last = threading.Event(), None
        self._thread = threading.Thread(target=self._loop, name="lh-blocks", daemon=True)

    def start(self) -> Recorder:
        self.record()
        self._thread.start()
        return self

    def record(self) -> None:
        """Write the record when it changed, else touch it; reap dead pools (errors logged,
        never raised: the record must never take the run down)."""
        try:
            snap = snapshot(self.dfk)
            if snap != self._last or not self.path.exists():
                atomic_write_json(self.path, snap)
                self._last = snap
            else:
                os.utime(self.path)
            self.reaper.scan()
        except Exception as exc:
            log.debug("could not record blocks: %s", exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_sec):
            self.record()

    def close(self) -> None:
        """Stop recording, kill what pools lost since the last scan left, and remove the record
        (the session shut its blocks down)."""
        self._stop.set()
        self._thread.join(timeout=10)
        try:  # after a clean shut-down: stragglers of pools the session just stopped
            self.reaper.scan(logging.DEBUG)
        except Exception as exc:
            log.debug("could not reap worker pools: %s", exc)
        self.path.unlink(missing_ok=True)


def _is_interchange(os_pid: int) -> bool:
    """Whether process ``os_pid`` is a Parsl HTEX interchange: the process title Parsl gives it, or, before
    it sets one, its launch command ``interchange.py``. Not any command line that contains the
    word (a pytest-xdist worker's title names the test it runs, and a test named
    ``..._no_interchange_...`` was killed as one)."""
    try:
        argv = Path(f"/proc/{os_pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return any(
        INTERCHANGE_TITLE in arg or Path(arg).name == "interchange.py" for arg in argv if arg
    )


def driver_alive(record: dict, mtime: float, now: float | None = None) -> bool:
    """Whether the driver that wrote ``record`` still runs: on this host, a Python process
    with its process id (and its start time, when recorded) other than this one; on another host,
    a record touched within :data:`STALE_SEC`."""
    host, os_pid = record.get("host"), record.get("driver_pid")
    if host not in (None, socket.gethostname()):
        return (time.time() if now is None else now) - mtime < STALE_SEC
    if not os_pid or int(os_pid) == os.getpid():  # one Parsl session per process: an earlier one
        return False
    try:
        proc = psutil.Process(int(os_pid))
        cmdline = " ".join(proc.cmdline())
        started = proc.create_time()
    except psutil.Error:
        return False
    if record.get("driver_started") is not None and started != record["driver_started"]:
        return False
    return "python" in cmdline


def cancel_previous(run_dir: str | Path) -> list[str]:
    """Cancel what drivers that died without shutting down left (what was done, in words)."""
    done: list[str] = []
    for path in sorted(Path(run_dir).glob(RECORD_GLOB)):
        record = read_json(path)
        if record is None:
            continue
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if driver_alive(record, mtime):
            log.info(
                "blocks of a driver that still runs (pid %s): left alone", record["driver_pid"]
            )
            continue
        done += _cancel(record)
        path.unlink(missing_ok=True)
    for line in done:
        log.warning("previous run left blocks behind: %s", line)
    return done


def _cancel(record: dict) -> list[str]:
    done = []
    if record.get("host") in (None, socket.gethostname()):
        for os_pid in record.get("interchanges", []):
            if _is_interchange(int(os_pid)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(os_pid), signal.SIGKILL)
                    done.append(f"killed interchange {os_pid}")
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
    return done
