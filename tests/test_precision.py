"""Importing lambda_hat changes no global JAX setting; the processes lambda_hat owns compute in
float64 (lambda_hat/precision.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from trial_targets import ENV

from lambda_hat.trial.process import warm
from lambda_hat.trial.process.oneshot import run_isolated
from lambda_hat.trial.process.warm import run_warm

#: Imports every lambda_hat module a library caller might touch, then prints the setting.
IMPORT_ALL = (
    "import importlib, pkgutil, jax, lambda_hat\n"
    "for m in pkgutil.walk_packages(lambda_hat.__path__, 'lambda_hat.'):\n"
    "    if '.__main__' not in m.name: importlib.import_module(m.name)\n"
    "lambda_hat.estimate\n"
    "print(jax.config.jax_enable_x64)"
)


def _python(code: str, x64: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    if x64 is not None:
        env["JAX_ENABLE_X64"] = x64
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("x64", "expected"),
    [
        (None, "False"),
        pytest.param("0", "False", marks=pytest.mark.slow),
        pytest.param("1", "True", marks=pytest.mark.slow),
    ],
)
def test_importing_lambda_hat_leaves_x64_as_it_found_it(x64, expected):
    assert _python(IMPORT_ALL, x64) == expected


@pytest.mark.parametrize("entry", ["cli", "study.pipeline"])
def test_the_commands_switch_float64_on(entry):
    code = (
        f"import jax, contextlib\nfrom lambda_hat.{entry} import main\n"
        "with contextlib.suppress(SystemExit): main(['--help'])\n"
        "print(jax.config.jax_enable_x64)"
    )
    assert _python(code, None) == "True"


def test_explicit_call_and_the_worker_environment_switch_it_on():
    code = "import jax, lambda_hat\nlambda_hat.enable_x64()\nprint(jax.config.jax_enable_x64)"
    assert _python(code, None) == "True"
    code = (
        "import jax\nfrom lambda_hat.parallel import worker\n"
        "worker.apply_env(worker.worker_env('/tmp'))\nprint(jax.config.jax_enable_x64)"
    )
    assert _python(code, None) == "True"


@pytest.mark.parametrize("run", [run_isolated, run_warm], ids=["oneshot", "warm"])
def test_trial_processes_compute_in_float64(run, tmp_path):
    try:
        m = run("trial_targets:precision", {}, 60.0, tmp_path, env={**ENV, "JAX_ENABLE_X64": "0"})
    finally:
        warm.shutdown()
    assert (m["x64"], m["dtype"]) == (True, "float64")
