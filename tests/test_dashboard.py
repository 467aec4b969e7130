"""``lambda-hat dashboard``: optuna-dashboard served on the study journal, read over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from lambda_hat import cli, dashboard
from lambda_hat.schema import ConfigError
from lambda_hat.study import storage as studies

CLI = [sys.executable, "-c", "import sys; from lambda_hat.cli import main; sys.exit(main())"]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        "problems: [{model: linear, data: small, seed: 0}]\nmethods: [sgld]\n"
        f"paths: {{results: {tmp_path / 'results'}, artifacts: {tmp_path / 'artifacts'}}}\n"
    )
    return config


def _journal_with_a_study(results: Path) -> None:
    """The journal a driver would leave: one study with two told trials."""
    storage = studies.open_storage_at(studies.journal_path(results))
    study = optuna.create_study(storage=storage, study_name="p_x:sgld", directions=["minimize"])
    for value in (0.25, 0.125):
        study.tell(study.ask({"eta0": optuna.distributions.FloatDistribution(0.1, 10.0)}), value)
    storage.backend.close()


def _get(url: str, deadline: float) -> dict:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return json.loads(reply.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_dashboard_serves_the_config_journal_over_http(tmp_path):
    _journal_with_a_study(tmp_path / "results")
    port = _free_port()
    proc = subprocess.Popen(
        CLI + ["dashboard", "--config", str(_config(tmp_path)), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/api/studies"
    try:
        (summary,) = _get(url, time.monotonic() + 120)["study_summaries"]
        detail = _get(f"{url}/{summary['study_id']}?after=0", time.monotonic() + 30)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert summary["study_name"] == "p_x:sgld"
    assert [t["values"] for t in detail["trials"]] == [[0.25], [0.125]]
    assert [t["values"] for t in detail["best_trials"]] == [[0.125]]
    assert f"open http://127.0.0.1:{port}/" in out
    assert f"ssh -N -L {port}:127.0.0.1:{port} user@login-node" in out


def test_dashboard_refuses_a_missing_journal_and_warns_off_loopback(tmp_path):
    args = cli.build_parser().parse_args(["dashboard", "--config", str(_config(tmp_path))])
    with pytest.raises(ConfigError, match="no study journal"):
        dashboard.dashboard_storage(args)
    args = cli.build_parser().parse_args(["dashboard", "--storage", "postgresql://u:pw@h/db"])
    assert dashboard.dashboard_storage(args) == "postgresql://u:pw@h/db"
    lines = dashboard.dashboard_lines("postgresql://u:pw@h/db", "0.0.0.0", 8080)
    assert "pw" not in lines[0] and lines[-1].startswith("WARNING")
    assert not any(line.startswith("WARNING") for line in dashboard.dashboard_lines("x", "::1", 1))


def test_dashboard_takes_a_run_yaml(tmp_path):
    """A run YAML's studies are those its ``from_study`` sets read."""
    results = tmp_path / "tuned"
    runs = tmp_path / "runs.yaml"
    runs.write_text(
        "problems: [{model: linear, data: small, seed: 0}]\n"
        f"methods: {{sgld: [{{from_study: {{results: {results}}}}}]}}\n"
    )
    args = cli.build_parser().parse_args(["dashboard", "--config", str(runs)])
    with pytest.raises(ConfigError, match="no study journal"):
        dashboard.dashboard_storage(args)
    _journal_with_a_study(results)
    assert dashboard.dashboard_storage(args) == str(studies.journal_path(results))
