"""Parsl: loading a config, the worker-side app bodies, and where a trial's files live.

Workers receive a plain dict and return a plain dict (see :mod:`lambda_hat.study.driver`
for the contract). The app bodies are module-level functions, so Parsl ships them by reference
and a worker imports this module like any other.

A trial runs :data:`DEFAULT_TRIAL_TARGET` (``"module:function"``, called with the payload as
keyword arguments) in a child process, which is killed past ``method_budget_sec ×
timeout_grace`` even inside compiled code, and whose crash becomes a failure kind, so a trial
never takes down a worker. The child is the worker's warm trial process
(:func:`lambda_hat.trial.process.warm.run_warm`: imports, problems and compiled programs kept between trials;
the payload's ``warm`` policy says when it is replaced), or with ``warm: None`` a fresh one per
trial (:func:`lambda_hat.trial.process.oneshot.run_isolated`). Whatever happens, the trial's
``metrics.json`` exists in its run directory afterwards (the results table is built from it).

JAX in workers: the persistent compilation cache lives in ``<artifacts>/.jax_cache``, shared by
every worker and trial, so a repeated trial shape does not pay compile time again. Parsl's
resource monitor is left off: it forks the worker, which can deadlock a process that has
imported JAX.
"""

from __future__ import annotations

import contextlib
import logging
import os
import runpy
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from lambda_hat import layout
from lambda_hat._io import atomic_write_json, read_json
from lambda_hat.config.schema import ConfigError
from lambda_hat.hashing import content_hash
from lambda_hat.parallel import blocks
from lambda_hat.trial.outcome import KINDS, TRACEBACK_CHARS, failed_metrics, from_exception
from lambda_hat.trial.process.oneshot import (
    PROGRESS_ENV,
    PROGRESS_NAME,
    STOP_ENV,
    STOP_NAME,
    mark_started,
    resolve_target,
    run_isolated,
    startup_seconds,
)
from lambda_hat.trial.process.warm import WarmPolicy, run_warm

log = logging.getLogger("lambda_hat.workflow")

DEFAULT_TRIAL_TARGET = "lambda_hat.parallel.apps:run_method_trial"
PROBLEM_CACHE_SIZE = 2  # problems a (warm) trial process keeps loaded, least recent dropped
_SUPERVISOR_KEYS = ("target", "isolate", "timeout_grace", "warm")  # not the target's arguments
_PROBLEMS: OrderedDict[tuple, tuple] = OrderedDict()  # (pid, artifacts) -> (stamp, Problem)


# ------------------------------------------------------------------------ trial identity


def trial_manifest(payload: dict) -> dict:
    """What identifies a trial's result: problem, method, hyperparameters, budget, seed, target."""
    return {
        "pid": payload["pid"],
        "method": payload["method"],
        "hyperparams": payload["hyperparams"],
        "budget_sec": payload["budget_sec"],
        "seed": payload["seed"],
        "target": payload.get("target", DEFAULT_TRIAL_TARGET),
    }


def trial_location(payload: dict) -> tuple[str, Path]:
    """``(run_id, run_dir)``: ``r_<sha256(manifest)[:12]>`` under ``<artifacts>/runs/<pid>/<method>/``."""
    run_id = content_hash(trial_manifest(payload), prefix="r_")
    return run_id, layout.run_dir(payload["artifacts"], payload["pid"], payload["method"], run_id)


def trial_workdir(run_dir: str | Path) -> Path:
    """The isolation directory of a run: payload, result, ``progress.json``, ``stop.json``."""
    return layout.isolation_dir(run_dir)


def load_valid_metrics(run_dir: str | Path | None) -> dict | None:
    """The run's metrics when they are a reusable outcome: ok, or a failure whose kind is
    *reusable* (:data:`lambda_hat.trial.outcome.KINDS`: deterministic in the manifest); every other
    failure is run again when its manifest comes up again."""
    if not run_dir:
        return None
    metrics = read_json(Path(run_dir) / layout.METRICS)
    if metrics is None:
        return None
    if metrics.get("status") == "ok":
        return metrics
    kind = KINDS.get((metrics.get("failure") or {}).get("kind"))
    return metrics if metrics.get("status") == "failed" and kind and kind.reusable else None


# ------------------------------------------------------------------------ worker side


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
        "OMP_NUM_THREADS": cores,
        "OPENBLAS_NUM_THREADS": cores,
        "MKL_NUM_THREADS": cores,
    }
    if cores == "1":  # XLA's CPU backend: one intra-op thread, no Eigen pool
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        if flags not in os.environ.get("XLA_FLAGS", ""):
            env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    return env


