"""Process clean-up shared by the tests that start drivers, interchanges and batch jobs."""

from __future__ import annotations

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
