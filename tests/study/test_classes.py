"""Class studies on a thread pool with the analytic trial (no Parsl): a trial is one setting in
units of ε_max run on every train member, told the mean relative error; a failure on one
member is the trial's (learned) failure; successive halving stops bad settings before the
other members; member runs are content-addressed (reused across studies and after a kill);
the recommendation and the held-out proof with the baseline (plans/transfer.md).
"""

from __future__ import annotations

import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import optuna
import pandas as pd
import pytest
from helpers.study import _journal
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from lambda_hat import layout
from lambda_hat.config.classes import ClassConfig
from lambda_hat.config.recommendation import read_class_recommendation
from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.methods import step_limit
from lambda_hat.problem.build import problem_id
from lambda_hat.problem.spec import resolve_problem
from lambda_hat.study import storage as studies
from lambda_hat.study import transfer
from lambda_hat.study.class_driver import ClassDriver
from lambda_hat.study.class_stage import write_class_table
from lambda_hat.study.classes import MEMBERS_ATTR, ClassTask, Member, member_value, rungs
from lambda_hat.trial import identity
from lambda_hat.trial.synthetic import synthetic_llc

optuna.logging.set_verbosity(optuna.logging.WARNING)

TARGET = "lambda_hat.trial.synthetic:synthetic_trial"
# three members of increasing size: λ, a_max and d differ, so one ε_max fraction is three ε
SIZES = [(2.0, 100.0, 8), (4.0, 400.0, 20), (9.0, 2500.0, 60)]


def _member(i: int, llc: float, a_max: float, d: int) -> Member:
    spec = resolve_problem({"model": "linear", "data": "small", "seed": i})
    ref = {"llc_ref": llc, "se_ref": 0.01, "curvature": {"a_max": a_max, "d": d}, "kind": "hmc"}
    return Member(problem_id(spec), spec, ref, f"m{i}")


def _task(storage, tmp_path, name="dln", halving=False, max_trials=6, **kw) -> ClassTask:
    cfg = OptunaConfig(isolate=False, n_startup_trials=3)
    study = studies.open_study(storage, f"class:{name}", "sgld", cfg, seed=1)
    members = [_member(i, *s) for i, s in enumerate(SIZES)]

    def payload_of(m: Member) -> dict:
        return {
            "pid": m.pid,
            "method": "sgld",
            "budget_sec": 10.0,
            "seed": 0,
            "ref": m.ref,
            "artifacts": str(tmp_path / "artifacts"),
            "isolate": False,
            "target": TARGET,
        }

    return ClassTask(
        name=name,
        method="sgld",
        study=study,
        space={"eta0": FloatDistribution(0.01, 1.0, log=True), "y": FloatDistribution(0.5, 2.0)},
        scaled=("eta0",),
        fixed={},
        members=members,
        config=ClassConfig(name=name, train=[{}], halving=halving),
        payload_of=payload_of,
        locate_of=lambda m: identity.locator(TARGET, tmp_path / "artifacts", m.pid, 100, "sgld"),
        resolve=lambda hp: hp,
        max_trials=max_trials,
        **kw,
    )


def _drive(tasks, trial_fn, batch_size=3):
    calls: list[dict] = []
    lock = threading.Lock()

    def run(payload):
        with lock:
            calls.append(payload)
        return trial_fn(payload)

    pool = ThreadPoolExecutor(3)
    try:
        ClassDriver(tasks, lambda p: pool.submit(run, p), batch_size=batch_size).run()
    finally:
        pool.shutdown()
    return calls


def _synthetic(payload: dict) -> dict:
    from lambda_hat.trial import app

    return app.execute_trial(payload)


def test_one_setting_in_units_runs_on_every_member_and_is_told_the_mean_relative_error(tmp_path):
    task = _task(_journal(tmp_path), tmp_path)
    calls = _drive([task], _synthetic)
    trials = task.study.get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len(calls) == 6 * 3  # every member once per setting
    for t in trials:
        rel = []
        for m in task.members:
            eps = t.params["eta0"] * step_limit("sgld", m.ref["curvature"]["a_max"], m.d)
            hp = {"eta0": eps, "y": t.params["y"]}
            run = [c for c in calls if c["pid"] == m.pid and c["hyperparams"] == hp]
            assert len(run) == 1  # the member's run got the absolute ε = fraction × ε_max
            lam = m.ref["llc_ref"]
            rel.append(abs(synthetic_llc(hp, lam) - lam) / lam)
        assert t.value == pytest.approx(sum(rel) / 3, rel=1e-9)
        assert set(t.user_attrs[MEMBERS_ATTR]) == {m.pid for m in task.members}


