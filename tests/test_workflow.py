"""The ask/tell driver, storage, resume, Parquet and the CLI's input checks (no Parsl here).

Trials are plain functions run on a thread pool: the driver only sees futures of dicts, the
same contract the Parsl apps satisfy (``tests/test_workflow_parsl.py`` runs the real executor).
"""

from __future__ import annotations

import pickle
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from lambda_hat import layout
from lambda_hat._io import atomic_write_json, read_json
from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.parallel import configs, session
from lambda_hat.results import parquet
from lambda_hat.results import tables as results
from lambda_hat.schema import ConfigError
from lambda_hat.study import command, pipeline, progress, pruning, scoring
from lambda_hat.study import driver as tuning
from lambda_hat.study import optuna_samplers as samplers
from lambda_hat.study import space as search_space
from lambda_hat.study import storage as studies
from lambda_hat.study.tell import best_successful, counts_as_finished
from lambda_hat.trial import app as trial_app
from lambda_hat.trial import identity, outcome
from lambda_hat.trial.synthetic import synthetic_llc, synthetic_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)

REF = {"llc_ref": 1.5, "se_ref": 0.01}
SPACE = {"x": FloatDistribution(0.1, 10.0, log=True), "y": FloatDistribution(0.5, 2.0)}


def _task(storage, tmp_path, pid="p_a", method="sgld", cfg=None, **kw) -> tuning.StudyTask:
    cfg = cfg or OptunaConfig(isolate=False, n_startup_trials=3)
    study = studies.open_study(storage, pid, method, cfg, seed=1)
    base = {
        "pid": pid,
        "method": method,
        "budget_sec": 10.0,
        "seed": 0,
        "ref": REF,
        "artifacts": str(tmp_path / "artifacts"),
        "isolate": False,
        "target": "lambda_hat.trial.synthetic:synthetic_trial",
    }
    return tuning.StudyTask(
        pid=pid,
        method=method,
        study=study,
        space=dict(SPACE),
        base_payload=base,
        ref=REF,
        objective=cfg.objective,
        objectives=tuple(cfg.objectives),
        huber_delta=cfg.huber_delta,
        **kw,
    )


def _run(tasks, trial_fn, max_trials, batch_size, workers=2):
    pool = ThreadPoolExecutor(workers)
    try:
        driver = tuning.Driver(
            tasks, lambda p: pool.submit(trial_fn, p), max_trials=max_trials, batch_size=batch_size
        )
        for t in tasks:
            driver.recover(t)
        driver.run()
    finally:
        pool.shutdown()
    return driver


def _journal(tmp_path):
    return studies.open_storage(OptunaConfig(), tmp_path / "results")


def test_interleaved_batches_count_finished_trials_and_tell_every_trial(tmp_path):
    storage = _journal(tmp_path)
    tasks = [_task(storage, tmp_path, pid) for pid in ("p_a", "p_b", "p_c")]
    lock, inflight, peak, studies_seen = threading.Lock(), [0], [0], []

    def trial(payload):
        with lock:
            inflight[0] += 1
            peak[0] = max(peak[0], inflight[0])
            studies_seen.append(payload["pid"])
        time.sleep(0.3)
        with lock:
            inflight[0] -= 1
        return trial_app.execute_trial(payload)

    _run(tasks, trial, max_trials=7, batch_size=4, workers=4)
    for t in tasks:
        trials = t.study.get_trials()
        assert [tr.state for tr in trials] == [TrialState.COMPLETE] * 7
        assert t.counts.finished == 7 and t.counts.running == 0
        assert t.counts.best_value == pytest.approx(min(tr.value for tr in trials))
    assert peak[0] == 4  # batch_size trials in flight at once
    # interleaved: each window of 3 consecutive submissions spans all three studies at first
    assert set(studies_seen[:3]) == {"p_a", "p_b", "p_c"}
    value = tasks[0].study.best_trial
    assert value.value == pytest.approx(abs(synthetic_llc(value.params, 1.5) - 1.5))


