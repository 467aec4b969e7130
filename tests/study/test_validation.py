"""The validation stage: each study's top-k configurations re-run on fresh seeds.

Trials are the analytic synthetic trial plus a known, seed-dependent error, run inline on a
thread pool (the driver's contract: futures of dicts), so every number below is known exactly.
"""

from __future__ import annotations

import contextlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution

from lambda_hat import layout
from lambda_hat.config.tuning import OptunaConfig, ValidateConfig
from lambda_hat.hashing import content_hash
from lambda_hat.parallel import session
from lambda_hat.reference import app as reference_app
from lambda_hat.study import driver as tuning
from lambda_hat.study import pipeline, validation
from lambda_hat.study import storage as studies
from lambda_hat.trial import app as trial_app
from lambda_hat.trial import submit as trial_submit
from lambda_hat.trial.synthetic import synthetic_llc

optuna.logging.set_verbosity(optuna.logging.WARNING)

REF = {"llc_ref": 1.5, "se_ref": 0.01, "gate": {"passed": True}}
TARGET = f"{__name__}:noisy_trial"

#: error of x at seed s (x = 1, 2, 3, 4): x = 1 is the luckiest at the tuning seed 0 but bad on
#: fresh seeds; x = 2 has the best mean |error| on seeds 1 and 2 (0.06); x = 4 is not in the top 3.
TABLE = {
    1.0: {0: 0.001, 1: 0.3, 2: -0.3},
    2.0: {0: 0.01, 1: 0.05, 2: -0.07},
    3.0: {0: -0.02, 1: 0.2, 2: 0.2},
    4.0: {0: 0.5, 1: 0.5, 2: 0.5},
}


def seed_noise(hyperparams: dict, seed: int) -> float:
    """A deterministic, seed-dependent error: TABLE for its x values, else a hash in ±0.05."""
    x = hyperparams.get("x")
    if x in TABLE and seed in TABLE[x]:
        return TABLE[x][seed]
    h = int(content_hash({"hp": hyperparams, "seed": seed})[:8], 16)
    return 0.1 * (h / 0xFFFFFFFF - 0.5)


def noisy_trial(*, hyperparams: dict, ref: dict, seed: int, **_) -> dict:
    """The synthetic trial with ``seed_noise`` added: a config's error depends on its seed."""
    if hyperparams.get("x") in TABLE:
        llc_hat = ref["llc_ref"] + seed_noise(hyperparams, seed)
    else:
        llc_hat = synthetic_llc(hyperparams, ref["llc_ref"]) + seed_noise(hyperparams, seed)
    return {"status": "ok", "llc_hat": llc_hat, "se_hat": 0.01, "seconds": 0.001}


class Pool:
    """A thread-pool submitter running the real trial app body, counting submissions."""

    def __init__(self):
        self.pool, self.lock, self.payloads = ThreadPoolExecutor(2), threading.Lock(), []

    def __call__(self, payload: dict):
        with self.lock:
            self.payloads.append(payload)
        return self.pool.submit(trial_app.execute_trial, payload)


@pytest.fixture
def pool():
    p = Pool()
    yield p
    p.pool.shutdown()


def _task(storage, tmp_path, pid: str, space: dict) -> tuning.StudyTask:
    cfg = OptunaConfig(isolate=False, n_startup_trials=3)
    base = {
        "pid": pid,
        "method": "sgld",
        "budget_sec": 10.0,
        "seed": 0,
        "ref": REF,
        "artifacts": str(tmp_path / "artifacts"),
        "isolate": False,
        "target": TARGET,
    }
    study = studies.open_study(storage, pid, "sgld", cfg, seed=1)
    return tuning.StudyTask(
        pid=pid, method="sgld", study=study, space=space, base_payload=base, ref=REF
    )


def _tune(tasks, submit, max_trials: int) -> None:
    driver = tuning.Driver(tasks, submit, max_trials=max_trials, batch_size=2)
    driver.run()


def _table_study(tmp_path, pool) -> tuning.StudyTask:
    storage = studies.open_storage(OptunaConfig(), tmp_path / "results")
    task = _task(storage, tmp_path, "p_t", {"x": FloatDistribution(0.5, 5.0)})
    for x in TABLE:
        task.study.enqueue_trial({"x": x})
    _tune([task], pool, max_trials=4)
    return task


def test_each_study_runs_top_k_times_seeds_fresh_runs_and_a_rerun_reuses_them(tmp_path, pool):
    storage = studies.open_storage(OptunaConfig(), tmp_path / "results")
    space = {"x": FloatDistribution(0.1, 10.0, log=True), "y": FloatDistribution(0.5, 2.0)}
    tasks = [_task(storage, tmp_path, pid, space) for pid in ("p_a", "p_b")]
    _tune(tasks, pool, max_trials=8)
    assert len(pool.payloads) == 16
    cfg = ValidateConfig(top_k=3, seeds=2)
    out = validation.validate_studies(tasks, pool, cfg, tmp_path / "results")

    fresh = pool.payloads[16:]
    assert len(fresh) == 2 * 3 * 2  # studies x top_k x seeds
    assert sorted({p["seed"] for p in fresh}) == [1, 2]  # tuning seed 0 + 1, + 2
    df = pd.read_parquet(tmp_path / "results" / layout.VALIDATION_TABLE)
    assert len(df) == 12 and (df.status == "ok").all() and not df.reused.any()
    for v in out:
        trials = sorted(v.task.study.trials, key=lambda t: (t.value, t.number))
        rows = df[df.pid == v.task.pid]
        assert list(rows.drop_duplicates("candidate").trial_number) == [
            t.number for t in trials[:3]
        ]
        for _, r in rows.iterrows():  # known answer: the run's error is its seed's noise
            params = trials[int(r.candidate) - 1].params
            want = synthetic_llc(params, 1.5) - 1.5 + seed_noise(params, int(r.seed))
            assert r.error == pytest.approx(want, abs=1e-12)
            assert r.hp_x == pytest.approx(params["x"]) and r.run_dir.endswith(r.run_id)
    assert set(df.columns) >= {"llc_ref", "se_hat", "runtime_sec", "failure_kind", "hp_y"}

    again = validation.validate_studies(tasks, pool, cfg, tmp_path / "results")
    assert len(pool.payloads) == 28  # nothing re-run
    df2 = pd.read_parquet(tmp_path / "results" / layout.VALIDATION_TABLE)
    assert df2.reused.all() and list(df2.error) == list(df.error)
    assert [v.chosen for v in again] == [v.chosen for v in out]

    # a validation killed before one run finished: only that run is run again
    Path(df.run_dir[5], "metrics.json").unlink()
    validation.validate_studies(tasks, pool, cfg, tmp_path / "results")
    assert [p["run_id"] for p in pool.payloads[28:]] == [df.run_id[5]]


