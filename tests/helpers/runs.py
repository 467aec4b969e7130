"""``lambda-hat run`` without Parsl: a run YAML of the tiny problem, fixed references, and the
analytic stand-in for a method run (:mod:`lambda_hat.trial.synthetic`) on a thread pool.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import optuna

from lambda_hat.runs import stage as experiments
from lambda_hat.trial import app as trial_app

optuna.logging.set_verbosity(optuna.logging.WARNING)


SYNTHETIC = "lambda_hat.trial.synthetic:synthetic_trial"
PROBLEM = "{model: linear, data: small, teacher: _null, seed: 0}"
REFERENCE = "{chains: 2, draws: 200, warmup: 200, rhat_max: 1.1, ess_min: 50}"


def _config(
    tmp_path: Path,
    methods: str,
    seeds: str = "[0, 1]",
    results: str = "out",
    problems: str = f"[{PROBLEM}]",
    extra: str = "",
) -> Path:
    path = tmp_path / "experiments.yaml"
    path.write_text(
        f"problems: {problems}\nreference: {REFERENCE}\nmethods: {methods}\nseeds: {seeds}\n"
        f"budget_sec: 30\nisolate: false\n{extra}"
        f"paths: {{artifacts: {tmp_path / 'artifacts'}, results: {tmp_path / results}}}\n"
    )
    return path


def _done(value) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


def _fake_reference(payload: dict) -> Future:
    return _done(
        {
            "llc_ref": 1.5,
            "se_ref": 0.01,
            "llc_theory": 1.5,
            "beta": 0.2,
            "gamma": payload["gamma"],
            "gate": {"passed": True},
        }
    )


def synthetic_run(plan, pool) -> int:
    """``experiments.execute`` with the analytic trial on ``pool`` and fixed references."""

    def submit(payload: dict) -> Future:
        return pool.submit(trial_app.execute_trial, {**payload, "target": SYNTHETIC})

    return experiments.execute(plan, submit, _fake_reference)
