"""Parsl configs: the ``--local`` one, loading a ``--parsl-config`` file, and their capacity.

Parsl's resource monitor is left off: it forks the worker, which can deadlock a process that
has imported JAX.
"""

from __future__ import annotations

import logging
import os
import runpy
from functools import partial
from pathlib import Path

from lambda_hat import layout
from lambda_hat.schema import ConfigError

__all__ = ["capacity", "load_parsl_config", "local_config"]

log = logging.getLogger("lambda_hat.workflow")


def local_config(workers: int | None = None, run_dir: str | Path = layout.RUNINFO):
    """A HighThroughputExecutor on this machine, one worker per core (``--local``).

    Same as ``parsl_configs/local.py``; ``workers`` overrides the core count.
    """
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.jobs.error_handlers import windowed_error_handler
    from parsl.providers import LocalProvider

    workers = workers or os.cpu_count() or 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    return Config(
        executors=[
            HighThroughputExecutor(
                label="local",
                address="127.0.0.1",
                max_workers_per_node=workers,
                cores_per_worker=1,
                # one core per worker when there are enough (Parsl refuses more workers)
                cpu_affinity="block" if 0 < workers <= cores else "none",
                # a pool lost to kill -9 or the OOM killer is replaced (strategy "simple")
                block_error_handler=partial(windowed_error_handler, threshold=3),
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
            )
        ],
        run_dir=str(run_dir),
        strategy="simple",
        usage_tracking=0,
    )


def capacity(config) -> int | None:
    """Trials a Parsl config runs at once: workers per node × nodes per block × max blocks,
    summed over its executors; None when an executor does not say (e.g. workers "auto")."""
    total = 0
    for ex in getattr(config, "executors", []) or []:
        workers = getattr(ex, "max_workers_per_node", None)
        provider = getattr(ex, "provider", None)
        nodes = getattr(provider, "nodes_per_block", 1)
        blocks = getattr(provider, "max_blocks", 1)
        if not all(isinstance(x, int) and x > 0 for x in (workers, nodes, blocks)):
            return None
        total += workers * nodes * blocks
    return total or None


def load_parsl_config(path: str | Path):
    """Run the Python file ``path`` and return its module-level ``config`` (Parsl's convention).

    Raises :class:`ConfigError` (naming ``--parsl-config``) when the file cannot be run or
    defines no Parsl ``Config``.
    """
    from parsl.config import Config

    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            "--parsl-config", f"{path} does not exist.", "give the path of a .py file."
        )
    try:
        namespace = runpy.run_path(str(path))
    except Exception as exc:
        raise ConfigError(
            "--parsl-config",
            f"running {path} raised {type(exc).__name__}: {exc}.",
            "fix the file; it must define `config = parsl.config.Config(...)`.",
        ) from None
    config = namespace.get("config")
    if not isinstance(config, Config):
        raise ConfigError(
            "--parsl-config",
            f"{path} defines no `config` of type parsl.config.Config.",
            "add `config = Config(executors=[...])` at module level.",
        )
    if config.monitoring is not None:
        log.warning(
            "%s enables Parsl monitoring: its resource monitor forks workers, which can "
            "deadlock JAX. Remove `monitoring=` if workers hang.",
            path,
        )
    return config
