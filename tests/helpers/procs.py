"""Process clean-up shared by the tests that start drivers, interchanges, batch jobs and trial
children.
"""

from __future__ import annotations

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