def test_failures_are_told_with_kinds_never_inf_and_do_not_count_when_infrastructure(tmp_path):
    storage = _journal(tmp_path)
    task = _task(storage, tmp_path, max_retries=1)
    calls = {"n": 0}

    def trial(payload):
        calls["n"] += 1
        n = calls["n"]
        if n == 1:
            return {
                "status": "failed",
                "failure": {
                    "kind": "diverged",
                    "message": "NaN loss",
                    "step": 10,
                    "steps_total": 1000,
                },
            }
        if n == 2:
            return {
                "status": "failed",
                "failure": {"kind": "error", "message": "boom", "exc_type": "RuntimeError"},
            }
        if n in (3, 4):  # lost worker: retried once, then told as infrastructure, re-asked
            raise ConnectionError("worker lost")
        return synthetic_trial(**payload)

    _run([task], trial, max_trials=5, batch_size=1, workers=1)
    trials = task.study.get_trials()
    kinds = [t.user_attrs.get("failure_kind") for t in trials]
    assert kinds[:3] == ["diverged", "error", "infrastructure"]
    assert trials[0].state == TrialState.COMPLETE  # a parameter failure teaches the sampler
    assert trials[0].constraints["failure"] > 0
    assert trials[1].state == TrialState.FAIL and trials[2].state == TrialState.FAIL
    assert all(v is None or abs(v) < 1e300 for t in trials for v in (t.values or []))
    assert (
        task.counts.finished == 5
    )  # diverged + error + 3 successes; the lost trial does not count
    assert len(trials) == 6 and calls["n"] == 7
    best = best_successful(task.study)
    assert best.user_attrs["status"] == "ok"


def test_kill_resume_marks_interrupted_requeues_and_ends_with_exact_count(tmp_path):
    storage = _journal(tmp_path)
    task = _task(storage, tmp_path)
    _run([task], trial_app.execute_trial, max_trials=3, batch_size=2)
    # a driver that died with two trials in flight, one of which had finished its run
    done_trial, lost_trial = task.study.ask(SPACE), task.study.ask(SPACE)
    for trial in (done_trial, lost_trial):
        payload = dict(task.base_payload, hyperparams=trial.params)
        run_id, run_dir = identity.target_location(payload)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("run_id", run_id)
        if trial is done_trial:
            trial_app.execute_trial(dict(payload, run_id=run_id, run_dir=str(run_dir)))

    resumed = _task(storage, tmp_path)
    submitted = []
    _run(
        [resumed],
        lambda p: submitted.append(p) or trial_app.execute_trial(p),
        max_trials=6,
        batch_size=2,
    )
    trials = resumed.study.get_trials()
    by_number = {t.number: t for t in trials}
    assert by_number[done_trial.number].state == TrialState.COMPLETE
    assert by_number[done_trial.number].user_attrs["reused"] is True
    assert by_number[lost_trial.number].user_attrs["failure_kind"] == "interrupted"
    finished = [t for t in trials if counts_as_finished(t.state, t.user_attrs.get("failure_kind"))]
    assert len(finished) == 6 and resumed.counts.finished == 6
    assert not [t for t in trials if not t.state.is_finished()]
    requeued = [t for t in trials if t.user_attrs.get("requeued_from") == lost_trial.number]
    assert len(requeued) == 1 and requeued[0].params == lost_trial.params
    ids = [t.user_attrs["run_id"] for t in finished]
    assert len(ids) == len(set(ids))  # nothing finished twice
    assert len(submitted) == 2  # 6 - 3 before - 1 told from disk = 2 runs, requeued included


def test_finished_runs_are_reused_not_rerun(tmp_path):
    storage = _journal(tmp_path)
    task = _task(storage, tmp_path)
    _run([task], trial_app.execute_trial, max_trials=3, batch_size=1)
    params = [t.params for t in task.study.get_trials()]

    other = studies.open_storage(OptunaConfig(), tmp_path / "results2")
    again = _task(other, tmp_path)
    for p in params:
        again.study.enqueue_trial(p)
    ran = []
    _run([again], lambda p: ran.append(p) or trial_app.execute_trial(p), max_trials=3, batch_size=1)
    assert ran == [] and again.counts.reused == 3
    assert [t.user_attrs["reused"] for t in again.study.get_trials()] == [True] * 3


def test_identical_in_flight_manifests_share_one_future(tmp_path):
    storage = _journal(tmp_path)
    task = _task(storage, tmp_path)
    task.space = {"c": CategoricalDistribution(["only"])}
    futures: list[Future] = []

    def submit(payload):
        fut = Future()
        fut.set_result(synthetic_trial(**payload))
        futures.append(fut)
        return fut

    driver = tuning.Driver([task], submit, max_trials=4, batch_size=4)
    driver._refill()
    assert len(futures) == 1 and driver.in_flight() == 1  # 4 asks, one run
    driver.run()
    assert [t.state for t in task.study.get_trials()] == [TrialState.COMPLETE] * 4