def test_a_failure_on_one_member_is_the_settings_learned_failure(tmp_path):
    task = _task(_journal(tmp_path), tmp_path)
    big = task.members[2].pid

    def trial(payload):
        if payload["pid"] == big and payload["hyperparams"]["eta0"] > 0.3 * 4 / 2500.0:
            return {
                "status": "failed",
                "failure": {"kind": "diverged", "message": "NaN", "step": 5, "steps_planned": 100},
            }
        return _synthetic(payload)

    task.study.enqueue_trial({"eta0": 0.9, "y": 1.0})
    task.study.enqueue_trial({"eta0": 0.05, "y": 1.0})
    _drive([task], trial)
    first, second = task.study.get_trials()[:2]
    assert first.user_attrs["failure_kind"] == "diverged"
    assert (
        first.state == TrialState.COMPLETE and first.constraints["failure"] > 0
    )  # learned, graded
    assert second.user_attrs["status"] == "ok" and second.constraints["failure"] < 0


def test_successive_halving_stops_a_bad_setting_before_the_other_members(tmp_path):
    assert rungs(3, True) == [1, 3] and rungs(9, True) == [3, 9] and rungs(2, True) == [2]
    task = _task(_journal(tmp_path), tmp_path, halving=True, max_trials=4)
    for eta in (0.3, 0.4, 0.5, 0.011):  # each better than the last (ε nearer 1), then the worst
        task.study.enqueue_trial({"eta0": eta, "y": 1.0})
    calls = _drive([task], _synthetic, batch_size=1)
    trials = task.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    pruned = trials[3]
    assert "worse on the first 1 members" in pruned.user_attrs["failure_message"]
    assert list(pruned.user_attrs[MEMBERS_ATTR]) == [task.members[0].pid]
    assert len(calls) == 3 * 3 + 1  # the pruned setting ran on one member only


def test_member_runs_are_reused_across_studies_and_after_a_killed_driver(tmp_path):
    storage = _journal(tmp_path)
    first = _task(storage, tmp_path, max_trials=2)
    _drive([first], _synthetic)
    params = [t.params for t in first.study.get_trials()]
    # another class study with the same members and settings: every run is already stored
    second = _task(storage, tmp_path, name="again", max_trials=2)
    for p in params:
        second.study.enqueue_trial(p)
    assert _drive([second], _synthetic) == []
    assert [t.value for t in second.study.get_trials()] == [
        t.value for t in first.study.get_trials()
    ]
    # a driver killed mid-trial left it RUNNING: it is told interrupted, its setting asked again
    third = _task(storage, tmp_path, name="killed", max_trials=1)
    third.study.enqueue_trial(params[0])
    third.study.ask()  # the killed driver's trial
    calls = _drive([third], _synthetic)
    states = [t.state for t in third.study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE] and calls == []
    assert third.study.get_trials()[1].params == params[0]
    assert third.study.get_trials()[0].user_attrs["failure_kind"] == "interrupted"


def test_member_value_relative_with_its_ucb_and_z():
    ref = {"llc_ref": 4.0, "se_ref": 0.3}
    ok = {"status": "ok", "llc_hat": 5.0, "se_hat": 0.4}
    assert member_value(ok, ref, "rel", 0.0) == pytest.approx(0.25)
    assert member_value(ok, ref, "rel", 1.0) == pytest.approx((1.0 + 0.5 - 0.3) / 4.0)
    assert member_value(ok, ref, "z", 0.0) == pytest.approx(1.0 / 0.5)
    assert member_value({"status": "failed"}, ref, "rel", 0.0) is None
    assert member_value(ok, {"llc_ref": None}, "rel", 0.0) is None


