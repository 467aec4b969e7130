"""The README keeps its promises: two set-up commands, CI runs its test command, and the
pandas snippet runs as written against a Parquet table the workflow wrote."""

import re
import subprocess
from pathlib import Path

import pandas as pd
from test_workflow import _journal, _run, _task

from lambda_hat.workflow import execution, results

ROOT = Path(__file__).resolve().parents[1]
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


def test_readme_pandas_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    storage = _journal(tmp_path)
    tasks = [_task(storage, tmp_path, pid) for pid in ("p_a", "p_b")]
    _run(tasks, execution.execute_trial, max_trials=4, batch_size=2)
    rows = [r for t in tasks for r in results.study_rows(t.study, t.pid, t.method, t.ref)]
    results.write_parquet(rows, tmp_path / "results" / "optuna_trials.parquet")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(_block_after("<!-- parquet-snippet"), scope)
    best, curve = scope["best"], scope["curve"]
    assert isinstance(best, pd.DataFrame) and len(best) == 2
    for t in tasks:
        assert best.set_index("pid").loc[t.pid, "objective"] == t.best_value
        c = curve[curve.pid == t.pid].best_so_far.to_numpy()
        assert (c[1:] <= c[:-1]).all()
    assert "p_a" in capsys.readouterr().out