def test_parallel_tpe_uses_a_constant_liar_and_spreads_a_batch():
    sampler = samplers.make_sampler(OptunaConfig(), seed=0)
    assert sampler._constant_liar is True
    study = optuna.create_study(sampler=sampler)
    for _ in range(10):
        t = study.ask(SPACE)
        study.tell(t, (t.params["x"] - 1) ** 2)
    batch = [study.ask(SPACE).params["x"] for _ in range(8)]  # asked, none told
    assert len({round(x, 6) for x in batch}) == 8


def _objective_values(metrics: dict, task) -> list[float] | None:
    """The study's objective values of ``metrics``, scored as the driver scores them."""
    return scoring.objective_values(
        metrics, task.ref, task.objective, task.objectives, task.huber_delta
    )


def test_huber_objective_keeps_units_and_defaults_to_twice_the_reference_se(tmp_path):
    task = _task(_journal(tmp_path), tmp_path, cfg=OptunaConfig(objective="huber", isolate=False))
    ok = {"status": "ok", "llc_hat": 1.5 + 0.01}  # |e| = 0.01 <= delta = 0.02
    assert _objective_values(ok, task) == [pytest.approx(0.01**2 / (2 * 0.02))]
    far = {"status": "ok", "llc_hat": 1.5 - 1.0}
    assert _objective_values(far, task) == [pytest.approx(1.0 - 0.01)]
    assert _objective_values({"status": "failed"}, task) is None
    assert _objective_values({"status": "ok", "llc_hat": None}, task) is None


def test_two_objectives_error_and_runtime(tmp_path):
    cfg = OptunaConfig(objectives=["error", "runtime"], isolate=False)
    task = _task(_journal(tmp_path), tmp_path, cfg=cfg)
    m = {"status": "ok", "llc_hat": 2.0, "seconds": {"total": 3.0}}
    assert _objective_values(m, task) == [pytest.approx(0.5), 3.0]
    _run([task], trial_app.execute_trial, max_trials=4, batch_size=2)
    assert len(task.study.best_trials) >= 1


def test_parquet_schema_and_the_readme_snippet(tmp_path):
    storage = _journal(tmp_path)
    tasks = [_task(storage, tmp_path, pid) for pid in ("p_a", "p_b")]
    _run(tasks, trial_app.execute_trial, max_trials=5, batch_size=2)
    rows = [r for t in tasks for r in results.study_rows(t.study, t.pid, t.method, t.ref)]
    path = parquet.write_parquet(rows, tmp_path / "results" / layout.TRIALS_TABLE)

    df = pd.read_parquet(path)
    ok = df[df.status == "ok"]
    best = ok.loc[ok.groupby(["pid", "method"]).objective.idxmin()]
    curve = df.sort_values("trial_number").assign(
        best_so_far=lambda d: d.groupby(["pid", "method"]).objective.cummin()
    )
    assert len(df) == 10 and set(best.pid) == {"p_a", "p_b"}
    for t in tasks:
        assert best.set_index("pid").loc[t.pid, "objective"] == pytest.approx(t.counts.best_value)
        c = curve[curve.pid == t.pid].best_so_far.to_numpy()
        assert (c[1:] <= c[:-1]).all() and c[-1] == pytest.approx(t.counts.best_value)
    assert {"hp_x", "hp_y", "hyperparams", "trial_id", "llc_ref", "runtime_sec"} <= set(df)
    assert df.hyperparams.iloc[0]["x"] == df.hp_x.iloc[0]
    assert df.trial_id.str.startswith("r_").all()
    assert (df.error == df.llc_hat - df.llc_ref).all()


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


def test_pickle_export_is_self_contained(tmp_path):
    storage = _journal(tmp_path)
    task = _task(storage, tmp_path)
    _run([task], trial_app.execute_trial, max_trials=3, batch_size=1)
    path = studies.export_pickle(task.study, tmp_path / "results", task.pid, task.method)
    assert path.name == "p_a:sgld.pkl"
    loaded = pickle.loads(path.read_bytes())
    assert len(loaded.trials) == 3
    assert loaded.best_value == pytest.approx(task.study.best_value)


