"""Pruning through the real progress channel: bad intermediate estimates are pruned and count as
finished; the pruner config, and multi-objective studies that do not prune.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pandas as pd
import pytest
from helpers.study import REF, _journal, _task
from optuna.trial import TrialState

from lambda_hat._io import read_json
from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.results import tables as results
from lambda_hat.schema import ConfigError
from lambda_hat.study import driver as tuning
from lambda_hat.study import progress, pruning
from lambda_hat.study import storage as studies
from lambda_hat.trial import app as trial_app
from lambda_hat.trial.synthetic import synthetic_llc

optuna.logging.set_verbosity(optuna.logging.WARNING)


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
