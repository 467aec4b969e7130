"""Failed trials in a study: graded constraints, tell_args/tell and best_successful
(lambda_hat.study.tell), and FailureGuard (lambda_hat.study.guard). The failure kinds
themselves: tests/trial/test_outcome.py.
"""

from __future__ import annotations

import math

import optuna
import pytest
from helpers.failures import OK, diverged, objective
from optuna.trial import TrialState

from lambda_hat.methods import METHODS, culprits, default_hyperparams
from lambda_hat.study.guard import FailureGuard
from lambda_hat.study.tell import (
    CONSTRAINT_KEY,
    best_successful,
    constraint_value,
    describe_best,
    tell,
    tell_args,
)
from lambda_hat.trial.outcome import (
    FAILURE_KINDS,
    failed_metrics,
    failure_of,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_constraint_is_negative_for_success_and_graded_for_failures():
    assert constraint_value(OK) == -1.0
    # diverging at step 10 of 10,000 is worse (larger) than at 1,000, than at 9,000
    c10, c1000, c9000 = (constraint_value(diverged(s)) for s in (10, 1000, 9000))
    assert 1.0 >= c10 > c1000 > c9000 > 0.0
    assert c9000 == pytest.approx(0.05 + 0.95 * (1 - math.log1p(9000) / math.log1p(10_000)))
    t_early, t_late = (
        constraint_value(failed_metrics("timeout", "t", fraction_done=f)) for f in (0.1, 0.9)
    )
    assert t_early == pytest.approx(0.05 + 0.95 * 0.9) and t_late == pytest.approx(0.145)
    assert constraint_value(failed_metrics("oom", "o")) == 1.0
    for kind in FAILURE_KINDS:  # always finite and positive, whatever the fields say
        c = constraint_value(failed_metrics(kind, "m", step=float("nan"), fraction_done=7))
        assert math.isfinite(c) and 0 < c <= 1


def test_malformed_metrics_count_as_error():
    assert tell_args(None, objective).user_attrs["failure_kind"] == "error"
    assert tell_args({"status": "weird"}, objective).user_attrs["failure_kind"] == "error"
    bad_kind = {"status": "failed", "failure": {"kind": "exploded", "message": "x"}}
    assert tell_args(bad_kind, objective).user_attrs["failure_kind"] == "error"


# --- telling Optuna -------------------------------------------------------------------------


def test_tell_args_per_kind():
    s = tell_args(OK, objective)
    assert (s.state, s.values, s.constraint) == (TrialState.COMPLETE, [0.5], -1.0)
    d = tell_args(diverged(100), objective, placeholder=7.0)
    assert d.state == TrialState.COMPLETE and d.values == [7.0] and 0 < d.constraint < 1
    assert d.user_attrs["failure_kind"] == "diverged" and d.user_attrs["failure_step"] == 100
    for kind in ("error", "crashed", "interrupted", "infrastructure"):
        f = tell_args(failed_metrics(kind, "m"), objective)
        assert f.state == TrialState.FAIL and f.values is None and f.constraint is None
    # a non-finite or raising objective never reaches the storage
    assert tell_args({"status": "ok", "llc_hat": float("inf")}, objective).state == TrialState.FAIL
    assert (
        tell_args({"status": "ok"}, objective)
        .user_attrs["failure_message"]
        .startswith("objective raised KeyError")
    )
    with pytest.raises(ValueError, match="placeholder"):
        tell_args(diverged(1), objective, placeholder=float("inf"))


def test_tell_sets_constraint_and_best_is_only_ever_a_success():
    study = optuna.create_study()
    t0 = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    tell(study, t0, diverged(10), objective, fallback=0.0)  # placeholder 0 "beats" everything
    assert best_successful(study) is None
    assert "no successful trial" in describe_best(study) and "diverged: 1" in describe_best(study)
    t1 = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    tell(study, t1.number, OK, objective)  # by number, as after a driver restart
    t2 = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    tell(study, t2, diverged(5000), objective)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[0].constraints[CONSTRAINT_KEY] > trials[2].constraints[CONSTRAINT_KEY] > 0
    assert trials[1].constraints == {CONSTRAINT_KEY: -1.0}
    assert trials[2].values == [0.5]  # placeholder = worst successful value so far
    assert best_successful(study).number == 1 == study.best_trial.number


# --- the guard, through a small ask/tell loop --------------------------------------------------


def _loop(study, guard, trial_fn, n_trials=40):
    """The driver's loop in miniature: ask, run, tell, record; stop when the guard says so."""
    told = []
    for _ in range(n_trials):
        trial = study.ask()
        params = {"eta0": trial.suggest_float("eta0", 1e-6, 1e-1, log=True)}
        metrics = trial_fn(trial.number, params)
        tell(study, trial, metrics, objective)
        told.append(trial.number)
        decision = guard.record(
            trial.number, metrics, f"/runs/r_{trial.number}/metrics.json", params
        )
        if not decision.proceed:
            return told, decision
    return told, decision


def test_all_fail_study_stops_after_max_failures_with_a_diagnosis():
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    guard = FailureGuard(max_consecutive_failures=10)

    def always_diverges(number, params):
        return diverged(max(1, int(10_000 * 1e-4 / params["eta0"])))

    told, decision = _loop(study, guard, always_diverges)
    assert decision.action == "stop" and len(told) == 10
    trials = study.get_trials()
    assert len(trials) == 10 and all(t.state == TrialState.COMPLETE for t in trials)  # none lost
    assert all(t.constraints[CONSTRAINT_KEY] > 0 for t in trials)
    assert best_successful(study) is None
    text = decision.message
    assert "failure kinds: diverged x10" in text
    assert "most common message (10x): non-finite loss" in text
    assert "/runs/r_0/metrics.json" in text and "eta0: " in text
    assert "every trial diverged over eta0" in text and "move eta0's upper bound to" in text
    lo = min(t.params["eta0"] for t in trials)
    suggested = float(text.split("upper bound to ")[1].split()[0])
    assert suggested < lo  # the suggestion points below everything that was tried
    assert guard.record(10, OK).action == "stop"  # terminal: stays stopped


def test_diverging_trials_with_successes_continue_and_suggest_the_edge():
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1))
    guard = FailureGuard(max_consecutive_failures=3)

    def edge(number, params):
        return diverged(10) if params["eta0"] > 3e-3 else OK

    told, decision = _loop(study, guard, edge, n_trials=25)
    assert decision.proceed and len(told) == 25
    fails = [r for r in guard.records if r.failure]
    assert fails and all(r.params["eta0"] > 3e-3 for r in fails)
    ok_max = max(r.params["eta0"] for r in guard.records if r.failure is None)
    s = guard.suggestion()
    assert s.startswith("eta0 >= ") and "diverged every time" in s
    assert float(s.rsplit(" ", 1)[1]) <= ok_max
    assert best_successful(study) is not None