def _apply_env(env: dict[str, str]) -> None:
    os.environ.update(env)
    if "jax" in sys.modules:  # a worker that already imported JAX: the env vars are read once
        import jax

        jax.config.update("jax_compilation_cache_dir", env["JAX_COMPILATION_CACHE_DIR"])


def run_method_trial(**payload: Any) -> dict:
    """Build (or load) the problem and run one trial of ``payload["method"]`` (the default
    target; it runs inside the isolated child process)."""
    from lambda_hat.trial import runner

    problem = cached_problem(payload["spec"], payload["artifacts"])
    mark_started("ready")  # the hard limit counts from here: imports and loading are start-up
    return runner.run_method_trial(
        problem,
        payload["method"],
        payload["hyperparams"],
        payload["budget_sec"],
        payload["seed"],
        ref=payload.get("ref"),
        artifacts=payload["artifacts"],
    )


def cached_problem(spec: dict, artifacts: str | Path):
    """The problem of ``spec`` under ``artifacts``, built or loaded once per process (a warm
    trial process runs many trials of few problems): kept while its stored ``data.npz`` is the
    same file, :data:`PROBLEM_CACHE_SIZE` problems at most."""
    from lambda_hat.config.problem import ProblemSpec
    from lambda_hat.config.schema import validate
    from lambda_hat.problem.build import build_problem, problem_dir, problem_id

    spec_obj = validate(spec, ProblemSpec, "spec")
    pid = problem_id(spec_obj)
    key = (pid, str(Path(artifacts).resolve()))

    def stamp() -> tuple | None:
        with contextlib.suppress(OSError):
            st = (problem_dir(artifacts, pid) / layout.PROBLEM_DATA).stat()
            return st.st_ino, st.st_mtime_ns, st.st_size
        return None

    hit = _PROBLEMS.get(key)
    if hit is not None and hit[0] is not None and hit[0] == stamp():
        _PROBLEMS.move_to_end(key)
        return hit[1]
    problem = build_problem(spec_obj, artifacts)
    _PROBLEMS[key] = (stamp(), problem)
    while len(_PROBLEMS) > PROBLEM_CACHE_SIZE:
        _PROBLEMS.popitem(last=False)
    return problem


