"""PBS Pro cluster: HighThroughputExecutor workers on compute nodes, one trial per core.

Copy this file and replace the ALL-CAPS placeholders. Start the driver (``parsl-optuna``) on
the login node from a directory the compute nodes share (Parsl's run directory holds HTEX's
encryption certificates; artifacts/ holds the trial files). Workers reach the interchange on the
login node's cluster-facing address, never 127.0.0.1. Parsl monitoring stays off (its resource
monitor forks, which can deadlock processes that imported JAX).

Each PBS job is one node: the batch script runs on that node and starts its worker pool there
(``SingleNodeLauncher``), so no MPI launcher is involved; mpiexec's flags differ between Cray
PALS, OpenMPI, MPICH and Intel MPI. More nodes at once are more jobs (``NODES``).

Torque instead of PBS Pro: use ``parsl.providers.TorqueProvider`` with the same ``queue``,
``account``, ``walltime``, ``worker_init``, ``nodes_per_block=1``, ``max_blocks`` and launcher.
It has no ``cpus_per_node``: its script asks for ``-l nodes=1:ppn=1``, so request the node's
cores through ``scheduler_options`` in your site's syntax (check with ``qstat -f`` that the job
got them). Its default launcher is ``AprunLauncher`` (Cray only): keep ``SingleNodeLauncher``.

    parsl-optuna --config config/my_run.yaml --parsl-config parsl_configs/pbs.py
"""

from functools import partial

from parsl.addresses import address_by_hostname, address_by_interface
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.jobs.error_handlers import windowed_error_handler
from parsl.launchers import SingleNodeLauncher
from parsl.providers import PBSProProvider

QUEUE = "QUEUE"  # e.g. "workq"
ACCOUNT = None  # e.g. "my-project"; None omits -A
NODES = 2  # nodes at once: one PBS job (block) per node
CPUS_PER_NODE = 32  # trials run at once on a node
WALLTIME = "04:00:00"  # per job, HH:MM:SS; the driver submits a new job while trials remain
# Drain: this long before WALLTIME ends, workers stop taking trials, finish the ones they run
# and exit, so the job ends before PBS kills it and Parsl starts a fresh one; no trial is sent
# to a job about to expire. It must cover the longest trial (method_budget_sec x timeout_grace
# plus start-up: 600 s x 1.5 + about a minute with the defaults) and the workers' start-up.
DRAIN_MARGIN_SEC = 20 * 60
# Network interface of the login node that compute nodes reach (e.g. "ib0"). None: the address
# the login node's hostname resolves to (no internet lookup; Parsl's address=None queries a
# public service, a 30 s timeout where there is no internet). Set it when
# `getent hosts $(hostname)` prints a 127.x address or one the compute nodes cannot reach.
INTERFACE = None
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
            label="pbs",
            address=address_by_interface(INTERFACE) if INTERFACE else address_by_hostname(),
            max_workers_per_node=CPUS_PER_NODE,
            cores_per_worker=1,
            cpu_affinity="block",  # each worker pinned to its own core (threads capped to it)
            drain_period=DRAIN_PERIOD,
            block_error_handler=partial(windowed_error_handler, threshold=MAX_FAILED_JOBS_IN_A_ROW),
            provider=PBSProProvider(
                account=ACCOUNT,
                queue=QUEUE,
                nodes_per_block=1,
                cpus_per_node=CPUS_PER_NODE,
                init_blocks=NODES,
                min_blocks=0,
                max_blocks=NODES,
                walltime=WALLTIME,
                worker_init=WORKER_INIT,
                launcher=SingleNodeLauncher(),
            ),
        )
    ],
    usage_tracking=0,
)