def test_systematic_error_aborts_after_the_first_trials_with_traceback_and_path():
    study = optuna.create_study()
    guard = FailureGuard(systematic_after=3)

    def stale_signature(number, params):
        return failed_metrics(
            "error",
            "TypeError: run() got an unexpected keyword argument 'eta'",
            exc_type="TypeError",
            traceback_path=f"/runs/r_{number}/traceback.txt",
            traceback="Traceback (most recent call last):\n  ...\nTypeError: run()",
        )

    told, decision = _loop(study, guard, stale_signature)
    assert decision.action == "abort" and len(told) == 3
    assert "/runs/r_2/traceback.txt" in decision.message
    assert "/runs/r_0/metrics.json" in decision.message
    assert "Traceback (most recent call last)" in decision.message
    assert all(t.state == TrialState.FAIL for t in study.get_trials())  # not learned


def test_import_error_aborts_at_once_and_infrastructure_never_counts():
    guard = FailureGuard()
    imp = failed_metrics("error", "No module named x", exc_type="ModuleNotFoundError")
    assert guard.record(0, imp, "/r/0/metrics.json").action == "abort"

    guard = FailureGuard(max_consecutive_failures=2, systematic_after=2)
    for i in range(20):
        kind = "infrastructure" if i % 2 else "interrupted"
        assert guard.record(i, failed_metrics(kind, "worker lost")).proceed
    # mixed kinds: not systematic, but the all-fail guard still fires
    assert guard.record(20, failed_metrics("error", "x", exc_type="ValueError")).proceed
    assert guard.record(21, failed_metrics("crashed", "y", signal=11)).action == "stop"


