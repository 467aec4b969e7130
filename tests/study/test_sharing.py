"""Several drivers on one storage (lambda_hat.study.sharing): a running trial is orphaned only
when its driver is dead, the last slot is ranked over every trial before it, and two
in-process drivers on one journal end with exactly max_trials. (Two driver processes on
PostgreSQL and on a journal: tests/integration/test_storage_postgres.py.)
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import optuna
from optuna.trial import TrialState

from lambda_hat.study import sharing
from lambda_hat.study import storage as studies
from lambda_hat.study.tell import counts_as_finished

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _running(user_attrs: dict) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs=user_attrs)


def test_a_running_trial_is_orphaned_only_when_its_driver_is_dead():
    me = sharing.Owner.this_process()
    me.start()
    try:
        assert not sharing.orphaned(_running({sharing.OWNER_ATTR: me.tag}))
    finally:
        me.stop()
    assert sharing.orphaned(_running({sharing.OWNER_ATTR: me.tag}))  # ended
    fresh = _running({})  # untagged: maybe another driver is asking it right now
    assert not sharing.orphaned(fresh)
    assert sharing.orphaned(fresh, now=time.time() + sharing.STALE_SEC + 5)
    assert sharing.orphaned(_running({"run_dir": "/x"}))  # asked by a driver without tags
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead_here = sharing.Owner(socket.gethostname(), gone.pid, "x").tag
    assert sharing.orphaned(_running({sharing.OWNER_ATTR: dead_here}))
    elsewhere = _running(
        {sharing.OWNER_ATTR: "other-host:1:x", sharing.HEARTBEAT_ATTR: time.time()}
    )
    assert sharing.owner_alive(elsewhere)
    assert sharing.owner_alive(elsewhere, now=time.time() + sharing.STALE_SEC - 5)
    assert not sharing.owner_alive(elsewhere, now=time.time() + sharing.STALE_SEC + 5)


def test_last_slot_ranking_counts_running_waiting_and_finished_trials_before():
    trials = [
        optuna.trial.create_trial(value=1.0),
        optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"failure_kind": "error"}),
        optuna.trial.create_trial(
            state=TrialState.FAIL, user_attrs={"failure_kind": "interrupted"}
        ),
        _running({}),
        optuna.trial.create_trial(state=TrialState.WAITING),
        _running({}),
    ]
    for number, t in enumerate(trials):
        t.number = number
    assert [sharing.slots_before(trials, n) for n in range(7)] == [0, 1, 2, 2, 3, 4, 5]


def test_two_in_process_drivers_on_one_journal_end_exact(tmp_path, monkeypatch):
    from helpers.study import _task

    from lambda_hat.study import driver as tuning
    from lambda_hat.trial import app as trial_app

    monkeypatch.setenv("LAMBDA_HAT_SYNTHETIC_SECONDS", "0.1")
    path, drivers, errors = tmp_path / "journal.log", [], []

    def drive() -> None:
        try:
            task = _task(studies.open_storage_at(path), tmp_path)
            with ThreadPoolExecutor(2) as pool:
                driver = tuning.Driver(
                    [task],
                    lambda p: pool.submit(trial_app.execute_trial, p),
                    max_trials=8,
                    batch_size=2,
                    poll_sec=0.2,
                )
                drivers.append(driver)
                driver.recover(task)
                driver.run()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=drive) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    trials = optuna.load_study(study_name="p_a:sgld", storage=studies.open_storage_at(path)).trials
    finished = [t for t in trials if counts_as_finished(t.state, t.user_attrs.get("failure_kind"))]
    assert len(finished) == 8 and all(t.state.is_finished() for t in trials)
    assert len({t.user_attrs["run_id"] for t in finished}) == 8
    assert {t.user_attrs[sharing.OWNER_ATTR] for t in finished} == {d.owner.tag for d in drivers}
