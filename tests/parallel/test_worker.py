"""The environment of a worker and its trial processes: the interpreter's bin first on PATH,
thread pools capped to the worker's cores.
"""

from __future__ import annotations

import os

import optuna

from lambda_hat.parallel import session, worker

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_worker_path_puts_the_interpreter_bin_first(monkeypatch):
    import os
    import sys

    monkeypatch.setenv("PATH", "/usr/bin")
    session.ensure_worker_path()
    assert os.environ["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


def test_trial_threads_are_capped_to_the_worker_cores(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    env = worker.worker_env(tmp_path)
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert "--xla_cpu_multi_thread_eigen=false" in env["XLA_FLAGS"]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    env = worker.worker_env(tmp_path)
    assert env["OMP_NUM_THREADS"] == "4" and "XLA_FLAGS" not in env
