"""float64 where lambda_hat owns the process, and nowhere else.

Every LLC computation of lambda_hat runs in float64: the references need it, and mixing
precisions across the tasks of one worker process would make results depend on task order.
Importing lambda_hat changes no JAX setting of the caller; the processes lambda_hat owns switch
float64 on with :func:`enable_x64` before computing: the entry points (``lambda-hat``,
``parsl-optuna``), the trial child processes (one-shot and warm), the worker app bodies
(:func:`lambda_hat.parallel.worker.apply_env`, whose environment also carries
``JAX_ENABLE_X64=1`` to every trial process) and the reference job. A library caller calls
``lambda_hat.enable_x64()`` once, before creating arrays, or uses :func:`lambda_hat.estimate`,
which computes inside ``jax.enable_x64(True)`` and leaves the setting as it found it.
"""

from __future__ import annotations

__all__ = ["X64_ENV", "enable_x64"]

#: The environment variable (and value) that starts a process's JAX in float64.
X64_ENV = ("JAX_ENABLE_X64", "1")


def enable_x64() -> None:
    """Switch JAX to float64 for the whole process (``jax_enable_x64``); call it before creating
    arrays (an array made before keeps its float32)."""
    import jax

    jax.config.update("jax_enable_x64", True)
