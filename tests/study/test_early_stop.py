"""Studies that stop when they are done (converged, grid exhausted) and the staged recipe (grid
or QMC first, then TPE on the same study). Trials are plain functions on a thread pool."""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import Future, ThreadPoolExecutor

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.parallel import session
from lambda_hat.reference import app as reference_app
from lambda_hat.schema import ConfigError
from lambda_hat.study import driver as tuning
from lambda_hat.study import grid_sampler, pipeline, progress, scoring, stopping
from lambda_hat.study import optuna_samplers as samplers
from lambda_hat.study import storage as studies
from lambda_hat.trial import app as trial_app
from lambda_hat.trial import submit as trial_submit

optuna.logging.set_verbosity(optuna.logging.WARNING)

REF = {"llc_ref": 1.5, "se_ref": 0.01}
SPACE = {"x": FloatDistribution(0.1, 10.0, log=True), "y": FloatDistribution(0.5, 2.0)}


def _task(storage, tmp_path, cfg: OptunaConfig, space=None) -> tuning.StudyTask:
    study = studies.open_study(storage, "p_a", "sgld", cfg, seed=1)
    base = {"pid": "p_a", "method": "sgld", "budget_sec": 10.0, "seed": 0, "ref": REF}
    base["artifacts"] = str(tmp_path / "artifacts")
    return tuning.StudyTask(
        pid="p_a",
        method="sgld",
        study=study,
        space=dict(space or SPACE),
        base_payload=base,
        ref=REF,
        objective=cfg.objective,
        objectives=tuple(cfg.objectives),
        huber_delta=cfg.huber_delta,
        stop_rule=stopping.StopRule.from_config(cfg),
    )


def _run(task, trial_fn, max_trials, batch_size=1):
    """Run one driver to its end; returns the number of trials it submitted."""
    pool, submitted = ThreadPoolExecutor(batch_size), [0]

    def submit(payload):
        submitted[0] += 1
        return pool.submit(trial_fn, payload)

    try:
        driver = tuning.Driver([task], submit, max_trials=max_trials, batch_size=batch_size)
        driver.recover(task)
        driver.run()
    finally:
        pool.shutdown()
    return submitted[0]


def _ok(error: float) -> dict:
    return {"status": "ok", "llc_hat": REF["llc_ref"] + error, "seconds": 0.01}


def _errors_in_order(values):
    """A trial function returning the given |errors| in call order (then the last forever)."""
    calls = [0]

    def trial(payload):
        calls[0] += 1
        return _ok(values[min(calls[0], len(values)) - 1])

    return trial


# ---------------------------------------------------------------------------- the rule


def test_stagnation_is_the_last_k_trials_gain_over_the_best_before_them():
    e = [0.5, 0.2, 0.1, 0.105, 0.3, 0.099, 0.2]
    assert stopping.stagnation(e[:4], 4, 0.01) is None  # nothing before the window
    assert stopping.stagnation(e[:5], 4, 0.01) is None  # 0.5 -> 0.1 inside the window
    assert stopping.stagnation(e[:6], 4, 0.01) is None  # 0.2 -> 0.099
    assert stopping.stagnation(e, 4, 0.01) == pytest.approx(0.001)  # 0.1 -> 0.099
    # failures (None) are trials that did not improve; none before the window: not converged
    assert stopping.stagnation([0.3, None, None, None], 3, 0.01) == 0.0
    assert stopping.stagnation([None, None, 0.3, 0.3], 2, 0.01) is None
    # small gains add up: three of 0.004 in the window exceed 0.01
    assert stopping.stagnation([0.1, 0.096, 0.092, 0.088], 3, 0.01) is None
    assert stopping.stagnation([0.1, 0.096, 0.092, 0.088], 2, 0.01) == pytest.approx(0.008)


@pytest.mark.parametrize("err", [0.001, 0.01, 0.02, 0.5])
def test_huber_values_turn_back_into_errors(tmp_path, err):
    storage = optuna.storages.InMemoryStorage()
    task = _task(storage, tmp_path, OptunaConfig(objective="huber"))  # δ = 2 x 0.01
    (value,) = scoring.objective_values(_ok(err), REF, task.objective, huber_delta=task.huber_delta)
    assert scoring.error_of_objective(value, REF, task.objective) == pytest.approx(err)
    task.objective = "abs"
    assert scoring.error_of_objective(err, REF, task.objective) == err


