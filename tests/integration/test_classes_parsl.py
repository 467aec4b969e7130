"""A class study through ``parsl-optuna --local`` end to end: a class of three tiny linear
problems (train) and one held out, tuned with the analytic trial (its references are real):
class_trials.parquet, the recommendation in units, the held-out proof with the baseline
(transfer.parquet and its printed table); the same command again resumes with nothing to run;
a driver killed with member runs in flight resumes, reading back the runs that finished.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_REFERENCE
from helpers.procs import kill_leftovers

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


ARGS = ["--local", "--trial-target", "lambda_hat.trial.synthetic:synthetic_trial"]


def _run(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    args = ["--config", str(config), *ARGS]
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


@pytest.mark.slow  # ~1-2 min: its own tiny references, then a killed and a resumed driver
def test_a_killed_class_study_resumes_reading_back_its_finished_member_runs(tmp_path):
    """SIGKILL the driver with member runs in flight (each sleeps), then run it again: every
    setting finishes, the killed trials' stored member runs are read back, not run again."""
    root, config = tmp_path, _config(tmp_path)
    results = root / "results_killed"
    seeded = root / "seeded.yaml"  # another trial seed: none of the first run's runs apply
    seeded.write_text(config.read_text().replace("optuna:\n", "optuna:\n  seed: 7\n"))
    args = ["--config", str(seeded), *ARGS, "--results", str(results)]
    before = set((root / "artifacts" / "runs").glob("*/*/*/metrics.json"))
    env = {**os.environ, "LAMBDA_HAT_SYNTHETIC_SECONDS": "1.0"}
    proc = subprocess.Popen(CLI + args, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            runs = set((root / "artifacts" / "runs").glob("*/*/*/metrics.json"))
            if len(runs - before) >= 4:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the driver finished before it could be killed"
    finally:
        kill_leftovers(proc, str(root))
    proc.communicate(timeout=30)
    again = subprocess.run(
        CLI + args, cwd=root, env=env, capture_output=True, text=True, timeout=900
    )
    out = again.stdout + again.stderr
    assert again.returncode == 0, out
    assert "was interrupted; its setting is asked again" in out
    reused = int(re.search(r"finished trials \((\d+) member runs reused\)", out).group(1))
    assert reused >= 1, out
    trials = pd.read_parquet(results / layout.CLASS_TRIALS_TABLE)
    assert (
        trials[trials["state"] == "COMPLETE"]["trial_number"].nunique()
        + (trials[trials["state"] == "PRUNED"]["trial_number"].nunique())
        == 4
    )
