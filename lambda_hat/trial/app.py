"""The trial app: what a Parsl worker runs for one trial (submitted by
:mod:`lambda_hat.trial.submit`).

A trial runs its payload's ``target`` (``"module:function"``, called with the payload as keyword
arguments; :data:`~lambda_hat.trial.identity.DEFAULT_TRIAL_TARGET` is :func:`method_target`) in
a child process, which is killed past ``method_budget_sec × timeout_grace`` even inside compiled
code, and whose crash becomes a failure kind, so a trial never takes down a worker. The child
is the worker's warm trial process (:func:`lambda_hat.trial.process.warm.run_warm`: imports,
problems and compiled programs kept between trials; the payload's ``warm`` policy says when it
is replaced), or with ``warm: None`` a fresh one per trial
(:func:`lambda_hat.trial.process.oneshot.run_isolated`). Whatever happens, the trial's
``metrics.json`` exists in its run directory afterwards (the results table is built from it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from lambda_hat import layout
from lambda_hat._io import atomic_write_json, read_json
from lambda_hat.llc.channel import (
    PROGRESS_ENV,
    PROGRESS_NAME,
    STOP_ENV,
    STOP_NAME,
    mark_started,
    startup_seconds,
)
from lambda_hat.parallel import worker
from lambda_hat.trial.identity import DEFAULT_TRIAL_TARGET, trial_workdir
from lambda_hat.trial.outcome import failed_metrics, from_exception
from lambda_hat.trial.process.oneshot import run_isolated
from lambda_hat.trial.process.request import resolve_target
from lambda_hat.trial.process.warm import WarmPolicy, run_warm

__all__ = ["cached_problem", "execute_trial", "method_target"]

PROBLEM_CACHE_SIZE = 2  # problems a (warm) trial process keeps loaded, least recent dropped
_SUPERVISOR_KEYS = ("target", "isolate", "timeout_grace", "warm")  # not the target's arguments
_PROBLEMS: OrderedDict[tuple, tuple] = OrderedDict()  # (pid, artifacts) -> (stamp, Problem)


def method_target(**payload: Any) -> dict:
    """The default trial target: build (or load) the problem and run one trial of
    ``payload["method"]`` (:func:`lambda_hat.trial.runner.run_method_trial`) inside the
    isolated child process."""
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
    from lambda_hat.layout import problem_dir
    from lambda_hat.problem.build import build_problem, problem_id
    from lambda_hat.problem.spec import ProblemSpec
    from lambda_hat.schema import validate

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
    env = worker.worker_env(payload["artifacts"])
    worker.apply_env(env)
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
        return failed_metrics(**from_exception(exc, traceback_path=run_dir / "traceback.txt"))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