def execute_trial(payload: dict) -> dict:
    """The trial app body: run the payload's target, write and return its metrics dict.

    Isolated (``isolate``, the default) in this worker thread's warm trial process when the
    payload has a ``warm`` policy (``{max_trials, max_rss_mb}``, the config's ``optuna.warm``),
    else in a fresh process; ``isolate: False`` runs it in this process.

    Never raises for a failure of the trial itself: exceptions, crashes and hard timeouts come
    back as ``{"status": "failed", "failure": {"kind": ..., ...}}``. The outcome is judged by
    the driver (:func:`lambda_hat.trial.outcome.screen_estimate` runs there, once).

    The run's ``metrics.json`` is written here as well as by the runner, for two reasons: a
    trial killed past its hard limit, crashed or OOM-killed never got to write one (the record
    then exists only here), and the worker adds what only it knows: ``host``, the wall-clock
    ``started_at``/``finished_at`` of the whole isolated run, which the Parquet table shows,
    and ``startup_sec`` (imports and loading the problem, not counted in the hard limit).
    Keys the target wrote are kept; the file is rewritten only when something was added.
    """
    start = time.time()
    env = worker_env(payload["artifacts"])
    _apply_env(env)
    run_dir = Path(payload["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    target = payload.get("target", DEFAULT_TRIAL_TARGET)
    kwargs = {k: v for k, v in payload.items() if k not in _SUPERVISOR_KEYS}
    if payload.get("isolate", True):
        hard = float(payload["budget_sec"]) * float(payload.get("timeout_grace", 1.5))
        workdir, spawned = trial_workdir(run_dir), time.time()
        if payload.get("warm") is not None:
            policy = WarmPolicy.from_mapping(payload["warm"])
            metrics = run_warm(target, kwargs, hard, workdir, env=env, policy=policy)
        else:
            metrics = run_isolated(target, kwargs, hard, workdir=workdir, env=env)
        metrics = {"startup_sec": startup_seconds(workdir, spawned), **metrics}
    else:
        metrics = dict(_call_inline(target, kwargs, run_dir))
    metrics.setdefault("host", socket.gethostname())
    metrics.setdefault("started_at", start)
    metrics.setdefault("finished_at", time.time())
    metrics.setdefault("run_id", payload.get("run_id"))
    metrics.setdefault("hyperparams", payload["hyperparams"])
    written = read_json(run_dir / layout.METRICS)
    merged = {**(written or {}), **metrics}
    if merged != written:
        atomic_write_json(run_dir / layout.METRICS, merged)
    return metrics


def _call_inline(target: str, kwargs: dict, run_dir: Path) -> dict:
    """Run ``target`` in this process (no isolation): an exception becomes an ``error``.

    The progress and stop files are the isolated ones (set through the environment: a Parsl
    worker process runs one task at a time).
    """
    workdir = trial_workdir(run_dir)
    channel = {PROGRESS_ENV: workdir / PROGRESS_NAME, STOP_ENV: workdir / STOP_NAME}
    for path in channel.values():
        path.unlink(missing_ok=True)
    saved = {k: os.environ.get(k) for k in channel}
    os.environ.update({k: str(v) for k, v in channel.items()})
    try:
        return resolve_target(target)(**kwargs)
    except Exception as exc:
        return failed_metrics(**from_exception(exc, traceback_path=run_dir / layout.TRACEBACK))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def execute_reference(payload: dict) -> dict:
    """The reference app body: build the problem and its HMC reference (cached by pid).

    Returns the ref.json contents, or a failed record (:func:`lambda_hat.trial.outcome.failed_metrics`
    of the exception, with the traceback's tail).
    """
    _apply_env(worker_env(payload["artifacts"]))
    try:
        from lambda_hat.reference.nuts import reference_job

        return reference_job(
            payload["spec"],
            payload["reference"],
            payload["artifacts"],
            payload.get("force", False),
            verbose=None,
            gamma=payload.get("gamma"),
        )
    except Exception as exc:
        return failed_metrics(**from_exception(exc, traceback_chars=TRACEBACK_CHARS))


# ------------------------------------------------------------------------ Parsl config


def ensure_worker_path() -> None:
    """Put this interpreter's bin directory on PATH: Parsl launches ``process_worker_pool.py``
    by name, and users should not have to activate the virtual environment for that."""
    bindir = os.path.dirname(sys.executable)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if bindir not in parts:
        os.environ["PATH"] = os.pathsep.join([bindir, *parts])


def local_config(workers: int | None = None, run_dir: str | Path = "runinfo"):
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


@contextlib.contextmanager
def parsl_session(config, run_dir: str | Path | None = None) -> Iterator[None]:
    """Load ``config`` for the duration of the block, then shut the executors down.

    ``run_dir`` replaces Parsl's default ``runinfo`` (relative to the working directory) with a
    directory under the results, so a run keeps its logs with its studies. SIGTERM and SIGHUP
    (a scheduler's or a closed terminal's stop) raise ``KeyboardInterrupt`` inside the block
    like Ctrl-C, so the clean-up below cancels the blocks and stops the interchange instead of
    leaving them (and their batch jobs) running; after a ``kill -9`` the next session cancels
    what the dead one left (:mod:`lambda_hat.parallel.blocks`).
    """
    import parsl

    ensure_worker_path()
    if run_dir is not None and config.run_dir == "runinfo":
        config.run_dir = str(run_dir)
    blocks.cancel_previous(config.run_dir)  # a driver killed with kill -9 left them
    saved = _interrupt_on(signal.SIGTERM, signal.SIGHUP)
    dfk = parsl.load(config)
    recorder = blocks.Recorder(config.run_dir, dfk).start()
    try:
        yield
    finally:
        try:
            dfk.cleanup()
            parsl.clear()
        finally:
            recorder.close()
            for sig, handler in saved.items():
                signal.signal(sig, handler)


def _interrupt_on(*signals: signal.Signals) -> dict:
    """Make ``signals`` raise KeyboardInterrupt (main thread only); the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    saved = {}
    for sig in signals:
        saved[sig] = signal.signal(sig, signal.default_int_handler)
    return saved


def trial_submitter():
    """``submit(payload) -> AppFuture`` running :func:`execute_trial` on the loaded executors."""
    from parsl import python_app

    app = python_app(execute_trial)
    return app


def reference_submitter():
    """``submit(payload) -> AppFuture`` running :func:`execute_reference`."""
    from parsl import python_app

    return python_app(execute_reference)
