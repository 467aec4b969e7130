"""Studies driven on a thread pool with the analytic trial (no Parsl): the driver only sees
futures of dicts, the same contract the Parsl apps satisfy
(``tests/integration/test_workflow_parsl.py`` runs the real executor).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import optuna
from optuna.distributions import FloatDistribution

from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.study import driver as tuning
from lambda_hat.study import storage as studies

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
