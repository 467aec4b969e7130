"""A class study through ``parsl-optuna --local`` end to end: a class of three tiny linear
problems (train) and one held out, tuned with the analytic trial (its references are real):
class_trials.parquet, the recommendation in units, the held-out proof with the baseline
(transfer.parquet and its printed table); the same command again resumes with nothing to run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
from conftest import TINY_REFERENCE

from lambda_hat import layout

CLI = [
    sys.executable,
    "-c",
    "import sys; from lambda_hat.study.pipeline import main; sys.exit(main())",
]


def _config(root: Path) -> Path:
    path = root / "classes.yaml"
    path.write_text(
        f"""
classes:
  - name: lin
    train:
      - {{model: linear, data: small, teacher: _null, sweep: {{seed: [0, 1, 2]}}}}
    holdout:
      - {{model: linear, data: small, teacher: _null, seed: 3}}
    top_k: 1
    holdout_seeds: 1
methods: [sgld]
reference: {TINY_REFERENCE}
optuna:
  max_trials: 4
  batch_size: 2
  n_startup_trials: 2
  validate: {{top_k: 2, seeds: 1}}
  search_space: {{sgld: {{steps: 300, chains: 2, batch: 64, precond_type: none}}}}
paths: {{artifacts: {root / "artifacts"}, results: {root / "results"}}}
"""
    )
    return path


def _run(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    args = ["--config", str(config), "--local", "--trial-target"]
    args.append("lambda_hat.trial.synthetic:synthetic_trial")
    return subprocess.run(CLI + args, cwd=cwd, capture_output=True, text=True, timeout=900)


def test_a_class_study_recommends_in_units_proves_on_its_holdout_and_resumes(tmp_path):
    config = _config(tmp_path)
    first = _run(config, tmp_path)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out
    results = tmp_path / "results"
    trials = pd.read_parquet(results / layout.CLASS_TRIALS_TABLE)
    assert trials["class"].unique().tolist() == ["lin"] and trials["pid"].nunique() == 3
    assert (trials["eta0_units"] * trials["eps_max"] - trials["hp_eta0"]).abs().max() < 1e-12
    record = json.loads(layout.class_recommendation(results, "lin", "sgld").read_text())
    assert record["pick"] == "validated" and record["scaled"] == ["eta0"]
    assert 1e-3 <= record["validated"]["units"]["eta0"] <= 1.0  # the default range, ε_max units
    proof = pd.read_parquet(results / layout.TRANSFER_TABLE)
    assert proof["pid"].nunique() == 1 and proof["baseline"].sum() == 1
    assert proof["recommended"].sum() == 1 and (proof["status"] == "ok").all()
    assert "held-out proof" in out and "baseline" in out and "(recommended)" in out
    # the same command again: the study is complete and every run is stored
    again = _run(config, tmp_path)
    out2 = again.stdout + again.stderr
    assert again.returncode == 0, out2
    assert "0 submitted" in out2 and "4 finished trials" in out2
    assert len(pd.read_parquet(results / layout.CLASS_TRIALS_TABLE)) == len(trials)
