"""A problem's ``reference`` kind (hmc | theory | none), ``fixed`` values in ε_max units and a
class recommendation's file: checked at load, every bad input a ConfigError naming the field
and the fix before any work."""

from __future__ import annotations

import textwrap

import pytest

from lambda_hat.config.load import load_config, load_runs
from lambda_hat.config.recommendation import (
    ClassRecommendation,
    read_class_recommendation,
    write_class_recommendation,
)
from lambda_hat.problem.build import problem_id
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.schema import ConfigError

LINEAR = "{model: linear, data: small, seed: 0"
DLN = "{model: dln, data: small, teacher: rank1, seed: 0"
MLP = "{model: tiny, data: small, seed: 0"


def _runs(tmp_path, problems: str, sgld: str = "{}"):
    path = tmp_path / "x.yaml"
    path.write_text(
        textwrap.dedent(f"""
        problems: {problems}
        methods: {{sgld: [{sgld}]}}
        paths: {{artifacts: {tmp_path / "a"}, results: {tmp_path / "r"}}}
        """)
    )
    return path


def test_each_problem_has_its_kind_and_the_pid_does_not_change(tmp_path):
    problems = (
        f"[{LINEAR}, reference: theory}}, {DLN}, reference: theory}}, {MLP}, reference: none}}"
    )
    problems += f", {LINEAR}, seed: 1}}]"
    runs = load_runs(_runs(tmp_path, problems))
    pids = [problem_id(s) for s in runs.problems]
    assert [runs.reference_kind(p) for p in pids] == ["theory", "theory", "none", "hmc"]
    assert runs.kinds == dict(zip(pids, ["theory", "theory", "none", "hmc"], strict=True))
    assert load_config(_runs(tmp_path, problems)).kinds == runs.kinds
    plain = resolve_problem({"model": "linear", "data": "small", "seed": 0})
    assert pids[0] == problem_id(plain)  # reference is not part of the problem


@pytest.mark.parametrize(
    "problems, where, says",
    [
        (f"[{MLP}, reference: theory}}]", "problems[0].reference", "no theoretical λ"),
        (
            f"[{DLN}, reference: theory, overrides: {{teacher: {{widths: [3], rank: null}}, "
            "model: {widths: [1]}, data: {output_dim: 3}}}]",
            "problems[0].reference",
            "realizable",
        ),
        (f"[{LINEAR}}}, {LINEAR}, reference: none}}]", "problems[1].reference", "listed twice"),
        (f"[{LINEAR}, reference: hcm}}]", "problems[0].reference", "allowed"),
    ],
)
def test_a_reference_kind_that_cannot_hold_is_an_error(tmp_path, problems, where, says):
    with pytest.raises(ConfigError) as err:
        load_runs(_runs(tmp_path, problems))
    assert err.value.where == where and says in err.value.problem, str(err.value)
    if says != "allowed":
        assert "reference: hmc" in err.value.fix or "same reference kind" in err.value.fix


def test_fixed_values_in_stability_units_load(tmp_path):
    sgld = "{fixed: {eta0: {value: 0.02, scale: stability}, steps: 300}}"
    runs = load_runs(_runs(tmp_path, f"[{LINEAR}}}]", sgld))
    assert runs.config.methods["sgld"][0].fixed["eta0"] == {"value": 0.02, "scale": "stability"}


@pytest.mark.parametrize(
    "method, fixed, where",
    [
        ("sgld", "{eta0: {value: 0.02, scale: stabilty}}", "methods.sgld[0].fixed.eta0.scale"),
        ("sgld", "{eta0: {value: 0.02}}", "methods.sgld[0].fixed.eta0"),
        ("sgld", "{eta0: {value: -1, scale: stability}}", "methods.sgld[0].fixed.eta0.value"),
        ("sgld", "{batch: {value: 0.5, scale: stability}}", "methods.sgld[0].fixed.batch.scale"),
        ("vi", "{lr: {value: 0.5, scale: stability}}", "methods.vi[0].fixed.lr.scale"),
        (
            "mclmc",
            "{step_size: {value: 0.1, scale: stability}}",
            "methods.mclmc[0].fixed.step_size",
        ),
    ],
)
def test_a_bad_value_in_units_names_the_field(tmp_path, method, fixed, where):
    path = tmp_path / "x.yaml"
    path.write_text(f"problems: [{LINEAR}}}]\nmethods: {{{method}: [{{fixed: {fixed}}}]}}\n")
    with pytest.raises(ConfigError) as err:
        load_runs(path)
    assert err.value.where.startswith(where) and err.value.fix, str(err.value)


def test_untuned_mclmc_step_size_takes_units(tmp_path):
    path = tmp_path / "x.yaml"
    fixed = "{tune: false, step_size: {value: 0.1, scale: stability}}"
    path.write_text(f"problems: [{LINEAR}}}]\nmethods: {{mclmc: [{{fixed: {fixed}}}]}}\n")
    assert load_runs(path).config.methods["mclmc"][0].fixed["tune"] is False


def test_a_class_set_takes_no_storage(tmp_path):
    sgld = "{from_study: {class: dln, storage: x.log}}"
    with pytest.raises(ConfigError) as err:
        load_runs(_runs(tmp_path, f"[{LINEAR}}}]", sgld))
    assert err.value.where == "methods.sgld[0].from_study.storage"


REC = {
    "class": "dln",
    "method": "sgld",
    "pick": "best",
    "units": {"eta0": 0.05, "steps": 300, "batch": 64},
    "scaled": ["eta0"],
    "trial": 7,
    "objective": 0.12,
    "validated": None,
}


def test_a_recommendation_round_trips_and_picks(tmp_path):
    rec = ClassRecommendation(**{("class_" if k == "class" else k): v for k, v in REC.items()})
    path = write_class_recommendation(tmp_path, rec)
    assert path == tmp_path / "classes" / "dln" / "sgld" / "recommendation.json"
    best = read_class_recommendation(tmp_path, "dln", "sgld", "best", "w")
    assert (best.units, best.scaled, best.trial, best.pick) == (REC["units"], ("eta0",), 7, "best")
    with pytest.raises(ConfigError) as err:
        read_class_recommendation(tmp_path, "dln", "sgld", "validated", "w")
    assert err.value.where == "w.pick" and "pick: best" in err.value.fix
    validated = {"trial": 9, "units": {**REC["units"], "eta0": 0.1}, "mean_error": 0.2}
    rec = ClassRecommendation(**{**rec.__dict__, "pick": "validated", "validated": validated})
    write_class_recommendation(tmp_path, rec)
    got = read_class_recommendation(tmp_path, "dln", "sgld", "validated", "w")
    assert (got.units["eta0"], got.trial, got.scaled) == (0.1, 9, ("eta0",))


@pytest.mark.parametrize(
    "change, where",
    [
        (None, "w.class"),  # no file
        ({"scaled": ["eta0", "lr"]}, "w"),  # a scaled name not in units
        ({"method": "vi"}, "w.class"),  # another study's file
        ({"pick": "validated"}, "w"),  # says validated, has none
    ],
)
def test_a_bad_recommendation_file_is_an_error(tmp_path, change, where):
    from lambda_hat import layout
    from lambda_hat._io import atomic_write_json

    if change is not None:
        atomic_write_json(layout.class_recommendation(tmp_path, "dln", "sgld"), {**REC, **change})
    with pytest.raises(ConfigError) as err:
        read_class_recommendation(tmp_path, "dln", "sgld", "best", "w")
    assert err.value.where == where and "class study" in err.value.fix, str(err.value)
