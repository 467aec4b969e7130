"""Problems from your code end to end: an Equinox and a Flax NNX network returned by a source in
the config's folder, tuned by ``parsl-optuna --local`` (HMC references through the gate, SGLD
trials, validation) and run by ``lambda-hat run --local`` (SGLD from the study, VI and MCLMC
fixed) through the real Parsl local executor: workers and trial processes import the module
from the folder the spec carries; the source itself is called on the driver only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lambda_hat import layout

REPO = Path(__file__).resolve().parents[2]
HELPERS = REPO / "tests" / "helpers"
TUNE = [
    sys.executable,
    "-c",
    "import sys, lambda_hat; lambda_hat.enable_x64(); "
    "from lambda_hat.study.pipeline import main; sys.exit(main())",
]
CLI = [sys.executable, "-c", "import sys; from lambda_hat.cli import main; sys.exit(main())"]
PROBLEMS = (
    "problems: [{source: 'user_models:eqx_mlp', args: {steps: 2000}, seed: 0}, "
    "{source: 'user_models:nnx_mlp', args: {steps: 2000}, seed: 0}]\n"
    "reference: {chains: 2, draws: 200, warmup: 200, rhat_max: 1.1, ess_min: 50}\n"
    "paths: {artifacts: artifacts, results: results}\n"
)


@pytest.mark.slow  # two references, 2 × 2 SGLD trials, validation, 6 runs: about 2.5 minutes
def test_equinox_and_flax_sources_tune_and_run_through_parsl(tmp_path):
    pytest.importorskip("equinox")
    pytest.importorskip("flax")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    shutil.copy(HELPERS / "user_models.py", cfg / "user_models.py")
    (cfg / "tune.yaml").write_text(
        PROBLEMS + "methods: [sgld]\n"
        "optuna: {max_trials: 2, batch_size: 2, method_budget_sec: 120, n_startup_trials: 2, "
        "validate: {top_k: 1, seeds: 1}, search_space: {sgld: {steps: 300, chains: 2, "
        "batch: 64, precond_type: none, eta0: {low: 1.0e-5, high: 1.0e-3, log: true}}}}\n"
    )
    (cfg / "run.yaml").write_text(
        PROBLEMS + "seeds: [0]\nbudget_sec: 120\nmethods:\n"
        "  sgld: [{from_study: {results: results, pick: validated}}]\n"
        "  vi: [{fixed: {steps: 300, chains: 2, M: 1, r: 1, batch_size: 64, drift_steps: 0}}]\n"
        "  mclmc: [{fixed: {steps: 300, chains: 2}}]\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the folder is on no path
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    out = subprocess.run([*TUNE, "--config", str(cfg / "tune.yaml"), "--local"], **run)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "results" / "optuna_trials.parquet")
    assert set(trials.label.str.split(":").str[0].str.split("·").str[0]) == {"eqx_mlp", "nnx_mlp"}
    assert (trials.status == "ok").all() and trials.llc_ref.notna().all()
    refs = list((tmp_path / "artifacts" / "problems").glob("*/ref.json"))
    assert len(refs) == 2
    out = subprocess.run([*CLI, "run", "--config", str(cfg / "run.yaml"), "--local"], **run)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "results" / layout.RUNS_TABLE)
    assert len(df) == 6 and set(df.method) == {"sgld", "vi", "mclmc"}
    assert df.llc_hat.notna().all() and df.llc_ref.notna().all() and (df.d == 13).all()
    assert "calling the source" not in out.stdout + out.stderr