def test_multi_objective_studies_refuse_stop_after_stale():
    cfg = OptunaConfig(stop_after_stale=5, objectives=["error", "runtime"])
    with pytest.raises(ConfigError) as exc:
        samplers.check_sampler(cfg)
    assert exc.value.where == "optuna.stop_after_stale" and "Pareto" in str(exc.value)
    samplers.check_sampler(OptunaConfig(stop_after_stale=5))  # one objective: fine


# ------------------------------------------------------------------------- the driver


def test_a_converged_study_stops_records_why_and_a_rerun_asks_nothing(tmp_path):
    storage = studies.open_storage(OptunaConfig(), tmp_path / "results")
    cfg = OptunaConfig(stop_after_stale=4, n_startup_trials=3)
    trial = _errors_in_order([0.5, 0.2, 0.1, 0.105, 0.3, 0.099, 0.2])
    task = _task(storage, tmp_path, cfg)
    assert _run(task, trial, max_trials=20) == 7  # see the stagnation test: converged at 7
    record = task.study.user_attrs[stopping.ATTR]
    assert record == task.counts.early_stop
    assert record["rule"] == "stale" and record["finished"] == 7 and record["stale"] == 4
    assert record["tolerance"] == 0.01 and record["best_number"] == 5
    assert record["best_error"] == pytest.approx(0.099)
    assert "converged" in record["reason"] and "reference's SE" in record["reason"]
    text = progress.StudyTable([task], 20, emit=print).render()
    assert "converged" in text and "7/20" in text

    rerun = _task(storage, tmp_path, cfg)  # the same config: still converged, nothing asked
    assert _run(rerun, trial, max_trials=40) == 0 and len(rerun.study.trials) == 7
    # K = 6 no longer holds (0.5 -> 0.099 within the last 6): two more trials converge it again
    longer = _task(storage, tmp_path, OptunaConfig(stop_after_stale=6, n_startup_trials=3))
    assert _run(longer, trial, max_trials=40) == 2
    assert longer.study.user_attrs[stopping.ATTR]["finished"] == 9


def test_in_flight_trials_of_a_converged_study_finish_and_are_told(tmp_path):
    storage = studies.open_storage(OptunaConfig(), tmp_path / "results")
    task = _task(storage, tmp_path, OptunaConfig(stop_after_stale=3, n_startup_trials=3))
    submitted = _run(task, lambda p: _ok(0.2), max_trials=50, batch_size=3)
    trials = task.study.get_trials()
    # converged at the 4th finished trial; at most the 2 others then in flight came after it
    assert 4 <= len(trials) <= 6 and submitted == len(trials)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert task.counts.early_stop["finished"] == len(trials) and task.counts.running == 0


def test_a_gain_larger_than_stop_min_improvement_keeps_the_study_going(tmp_path):
    storage = optuna.storages.InMemoryStorage()
    cfg = OptunaConfig(stop_after_stale=2, stop_min_improvement=0.05, n_startup_trials=3)
    task = _task(storage, tmp_path, cfg)
    # gains of 0.06 keep it open; then 0.03 + 0.01 over two trials is <= 0.05
    trial = _errors_in_order([0.5, 0.44, 0.38, 0.32, 0.29, 0.28])
    assert _run(task, trial, max_trials=20) == 6
    assert task.counts.early_stop["tolerance"] == 0.05
    assert "stop_min_improvement" in task.counts.early_stop["reason"]


# ----------------------------------------------------------------------------- the grid


