"""PBS Pro cluster: HighThroughputExecutor workers on compute nodes, one trial per core.

Copy this file and replace the ALL-CAPS placeholders. Start the driver (``parsl-optuna``) on
the login node from a directory the compute nodes share (Parsl's run directory holds HTEX's
encryption certificates; artifacts/ holds the trial files). Workers reach the interchange on the
login node's cluster-facing addresses, never 127.0.0.1. Parsl monitoring stays off (its resource
monitor forks, which can deadlock processes that imported JAX).

    parsl-optuna --config config/my_run.yaml --parsl-config parsl_configs/pbs.py
"""

from parsl.addresses import address_by_interface
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import MpiExecLauncher
from parsl.providers import PBSProProvider

QUEUE = "QUEUE"  # e.g. "workq"
ACCOUNT = None  # e.g. "my-project"; None omits -A
NODES = 2  # nodes per job (block)
CPUS_PER_NODE = 32  # trials run at once on a node
WALLTIME = "04:00:00"
MAX_BLOCKS = 1  # PBS jobs at once
# Network interface of the login node that compute nodes reach (e.g. "ib0"); None lets
# workers probe every address of the login node (Parsl's default), never only loopback.
INTERFACE = None
WORKER_INIT = (
    "source /PATH/TO/lambda_hat/.venv/bin/activate; export XLA_PYTHON_CLIENT_PREALLOCATE=false"
)

config = Config(
    executors=[
        HighThroughputExecutor(
            label="pbs",
            address=address_by_interface(INTERFACE) if INTERFACE else None,
            max_workers_per_node=CPUS_PER_NODE,
            cores_per_worker=1,
            provider=PBSProProvider(
                account=ACCOUNT,
                queue=QUEUE,
                nodes_per_block=NODES,
                cpus_per_node=CPUS_PER_NODE,
                init_blocks=1,
                min_blocks=0,
                max_blocks=MAX_BLOCKS,
                walltime=WALLTIME,
                worker_init=WORKER_INIT,
                launcher=MpiExecLauncher(bind_cmd="--cpu-bind", overrides="--depth=1 --ppn 1"),
            ),
        )
    ],
    usage_tracking=0,
)
