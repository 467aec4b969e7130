"""Run on this machine: one HighThroughputExecutor worker per core (``parsl-optuna --local``).

``parsl-optuna --config X --parsl-config parsl_configs/local.py`` is the same as ``--local``;
copy this file to change the worker count. Keep ``monitoring`` unset: Parsl's resource monitor
forks workers, which can deadlock processes that have imported JAX.
"""

import os

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

WORKERS = os.cpu_count() or 1  # trials run at once; e.g. 8

config = Config(
    executors=[
        HighThroughputExecutor(
            label="local",
            address="127.0.0.1",
            max_workers_per_node=WORKERS,
            cores_per_worker=1,
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        )
    ],
    strategy="none",
    usage_tracking=0,
)
