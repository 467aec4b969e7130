"""Run on this machine: one HighThroughputExecutor worker per core (``parsl-optuna --local``).

``parsl-optuna --config X --parsl-config parsl_configs/local.py`` is the same as ``--local``;
copy this file to change the worker count. Keep ``monitoring`` unset: Parsl's resource monitor
forks workers, which can deadlock processes that have imported JAX.
"""

import os
from functools import partial

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.jobs.error_handlers import windowed_error_handler
from parsl.providers import LocalProvider

WORKERS = os.cpu_count() or 1  # trials run at once; e.g. 8

config = Config(
    executors=[
        HighThroughputExecutor(
            label="local",
            address="127.0.0.1",
            max_workers_per_node=WORKERS,
            cores_per_worker=1,
            # a pool lost to kill -9 or the OOM killer is replaced (strategy "simple")
            block_error_handler=partial(windowed_error_handler, threshold=3),
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        )
    ],
    strategy="simple",
    usage_tracking=0,
)
