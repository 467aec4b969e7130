"""A worker pool lost mid-study under ``--local``'s real Parsl executor: kill -9 of
process_worker_pool (a node failure, the OOM killer) while trials run; the study ends with
max_trials finished, none lost, nothing left running. The same fault on a real SLURM:
tests/integration/test_cluster_slurm.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import psutil
import pytest
from helpers.procs import kill_and_wait
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from lambda_hat.study.tell import counts_as_finished

CLI = [
    sys.executable,
    "-c",
    "import sys; from lambda_hat.study.pipeline import main; sys.exit(main())",
]
FAST_HEARTBEAT = (  # --local's config, with a lost pool noticed in seconds rather than 120 s
    "from lambda_hat.parallel.configs import local_config\n"
    "config = local_config(2)\n"
    "config.executors[0].heartbeat_period = 1\n"
    "config.executors[0].heartbeat_threshold = 6\n"
)
ONE_STUDY = (
    "problems: [{model: linear, data: small, teacher: _null, seed: 0}]\n"
    "methods: [sgld]\n"
    "reference: {chains: 2, draws: 200, warmup: 200, rhat_max: 1.1, ess_min: 50}\n"
    "optuna: {n_startup_trials: 2, pruner: none, seed: 5, validate: null}\n"
)


def _started_here(base: Path, mark: str) -> list[psutil.Process]:
    """Live processes of one test: its mark in their environment, or their working directory
    under ``base`` (the interchange overwrites its environment with its process title)."""
    found = []
    for p in psutil.process_iter(["cwd", "environ", "status"]):
        cwd, env = p.info["cwd"] or "", p.info["environ"] or {}
        if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if env.get("LH_TEST_MARK") == mark or cwd == str(base) or cwd.startswith(f"{base}/"):
            found.append(p)
    return found


def _pools(results: Path) -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if "process_worker_pool" in " ".join(p.info["cmdline"] or [])
        and str(results) in " ".join(p.info["cmdline"] or [])
    ]


def _wait_for(what: str, check, timeout: float, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text()[-3000:]}")


def kill_pool_mid_study(base: Path, driver_args: list[str], env: dict, results: Path, runs: Path):
    """Start the driver, kill -9 its worker pool while trials run, let it finish. Returns
    ``(return code, log text, finished trial numbers at the kill, killed pool pid)``."""
    mark = uuid.uuid4().hex
    log = base / "driver.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            CLI + driver_args,
            cwd=base,
            env={**os.environ, **env, "LH_TEST_MARK": mark},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        t0 = time.time()
        _wait_for(
            "two finished trials",
            lambda: (
                len([p for p in runs.glob("*/*/*/metrics.json") if p.stat().st_mtime > t0]) >= 2
            ),
            300,
            log,
        )
        pool = _wait_for("the worker pool", lambda: _pools(results), 30, log)[0]
        journal = JournalStorage(JournalFileBackend(str(results / "studies" / "journal.log")))
        (summary,) = optuna.get_all_study_summaries(journal)
        study = optuna.load_study(study_name=summary.study_name, storage=journal)
        done = {t.number for t in study.trials if t.state.is_finished()}
        assert any(t.state == TrialState.RUNNING for t in study.trials)
        pool.kill()
        proc.wait(timeout=300)
        text = log.read_text()
        deadline = time.monotonic() + 15  # the scheduler's and Parsl's own clean-up
        while _started_here(base, mark) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [(p.pid, " ".join(p.cmdline())[:100]) for p in _started_here(base, mark)]
        assert left == [], f"processes left: {left}\n{text[-3000:]}"
        return proc.returncode, text, done, pool.pid
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_and_wait(_started_here(base, mark))


@pytest.mark.slow  # ~60 s; the same fault is tested on real SLURM in CI (tests/integration/test_cluster_slurm.py)
def test_a_killed_worker_pool_is_replaced_and_the_study_finishes(tmp_path):
    """kill -9 of process_worker_pool (a node failure, the OOM killer) mid-study: the trials
    it ran come back as infrastructure failures and are retried on a new pool; the study ends
    with max_trials finished, none lost, nothing left running (the dead pool's helpers are
    killed by the driver, Parsl leaves them)."""
    results, artifacts = tmp_path / "results", tmp_path / "artifacts"
    (tmp_path / "experiment.yaml").write_text(ONE_STUDY)
    (tmp_path / "local_fast.py").write_text(FAST_HEARTBEAT)
    args = ["--config", "experiment.yaml", "--parsl-config", "local_fast.py"]
    args += ["--results", str(results), "--artifacts", str(artifacts), "--max-trials", "6"]
    args += ["--batch-size", "2", "--trial-target", "lambda_hat.trial.synthetic:synthetic_trial"]
    rc, text, done, pool = kill_pool_mid_study(
        tmp_path, args, {"LAMBDA_HAT_SYNTHETIC_SECONDS": "3"}, results, artifacts / "runs"
    )
    assert rc == 0, text[-4000:]
    assert "lost to the infrastructure" in text and "resubmitting" in text, text[-4000:]
    assert f"worker pool {pool} is gone" in text, text[-4000:]
    journal = JournalStorage(JournalFileBackend(str(results / "studies" / "journal.log")))
    (summary,) = optuna.get_all_study_summaries(journal)
    trials = optuna.load_study(study_name=summary.study_name, storage=journal).trials
    assert all(t.state.is_finished() for t in trials)
    finished = [t for t in trials if counts_as_finished(t.state, t.user_attrs.get("failure_kind"))]
    assert len(finished) == 6 and all(t.user_attrs.get("status", "ok") == "ok" for t in finished)
    assert done <= {t.number for t in finished}  # no finished trial lost
