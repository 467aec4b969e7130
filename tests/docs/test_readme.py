"""The README keeps its promises: two set-up commands, CI runs its test command, the usage
section gives the two steps in order, and the pandas snippets run as written against Parquet
tables the workflow wrote."""

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from helpers.runs import _config, synthetic_run
from helpers.study import _journal, _run, _task
from optuna.distributions import FloatDistribution, IntDistribution

from lambda_hat import layout
from lambda_hat.config.load import load_runs, load_tuning
from lambda_hat.results import parquet
from lambda_hat.results import tables as results
from lambda_hat.runs import stage as experiments
from lambda_hat.trial import app as trial_app

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _block_after(marker: str) -> str:
    tail = README.split(marker, 1)[1]
    return re.search(r"```\w*\n(.*?)```", tail, re.S).group(1)


def test_exactly_two_setup_commands_and_ci_runs_the_test_one():
    setup = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, re.S)
    assert len(commands) == 2
    assert "parsl-optuna --config config/optuna_demo.yaml --local" in commands[0]
    assert "pytest" in commands[1]
    out = subprocess.run(
        ["bash", ".ci/run", "--print"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == commands[1].strip()


def test_usage_gives_the_two_steps_in_order():
    usage = README.split("## Usage", 1)[1].split("\n## ", 1)[0]
    tune = usage.index("parsl-optuna --config config/optuna_demo.yaml --local")
    run = usage.index("lambda-hat run --config config/experiments.yaml --local")
    assert tune < run
    assert (ROOT / "config" / "experiments.yaml").is_file()


def _tuned_tables(tmp_path):
    """optuna_trials.parquet of two real studies (the driver, the worker's app body, the
    analytic stand-in for a method run), with the problem columns of two real problems."""
    storage = _journal(tmp_path)
    exp = load_tuning(ROOT / "config" / "tiny_test.yaml")
    problems = results.problem_table(exp.config.problems, exp.problems)
    tasks = []
    for pid in problems:
        t = _task(storage, tmp_path, pid)
        t.space = {
            "eta0": FloatDistribution(1e-5, 1e-2, log=True),
            "steps": IntDistribution(100, 400),
        }
        tasks.append(t)
    _run(tasks, trial_app.execute_trial, max_trials=4, batch_size=2)
    rows = []
    for t in tasks:
        rows += results.study_rows(t.study, t.pid, t.method, t.ref, problem=problems[t.pid])
    parquet.write_parquet(rows, tmp_path / "results" / layout.TRIALS_TABLE)
    return tasks, problems


def test_readme_pandas_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    tasks, problems = _tuned_tables(tmp_path)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(_block_after("<!-- parquet-snippet"), scope)
    best, curve, df = scope["best"], scope["curve"], scope["df"]
    assert isinstance(best, pd.DataFrame) and len(best) == 2
    assert len(df) == 4 * len(tasks) and set(best.pid) == set(problems)  # every trial a row
    for t in tasks:
        assert best.set_index("pid").loc[t.pid, "objective"] == t.counts.best_value
        assert best.set_index("pid").loc[t.pid, "label"] == problems[t.pid]["label"]
        c = curve[curve.pid == t.pid].best_so_far.to_numpy()
        assert (c[1:] <= c[:-1]).all() and c[-1] == pytest.approx(t.counts.best_value)
    # the columns the snippets read, and their values
    assert {"hp_eta0", "hp_steps", "hyperparams", "trial_id", "llc_ref", "runtime_sec"} <= set(df)
    assert df.hyperparams.iloc[0]["eta0"] == df.hp_eta0.iloc[0]
    assert df.trial_id.str.startswith("r_").all()
    assert (df.error == df.llc_hat - df.llc_ref).all()
    top = df[df.method == "sgld"].nsmallest(1, "objective")  # the seed-style snippet
    assert top.objective.iloc[0] == min(t.counts.best_value for t in tasks)
    assert df.hp_steps.dtype == "Int64" and top.hp_steps.iloc[0] == int(top.hp_steps.iloc[0])
    out = capsys.readouterr().out
    assert "linear·s0" in out and "linear·s1" in out and out.count("trial_number") == 1
    assert f"{top.hp_eta0.iloc[0]:.6f}" in out


def test_readme_llc_runs_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    config = _config(tmp_path, "{sgld: [{fixed: {eta0: 1.0e-4}}], vi: [{}]}", "[0, 1]", "results")
    plan = experiments.plan_experiments(load_runs(config))
    with ThreadPoolExecutor(2) as pool:
        assert synthetic_run(plan, pool) == 0
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(_block_after("<!-- llc-runs-snippet"), scope)
    per_set, runs = scope["per_set"], scope["runs"]
    assert len(per_set) == 2 and (per_set.n == 2).all()
    for (_, method, _), row in per_set.iterrows():
        llc = runs[runs.method == method].llc_hat
        assert row["mean"] == pytest.approx(llc.mean()) and row.ref == 1.5
    assert "linear·s0" in capsys.readouterr().out


@pytest.mark.slow
def test_the_notebook_example_runs_and_reads_d_over_2(capsys):
    namespace: dict = {}
    exec(_block_after("<!-- notebook-example"), namespace)
    res = namespace["res"]
    assert res.status == "ok" and abs(res.llc_hat - 1.5) < 3 * res.se_hat, res
    assert res.loss.shape[0] == 4 and res.metrics["step_limit"]["converged"]