def test_recommendation_and_held_out_proof_with_the_baseline(tmp_path):
    task = _task(_journal(tmp_path), tmp_path, max_trials=5)
    task.holdout = [_member(7, 20.0, 10_000.0, 200)]
    _drive([task], _synthetic)
    pool = ThreadPoolExecutor(2)
    try:
        submit = lambda p: pool.submit(_synthetic, p)  # noqa: E731
        record = transfer.recommend(task, submit, 2, 2, tmp_path / "results", 0)
        rows = transfer.holdout_proof(task, submit, record, 2, tmp_path / "results", 0, True)
    finally:
        pool.shutdown()
    stored = json.loads(
        layout.class_recommendation(tmp_path / "results", "dln", "sgld").read_text()
    )
    assert stored == json.loads(json.dumps(record))
    assert stored["pick"] == "validated" and stored["scaled"] == ["eta0"]
    validated = stored["validated"]
    assert validated["trial"] in [c["trial"] for c in validated["candidates"]]
    # the synthetic run's error does not depend on the seed: validated = tuned = the best
    assert validated["mean"] == pytest.approx(stored["objective"])
    assert validated["units"] == stored["units"] and validated["trial"] == stored["trial"]
    # what lambda-hat run's from_study: {class: dln} reads
    got = read_class_recommendation(tmp_path / "results", "dln", "sgld", "validated", "here")
    assert got.units == validated["units"] and got.scaled == ("eta0",)
    holdout = task.holdout[0]
    eps = step_limit("sgld", 10_000.0, 200)
    rec = [r for r in rows if r["recommended"]]
    assert len(rec) == 2 and {r["seed"] for r in rec} == {1, 2}
    assert rec[0]["hyperparams"]["eta0"] == pytest.approx(validated["units"]["eta0"] * eps)
    expected = abs(synthetic_llc(rec[0]["hyperparams"], 20.0) - 20.0) / 20.0
    assert rec[0]["rel_error"] == pytest.approx(expected)
    base = [r for r in rows if r["baseline"]]
    assert len(base) == 2 and base[0]["hyperparams"]["eta0"] == 1e-4 and base[0]["units"] is None
    assert base[0]["pid"] == holdout.pid
    table = transfer.transfer_table(rows)
    assert "m7" in table and "baseline" in table and "(recommended)" in table
    # every run's units and absolute values, in Parquet
    df = pd.read_parquet(transfer.write_transfer(rows, tmp_path / "results"))
    assert len(df) == len(rows) and df["eps_max"].dropna().iloc[0] == pytest.approx(eps)
    got = df[df["recommended"]].iloc[0]
    assert got["eta0_units"] * got["eps_max"] == pytest.approx(got["hp_eta0"])
    assert df[df["baseline"]]["eta0_units"].isna().all()
    trials = pd.read_parquet(write_class_table([task], tmp_path / "results"))
    assert len(trials) == 5 * 3 and set(trials["pid"]) == {m.pid for m in task.members}
    assert (trials["eta0_units"] * trials["eps_max"] - trials["hp_eta0"]).abs().max() < 1e-15


def test_chain_length_in_relaxation_units_scales_steps_by_the_eps_max_ratio(tmp_path):
    task = _task(_journal(tmp_path), tmp_path)
    big = _member(9, 30.0, 40_000.0, 400)
    eps = [step_limit("sgld", a, d) for _, a, d in SIZES]
    train = math.exp(sum(math.log(e) for e in eps) / 3)
    assert task.train_eps_max() == pytest.approx(train)
    units = {"eta0": 0.1, "y": 1.0, "steps": 1000}
    count = task.absolute(units, big)
    relax = task.absolute(units, big, "relaxation")
    assert count["steps"] == 1000 and count["eta0"] == pytest.approx(0.1 * big.eps_max("sgld"))
    assert relax["steps"] == round(1000 * train / big.eps_max("sgld"))  # steps × ε held fixed
    assert relax["steps"] * relax["eta0"] == pytest.approx(1000 * 0.1 * train, rel=1e-3)


def test_the_failure_guard_stops_a_class_study_whose_settings_all_fail(tmp_path):
    from lambda_hat.study.guard import FailureGuard

    guard = FailureGuard(max_consecutive_failures=3, culprits={"diverged": ("eta0",)})
    task = _task(_journal(tmp_path), tmp_path, max_trials=20, guard=guard)
    failed = {"status": "failed", "failure": {"kind": "diverged", "message": "NaN", "step": 3}}
    _drive([task], lambda p: failed, batch_size=1)
    assert task.stop_reason is not None and len(task.study.get_trials()) <= 3
    assert "eta0" in task.stop_reason
