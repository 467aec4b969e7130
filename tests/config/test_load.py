"""Config loading: helpful errors before any work, config-local presets, either YAML kind, and
the bundled configs.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest

from lambda_hat import layout
from lambda_hat.config.load import load_config, load_runs, load_tuning
from lambda_hat.config.runs import RunsConfig
from lambda_hat.problem.build import problem_id
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.schema import ConfigError


def write(tmp_path, text, name="x.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_typo_in_override_is_rejected_with_valid_keys(tmp_path):
    cfg = write(
        tmp_path,
        """
        problems:
          - {model: small, data: base, overrides: {model: {depht: 3}}}
    """,
    )
    with pytest.raises(ConfigError) as exc:
        load_tuning(cfg)
    msg = str(exc.value)
    assert "problems[0].overrides.model.depht" in msg
    assert "Did you mean 'depth'" in msg
    assert "target_params" in msg  # valid keys are listed


def test_wrong_type_names_field_and_value(tmp_path):
    cfg = write(
        tmp_path,
        """
        problems: [{model: small, overrides: {data: {n: lots}}}]
    """,
    )
    with pytest.raises(ConfigError, match=r"problems\[0\]\.overrides\.data\.n.*'lots'"):
        load_tuning(cfg)


def test_missing_preset_lists_available(tmp_path):
    cfg = write(tmp_path, "problems: [{model: smal}]\n")
    with pytest.raises(ConfigError, match=r"problems\[0\]\.model.*Did you mean 'small'"):
        load_tuning(cfg)


def test_yaml_syntax_error_gives_line(tmp_path):
    cfg = write(tmp_path, "problems:\n  - {model: small\n")
    with pytest.raises(ConfigError, match="YAML syntax error at line"):
        load_tuning(cfg)


def test_range_and_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r"reference\.chains.*>= 2"):
        load_tuning(write(tmp_path, "problems: [{}]\nreference: {chains: 1}\n"))
    with pytest.raises(ConfigError, match="refrence.*Did you mean 'reference'"):
        load_tuning(write(tmp_path, "problems: [{}]\nrefrence: {chains: 4}\n"))


def test_overrides_deep_merge_and_config_local_presets(tmp_path):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    write(tmp_path / "conf" / "model", "family: mlp\ndepth: 1\nwidths: [2]\n", "mine.yaml")
    cfg = write(
        tmp_path,
        """
        problems:
          - {model: small, overrides: {model: {depth: 3, train: {lr: 0.5}}}}
          - {model: mine}
    """,
    )
    exp = load_tuning(cfg)
    a, b = exp.problems
    assert a.model.depth == 3 and a.model.train.lr == 0.5
    assert a.model.train.steps == 6000  # untouched sibling kept by the deep merge
    assert b.model.widths == [2]


def test_yaml_1_1_scalars_keep_their_meaning(tmp_path):
    """PyYAML reads 1e3 as a string: still a number, also for an integer; bools never count."""
    spec = resolve_problem(
        {"model": "tiny", "overrides": {"model": {"widths": [3.0, "2"], "train": {"steps": "1e3"}}}}
    )
    assert spec.model.train.steps == 1000 and type(spec.model.train.steps) is int
    assert spec.model.widths == [3, 2] and all(type(w) is int for w in spec.model.widths)
    bad = [
        ({"depth": True}, "depth: got True, expected an integer"),
        ({"bias": 1}, "bias: got 1, expected true or false"),
        ({"bias": "yes"}, "bias: got 'yes', expected true or false"),
        ({"widths": [True]}, r"widths\[0\]: got True, expected an integer"),
    ]
    for model, message in bad:
        with pytest.raises(ConfigError, match=rf"problems\[0\]\.overrides\.model\.{message}"):
            resolve_problem({"model": "tiny", "overrides": {"model": model}}, "problems[0]")
    # An empty section (``reference:`` with nothing under it) means all defaults.
    exp = load_tuning(write(tmp_path, "problems: [{}]\nreference:\noptuna:\n"))
    assert exp.config.reference.chains == 4 and exp.config.optuna.max_trials == 100


def test_error_names_bound_help_and_fix_and_reports_unknown_keys_first(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_tuning(write(tmp_path, "problems: [{}]\noptuna: {pruner_percentile: '1e3'}\n"))
    assert str(exc.value).endswith(
        "optuna.pruner_percentile: got 1000.0, must be < 100. Fix: set a value < 100 "
        "(percentile pruner: keep trials within this best percentage at a step)."
    )
    text = "problems: [{model: nope}]\nreference: {chains: 1, zzz: 1}\npaths: {results: 3}\n"
    with pytest.raises(ConfigError, match=r"reference\.zzz: unknown key\. Valid keys here: chains"):
        load_tuning(write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"methods\[1\]: got 'sgdl'.*Did you mean 'sgld'"):
        load_tuning(write(tmp_path, "problems: [{}]\nmethods: [vi, sgdl]\n"))


def test_either_kind_loads_and_a_mix_names_the_keys(tmp_path):
    """``load_config`` reads a tuning YAML or a run YAML (the same problems, reference and
    paths); a file with keys of both kinds, or a run YAML given to the tuning loader, names the
    keys and the command that takes them."""
    common = "problems: [{model: linear, data: small, seed: 0}]\nreference: {chains: 2}\n"
    tuning = load_config(write(tmp_path, common + "methods: [sgld]\n"))
    runs = write(tmp_path, common + "methods: {sgld: [{from_study: {results: out}}]}\n", "r.yaml")
    loaded = load_config(runs)
    assert (tuning.kind, loaded.kind) == ("tuning", "runs")
    assert [problem_id(p) for p in loaded.problems] == [problem_id(p) for p in tuning.problems]
    assert loaded.reference == tuning.reference and loaded.reference.chains == 2
    assert loaded.storage == str(layout.journal_path("out"))
    assert tuning.storage == str(layout.journal_path("results")) and loaded.tuning is None
    assert load_config(write(tmp_path, common, "only.yaml")).kind == "tuning"
    with pytest.raises(ConfigError, match=r"seeds: this file mixes .*seeds.*optuna") as err:
        load_config(write(tmp_path, common + "optuna: {}\nseeds: [0]\n", "mix.yaml"))
    assert err.value.source.endswith("mix.yaml")
    with pytest.raises(ConfigError, match=r"methods: .*lambda-hat run --config"):
        load_tuning(runs)


optuna.logging.set_verbosity(optuna.logging.WARNING)

REPO = Path(__file__).resolve().parents[2]


def test_the_bundled_config_runs_the_demos_problems_against_its_references():
    exp = load_runs(REPO / "config" / "experiments.yaml")
    demo = load_tuning(REPO / "config" / "optuna_demo.yaml")
    assert [problem_id(p) for p in exp.problems] == [problem_id(p) for p in demo.problems]
    assert exp.config.reference == demo.config.reference
    assert exp.config.paths.results == demo.config.paths.results
    assert exp.config.budget_sec == demo.config.optuna.method_budget_sec  # tuned runs reused
    for method in demo.config.methods:
        (hs,) = exp.config.methods[method]
        assert hs.from_study.results == demo.config.paths.results
        assert hs.from_study.pick == "validated" and demo.config.optuna.validate is not None
    assert isinstance(exp.config, RunsConfig)
