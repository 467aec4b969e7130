"""Warm trial processes (lambda_hat.trial.process.warm): many trials in one child, the same numbers as fresh
children, and every way a trial can end contained exactly as a fresh child's (tests/trial/test_supervision.py).

The targets are tests/trial_targets.py's (the child imports that file: its directory is on the child's
PYTHONPATH) plus the real default target on the tiny MLP problem.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from helpers.procs import _gone, kill_and_wait
from helpers.slow_start import _slow_start
from trial_targets import ENV

from lambda_hat.problem.build import problem_id
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.schema import as_dict
from lambda_hat.trial import app as trial_app
from lambda_hat.trial.process import warm
from lambda_hat.trial.process.warm import WarmPolicy, run_warm


@pytest.fixture(autouse=True)
def _no_warm_child_left():
    yield
    warm.shutdown()


def _run(target: str, tmp_path: Path, timeout: float = 30.0, policy=None, **payload) -> dict:
    return run_warm(
        f"trial_targets:{target}", payload, timeout, tmp_path / "trial", env=ENV, policy=policy
    )


def _kind(m: dict) -> str:
    assert m["status"] == "failed", m
    return m["failure"]["kind"]


def test_one_child_runs_many_trials_and_only_the_first_pays_start_up(tmp_path):
    runs = [_run("ok", tmp_path, x=float(i), name=str(i)) for i in range(6)]
    assert [m["llc_hat"] for m in runs] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert {m["warm"]["pid"] for m in runs} == {runs[0]["warm"]["pid"]}
    assert [m["warm"]["trial"] for m in runs] == [1, 2, 3, 4, 5, 6]
    assert all(m["warm"]["recycled"] is None and m["warm"]["rss_mb"] > 0 for m in runs)


def test_start_up_is_measured_per_trial(tmp_path):
    from lambda_hat.llc.channel import startup_seconds

    def timed(x):
        sent = time.time()
        m = _run("ok", tmp_path, x=x, name="s")
        return m, startup_seconds(tmp_path / "trial", sent)

    (_, first), (_, second) = timed(1.0), timed(2.0)
    assert first > 0.3  # a fresh interpreter importing lambda_hat.trial.process.oneshot
    assert second < 0.2 and second < first / 5


def test_start_up_does_not_count_against_the_hard_limit_and_later_trials_have_none(tmp_path):
    env = _slow_start(tmp_path, 2.5)  # imports take longer than the whole hard limit
    first = run_warm("slow_start:ok", {}, 1.0, tmp_path / "a", env=env)
    second = run_warm("slow_start:spin", {"seconds": 0.2}, 1.0, tmp_path / "b", env=env)
    assert first["status"] == second["status"] == "ok", (first, second)
    assert second["warm"]["pid"] == first["warm"]["pid"]
    m = run_warm("slow_start:spin", {"seconds": 30}, 1.0, tmp_path / "c", env=env)
    assert _kind(m) == "timeout" and m["failure"]["elapsed_sec"] < 10
    assert m["failure"]["startup_sec"] < 0.5  # the warm child had nothing left to start


def test_recycled_after_max_trials_and_above_max_rss(tmp_path):
    policy = WarmPolicy(max_trials=3, max_rss_mb=None)
    runs = [_run("ok", tmp_path, policy=policy, x=1.0, name="n") for _ in range(7)]
    assert [m["warm"]["trial"] for m in runs] == [1, 2, 3, 1, 2, 3, 1]
    assert [m["warm"]["recycled"] for m in runs][:4] == [None, None, "max_trials", None]
    tiny = WarmPolicy(max_trials=100, max_rss_mb=1.0)  # every child is larger than 1 MiB
    m = _run("ok", tmp_path, policy=tiny, x=1.0, name="rss")
    assert m["warm"]["recycled"] == "max_rss_mb" and _gone(m["warm"]["pid"])


def test_another_environment_gets_another_child(tmp_path):
    a = _run("ok", tmp_path, x=1.0, name="a")
    b = run_warm(
        "trial_targets:ok", {"x": 1.0, "name": "b"}, 30, tmp_path / "t", env={**ENV, "X_LH": "1"}
    )
    assert a["warm"]["pid"] != b["warm"]["pid"] and _gone(a["warm"]["pid"])


def test_the_child_of_a_thread_ends_with_the_thread(tmp_path):
    out = {}
    thread = threading.Thread(target=lambda: out.update(_run("ok", tmp_path, x=1.0, name="t")))
    thread.start()
    thread.join()
    assert out["status"] == "ok" and _gone(out["warm"]["pid"])


WORKER = """
import os, sys, time
from pathlib import Path
from lambda_hat.trial.process.warm import run_warm
env = {"PYTHONPATH": os.environ["PYTHONPATH"]}
run_warm("trial_targets:ok", {"x": 1.0, "name": "w"}, 30, Path(sys.argv[1]) / "a", env=env)
print(os.getpid(), flush=True)
run_warm("trial_targets:native_hang", {"seconds": 120}, 300, Path(sys.argv[1]) / "b", env=env)
"""


@pytest.mark.parametrize("when", ["idle", "mid-trial"])
def test_the_child_dies_with_its_worker(tmp_path, when):
    """A worker killed with SIGKILL (no clean-up runs) takes its warm child along: an idle child
    sees EOF on its stdin, a busy one its watchdog sees the parent gone."""
    script = WORKER if when == "mid-trial" else WORKER.rsplit("run_warm", 1)[0] + "time.sleep(60)"
    env = {**os.environ, **ENV}
    worker = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(tmp_path)],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    children = []
    try:
        worker.stdout.readline()
        time.sleep(1.0)  # the second trial is running (mid-trial) or the child idles
        children = psutil.Process(worker.pid).children()
        assert len(children) == 1
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        assert _gone(children[0].pid, within=10.0)
    finally:
        kill_and_wait(
            [psutil.Process(worker.pid), *children] if worker.poll() is None else children
        )
        worker.wait()
        worker.stdout.close()


# --------------------------------------------------------------- real trials: the same numbers


HYPERPARAMS = {
    "sgld": {"eta0": 2e-5, "steps": 600},
    "vi": {"lr": 3e-3, "steps": 300, "drift_steps": 0},  # a 300-step fit fails the drift check
}


def _trial(artifacts: Path, tmp_path: Path, method: str, seed: int, where: str, warm_cfg):
    spec = resolve_problem({"model": "tiny", "data": "small", "seed": 1})
    payload = {
        "pid": problem_id(spec),
        "spec": as_dict(spec),
        "method": method,
        "hyperparams": HYPERPARAMS[method],
        "budget_sec": 120.0,
        "seed": seed,
        "ref": None,
        "artifacts": str(artifacts),
        "run_dir": str(tmp_path / where / f"{method}-{seed}"),
        "warm": warm_cfg,
    }
    return trial_app.execute_trial(payload)


def test_warm_trials_give_the_numbers_of_fresh_processes(tmp_path, artifacts, tiny_mlp_problem):
    trials = [("sgld", 0), ("vi", 1), ("sgld", 3)]
    with ThreadPoolExecutor(2) as pool:  # fresh processes are independent: two at a time
        fresh = list(pool.map(lambda t: _trial(artifacts, tmp_path, *t, "fresh", None), trials))
    hot = [_trial(artifacts, tmp_path, m, s, "warm", {"max_trials": 10}) for m, s in trials]
    assert len({m["warm"]["pid"] for m in hot}) == 1 and "warm" not in fresh[0]
    for f, w in zip(fresh, hot, strict=True):
        assert f["status"] == w["status"] == "ok", (f.get("failure"), w.get("failure"))
        assert w["llc_hat"] == f["llc_hat"] and w["llc_per_chain"] == f["llc_per_chain"]
        assert w["se_hat"] == f["se_hat"] and w["work"] == f["work"]
    assert hot[2]["compiled_programs"] == 0  # the second SGLD trial of the shape traces nothing
    assert hot[0]["startup_sec"] > 0.5 and hot[2]["startup_sec"] < 0.3
    assert all(f["startup_sec"] > 0.5 for f in fresh)
