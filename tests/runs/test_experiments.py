"""``lambda-hat run``: hyperparameter sets from studies, bad input before any work, the runs
table and its summary, and a rerun that costs nothing.

The tests use stored studies written here and the analytic stand-in for a method run
(:mod:`lambda_hat.trial.synthetic`) on a thread pool (``helpers/runs.py``); tuning and running
through the real Parsl executor is tests/integration/test_tune_then_run.py.
"""

from __future__ import annotations

import statistics
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import optuna
import pandas as pd
import pytest
from helpers.runs import _config, _done, _fake_reference, synthetic_run
from optuna.distributions import FloatDistribution

from lambda_hat import cli, layout
from lambda_hat._io import atomic_write_json
from lambda_hat.config.load import load_runs
from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.problem.build import problem_id
from lambda_hat.runs import stage as experiments
from lambda_hat.runs.summary import summarize
from lambda_hat.schema import ConfigError
from lambda_hat.study import storage as studies
from lambda_hat.trial import identity as runs
from lambda_hat.trial.synthetic import synthetic_llc

optuna.logging.set_verbosity(optuna.logging.WARNING)


BEST_HP = {"eta0": 2e-4, "steps": 300, "chains": 2, "batch": 64, "precond_type": "none"}
VALIDATED_HP = {**BEST_HP, "eta0": 5e-4}


def _from(results: Path, pick: str, fixed: str = "") -> str:
    """A ``from_study`` set in YAML flow style."""
    return f"{{from_study: {{results: {results}, pick: {pick}}}, fixed: {{{fixed}}}}}"


def _pid(config: Path) -> str:
    return problem_id(load_runs(config).problems[0])


def _tuned(results: Path, pid: str, method: str = "sgld", validated: bool = True) -> None:
    """A stored study like parsl-optuna leaves: two successful trials with their metrics.json
    (the full hyperparameters) and, when ``validated``, a recommendation of the worse one."""
    storage = studies.open_storage(OptunaConfig(), results)
    study = optuna.create_study(storage=storage, study_name=studies.study_name(pid, method))
    for number, (value, hp) in enumerate([(0.3, VALIDATED_HP), (0.1, BEST_HP)]):
        run_dir = results.parent / "artifacts" / "runs" / pid / method / f"r_{number}"
        atomic_write_json(run_dir / "metrics.json", {"status": "ok", "hyperparams": hp})
        study.add_trial(
            optuna.trial.create_trial(
                params={"eta0": hp["eta0"]},
                distributions={"eta0": FloatDistribution(1e-6, 1e-2, log=True)},
                value=value,
                user_attrs={"status": "ok", "run_dir": str(run_dir)},
            )
        )
    if validated:
        study.set_user_attr("validation", {"hyperparams": VALIDATED_HP, "trial_number": 0})
    storage.backend.close()


def test_from_study_best_and_validated_record_their_study_and_trial(tmp_path):
    tuned = tmp_path / "tuned"
    sets = f"{{sgld: [{_from(tuned, 'best')}, {_from(tuned, 'validated', 'steps: 400')}, "
    sets += "{fixed: {eta0: 1.0e-5}}]}"
    config = _config(tmp_path, sets)
    pid = _pid(config)
    _tuned(tmp_path / "tuned", pid)
    plan = experiments.plan_experiments(load_runs(config))
    best, validated, fixed = plan.sets[pid]
    assert best.hyperparams == runs.resolve_hyperparams("sgld", BEST_HP)
    assert (best.source_study, best.source_trial, best.source_pick) == (f"{pid}:sgld", 1, "best")
    assert validated.hyperparams == runs.resolve_hyperparams("sgld", {**VALIDATED_HP, "steps": 400})
    assert (validated.source_trial, validated.source_pick) == (0, "validated")
    assert fixed.hyperparams["eta0"] == 1e-5 and fixed.source_study is None
    assert [s.index for s in plan.sets[pid]] == [0, 1, 2]
    assert "set 1 from" in experiments.describe(plan)


