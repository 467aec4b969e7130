"""Shared fixtures: tiny problems built under a per-session temporary artifacts directory, and
a session guard that fails the run when a test leaves a process behind."""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import jax
import numpy as np
import psutil
import pytest

import lambda_hat
from lambda_hat import cli
from lambda_hat.problem.build import build_problem
from lambda_hat.problem.spec import resolve_problem

#: The tests are a process lambda_hat owns: float64 from the start (``cli.main`` would switch it
#: on anyway, and a test's precision must not depend on which test ran first).
lambda_hat.enable_x64()

#: Set in this process, so inherited by everything the tests start (SLURM jobs included).
SESSION_ENV = "LAMBDA_HAT_TEST_SESSION"
os.environ[SESSION_ENV] = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
LEFTOVER_GRACE_SEC = 10.0


def session_processes(basetemp: Path) -> list[psutil.Process]:
    """Live processes this test session started, wherever they were reparented.

    Three ways to recognize one: a descendant of this process; the session's marker in its
    environment (a process whose parent died is reparented to init); its working directory
    under the session's temporary directory (Parsl's interchange renames its process title,
    which overwrites its environment, but keeps the driver's working directory).
    """
    me, marker, base = os.getpid(), os.environ[SESSION_ENV], str(basetemp)
    found = {p.pid: p for p in psutil.Process(me).children(recursive=True)}
    for p in psutil.process_iter(["cwd", "environ"]):
        env, cwd = p.info["environ"] or {}, p.info["cwd"] or ""
        if env.get(SESSION_ENV) == marker or cwd == base or cwd.startswith(base + os.sep):
            found.setdefault(p.pid, p)
    found.pop(me, None)
    alive = []
    for p in found.values():
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def describe(p: psutil.Process) -> str:
    try:
        with p.oneshot():
            cmd = " ".join(p.cmdline())[:200] or p.name()
            return f"pid {p.pid} (parent {p.ppid()}, cwd {p.cwd()}): {cmd}"
    except psutil.Error:
        return f"pid {p.pid} (gone)"


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(tmp_path_factory):
    """After the last test: every process the session started must have ended. Stragglers get
    ``LEFTOVER_GRACE_SEC`` to exit, then are killed, and the run fails with their list."""
    basetemp = tmp_path_factory.getbasetemp()
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE_SEC
    left = session_processes(basetemp)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = session_processes(basetemp)
    if not left:
        return
    report = [describe(p) for p in left]
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=5)
    pytest.fail(
        f"{len(left)} process(es) started by the tests were still running "
        f"{LEFTOVER_GRACE_SEC:g} s after the last test (now killed):\n  " + "\n  ".join(report),
        pytrace=False,
    )


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def linear_problem(artifacts):
    """Linear regression 3 -> 1, n = 200: L_n is exactly quadratic."""
    return build_problem(
        resolve_problem({"model": "linear", "data": "small", "seed": 0}), artifacts
    )


@pytest.fixture(scope="session")
def linear_problem_2(artifacts):
    """A different linear problem: 5 -> 2 (d = 10), n = 400, noise 0.3, uniform inputs."""
    spec = resolve_problem(
        {
            "model": "linear",
            "data": "small",
            "seed": 3,
            "overrides": {
                "data": {
                    "input_dim": 5,
                    "output_dim": 2,
                    "n": 400,
                    "noise": 0.3,
                    "x_dist": "uniform",
                }
            },
        }
    )
    return build_problem(spec, artifacts)


@pytest.fixture(scope="session")
def tiny_mlp_problem(artifacts):
    """A 3-4-1 tanh MLP on 200 samples (d = 21)."""
    return build_problem(resolve_problem({"model": "tiny", "data": "small", "seed": 1}), artifacts)


@pytest.fixture(scope="session")
def linear(linear_problem):
    """(problem, its posterior at the default β and γ, the exact Hessian of L_n at w*)."""
    post = linear_problem.posterior()
    H = np.asarray(jax.hessian(post.loss)(linear_problem.w_star))
    return linear_problem, post, H


#: The one tiny problem, and its short HMC reference (2 x 200 draws, the gate relaxed to match),
#: of the tests that drive ``parsl-optuna`` with synthetic trials.
TINY_PROBLEM = "{model: linear, data: small, teacher: _null, seed: 0}"
TINY_REFERENCE = "{chains: 2, draws: 200, warmup: 200, rhat_max: 1.1, ess_min: 50}"


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory):
    """Copy ``TINY_PROBLEM`` with its ``TINY_REFERENCE`` into an artifacts directory:
    ``tiny_reference(artifacts)``. The reference is computed once per session (``lambda-hat
    reference``); each test gets its own copy, so its trial runs stay apart from others'."""
    root = tmp_path_factory.mktemp("tiny_reference")
    config = root / "config.yaml"
    config.write_text(
        f"problems: [{TINY_PROBLEM}]\nmethods: [sgld]\nreference: {TINY_REFERENCE}\n"
        f"paths: {{artifacts: {root / 'artifacts'}, results: {root / 'results'}}}\n"
    )
    assert cli.main(["reference", "--config", str(config)]) == 0

    def copy_into(artifacts: Path) -> Path:
        shutil.copytree(root / "artifacts" / "problems", artifacts / "problems")
        return artifacts

    return copy_into


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A config folder holding tests/helpers/user_models.py, for ``source:`` problems (the
    module and the source cache forgotten after the test)."""
    from lambda_hat.problem import source as source_mod

    shutil.copy(Path(__file__).parent / "helpers" / "user_models.py", tmp_path / "user_models.py")
    monkeypatch.setattr(source_mod, "_CACHE", {})
    yield tmp_path
    sys.modules.pop("user_models", None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))
