"""SLURM cluster: HighThroughputExecutor workers on compute nodes, one trial per core.

Copy this file and replace the ALL-CAPS placeholders. The driver (``parsl-optuna``) runs on the
login node; it must be started from a directory on a filesystem the compute nodes share
(Parsl's run directory holds HTEX's encryption certificates, and artifacts/ holds the trial
files workers write). The interchange is reached on the login node's cluster-facing address,
never 127.0.0.1, so workers on compute nodes can connect. Parsl monitoring stays off: its
resource monitor forks, which can deadlock processes that imported JAX.

    parsl-optuna --config config/my_run.yaml --parsl-config parsl_configs/slurm.py
"""

from functools import partial

from parsl.addresses import address_by_hostname, address_by_interface
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.jobs.error_handlers import windowed_error_handler
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

PARTITION = "PARTITION"  # e.g. "cpu" or "gpu"
ACCOUNT = None  # e.g. "my-project"; None uses your default account
NODES = 2  # nodes per job (block)
CORES_PER_NODE = 32  # trials run at once on a node
WALLTIME = "04:00:00"  # per job, HH:MM:SS; the driver submits a new job while trials remain
# Drain: this long before WALLTIME ends, workers stop taking trials, finish the ones they run
# and exit, so the job ends before SLURM kills it and Parsl starts a fresh one; no trial is sent
# to a job about to expire. It must cover the longest trial (method_budget_sec x timeout_grace
# plus start-up: 600 s x 1.5 + about a minute with the defaults) and the workers' start-up.
DRAIN_MARGIN_SEC = 20 * 60
MAX_BLOCKS = 1  # SLURM jobs at once
# Network interface of the login node that compute nodes reach (e.g. "ib0"). None: the address
# the login node's hostname resolves to (no internet lookup; Parsl's address=None queries a
# public service, a 30 s timeout where there is no internet). Set it when
# `getent hosts $(hostname)` prints a 127.x address or one the compute nodes cannot reach.
INTERFACE = None
# Shell lines run on each node before the worker starts: activate the same environment.
WORKER_INIT = (
    "source /PATH/TO/lambda_hat/.venv/bin/activate; export XLA_PYTHON_CLIENT_PREALLOCATE=false"
)

_h, _m, _s = (int(part) for part in WALLTIME.split(":"))
DRAIN_PERIOD = 3600 * _h + 60 * _m + _s - DRAIN_MARGIN_SEC  # seconds after a worker starts
if DRAIN_PERIOD <= 0:
    raise ValueError(f"WALLTIME {WALLTIME} is not longer than DRAIN_MARGIN_SEC {DRAIN_MARGIN_SEC}")

# A job lost to a node failure or an OOM kill is replaced by a new one; only this many failed
# jobs in a row mark the executor bad (Parsl's default gives up after the first when one job
# runs at a time, and every later trial would fail).
MAX_FAILED_JOBS_IN_A_ROW = 3

config = Config(
    executors=[
        HighThroughputExecutor(
            label="slurm",
            address=address_by_interface(INTERFACE) if INTERFACE else address_by_hostname(),
            max_workers_per_node=CORES_PER_NODE,
            cores_per_worker=1,
            cpu_affinity="block",  # each worker pinned to its own core (threads capped to it)
            drain_period=DRAIN_PERIOD,
            block_error_handler=partial(windowed_error_handler, threshold=MAX_FAILED_JOBS_IN_A_ROW),
            provider=SlurmProvider(
                partition=PARTITION,
                account=ACCOUNT,
                nodes_per_block=NODES,
                cores_per_node=CORES_PER_NODE,
                init_blocks=1,
                min_blocks=0,
                max_blocks=MAX_BLOCKS,
                walltime=WALLTIME,
                worker_init=WORKER_INIT,
                launcher=SrunLauncher(),
                exclusive=True,
            ),
        )
    ],
    usage_tracking=0,
)
