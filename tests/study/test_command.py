"""``parsl-optuna``'s command line: bad input exits 2 with one paragraph before any work, flags
override the config, a missing sampler package is a config error.
"""

from __future__ import annotations

import optuna
import pytest

from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.schema import ConfigError
from lambda_hat.study import command, pipeline
from lambda_hat.study import optuna_samplers as samplers

optuna.logging.set_verbosity(optuna.logging.WARNING)


BAD_CONFIGS = {
    "unknown method": ("methods: [sgld, hmcx]\n", "methods[1]"),
    "negative budget": (
        "methods: [sgld]\noptuna: {method_budget_sec: -5}\n",
        "optuna.method_budget_sec",
    ),
    "typo'd key": ("methods: [sgld]\noptuna: {max_trails: 5}\n", "optuna.max_trails"),
    "missing preset": ("methods: [sgld]\n", "problems[0].model"),
    "yaml syntax": ("methods: [sgld\n", "YAML syntax error"),
    "unknown search-space param": (
        "methods: [sgld]\noptuna: {search_space: {sgld: {eta: 0.1}}}\n",
        "optuna.search_space.sgld.eta",
    ),
    "bad range": (
        "methods: [sgld]\noptuna: {search_space: {sgld: {eta0: {low: 1, high: 0}}}}\n",
        "optuna.search_space.sgld.eta0",
    ),
    "grid over a continuous range": (
        "methods: [sgld]\noptuna: {sampler: grid}\n",
        "optuna.search_space.sgld.eta0",
    ),
    "stale stopping with two objectives": (
        "methods: [sgld]\noptuna: {stop_after_stale: 5, objectives: [error, runtime]}\n",
        "optuna.stop_after_stale",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exits_2_with_one_paragraph_and_writes_nothing(
    case, tmp_path, capsys, monkeypatch
):
    body, where = BAD_CONFIGS[case]
    model = "nosuchmodel" if case == "missing preset" else "linear"
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"problems: [{{model: {model}, data: small}}]\n" + body)
    monkeypatch.chdir(tmp_path)
    code = pipeline.main(["--config", str(cfg), "--local"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and where in err and "\n\n" not in err
    assert "Fix" in err or "fix" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]


def test_cli_flags_override_the_config_and_dry_run_writes_nothing(tmp_path, monkeypatch):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("problems: [{model: linear, data: small}]\nmethods: [sgld, vi]\n")
    monkeypatch.chdir(tmp_path)
    args = command.build_parser().parse_args(
        [
            "--config",
            str(cfg),
            "--max-trials",
            "7",
            "--batch-size",
            "3",
            "--hmc-budget",
            "30",
            "--method-budget",
            "20",
        ]
    )
    from lambda_hat.config.load import load_tuning

    exp = load_tuning(cfg, command.overrides(args))
    oc = exp.config.optuna
    assert (oc.max_trials, oc.batch_size, oc.method_budget_sec) == (7, 3, 20.0)
    assert exp.config.reference.budget_sec == 30.0
    assert pipeline.main(["--config", str(cfg), "--dry-run"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]


def test_missing_sampler_package_is_a_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cmaes" else real(name, *a)
    )
    with pytest.raises(ConfigError, match="optuna.sampler"):
        samplers.check_sampler(OptunaConfig(sampler="cmaes"))
