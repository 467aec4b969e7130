"""README's "Config format" lists every key a user can set, with the true defaults.

The schema (``TuningConfig`` and every schema class nested in it, the preset groups of
``ProblemSpec``, and ``RunsConfig`` for ``lambda-hat run``) is walked field by field: a key the
README leaves out, or one it documents that no longer exists, fails here.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import yaml

from lambda_hat import methods
from lambda_hat.config.load import load_runs
from lambda_hat.config.runs import FromStudy, HyperSet, RunsConfig
from lambda_hat.config.tuning import TuningConfig
from lambda_hat.problem.spec import PRESET_GROUPS, ProblemSpec, preset_names, resolve_problem
from lambda_hat.schema import keys_of, validate

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
SECTION = README.split("## Config format\n", 1)[1].split("\n## ", 1)[0]


def _block(marker: str) -> str:
    tail = SECTION.split(f"<!-- {marker}", 1)[1]
    return re.search(r"```yaml\n(.*?)```", tail, re.S).group(1)


def _schema_of(tp) -> type | None:
    """The schema class a field holds (directly, optionally or as list items), else None."""
    tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
    if typing.get_origin(tp) is list:
        tp = typing.get_args(tp)[0]
    return tp if dataclasses.is_dataclass(tp) else None


def _key_mismatches(block: dict, cls: type, where: str = "") -> list[str]:
    """Schema keys missing from ``block`` and documented keys the schema lacks, recursively."""
    fields = keys_of(cls)
    at = f"{where}." if where else ""
    out = [f"{at}{k} is documented but not in {cls.__name__}" for k in block if k not in fields]
    for name, info in fields.items():
        sub = _schema_of(info.annotation)
        if name not in block:
            out.append(f"{at}{name} ({cls.__name__}) is not documented")
        elif sub and isinstance(block[name], list):
            for i, item in enumerate(block[name]):
                out += _key_mismatches(item, sub, f"{at}{name}[{i}]")
        elif sub:
            out += _key_mismatches(block[name], sub, f"{at}{name}")
    return out


def _preset_groups() -> dict[str, type]:
    return {g: ProblemSpec.__pydantic_fields__[g].annotation for g in PRESET_GROUPS}


def test_every_experiment_key_is_documented():
    block = yaml.safe_load(_block("config-example"))
    assert _key_mismatches(block, TuningConfig) == []
    assert {"reference", "optuna", "paths", "problems", "methods"} <= set(block)


def test_every_preset_key_is_documented():
    block = yaml.safe_load(_block("preset-fields"))
    assert set(block) == set(PRESET_GROUPS)
    for group, cls in _preset_groups().items():
        assert _key_mismatches(block[group], cls, group) == []


def test_the_walk_sees_a_missing_nested_key():
    block = yaml.safe_load(_block("config-example"))
    del block["optuna"]["pruner_percentile"], block["problems"][0]["overrides"]
    block["paths"]["result"] = "results"
    assert sorted(_key_mismatches(block, TuningConfig)) == [
        "optuna.pruner_percentile (OptunaConfig) is not documented",
        "paths.result is documented but not in PathsConfig",
        "problems[0].overrides (ProblemEntry) is not documented",
    ]
    block = yaml.safe_load(_block("preset-fields"))
    del block["model"]["train"]["schedule"]
    assert _key_mismatches(block["model"], _preset_groups()["model"], "model") == [
        "model.train.schedule (TrainConfig) is not documented"
    ]


def test_documented_defaults_are_the_defaults():
    block = yaml.safe_load(_block("config-example"))
    cfg = validate(block, TuningConfig, "README")
    for name in ("reference", "optuna", "paths"):
        assert getattr(cfg, name) == type(getattr(cfg, name))(), name
    presets = yaml.safe_load(_block("preset-fields"))
    for group, cls in _preset_groups().items():
        assert validate(presets[group], cls, group) == cls(), group


def test_example_problems_resolve_and_every_preset_is_named():
    text = _block("config-example")
    block = yaml.safe_load(text)
    spec = resolve_problem(block["problems"][0], "README")
    assert spec.model.depth == 3 and spec.model.target_params == 5000 and spec.seed == 42
    assert list(block["methods"]) == [m for m in methods.METHODS if m in block["methods"]]
    for group in PRESET_GROUPS:
        comment = re.search(rf"^\s*-?\s*{group}: \S+\s+# (.*)$", text, re.M).group(1)
        assert set(preset_names(group)) <= set(re.findall(r"[\w]+", comment)), group


def test_search_space_example_names_real_hyperparameters():
    block = yaml.safe_load(_block("optuna-example"))["optuna"]
    for key in ("search_space", "enqueue"):
        for method, entries in block[key].items():
            known = set(methods.default_hyperparams(method))
            for entry in entries if isinstance(entries, list) else [entries]:
                assert set(entry) <= known, (key, method, set(entry) - known)


def _walk(block: dict, cls: type, where: str = "") -> list[str]:
    """Keys of ``block`` the schema class lacks, and its fields ``block`` leaves out."""
    fields = keys_of(cls)
    out = [f"{where}{k} is not in {cls.__name__}" for k in block if k not in fields]
    return out + [f"{where}{k} is not documented" for k in fields if k not in block]


def test_readme_documents_every_experiments_key_with_its_default(tmp_path):
    readme = (REPO / "README.md").read_text().split("## Config format\n", 1)[1]
    text = readme.split("<!-- experiments-example", 1)[1].split("```yaml\n", 1)[1]
    block = yaml.safe_load(text.split("```", 1)[0])
    (sgld,) = block["methods"]["sgld"]
    assert _walk(block, RunsConfig) == []
    assert set(block["methods"]) == {"sgld", "vi"}
    assert _walk(sgld, HyperSet) == [] and _walk(sgld["from_study"], FromStudy) == []
    defaults = RunsConfig(problems=[])
    for key in ("seeds", "budget_sec", "allow_failed_reference", "isolate", "timeout_grace"):
        assert block[key] == getattr(defaults, key), key
    assert block["infrastructure_retries"] == defaults.infrastructure_retries
    defaults = dataclasses.asdict(FromStudy())
    assert sgld["from_study"] == {"class": defaults.pop("class_"), **defaults}
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(block))
    assert load_runs(path).config.methods["vi"][0].fixed == {"M": 4}
