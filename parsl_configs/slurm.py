"""SLURM cluster: HighThroughputExecutor workers on compute nodes, one trial per core.

Copy this file and replace the ALL-CAPS placeholders. The driver (``parsl-optuna``) runs on the
login node; it must be started from a directory on a filesystem the compute nodes share
(Parsl's run directory holds HTEX's encryption certificates, and artifacts/ holds the trial
files workers write). The interchange is reached on the login node's cluster-facing addresses,
never 127.0.0.1, so workers on compute nodes can connect. Parsl monitoring stays off: its
resource monitor forks, which can deadlock processes that imported JAX.

    parsl-optuna --config config/my_run.yaml --parsl-config parsl_configs/slurm.py
"""

from parsl.addresses import address_by_interface
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

PARTITION = "PARTITION"  # e.g. "cpu" or "gpu"
ACCOUNT = None  # e.g. "my-project"; None uses your default account
NODES = 2  # nodes per job (block)
CORES_PER_NODE = 32  # trials run at once on a node
WALLTIME = "04:00:00"  # per job; the driver resubmits blocks while trials remain
MAX_BLOCKS = 1  # SLURM jobs at once
# Shell lines run on each node before the worker starts: activate the same environment.
# Network interface of the login node that compute nodes reach (e.g. "ib0"); None lets
# workers probe every address of the login node (Parsl's default), never only loopback.
INTERFACE = None
WORKER_INIT = (
    "source /PATH/TO/lambda_hat/.venv/bin/activate; export XLA_PYTHON_CLIENT_PREALLOCATE=false"
)

config = Config(
    executors=[
        HighThroughputExecutor(
            label="slurm",
            address=address_by_interface(INTERFACE) if INTERFACE else None,
            max_workers_per_node=CORES_PER_NODE,
            cores_per_worker=1,
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
