"""A source's checkpoints (LLC over training): one problem per checkpoint, pids from their
parameters, ``reference: none`` unless written, a selection by step, and a bad checkpoint list
a ConfigError naming the field before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from lambda_hat.config.load import load_runs
from lambda_hat.problem.build import problem_id
from lambda_hat.problem.spec import resolve_entries, resolve_problem
from lambda_hat.schema import ConfigError

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
CKPT = "user_models:checkpointed"


def _entries(folder: Path, **entry):
    return resolve_entries({"source": CKPT, **entry}, "problems[0]", folder=folder)


def test_each_checkpoint_is_a_problem_with_its_step_losses_and_pid(folder):
    pairs = _entries(folder)
    steps = [s.source.step for _, s in pairs]
    assert steps == [2, 20, 400] and [e.checkpoints for e, _ in pairs] == [[2], [20], [400]]
    assert [e.reference for e, _ in pairs] == ["none"] * 3
    assert len({problem_id(s) for _, s in pairs}) == 3
    assert len({s.source.digest for _, s in pairs}) == 3  # the digest holds the parameters
    src = [s.source for _, s in pairs]
    assert src[0].train_loss > src[1].train_loss > src[2].train_loss > 0
    assert src[0].shift_sd > 0.5 > src[2].shift_sd  # early ones not blocked, shift recorded
    (again,) = _entries(folder, checkpoints=[20], reference="hmc")
    assert problem_id(again[1]) == problem_id(pairs[1][1]) and again[0].reference == "hmc"
    # a class member (or any single problem) names one checkpoint
    one = resolve_problem({"source": CKPT, "checkpoints": [400]}, "m", folder=folder)
    assert problem_id(one) == problem_id(pairs[2][1])


def test_a_config_lists_one_entry_per_checkpoint(folder):
    path = folder / "run.yaml"
    path.write_text(
        f'problems: [{{source: "{CKPT}"}}, {{model: linear, data: small}}]\n'
        "methods: {vi: [{}]}\nseeds: [0]\n"
    )
    runs = load_runs(path)
    assert len(runs.problems) == len(runs.config.problems) == 4
    assert [runs.kinds[problem_id(s)] for s in runs.problems] == ["none"] * 3 + ["hmc"]


BAD = [
    ({"args": {"bad": "empty"}}, "problems[0].source.checkpoints", "is empty"),
    ({"args": {"bad": "order"}}, "problems[0].source.checkpoints[1].step", "not increasing"),
    ({"args": {"bad": "shape"}}, "problems[0].source.checkpoints[2].params", "shapes"),
    ({"checkpoints": [3]}, "problems[0].checkpoints", "not among"),
]


@pytest.mark.parametrize(("entry", "where", "says"), BAD, ids=["empty", "order", "shape", "step"])
def test_a_bad_checkpoint_list_is_a_config_error_naming_the_field(folder, entry, where, says):
    with pytest.raises(ConfigError) as info:
        _entries(folder, **entry)
    assert info.value.where == where and says in info.value.problem, info.value
    assert info.value.fix


def test_several_checkpoints_where_one_problem_is_needed(folder):
    with pytest.raises(ConfigError) as info:
        resolve_problem({"source": CKPT}, "classes[0].train[0]", folder=folder)
    assert info.value.where == "classes[0].train[0].checkpoints" and "3 checkpoints" in str(
        info.value
    )
    with pytest.raises(ConfigError) as info:
        resolve_problem({"source": "user_models:linear", "checkpoints": [1]}, "p", folder=folder)
    assert info.value.where == "p.checkpoints"
