"""Study storage: the group-commit journal, pickle exports, storage URLs, and a resumed study's
sampler.
"""

from __future__ import annotations

import pickle

import optuna
import pytest
from helpers.study import SPACE, _journal, _run, _task

from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.study import storage as studies
from lambda_hat.trial import app as trial_app

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_pickle_export_is_self_contained(tmp_path):
    storage = _journal(tmp_path)
    task = _task(storage, tmp_path)
    _run([task], trial_app.execute_trial, max_trials=3, batch_size=1)
    path = studies.export_pickle(task.study, tmp_path / "results", task.pid, task.method)
    assert path.name == "p_a:sgld.pkl"
    loaded = pickle.loads(path.read_bytes())
    assert len(loaded.trials) == 3
    assert loaded.best_value == pytest.approx(task.study.best_value)


def test_a_resumed_study_does_not_replay_its_random_start_up(tmp_path):
    storage = _journal(tmp_path)
    cfg = OptunaConfig(isolate=False, n_startup_trials=10)
    first = studies.open_study(storage, "p_a", "sgld", cfg, seed=7)
    asked = [first.ask(SPACE) for _ in range(2)]
    for t in asked:
        first.tell(t, 1.0)
    resumed = studies.open_study(storage, "p_a", "sgld", cfg, seed=7)
    assert resumed.ask(SPACE).params not in [t.params for t in asked]


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


optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_plain_postgres_urls_get_the_psycopg_driver_and_logs_hide_passwords():
    assert studies.storage_url("postgresql://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert studies.storage_url("postgres://h/db") == "postgresql+psycopg://h/db"
    assert studies.storage_url("postgresql+psycopg2://h/db") == "postgresql+psycopg2://h/db"
    assert studies.storage_url("sqlite:///x.db") == "sqlite:///x.db"
    shown = studies.describe_storage("postgresql://u:secret@h:5/db")
    assert "secret" not in shown and shown.endswith("@h:5/db")
