"""Tune one tiny problem with ``parsl-optuna`` and run ``lambda-hat run`` on its results, both
through the real Parsl local executor; the README's pandas snippets run on the real tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from helpers.runs import PROBLEM, REFERENCE

from lambda_hat import layout

optuna.logging.set_verbosity(optuna.logging.WARNING)

REPO = Path(__file__).resolve().parents[2]


CLI = [sys.executable, "-c", "import sys; from lambda_hat.cli import main; sys.exit(main())"]
TUNE = [
    sys.executable,
    "-c",
    "import sys; from lambda_hat.study.pipeline import main; sys.exit(main())",
]


@pytest.mark.slow  # tunes one tiny problem (2 trials per method) and runs it: a few minutes
def test_tune_then_run_through_parsl(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tuning = tmp_path / "tune.yaml"
    tuning.write_text(
        f"problems: [{PROBLEM}]\nmethods: [sgld]\nreference: {REFERENCE}\n"
        "optuna: {max_trials: 2, batch_size: 2, method_budget_sec: 60, n_startup_trials: 2, "
        "validate: {top_k: 1, seeds: 1}, search_space: {sgld: {steps: 300, chains: 2, "
        "batch: 64, precond_type: none, eta0: {low: 1.0e-5, high: 1.0e-3, log: true}}}}\n"
        "paths: {artifacts: artifacts, results: results}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    out = subprocess.run([*TUNE, "--config", str(tuning), "--local"], **run)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    config = tmp_path / "experiments.yaml"
    config.write_text(
        f"problems: [{PROBLEM}]\nreference: {REFERENCE}\nseeds: [0, 1, 2]\nbudget_sec: 60\n"
        "methods: {sgld: [{from_study: {results: results, pick: validated}}, "
        "{from_study: {results: results, pick: best}}]}\n"
        "paths: {artifacts: artifacts, results: results}\n"
    )
    out = subprocess.run([*CLI, "run", "--config", str(config), "--local"], **run)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "results" / layout.RUNS_TABLE)
    trials = pd.read_parquet(tmp_path / "results" / "optuna_trials.parquet")
    assert len(df) == 2 * 3 and (df.status == "ok").all()
    best = trials[trials.status == "ok"].nsmallest(1, "objective").iloc[0]
    from_best = df[df.source_pick == "best"]
    assert (from_best.source_trial == best.trial_number).all()
    assert (from_best.hp_eta0 == best.hp_eta0).all() and (df.hp_steps == 300).all()
    assert from_best[from_best.seed == 0].reused.all()  # the tuning trial's own run
    assert df.llc_ref.notna().all() and df.rhat.notna().all() and df.fge.gt(0).all()
    assert "linear·s0:sgld" in out.stdout
    readme = (REPO / "README.md").read_text()
    for marker in ("<!-- parquet-snippet", "<!-- llc-runs-snippet"):  # as written, real tables
        code = readme.split(marker, 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
        exec(code, {"__name__": "readme"})  # runs in tmp_path (the test changed directory)
    again = subprocess.run([*CLI, "run", "--config", str(config), "--local"], **run)
    assert again.returncode == 0
    assert pd.read_parquet(tmp_path / "results" / layout.RUNS_TABLE).reused.all()