@pytest.mark.parametrize(
    "case, where, says",
    [
        ("no results folder", "from_study.results", "parsl-optuna --config"),
        ("no such study", "methods.sgld[0].from_study", "tune this problem with sgld"),
        ("never validated", "from_study.pick", "optuna.validate"),
    ],
)
def test_from_study_without_what_it_needs_exits_2_before_any_work(
    case, where, says, tmp_path, capsys
):
    pick = "validated" if case == "never validated" else "best"
    config = _config(tmp_path, f"{{sgld: [{_from(tmp_path / 'tuned', pick)}]}}")
    if case == "no such study":
        _tuned(tmp_path / "tuned", "p_000000000000")
    elif case == "never validated":
        _tuned(tmp_path / "tuned", _pid(config), validated=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(["run", "--config", str(config), "--local"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {config}: ") and where in err and says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.parametrize(
    "methods, seeds, where",
    [
        ("{sgld: [{fixed: {eta: 1.0e-4}}]}", "[0]", "methods.sgld[0].fixed.eta"),
        ("{sgld: [{fixed: {eta0: -1.0}}]}", "[0]", "methods.sgld[0].fixed.eta0"),
        ("{sgld: [{from_study: {pick: newest}}]}", "[0]", "methods.sgld[0].from_study.pick"),
        ("{sgdl: [{}]}", "[0]", "methods"),
        ("{sgld: []}", "[0]", "methods"),
        ("{sgld: [{}]}", "[]", "seeds"),
        ("{sgld: [{}]}", "[1, 1]", "seeds"),
    ],
)
def test_bad_sets_and_seeds_name_the_field(tmp_path, methods, seeds, where):
    with pytest.raises(ConfigError) as err:
        load_runs(_config(tmp_path, methods, seeds))
    assert err.value.where.startswith(where), str(err.value)


def test_runs_table_one_row_per_run_a_summary_and_a_rerun_that_costs_nothing(tmp_path, capsys):
    config = _config(
        tmp_path, "{sgld: [{fixed: {eta0: 1.0e-4, batch: 64}}], vi: [{}]}", "[0, 1, 2]"
    )
    plan = experiments.plan_experiments(load_runs(config))
    with ThreadPoolExecutor(2) as pool:
        assert synthetic_run(plan, pool) == 0
        first = pd.read_parquet(tmp_path / "out" / layout.RUNS_TABLE)
        printed = capsys.readouterr().out
        assert synthetic_run(plan, pool) == 0
    again = pd.read_parquet(tmp_path / "out" / layout.RUNS_TABLE)
    assert len(first) == 2 * 3 and (first.status == "ok").all()
    assert list(again.run_id) == list(first.run_id) and again.reused.all()
    assert not first.reused.any() and first.run_id.str.startswith("r_").all()
    sgld = first[first.method == "sgld"]
    assert sgld.hp_batch.dtype == "Int64" and sgld.hp_batch.tolist() == [64] * 3
    assert sgld.hyperparams.iloc[0]["eta0"] == 1e-4
    want = synthetic_llc(runs.resolve_hyperparams("sgld", {"eta0": 1e-4, "batch": 64}), 1.5)
    assert sgld.llc_hat.tolist() == pytest.approx([want] * 3)
    assert set(first.seed) == {0, 1, 2} and first.source_study.isna().all()
    assert (first.label == "linear·s0").all() and (first.model == "linear").all()
    assert (first.family == "dln").all() and first.widths.map(list).tolist() == [[]] * 6
    assert (first.n == 200).all() and (first.d == 3).all() and (first.problem_seed == 0).all()
    assert first.llc_ref.eq(1.5).all() and first.error.tolist() == pytest.approx(
        (first.llc_hat - 1.5).tolist()
    )
    (row,) = [s for s in summarize(first.to_dict("records")) if s["method"] == "sgld"]
    assert row["n_ok"] == 3 and row["mean"] == pytest.approx(statistics.fmean(sgld.llc_hat))
    assert row["d_ref"] == pytest.approx(want - 1.5) and row["d_theory"] == pytest.approx(
        want - 1.5
    )
    assert "linear·s0:sgld" in printed and "linear·s0:vi" in printed


def test_a_problem_whose_reference_failed_is_not_run_and_exits_1(tmp_path):
    config = _config(tmp_path, "{sgld: [{}]}", "[0]")
    plan = experiments.plan_experiments(load_runs(config))

    def failed_reference(payload: dict) -> Future:
        return _done({**_fake_reference(payload).result(), "gate": {"passed": False}})

    assert experiments.execute(plan, lambda p: _done({}), failed_reference) == 1
    assert len(pd.read_parquet(tmp_path / "out" / layout.RUNS_TABLE)) == 0
