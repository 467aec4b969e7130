"""``lambda-hat run`` where HMC cannot go: problems with ``reference: theory | none`` run and
report plainly, a zero-draw HMC reference is refused, ``fixed`` values in ε_max units and a
class study's recommendation are converted per problem with its ε_max and recorded as units
and absolute values. References are fixed records (the stage's own are tests/reference/);
runs are the analytic stand-in (``helpers/runs.py``)."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor

import pandas as pd
import pytest
from helpers.runs import SYNTHETIC, _config, _done

from lambda_hat import cli, layout, methods
from lambda_hat._io import atomic_write_json
from lambda_hat.config.load import load_runs
from lambda_hat.problem.build import problem_id
from lambda_hat.runs import stage as experiments
from lambda_hat.runs.summary import summarize
from lambda_hat.trial import app as trial_app

LINEAR = "{model: linear, data: small, seed: 0"
#: A second linear problem, 5 -> 2 (d = 10): another ε_max.
WIDE = "{model: linear, data: small, seed: 1, overrides: {data: {input_dim: 5, output_dim: 2}}"
REC = {
    "class": "dln",
    "method": "sgld",
    "pick": "validated",
    "units": {"eta0": 0.05, "steps": 300, "batch": 64, "chains": 2},
    "scaled": ["eta0"],
    "trial": 7,
    "objective": 0.12,
    "validated": {"trial": 9, "units": {"eta0": 0.1, "steps": 300, "batch": 64, "chains": 2}},
}


def _a_max(spec: dict) -> float:
    return 100.0 * spec["data"]["input_dim"]  # 300 for LINEAR, 500 for WIDE


def _reference(payload: dict) -> Future:
    """The record the reference stage would return, by kind, with a curvature record."""
    spec, kind = payload["spec"], payload.get("kind", "hmc")
    d = spec["data"]["input_dim"] * spec["data"]["output_dim"]
    llc = {"hmc": 1.5, "theory": d / 2, "none": None}[kind]
    return _done(
        {
            "llc_ref": llc,
            "se_ref": {"hmc": 0.01, "theory": 0.0, "none": None}[kind],
            "llc_theory": d / 2,
            "beta": 0.2,
            "gamma": payload["gamma"],
            "gate": {"passed": True, "reasons": []},
            "curvature": {"a_max": _a_max(spec), "d": d},
            **({"kind": kind} if kind != "hmc" else {}),
        }
    )


def _run(config, capsys, submit_reference=_reference) -> tuple[int, pd.DataFrame, str]:
    plan = experiments.plan_experiments(load_runs(config))
    with ThreadPoolExecutor(2) as pool:

        def submit(payload: dict) -> Future:
            return pool.submit(trial_app.execute_trial, {**payload, "target": SYNTHETIC})

        code = experiments.execute(plan, submit, submit_reference)
    table = pd.read_parquet(plan.results / layout.RUNS_TABLE)
    return code, table, capsys.readouterr().out


def test_theory_and_none_problems_run_and_report_plainly(tmp_path, capsys, caplog):
    problems = f"[{LINEAR}, reference: none}}, {WIDE}, reference: theory}}]"
    config = _config(tmp_path, "{sgld: [{fixed: {eta0: 1.0e-4}}]}", "[0]", problems=problems)
    with caplog.at_level(logging.INFO, logger="lambda_hat.workflow"):
        code, table, out = _run(config, capsys)
    assert code == 0 and (table.status == "ok").all() and len(table) == 2
    none, theory = (table[table.ref_kind == k].iloc[0] for k in ("none", "theory"))
    assert pd.isna(none.llc_ref) and pd.isna(none.error) and none.llc_theory == 1.5
    assert theory.llc_ref == 5.0 and theory.se_ref == 0.0
    assert theory.error == pytest.approx(theory.llc_hat - 5.0)
    assert "no reference" in out and "5 (theory)" in out and "- ± -" not in out
    said = [r.getMessage() for r in caplog.records if "has no reference" in r.getMessage()]
    assert len(said) == 1 and none.pid in said[0] and "unscored" in said[0]


def test_theory_z_uses_the_runs_own_se():
    row = {"pid": "p", "method": "sgld", "set": 0, "status": "ok", "label": "x", "seed": 0}
    row |= {"llc_hat": 3.15, "se_hat": 0.1, "llc_ref": 3.0, "se_ref": 0.0, "llc_theory": 3.0}
    row |= {"source_study": None, "ref_kind": "theory"}
    (s,) = summarize([row])
    assert s["z"] == pytest.approx(1.5) and s["agrees"]  # 0.15 / √(0.1² + 0²)


def test_a_zero_draw_hmc_reference_is_refused_even_when_failed_ones_are_allowed(
    tmp_path, capsys, caplog
):
    config = _config(tmp_path, "{sgld: [{}]}", "[0]", extra="allow_failed_reference: true\n")

    def empty(payload: dict) -> Future:
        reasons = ["no draws: the budget stopped it (warmup, warm-up step 3 of 200)"]
        out = {**_reference(payload).result(), "llc_ref": None, "se_ref": None}
        return _done({**out, "draws_per_chain": 0, "gate": {"passed": False, "reasons": reasons}})

    with caplog.at_level(logging.ERROR, logger="lambda_hat.workflow"):
        code, table, _ = _run(config, capsys, empty)
    assert code == 1 and len(table) == 0
    (line,) = [r.getMessage() for r in caplog.records if "no draws" in r.getMessage()]
    for says in ("warm-up step 3 of 200", "reference.budget_sec", "reference: none", "theory"):
        assert says in line, line


def test_fixed_in_stability_units_is_a_fraction_of_each_problems_eps_max(tmp_path, capsys):
    sets = "{sgld: [{fixed: {eta0: {value: 0.02, scale: stability}, steps: 300}}]}"
    config = _config(tmp_path, sets, "[0]", problems=f"[{LINEAR}}}, {WIDE}}}]")
    code, table, _ = _run(config, capsys)
    assert code == 0 and len(table) == 2
    for row in table.itertuples():
        eps_max = methods.step_limit("sgld", 100.0 * (3 if row.d == 3 else 5), row.d)
        assert eps_max == pytest.approx(4 / (300 if row.d == 3 else 500))
        assert row.eps_max == pytest.approx(eps_max) and row.eta0_units == 0.02
        assert row.hp_eta0 == pytest.approx(0.02 * eps_max) and row.hp_steps == 300


def test_a_class_recommendation_converts_per_problem(tmp_path, capsys):
    atomic_write_json(layout.class_recommendation(tmp_path / "tuned", "dln", "sgld"), REC)
    fs = f"from_study: {{class: dln, results: {tmp_path / 'tuned'}"
    sets = f"{{sgld: [{{{fs}, pick: best}}}}, {{{fs}, pick: validated}}, fixed: {{steps: 400}}}}]}}"
    config = _config(tmp_path, sets, "[0]", problems=f"[{LINEAR}}}, {WIDE}}}]")
    code, table, out = _run(config, capsys)
    assert code == 0 and len(table) == 4 and (table.from_class == "dln").all()
    for row in table.itertuples():
        frac = {0: 0.05, 1: 0.1}[row.set]
        eps_max = 4 / (300 if row.d == 3 else 500)
        assert row.eta0_units == frac and row.eps_max == pytest.approx(eps_max)
        assert row.hp_eta0 == pytest.approx(frac * eps_max)
        assert (row.hp_batch, row.hp_chains) == (64, 2)
        assert (row.source_pick, row.source_trial, row.hp_steps) == (
            ("best", 7, 300) if row.set == 0 else ("validated", 9, 400)
        )
        assert pd.isna(row.source_study)
    assert "class dln best #7" in out and "class dln validated #9" in out


@pytest.mark.parametrize(
    "rec, pick, where, says",
    [
        (None, "best", "methods.sgld[0].from_study.class", "no recommendation"),
        ({**REC, "pick": "best", "validated": None}, "validated", "from_study.pick", "pick: best"),
        ({**REC, "scaled": ["eta0", "steps"]}, "best", "from_study.class", "stability limit"),
    ],
)
def test_a_class_set_without_what_it_needs_exits_2_before_any_work(
    tmp_path, capsys, rec, pick, where, says
):
    if rec is not None:
        atomic_write_json(layout.class_recommendation(tmp_path / "tuned", "dln", "sgld"), rec)
    sets = (
        f"{{sgld: [{{from_study: {{class: dln, results: {tmp_path / 'tuned'}, pick: {pick}}}}}]}}"
    )
    config = _config(tmp_path, sets, "[0]")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(["run", "--config", str(config), "--local"]) == 2
    err = capsys.readouterr().err
    assert where in err and says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert problem_id(load_runs(config).problems[0])  # the config itself loads