def test_grid_values_of_each_kind_of_parameter():
    log_x = FloatDistribution(0.1, 10.0, log=True)
    assert grid_sampler.grid_values(log_x, 3, "x") == pytest.approx([0.1, 1.0, 10.0])
    assert grid_sampler.grid_values(FloatDistribution(0.5, 2.0), 4, "y") == [0.5, 1.0, 1.5, 2.0]
    assert grid_sampler.grid_values(IntDistribution(0, 10, step=5), None, "n") == [0, 5, 10]
    assert grid_sampler.grid_values(IntDistribution(1, 3), 5, "n") == [1, 2, 3]  # rounded, distinct
    assert grid_sampler.grid_values(CategoricalDistribution([32, 64]), 3, "b") == [32, 64]
    stepped = FloatDistribution(0.0, 1.0, step=0.25)
    assert grid_sampler.grid_values(stepped, None, "s") == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    "dist,words",
    [
        (FloatDistribution(1e-5, 1e-2, log=True), "continuous"),
        (IntDistribution(5000, 20000), "15001 values"),
    ],
)
def test_grid_without_finite_choices_names_the_parameter_and_the_fix(dist, words):
    cfg = OptunaConfig(sampler="grid")
    space = {"batch": CategoricalDistribution([32, 64]), "eta0": dist}
    with pytest.raises(ConfigError) as exc:
        grid_sampler.check_grid(cfg, space, "optuna.search_space.sgld")
    assert exc.value.where == "optuna.search_space.sgld.eta0"
    assert words in exc.value.problem and "grid_points" in exc.value.fix
    assert grid_sampler.check_grid(OptunaConfig(sampler="grid", grid_points=3), space, "s") == 6
    assert grid_sampler.check_grid(OptunaConfig(grid_points=3), space, "s") == 0  # not the grid


@pytest.mark.parametrize("max_trials,expected", [(20, 9), (5, 5)])
def test_a_grid_study_tries_every_point_once_and_stops_when_exhausted(
    tmp_path, max_trials, expected
):
    storage = studies.open_storage(OptunaConfig(), tmp_path / "results")
    task = _task(storage, tmp_path, OptunaConfig(sampler="grid", grid_points=3))
    assert _run(task, lambda p: _ok(0.1), max_trials=max_trials, batch_size=3) == expected
    points = {(t.params["x"], t.params["y"]) for t in task.study.trials}
    assert len(points) == expected == len(task.study.trials)  # no point twice, in parallel too
    grid = {(x, y) for x in grid_sampler.grid_values(SPACE["x"], 3, "x") for y in (0.5, 1.25, 2.0)}
    assert points <= grid
    if expected == 9:
        assert (
            task.counts.early_stop["rule"] == "grid"
            and "all 9 points" in task.counts.early_stop["reason"]
        )
    else:  # a random 5 of the 9, not the first five in grid order
        assert task.counts.early_stop is None and task.counts.finished == 5
        assert points != set(sorted(grid)[:5])


def test_an_interrupted_grid_trial_is_requeued_on_its_point(tmp_path):
    storage = studies.open_storage(OptunaConfig(), tmp_path / "results")
    cfg = OptunaConfig(sampler="grid", grid_points=3)
    task = _task(storage, tmp_path, cfg)
    assert _run(task, lambda p: _ok(0.1), max_trials=4) == 4
    lost = task.study.ask(SPACE)  # a driver died while this trial ran
    lost.set_user_attr("run_dir", str(tmp_path / "lost"))
    resumed = _task(storage, tmp_path, cfg)
    assert _run(resumed, lambda p: _ok(0.1), max_trials=20, batch_size=2) == 5
    trials = resumed.study.get_trials()
    copy = [t for t in trials if t.user_attrs.get("requeued_from") == lost.number]
    assert trials[lost.number].user_attrs["failure_kind"] == "interrupted"
    assert len(copy) == 1 and copy[0].params == lost.params
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 9 == len({(t.params["x"], t.params["y"]) for t in finished})
    assert resumed.counts.early_stop["rule"] == "grid"


def test_enqueued_trials_on_a_grid_get_their_point_or_a_free_one():
    sampler = samplers.make_sampler(OptunaConfig(sampler="grid", grid_points=3), seed=0)
    sampler.bind(SPACE)
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial({"x": 10.0, "y": 2.0})  # a requeued grid point
    study.enqueue_trial({"x": 0.1})  # a partial warm start: y comes from the grid
    first, second = study.ask(SPACE), study.ask(SPACE)
    assert first.params == {"x": 10.0, "y": 2.0}
    assert study._storage.get_trial(first._trial_id).system_attrs["grid_id"] == sampler.point_of(
        first.params
    )
    assert second.params["x"] == 0.1 and second.params["y"] in (0.5, 1.25, 2.0)