def test_progress_shows_counts_best_and_eta():
    clock = iter([0.0, 100.0]).__next__
    t = tuning.StudyTask(pid="p_a", method="vi", study=None, space={}, base_payload={}, ref={})
    t.counts.finished, t.counts.finished_this_run, t.counts.running, t.counts.failed = 4, 4, 2, 1
    t.counts.best_value, t.counts.best_number = 0.0123, 3
    text = progress.StudyTable([t], max_trials=10, clock=clock, emit=print).render()
    assert "p_a:vi" in text and "4/10" in text and "0.0123 (#3)" in text
    assert "2m30s" in text  # 6 remaining at 25 s each
    assert progress.eta_seconds(0, 0, 0.0) == 0.0 and progress.eta_seconds(3, 0, 5.0) is None

    now, shown = [0.0], []
    show = progress.StudyTable([t], max_trials=10, clock=lambda: now[0], emit=shown.append)
    show()
    show()  # nothing changed: quiet
    t.counts.finished += 1
    show()
    now[0] += 600.0
    show()  # only time passed: quiet (issue 19: no reprint of an unchanged table)
    assert len(shown) == 2 and "5/10" in shown[1]


# ------------------------------------------------------------------------- CLI checks


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


def test_search_space_overrides_and_warm_start_are_checked():
    space, fixed = search_space.method_space(
        "sgld",
        {
            "steps": 300,
            "eta0": {"low": 1e-5, "high": 1e-3, "log": True},
            "batch": {"choices": [32, 64]},
        },
        "optuna.search_space.sgld",
    )
    assert "steps" not in space and fixed == {"steps": 300}
    assert space["eta0"].low == 1e-5 and space["eta0"].log
    assert space["batch"].choices == (32, 64)
    with pytest.raises(ConfigError, match=r"optuna.enqueue.sgld\[0\].steps"):
        search_space.check_enqueue("sgld", [{"steps": 100}], space, fixed)
    with pytest.raises(ConfigError, match=r"optuna.enqueue.sgld\[0\]"):
        search_space.check_enqueue("sgld", [{"eta0": -1.0}], space, fixed)


def test_parsl_config_file_is_loaded_or_rejected_clearly(tmp_path):
    from parsl.executors import HighThroughputExecutor

    cfg = configs.load_parsl_config(Path(__file__).parents[1] / "parsl_configs" / "local.py")
    (htex,) = cfg.executors
    assert isinstance(htex, HighThroughputExecutor) and cfg.monitoring is None
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="--parsl-config"):
        configs.load_parsl_config(bad)


def test_missing_sampler_package_is_a_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cmaes" else real(name, *a)
    )
    with pytest.raises(ConfigError, match="optuna.sampler"):
        samplers.check_sampler(OptunaConfig(sampler="cmaes"))


