"""The environment of a worker's trial and reference processes.

JAX in workers: float64 (:mod:`lambda_hat.precision`: ``JAX_ENABLE_X64=1`` for the trial
processes, and switched on in the worker itself by :func:`apply_env`); the persistent compilation cache lives in ``<artifacts>/.jax_cache``, shared by
every worker and trial, so a repeated trial shape does not pay compile time again; thread pools
are capped to the cores the worker may use.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lambda_hat import layout
from lambda_hat.precision import X64_ENV, enable_x64

__all__ = ["apply_env", "worker_env"]


def worker_env(artifacts: str | Path) -> dict[str, str]:
    """Environment for trial processes: the shared JAX compilation cache, and thread pools
    capped to the cores this worker may use (Parsl's ``cpu_affinity`` pins each worker), so
    that 32 trials on a 32-core node do not run 32 × 32 threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = str(max(1, cores or 1))
    env = {
        "JAX_COMPILATION_CACHE_DIR": str(layout.jax_cache(artifacts)),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        X64_ENV[0]: X64_ENV[1],
        "OMP_NUM_THREADS": cores,
        "OPENBLAS_NUM_THREADS": cores,
        "MKL_NUM_THREADS": cores,
    }
    if cores == "1":  # XLA's CPU backend: one intra-op thread, no Eigen pool
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        if flags not in os.environ.get("XLA_FLAGS", ""):
            env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    return env


def apply_env(env: dict[str, str]) -> None:
    """Set ``env`` in this process (a worker that already imported JAX is told the cache
    directory directly, and switched to float64: JAX reads the variables once)."""
    os.environ.update(env)
    if "jax" in sys.modules:
        import jax

        jax.config.update("jax_compilation_cache_dir", env["JAX_COMPILATION_CACHE_DIR"])
        enable_x64()