# ----------------------------------------------------------------------- staged recipe


def _fails_above_one(payload):
    """Succeeds (|error| = |ln x| / 10) for x <= 1, diverges early above."""
    x = payload["hyperparams"]["x"]
    if x > 1.0:
        failure = {"kind": "diverged", "message": "NaN", "step": 10, "steps_planned": 100}
        return {"status": "failed", "failure": failure}
    return _ok(abs(math.log(x)) / 10)


@pytest.mark.parametrize("first", ["grid", "qmc"])
def test_staged_recipe_tpe_is_warm_started_by_the_first_stage(tmp_path, first):
    storage = studies.open_storage(OptunaConfig(), tmp_path / "results")
    stage1 = OptunaConfig(sampler=first, grid_points=4 if first == "grid" else None)
    task = _task(storage, tmp_path, stage1)
    assert _run(task, _fails_above_one, max_trials=16, batch_size=2) == 16
    earlier = task.study.get_trials()
    assert any(t.params["x"] > 1 for t in earlier) and any(t.params["x"] <= 1 for t in earlier)
    if first == "grid":
        assert task.counts.early_stop["rule"] == "grid"  # 4 x 4 points

    # stage 2: the same study (same storage), sampler tpe, more trials
    stage2 = OptunaConfig(sampler="tpe", n_startup_trials=10)
    tuned = _task(storage, tmp_path, stage2)
    assert not tuned.study.sampler._starting(tuned.study)  # 16 finished trials: no Sobol
    anchors, found = samplers.box_anchors(earlier)
    box = samplers.feasible_box(SPACE, anchors, margin=0.5)
    assert found and box["x"].high < 10.0
    assert _run(tuned, _fails_above_one, max_trials=24) == 8
    later = tuned.study.get_trials()[16:]
    # the first TPE proposal lies in the box around the first stage's successes
    assert box["x"].low * (1 - 1e-9) <= later[0].params["x"] <= box["x"].high * (1 + 1e-9)
    # and every trial declares the same distributions: TPE models the first stage's jointly
    assert all(t.distributions == earlier[0].distributions for t in later)
    assert tuned.counts.early_stop is None and tuned.study.user_attrs.get(stopping.ATTR) is None


def test_parsl_optuna_runs_a_grid_to_its_end_and_a_rerun_asks_nothing(tmp_path, monkeypatch):
    """The pipeline in one process (Parsl and the reference replaced): the grid is bound to the
    study's space where the tasks are made, and the exhausted grid is recorded and kept."""
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "problems: [{model: linear, data: small}]\nmethods: [vi]\n"
        "optuna: {max_trials: 10, batch_size: 2, isolate: false, pruner: none, validate: null,"
        " sampler: grid, search_space: {vi: {lr: {choices: [0.001, 0.01]}, M: 4, r: 1,"
        " whitening_mode: none, steps: {choices: [500, 1000]}, batch_size: 32}}}\n"
    )
    monkeypatch.chdir(tmp_path)
    pool, payloads = ThreadPoolExecutor(2), []

    def submit(payload):
        payloads.append(payload)
        return pool.submit(trial_app.execute_trial, payload)

    def reference(payload):
        fut = Future()
        fut.set_result({**REF, "gate": {"passed": True}})
        return fut

    monkeypatch.setattr(session, "parsl_session", lambda *a: contextlib.nullcontext())
    monkeypatch.setattr(trial_submit, "submitter", lambda: submit)
    monkeypatch.setattr(reference_app, "submitter", lambda: reference)
    target = "lambda_hat.trial.synthetic:synthetic_trial"
    try:
        assert pipeline.main(["--config", str(cfg), "--trial-target", target]) == 0
        assert len(payloads) == 4
        assert pipeline.main(["--config", str(cfg), "--trial-target", target]) == 0
        assert len(payloads) == 4  # the rerun asked nothing
    finally:
        pool.shutdown()
    storage = studies.open_storage(OptunaConfig(), tmp_path / "results")
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    hps = {(t.params["lr"], t.params["steps"]) for t in study.trials}
    assert hps == {(0.001, 500), (0.001, 1000), (0.01, 500), (0.01, 1000)}
    assert study.user_attrs[stopping.ATTR]["rule"] == "grid"
