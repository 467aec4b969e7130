"""The ask/tell driver on a thread pool (no Parsl): interleaved batches, failures told with
their kinds, kill and resume, reuse of finished runs, scoring, and the progress table.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import optuna
import pytest
from helpers.study import REF, SPACE, _journal, _run, _task
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.results import tables as results
from lambda_hat.study import driver as tuning
from lambda_hat.study import progress, scoring
from lambda_hat.study import storage as studies
from lambda_hat.study.tell import best_successful, counts_as_finished
from lambda_hat.trial import app as trial_app
from lambda_hat.trial import identity, outcome
from lambda_hat.trial.synthetic import synthetic_llc, synthetic_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)


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
