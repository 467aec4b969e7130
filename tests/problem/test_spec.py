"""Problem specs: presets resolved and checked, and problem ids that are stable across key order
and processes and change with any resolved value.
"""

import hashlib
import json
import subprocess
import sys

import pytest

from lambda_hat.problem.build import problem_id
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.schema import ConfigError


def test_dln_with_bias_is_rejected():
    with pytest.raises(ConfigError, match="model.bias"):
        resolve_problem({"model": "dln", "overrides": {"model": {"bias": True}}})


def test_yaml_scientific_notation_is_a_number():
    spec = resolve_problem({"model": "small", "overrides": {"model": {"train": {"lr": "1e-3"}}}})
    assert spec.model.train.lr == 1e-3


def test_pid_is_stable_across_key_order_and_processes():
    e1 = {
        "model": "small",
        "data": "base",
        "seed": 5,
        "overrides": {"model": {"depth": 3, "activation": "relu"}},
    }
    e2 = {
        "overrides": {"model": {"activation": "relu", "depth": 3}},
        "seed": 5,
        "data": "base",
        "model": "small",
    }
    pid = problem_id(resolve_problem(e1))
    assert pid == problem_id(resolve_problem(e2))
    assert pid.startswith("p_") and len(pid) == 14
    code = (
        "from lambda_hat.problem.spec import resolve_problem; from lambda_hat.problem.build import "
        f"problem_id; print(problem_id(resolve_problem({e2!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert out.stdout.strip() == pid


def test_pid_changes_with_any_resolved_value():
    base = {"model": "small", "data": "base", "seed": 5}
    pid = problem_id(resolve_problem(base))
    variants = [
        {**base, "seed": 6},
        {**base, "overrides": {"data": {"noise": 0.2}}},
        {**base, "overrides": {"model": {"train": {"lr": 0.02}}}},
        {**base, "teacher": "rank1"},
    ]
    pids = {problem_id(resolve_problem(v)) for v in variants}
    assert pid not in pids and len(pids) == len(variants)
    # The same resolved values reached through an explicit override hash the same.
    same = {**base, "overrides": {"data": {"noise": 0.1}}}
    assert problem_id(resolve_problem(same)) == pid


def test_pid_format_is_frozen():
    """Stored artifacts are found by pid: the canonical form and hash must never drift."""
    from lambda_hat.hashing import canonical_json
    from lambda_hat.problem.build import pid_fields
    from lambda_hat.problem.spec import ProblemSpec
    from lambda_hat.schema import validate

    canonical = (
        '{"data":{"input_dim":3,"n":200,"noise":0.1,"output_dim":1,"x_dist":"gauss"},'
        '"model":{"activation":"tanh","bias":true,"depth":1,"family":"mlp","init_scale":1.0,'
        '"target_params":null,"train":{"batch_size":null,"lr":0.05,"optimizer":"adam",'
        '"schedule":"cosine","steps":4000},"widths":[4]},"seed":1,'
        '"teacher":{"activation":null,"rank":null,"scale":1.0,"widths":null}}'
    )
    spec = validate(json.loads(canonical), ProblemSpec, "spec")
    assert canonical_json(pid_fields(spec)) == canonical  # data.loss: gaussian left out
    assert problem_id(spec) == "p_" + hashlib.sha256(canonical.encode()).hexdigest()[:12]
    assert problem_id(spec) == "p_904336546896"