def test_guard_validates_its_settings():
    with pytest.raises(ValueError, match="max_consecutive_failures"):
        FailureGuard(max_consecutive_failures=0)
    with pytest.raises(ValueError, match="systematic_after"):
        FailureGuard(systematic_after=0)


# --- constraints teach TPE (fast version of bench/bench_failures.py) --------------------------


def _failing_late(strategy: str, seed: int, n_trials: int = 40) -> int:
    """Failed trials in the second half on a 2-D space where only eta0 < edge(g) succeeds."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
    late = 0
    for i in range(n_trials):
        trial = study.ask()
        u = trial.suggest_float("log_eta", -6.0, 0.0)
        g = trial.suggest_float("g", 0.0, 1.0)
        edge = -4.0 + g
        ok = u < edge
        m = (
            {"status": "ok", "llc_hat": 2.5 + (u - edge + 0.2) ** 2}
            if ok
            else diverged(max(1, int(10_000 * math.exp(-3 * (u - edge)))))
        )
        late += (not ok) and i >= n_trials // 2
        if strategy == "constraints":
            tell(study, trial, m, objective)
        else:
            study.tell(trial, objective(m) if ok else None, state=None if ok else TrialState.FAIL)
    return late


def test_constraints_make_tpe_propose_fewer_failing_points_than_fail_states():
    seeds = range(4)
    ours = sorted(_failing_late("constraints", s) for s in seeds)
    fail = sorted(_failing_late("fail", s) for s in seeds)
    assert sum(ours) < 0.6 * sum(fail), (ours, fail)


# --- the runner's spellings, resume, and objective failures -----------------------------------


def test_runner_spellings_are_understood():
    runner_div = {
        "status": "failed",
        "failure": {"kind": "diverged", "message": "nan", "step": 10, "fraction_done": 0.001},
    }
    assert constraint_value(runner_div) == pytest.approx(constraint_value(diverged(10)))
    runner_err = {
        "status": "failed",
        "failure": {
            "kind": "error",
            "message": "ModuleNotFoundError: No module named 'x'",
            "exception_type": "ModuleNotFoundError",
            "traceback": "/runs/r_1/traceback.txt",
        },
    }
    decision = FailureGuard().record(1, runner_err, "/runs/r_1/metrics.json")
    assert (
        decision.action == "abort" and "traceback path: /runs/r_1/traceback.txt" in decision.message
    )


def test_replay_restores_the_guard_after_a_driver_restart():
    study = optuna.create_study()
    guard = FailureGuard(max_consecutive_failures=10)
    told, _ = _loop(study, guard, lambda n, p: diverged(1 + n), n_trials=7)
    fresh = FailureGuard(max_consecutive_failures=10)
    assert fresh.replay(study).proceed and len(fresh.records) == 7
    assert [r.failure["step"] for r in fresh.records] == [1 + n for n in told]
    _, decision = _loop(study, fresh, lambda n, p: diverged(1 + n), n_trials=5)
    assert decision.action == "stop" and len(study.get_trials()) == 10


def _crash(n, p):
    return failed_metrics("error", "ValueError: the data file is unreadable", exc_type="ValueError")


def test_a_rerun_after_a_systematic_abort_continues_once_the_cause_is_fixed():
    """Issue 10: replay re-applied the old abort, so a rerun stopped at once however the cause
    had been fixed (only deleting the study helped). Now the rerun gets a fresh window."""
    study = optuna.create_study()
    told, decision = _loop(study, FailureGuard(), _crash)
    assert decision.action == "abort" and len(told) == 3  # everything fails early: stopped
    assert "the first 3 trials all failed the same way" in decision.message
    assert "ValueError: the data file is unreadable" in decision.message
    fixed = FailureGuard()
    assert fixed.replay(study).proceed and fixed.previous.action == "abort"
    told, decision = _loop(study, fixed, lambda n, p: dict(OK), n_trials=5)
    assert decision.proceed and len(told) == 5 and fixed.n_success == 5


def test_a_rerun_where_nothing_changed_stops_again_after_the_same_few_trials():
    study = optuna.create_study()
    _loop(study, FailureGuard(), _crash)
    for rerun in range(2):
        again = FailureGuard()
        assert again.replay(study).proceed
        told, decision = _loop(study, again, _crash)
        assert decision.action == "abort" and len(told) == 3, rerun
        assert "ValueError: the data file is unreadable" in decision.message
    assert len(study.trials) == 9


def test_an_all_fail_stop_is_lifted_on_rerun_and_reached_again_if_nothing_changed():
    study = optuna.create_study()
    told, decision = _loop(
        study, FailureGuard(max_consecutive_failures=4), lambda n, p: diverged(5)
    )
    assert decision.action == "stop" and len(told) == 4 and "4 failed trials" in decision.message
    again = FailureGuard(max_consecutive_failures=4)
    assert again.replay(study).proceed and again.previous.action == "stop"
    told, decision = _loop(study, again, lambda n, p: diverged(5))
    assert decision.action == "stop" and len(told) == 4


def test_replay_does_not_count_trials_of_an_earlier_search_space():
    study = optuna.create_study()
    _loop(study, FailureGuard(max_consecutive_failures=10), lambda n, p: diverged(5), n_trials=7)
    same = {"eta0": optuna.distributions.FloatDistribution(1e-6, 1e-1, log=True)}
    narrower = {"eta0": optuna.distributions.FloatDistribution(1e-6, 1e-3, log=True)}
    kept = FailureGuard(space=same)
    kept.replay(study)
    changed = FailureGuard(space=narrower)
    changed.replay(study)
    assert len(kept.records) == 7 and changed.records == []


def test_an_ok_run_without_a_finite_objective_is_recorded_as_the_error_it_was_told_as():
    study = optuna.create_study()
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    told = tell(study, trial, {"status": "ok", "llc_hat": None}, objective)
    assert told.state == TrialState.FAIL
    guard = FailureGuard()
    guard.record(trial.number, {"status": "ok", "llc_hat": None}, told=told)
    assert guard.n_success == 0 and guard.records[0].failure["kind"] == "error"


def test_old_and_new_spellings_are_told_the_same():
    new = failed_metrics("diverged", "non-finite loss", step=100, steps_planned=10_000)
    old = diverged(100)  # steps_total
    assert failure_of(old)["steps_planned"] == 10_000 and "steps_total" not in failure_of(old)
    assert tell_args(old, objective) == tell_args(new, objective)
    assert tell_args(new, objective).user_attrs["failure_steps_planned"] == 10_000
    assert constraint_value(new) == pytest.approx(
        0.05 + 0.95 * (1 - math.log1p(100) / math.log1p(10_000))
    )
    runner_err = {
        "status": "failed",
        "failure": {"kind": "error", "message": "m", "exception_type": "E"},
    }
    assert failure_of(runner_err)["exc_type"] == "E"


def test_the_method_culprits_break_ties_in_the_suggestion():
    # lr and init_spread grow together, so both explain the 4 divergences equally well;
    # without culprits the first name wins, with VI's culprits the step size (lr) does
    records = []
    for i in range(8):
        params = {"init_spread": 0.1 * (i + 1), "lr": 1e-4 * (i + 1)}
        m = diverged(10) if i >= 4 else OK
        records.append((i, m, params))
    plain, vi = FailureGuard(), FailureGuard(culprits=culprits("vi"))
    for g in (plain, vi):
        for i, m, params in records:
            g.record(i, m, None, params)
    assert plain.suggestion().startswith("init_spread >= 0.5 diverged every time (4 of 8")
    assert vi.suggestion() == (
        "lr >= 0.0005 diverged every time (4 of 8 trials): move lr's upper bound to 0.0004"
    )
    for method in METHODS:
        by_kind = culprits(method)
        names = set(default_hyperparams(method))
        assert all(set(c) <= names for c in by_kind.values()), method
