"""Trial targets for the supervision tests: every way a trial can end.

The child process imports this file as ``trial_targets`` (its directory is on the child's
PYTHONPATH, :data:`ENV`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from pathlib import Path

from lambda_hat.llc.channel import report_progress
from lambda_hat.trial.outcome import failed_metrics

ENV = {
    "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
}


def ok(x: float, name: str) -> dict:
    return {"status": "ok", "llc_hat": 2.0 * x, "name": name}


def raises(x: float) -> dict:
    raise ValueError(f"bad x={x}")


def diverges(steps: int) -> dict:
    return failed_metrics("diverged", "non-finite loss", step=12, steps_total=steps)


def native_hang(seconds: int) -> dict:
    report_progress(0.25, step=250)
    ctypes.CDLL(None).sleep(seconds)  # blocks in C: no Python signal handler can run
    return {"status": "ok"}


def hang_in_grandchild(pid_file: str) -> dict:
    proc = subprocess.Popen(["sleep", "60"])
    Path(pid_file).write_text(str(proc.pid))
    proc.wait()
    return {"status": "ok"}


def sigkill_self() -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {"status": "ok"}


def segfault() -> dict:
    ctypes.string_at(0)
    return {"status": "ok"}


def memory_error() -> dict:
    raise MemoryError("cannot allocate")


def xla_oom() -> dict:
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB")


def exit_three() -> dict:
    os._exit(3)


def returns_list() -> list:
    return [1, 2]


def precision() -> dict:
    """What float type this trial process computes in (it must have switched float64 on)."""
    import jax
    import jax.numpy as jnp

    return {"status": "ok", "x64": bool(jax.config.jax_enable_x64), "dtype": str(jnp.ones(1).dtype)}