def test_worker_path_puts_the_interpreter_bin_first(monkeypatch):
    import os
    import sys

    monkeypatch.setenv("PATH", "/usr/bin")
    session.ensure_worker_path()
    assert os.environ["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


def test_metrics_json_is_written_for_a_failed_inline_trial(tmp_path):
    payload = {
        "pid": "p_a",
        "method": "sgld",
        "hyperparams": {"x": 1.0},
        "budget_sec": 5.0,
        "seed": 0,
        "artifacts": str(tmp_path),
        "isolate": False,
        "target": "lambda_hat.trial.synthetic:no_such_function",
    }
    run_id, run_dir = identity.target_location(payload)
    m = trial_app.execute_trial(dict(payload, run_id=run_id, run_dir=str(run_dir)))
    assert m["failure"]["kind"] == "error" and m["failure"]["exc_type"] == "AttributeError"
    assert identity.load_valid_metrics(run_dir) is None  # an error is run again, not reused
    assert (run_dir / "metrics.json").is_file()
    atomic_write_json(
        run_dir / "metrics.json", {"status": "failed", "failure": {"kind": "diverged"}}
    )
    assert identity.load_valid_metrics(run_dir)["failure"]["kind"] == "diverged"


def test_a_resumed_study_does_not_replay_its_random_start_up(tmp_path):
    storage = _journal(tmp_path)
    cfg = OptunaConfig(isolate=False, n_startup_trials=10)
    first = studies.open_study(storage, "p_a", "sgld", cfg, seed=7)
    asked = [first.ask(SPACE) for _ in range(2)]
    for t in asked:
        first.tell(t, 1.0)
    resumed = studies.open_study(storage, "p_a", "sgld", cfg, seed=7)
    assert resumed.ask(SPACE).params not in [t.params for t in asked]


# --- pruning, absurd estimates, the journal --------------------------------------------------


def _pruning_task(storage, tmp_path, pruner="median"):
    cfg = OptunaConfig(
        isolate=False, pruner=pruner, pruner_startup_trials=2, pruner_warmup=0.3, seed=1
    )
    return _task(storage, tmp_path, cfg=cfg, prune=studies.prunes(cfg))


def test_trials_with_bad_intermediate_estimates_are_pruned_and_count_as_finished(
    tmp_path, monkeypatch
):
    """Real channel: execute_trial (inline) -> synthetic_trial's report_progress / stop_requested
    -> the driver's poll, MedianPruner, stop request -> ``pruned`` metrics -> told PRUNED."""
    monkeypatch.setenv("LAMBDA_HAT_SYNTHETIC_SECONDS", "0.5")  # 10 chunks of 50 ms
    task = _pruning_task(_journal(tmp_path), tmp_path)
    good = [{"x": 1.0, "y": 1.0}, {"x": 1.02, "y": 1.0}, {"x": 1.0, "y": 1.005}]  # 3rd < median
    bad = [{"x": 8.0, "y": 1.0}, {"x": 9.0, "y": 0.6}, {"x": 10.0, "y": 2.0}]
    for params in good + bad:
        task.study.enqueue_trial(params)
    pool = ThreadPoolExecutor(1)
    try:
        driver = tuning.Driver(
            [task],
            lambda p: pool.submit(trial_app.execute_trial, p),
            max_trials=6,
            batch_size=1,
            poll_sec=0.01,
        )
        driver.recover(task)
        driver.run()
    finally:
        pool.shutdown()
    trials = task.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED] * 3
    assert task.counts.finished == 6 and len(trials) == 6  # pruned trials count toward max_trials
    assert task.counts.pruned == 3 and task.counts.failed == 0
    assert "pruned" in progress.StudyTable([task], 6, emit=print).render()
    for t in trials[:3]:
        assert sorted(t.intermediate_values) == list(range(1, pruning.PRUNING_STEPS + 1))
    for t in trials[3:]:
        metrics = read_json(Path(t.user_attrs["run_dir"]) / "metrics.json")
        assert metrics["status"] == "failed" and metrics["failure"]["kind"] == "pruned"
        assert 3 <= metrics["work"]["steps"] < metrics["work"]["steps_planned"] == 10
        assert metrics["llc_hat"] == pytest.approx(synthetic_llc(t.params, REF["llc_ref"]))
        assert max(t.intermediate_values) >= 3  # not before the warm-up (30% of the work)
        assert t.value == pytest.approx(abs(metrics["llc_hat"] - REF["llc_ref"]))
        assert t.user_attrs["failure_kind"] == "pruned"
    rows = pd.DataFrame(results.study_rows(task.study, task.pid, task.method, REF))
    assert list(rows.status) == ["ok"] * 3 + ["failed"] * 3
    assert list(rows.failure_kind[3:]) == ["pruned"] * 3


def test_pruner_config_and_multi_objective_studies_do_not_prune():
    steps = pruning.PRUNING_STEPS
    med = studies.make_pruner(OptunaConfig(), steps)
    assert isinstance(med, optuna.pruners.MedianPruner) and med._n_warmup_steps == 3
    pct = studies.make_pruner(OptunaConfig(pruner="percentile", pruner_percentile=10), steps)
    assert isinstance(pct, optuna.pruners.PercentilePruner) and pct._percentile == 10
    hb = studies.make_pruner(OptunaConfig(pruner="hyperband"), steps)
    assert isinstance(hb, optuna.pruners.HyperbandPruner) and hb._max_resource == steps
    assert isinstance(
        studies.make_pruner(OptunaConfig(pruner="none"), steps), optuna.pruners.NopPruner
    )
    assert studies.prunes(OptunaConfig()) and not studies.prunes(OptunaConfig(pruner="none"))
    assert not studies.prunes(OptunaConfig(objectives=["error", "runtime"]))
    with pytest.raises(ConfigError, match="optuna.pruner"):
        from lambda_hat.schema import validate

        validate({"pruner": "sometimes"}, OptunaConfig, "optuna")


