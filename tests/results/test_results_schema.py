"""The result tables' schema (plans/results.md): problem columns and labels, integers that stay
integers, mixed hyperparameter types, diagnostics as a struct, the run's posterior, work
columns, and the label in the progress tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from optuna.distributions import FloatDistribution, IntDistribution

from lambda_hat import layout
from lambda_hat.config.load import load_tuning
from lambda_hat.problem.build import problem_id
from lambda_hat.problem.spec import ProblemEntry, resolve_problem
from lambda_hat.results import parquet
from lambda_hat.results import tables as results
from lambda_hat.study import progress

REPO = Path(__file__).resolve().parents[2]


def _metrics(method: str, hp: dict, llc: float) -> dict:
    return {
        "status": "ok",
        "hyperparams": hp,
        "llc_hat": llc,
        "se_hat": 0.01,
        "posterior": {"beta": 0.25, "gamma": 1.0, "nbeta": 50.0},
        "diagnostics": {"rhat": 1.002, "ess_bulk": 812.0, "chain_health": {"nonfinite": 0}},
        "work": {"grad_evals": 6400, "fge": 32.5, "steps": 100},
        "seconds": {"total": 2.5},
        "job_id": 4242,
    }


def _trial(number: int, params: dict, value: float) -> optuna.trial.FrozenTrial:
    dist = {"eta0": FloatDistribution(1e-6, 1.0, log=True), "M": IntDistribution(1, 8)}
    t = optuna.trial.create_trial(
        params=params,
        distributions={k: dist[k] for k in params},
        value=value,
        user_attrs={"status": "ok", "run_id": f"r_{number}"},
    )
    t.number = number
    return t


def _table(tmp_path) -> pd.DataFrame:
    exp = load_tuning(REPO / "config" / "optuna_demo.yaml")
    problems = results.problem_table(exp.config.problems, exp.problems)
    (linear, tiny) = problems
    ref = {"llc_ref": 1.5, "se_ref": 0.02, "llc_theory": 1.5}
    sgld = {"eta0": 1e-4, "batch": 64, "steps": 1000, "precond_type": "none"}
    vi = {"lr": 0.01, "M": 4, "steps": 300, "whitening_mode": "none"}
    rows = [
        results.trial_row(
            _trial(0, {"eta0": 1e-4}, 0.1),
            linear,
            "sgld",
            ref,
            _metrics("sgld", sgld, 1.6),
            problems[linear],
        ),
        results.trial_row(
            _trial(0, {"M": 4}, 0.2), tiny, "vi", ref, _metrics("vi", vi, 1.3), problems[tiny]
        ),
    ]
    path = parquet.write_parquet(rows, tmp_path / layout.TRIALS_TABLE)
    return pd.read_parquet(path), problems


def test_problem_columns_name_the_presets_and_the_resolved_sizes(tmp_path):
    df, problems = _table(tmp_path)
    lin, tiny = df.iloc[0], df.iloc[1]
    assert (lin.label, lin.model, lin.family, list(lin.widths)) == (
        "linear·s0",
        "linear",
        "dln",
        [],
    )
    assert (lin.d, lin.n, lin.data, lin.teacher, lin.problem_seed) == (3, 200, "small", "_null", 0)
    # tiny: a 3-4-1 tanh MLP with bias: 3*4 + 4 + 4*1 + 1 = 21 parameters
    assert (tiny.label, tiny.family, list(tiny.widths), tiny.d) == ("tiny·s1", "mlp", [4], 21)
    assert set(df.pid) == set(problems)


def test_integers_stay_integers_and_diagnostics_is_a_struct(tmp_path):
    df, _ = _table(tmp_path)
    assert df.hp_batch.dtype == "Int64" and df.hp_M.dtype == "Int64"
    assert df.hp_batch.iloc[0] == 64 and pd.isna(df.hp_batch.iloc[1])
    assert df.hp_eta0.dtype == "float64" and df.hp_precond_type.iloc[0] == "none"
    assert parquet.hyperparams_of(df.iloc[0]) == {
        "eta0": 1e-4,
        "batch": 64,
        "steps": 1000,
        "precond_type": "none",
    }
    assert isinstance(parquet.hyperparams_of(df.iloc[0])["batch"], int)
    assert parquet.hyperparams_of(df.iloc[1]) == {
        "lr": 0.01,
        "M": 4,
        "steps": 300,
        "whitening_mode": "none",
    }
    diag = df.diagnostics.iloc[0]
    assert diag["rhat"] == 1.002 and diag["chain_health"]["nonfinite"] == 0
    assert df.rhat.iloc[0] == 1.002 and df.ess_bulk.iloc[0] == 812.0
    assert df.fge.tolist() == [32.5, 32.5] and df.grad_evals.tolist() == [6400, 6400]
    assert df.job_id.tolist() == ["4242", "4242"]
    assert (df.beta == 0.25).all() and (df.nbeta == 50.0).all() and (df.llc_theory == 1.5).all()
    assert df.objective.tolist() == [0.1, 0.2]
    assert df[df.method == "vi"].nsmallest(1, "objective").hp_M.iloc[0] == 4


def test_the_arrow_schema_is_typed_from_the_method_schemas(tmp_path):
    _table(tmp_path)
    schema = pq.read_schema(tmp_path / layout.TRIALS_TABLE)
    assert str(schema.field("hp_batch").type) == "int64"
    assert str(schema.field("hp_eta0").type) == "double"
    assert schema.field("widths").type.value_type == pa.int64()
    assert str(schema.field("diagnostics").type).startswith("struct<chain_health: struct<")
    assert str(schema.field("started_at").type) == "timestamp[us, tz=UTC]"
    cols = schema.names
    assert cols[: cols.index("llc_hat")][-1] == "hyperparams"
    assert [c for c in results.TRIAL_COLUMNS if c not in cols] == []


def test_a_value_outside_the_schema_type_falls_back_to_its_own_type():
    rows = [{"hyperparams": {"batch": "full"}}, {"hyperparams": {"batch": 64}}]
    assert str(parquet.to_table(rows).schema.field("hp_batch").type) == "string"
    when = datetime(2026, 1, 1, tzinfo=UTC)
    cols = results.metrics_columns({"started_at": 0}, {}, finished=when)
    assert cols["started_at"] == datetime.fromtimestamp(0, tz=UTC) and cols["finished_at"] == when


def test_labels_are_readable_unique_and_in_the_progress_tables():
    entries = [ProblemEntry(model="linear", data="small", seed=0)] * 2
    entries.append(ProblemEntry(model="linear", data="base", seed=0))
    specs = [resolve_problem(e) for e in entries]
    labels = results.problem_labels(entries, specs)
    pids = [problem_id(s) for s in specs]
    assert len(labels) == 2  # the first two are one problem
    assert labels[pids[0]] == f"linear·s0·{pids[0][2:8]}" != labels[pids[2]]
    assert results.study_label("linear·s0", "sgld") == "linear·s0:sgld"

    class Counts:
        finished, running, failed, pruned, reused = 1, 0, 0, 0, 0
        finished_this_run, best_value, best_number, stop_reason = 1, 0.25, 0, None
        early_stop = None

    class Task:
        name, done, counts = f"{pids[0]}:sgld", False, Counts()

    text = progress.StudyTable([Task()], 3, labels={pids[0]: "linear·s0"}).render()
    head, _, line = text.splitlines()[:3]
    assert head.split()[:2] == ["label", "study"]
    assert line.split()[:2] == ["linear·s0:sgld", f"{pids[0]}:sgld"]
    best = progress.best_table(
        [{"study": f"{pids[0]}:sgld", "number": None}], {pids[0]: "linear·s0"}
    )
    assert "linear·s0:sgld" in best


optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_mixed_hyperparameter_types_unify_to_one_arrow_type():
    rows = [
        {"hyperparams": {"a": 1, "b": "x"}},
        {"hyperparams": {"a": 2.5, "b": 3}},
        {"hyperparams": {"c": True}},
    ]
    table = parquet.to_table(rows)
    assert str(table.schema.field("hp_a").type) == "double"
    assert str(table.schema.field("hp_b").type) == "string"
    assert table.column("hp_c").to_pylist() == [None, None, True]


optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_results_rows_carry_the_runs_posterior(tmp_path):
    study = optuna.create_study()
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study.tell(trial, 0.5)
    frozen = study.trials[0]
    ref = {"llc_ref": 1.0, "se_ref": 0.1, "beta": 0.2, "gamma": 1.0, "nbeta": 40.0}
    metrics = {"status": "ok", "llc_hat": 1.2, "posterior": {"beta": 0.2, "gamma": 3.0}}
    row = results.trial_row(frozen, "p_x", "vi", ref, metrics)
    assert (row["beta"], row["gamma"], row["nbeta"]) == (0.2, 3.0, 40.0)
    table = parquet.to_table([row])
    assert table.schema.field("gamma").type == "double"
