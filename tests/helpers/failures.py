"""A successful and a diverged trial's metrics, and the objective the failure tests tell Optuna."""

from __future__ import annotations

import optuna

from lambda_hat.trial.outcome import failed_metrics

optuna.logging.set_verbosity(optuna.logging.WARNING)
OK = {"status": "ok", "llc_hat": 3.0}


def objective(m):
    return abs(m["llc_hat"] - 2.5)


def diverged(step, total=10_000):
    return failed_metrics("diverged", "non-finite loss", step=step, steps_total=total)