def test_recommendation_is_the_best_validated_mean_not_the_luckiest_trial(tmp_path, pool):
    task = _table_study(tmp_path, pool)
    best = min(task.study.trials, key=lambda t: t.value)
    assert best.params == {"x": 1.0} and best.value == pytest.approx(0.001)
    cfg = ValidateConfig(top_k=3, seeds=2)
    out = validation.validate_studies([task], pool, cfg, tmp_path / "results")
    (v,) = out
    assert [x.candidate.hyperparams["x"] for x in v.validated] == [1.0, 2.0, 3.0]
    assert [x.mean for x in v.validated] == pytest.approx([0.3, 0.06, 0.2])
    assert v.chosen == 1 and v.validated[1].sd == pytest.approx(0.02**0.5 / 10)
    assert v.seeds == [1, 2] and len(pool.payloads) == 4 + 6

    rec = validation.recommendation(task.study)
    assert rec["hyperparams"] == {"x": 2.0} and rec["candidate"] == 2
    assert rec["trial_number"] == 1 and rec["n_ok"] == 2 and rec["seeds"] == [1, 2]
    stored = json.loads((tmp_path / "results" / layout.VALIDATION_JSON).read_text())
    assert stored["studies"]["p_t:sgld"]["recommended"] == rec
    lines = validation.table(out).splitlines()
    assert [line.split()[1] for line in lines[2:5]] == ["1", "2*", "3"]
    assert lines[3].split()[3:] == ["0.01", "0.06", "±", "0.01414", "-0.16", "2/2", "x=2"]
    assert lines[5].startswith("p_t:sgld (candidate 2): reliable: ")


def test_validate_null_runs_and_writes_nothing(tmp_path, pool):
    task = _table_study(tmp_path, pool)
    assert validation.validate_studies([task], pool, None, tmp_path / "results") is None
    assert len(pool.payloads) == 4
    assert not (tmp_path / "results" / layout.VALIDATION_TABLE).exists()
    assert not (tmp_path / "results" / layout.VALIDATION_JSON).exists()
    assert validation.recommendation(task.study) is None


def test_top_candidates_are_distinct_and_pick_prefers_no_failed_seeds():
    scored = [(0.1, 3, {"a": 1}, 0.1), (0.05, 7, {"a": 2}, -0.05), (0.05, 2, {"a": 1}, 0.05)]
    cands = validation.top_candidates(scored, 3)
    assert [(c.rank, c.trial_number, c.hyperparams) for c in cands] == [
        (1, 2, {"a": 1}),
        (2, 7, {"a": 2}),
    ]
    lucky = validation.Validated(cands[0], [0.01, 0.02], failed=1)
    steady = validation.Validated(cands[1], [0.1, 0.2, 0.3])
    assert validation.pick([lucky, steady]) == 1
    assert validation.pick([validation.Validated(cands[0], [], failed=3)]) is None
    assert validation.validation_seeds(5, 3) == [6, 7, 8]


@pytest.mark.parametrize("validate", [None, {"top_k": 2, "seeds": 2}])
def test_parsl_optuna_validates_after_tuning_or_not_at_all(tmp_path, monkeypatch, validate, pool):
    """The pipeline end to end in one process: Parsl and the reference replaced."""
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "problems: [{model: linear, data: small}]\nmethods: [vi]\n"
        "optuna: {max_trials: 4, batch_size: 2, n_startup_trials: 2, isolate: false, "
        f"pruner: none, validate: {json.dumps(validate)}}}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(session, "parsl_session", lambda *a: contextlib.nullcontext())
    monkeypatch.setattr(trial_submit, "submitter", lambda: pool)
    monkeypatch.setattr(reference_app, "submitter", lambda: lambda p: _done(REF))
    assert pipeline.main(["--config", str(cfg), "--trial-target", TARGET]) == 0
    path = tmp_path / "results" / layout.VALIDATION_TABLE
    if validate is None:
        assert len(pool.payloads) == 4 and not path.exists()
        return
    df = pd.read_parquet(path)
    assert len(pool.payloads) == 4 + 4 and len(df) == 4
    assert sorted(df.seed.unique()) == [1, 2] and set(df.candidate) == {1, 2}
    storage = studies.open_storage(OptunaConfig(), tmp_path / "results")
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    rec = validation.recommendation(study)
    means = df.groupby("candidate").abs_error.mean()
    assert rec["candidate"] == means.idxmin()
    assert rec["mean_abs_error"] == pytest.approx(means.min())


def _done(value):
    from concurrent.futures import Future

    fut = Future()
    fut.set_result(value)
    return fut