def test_absurd_or_non_finite_ok_estimates_are_told_as_diverged(tmp_path):
    ok = {"status": "ok", "llc_hat": 1.9e294, "posterior": {"d": 21}}
    screened = outcome.screen_estimate(ok, REF)
    assert screened["status"] == "failed" and screened["failure"]["kind"] == "diverged"
    assert "implausible" in screened["failure"]["message"]
    bound = outcome.IMPLAUSIBLE_FACTOR * 21 / 2  # d/2 = 10.5 > llc_ref = 1.5
    assert outcome.screen_estimate(dict(ok, llc_hat=0.99 * bound), REF)["status"] == "ok"
    assert outcome.screen_estimate(dict(ok, llc_hat=-1.01 * bound), REF)["status"] == "failed"
    no_d = {"status": "ok", "llc_hat": 1600.0}  # bound 1000 x llc_ref = 1500
    assert outcome.screen_estimate(no_d, REF)["status"] == "failed"
    assert outcome.screen_estimate(no_d, {})["status"] == "ok"  # nothing to compare with

    storage = _journal(tmp_path)
    task = _task(storage, tmp_path)
    calls = {"n": 0}

    def trial(payload):
        calls["n"] += 1
        if calls["n"] == 1:
            return {"status": "ok", "llc_hat": 1.9e294, "posterior": {"d": 21}}
        return synthetic_trial(**payload)

    _run([task], trial, max_trials=3, batch_size=1, workers=1)
    first = task.study.get_trials()[0]
    assert first.state == TrialState.COMPLETE and first.constraints["failure"] > 0
    assert first.user_attrs["failure_kind"] == "diverged"
    assert best_successful(task.study).number != 0
    row = results.trial_row(first, task.pid, task.method, REF, metrics={"status": "ok"})
    assert row["status"] == "failed" and row["objective"] is None


def test_journal_reads_back_its_own_writes_and_other_writers(tmp_path):
    """The group-commit backend serves its own appends from memory, but sees another
    process's appends (here: Optuna's stock backend on the same file) and stays loadable."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = tmp_path / "journal.log"
    ours = studies.Journal(path)
    study = optuna.create_study(storage=ours, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    stock = JournalStorage(JournalFileBackend(str(path)))
    other = optuna.load_study(study_name="s", storage=stock)
    other.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)  # a foreign writer
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert len(study.trials) == 6 and len({t.number for t in study.trials}) == 6
    ours.sync()
    fresh = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    assert [t.params for t in fresh.trials] == [t.params for t in study.trials]


@pytest.mark.slow  # compiles SGLD: 5-20 s on the shared machine, plus the linear problem
def test_the_runner_reports_its_estimate_between_chunks_and_stops_on_request(
    linear_problem, tmp_path, monkeypatch
):
    from lambda_hat.llc import channel, engine
    from lambda_hat.trial import runner

    progress, stop = tmp_path / channel.PROGRESS_NAME, tmp_path / channel.STOP_NAME
    monkeypatch.setenv(channel.PROGRESS_ENV, str(progress))
    monkeypatch.setenv(channel.STOP_ENV, str(stop))
    hp = {"eta0": 1e-4, "batch": 32, "steps": 1600, "eval_every": 5, "chains": 2}
    blocks = engine.chunk_capacity(320)  # 5-step blocks per chunk
    channel.request_stop(tmp_path)
    m = runner.run_method_trial(linear_problem, "sgld", hp, 600.0, 0, artifacts=tmp_path / "a")
    assert m["status"] == "failed" and m["failure"]["kind"] == "pruned"
    assert m["work"]["steps"] == 5 * blocks < m["work"]["steps_planned"] == 1600
    assert m["failure"]["fraction_done"] == pytest.approx(blocks / 320)
    history = channel.read_progress(tmp_path)["history"]
    assert history == [[pytest.approx(blocks / 320), pytest.approx(m["llc_hat"])]]
    assert 0.5 < m["llc_hat"] < 3.0  # exact 1.4996 (plans/methods.md); a first-chunk estimate

    stop.unlink()  # no request: one point per chunk, the last one the final estimate
    m = runner.run_method_trial(linear_problem, "sgld", hp, 600.0, 1, artifacts=tmp_path / "a")
    history = channel.read_progress(tmp_path)["history"]
    assert m["status"] == "ok" and len(history) == -(-320 // blocks)
    assert history[-1] == [1.0, pytest.approx(m["llc_hat"])]
