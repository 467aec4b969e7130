"""Process clean-up shared by the tests that start drivers, interchanges, batch jobs and trial
children.
"""

from __future__ import annotations

import os
import subprocess
import time

import psutil


def kill_and_wait(procs, timeout: float = 10) -> None:
    """SIGKILL every process in ``procs`` (gone ones are skipped) and reap them."""
    procs = list(procs)
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=timeout)


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def kill_leftovers(proc: subprocess.Popen, marker: str) -> None:
    """SIGKILL the driver ``proc`` if it still runs, then what it started that outlives it: its
    descendants as they were before it died (Parsl's HTEX interchange and its multiprocessing
    helpers, the worker pool, isolated trials), and whatever runs with the test's temporary path
    in its command line or as its working directory (the interchange renames its process title
    but keeps the driver's working directory)."""
    procs: dict[int, psutil.Process] = {}
    if proc.poll() is None:
        try:
            procs = {p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
        proc.kill()
        proc.wait()
    for p in psutil.process_iter(["cmdline", "cwd"]):
        cmd, cwd = " ".join(p.info["cmdline"] or []), p.info["cwd"] or ""
        if p.pid != os.getpid() and (
            marker in cmd or cwd == marker or cwd.startswith(marker + "/")
        ):
            procs.setdefault(p.pid, p)
    kill_and_wait(procs.values())
