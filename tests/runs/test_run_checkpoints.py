"""LLC over training (issue 21 §4): a source's checkpoints are one problem each, ``lambda-hat
run`` estimates every one with one setting (a step in ε_max units converted per checkpoint),
``llc_runs.parquet`` carries the step and the source's losses, and the report draws the curve.

The source is ``user_models:checkpointed``: linear regression (d = 4) trained by gradient descent
from zero, checkpoints after 2, 20 and 400 steps. Its L_n is quadratic, so the λ̂ the localized
posterior gives at each checkpoint, not at a minimum, is known in closed form
(:func:`lambda_hat.problem.theory.linear_gaussian_llc` with the checkpoint's gradient).
Real SGLD runs and the real reference stage (``reference: none``: curvature only), on a thread
pool without Parsl.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lambda_hat import layout
from lambda_hat.config.load import load_runs
from lambda_hat.llc.posterior import default_beta
from lambda_hat.problem.theory import linear_gaussian_llc
from lambda_hat.reference import app as reference_app
from lambda_hat.report.page import make_report
from lambda_hat.runs import stage as experiments
from lambda_hat.trial import app as trial_app

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
SGLD = "{eta0: {value: 0.05, scale: stability}, steps: 2000, chains: 4, batch: 200}"


def _config(folder: Path) -> Path:
    path = folder / "run.yaml"
    path.write_text(
        'problems: [{source: "user_models:checkpointed", seed: 0}]\n'
        f"methods: {{sgld: [{{fixed: {SGLD}}}]}}\nseeds: [0]\nbudget_sec: 120\n"
        "isolate: false\n"
        f"paths: {{artifacts: {folder / 'artifacts'}, results: {folder / 'results'}}}\n"
    )
    return path


def _exact(step: int) -> float:
    """λ̂ of the localized posterior at the checkpoint after ``step`` steps (closed form)."""
    sys.path.insert(0, str(HELPERS))
    try:
        from user_models import checkpointed
    finally:
        sys.path.remove(str(HELPERS))
    sp = checkpointed()
    (ck,) = [c for c in sp.checkpoints if c.step == step]
    X, y = sp.data
    A = np.hstack([X, np.ones((len(X), 1))])
    w = np.vstack([ck.params["w"], ck.params["b"][None]])
    n, var = len(X), 0.5**2
    hessian, grad = A.T @ A / (n * var), (A.T @ (A @ w - y) / (n * var)).ravel()
    return linear_gaussian_llc(hessian, n, default_beta(n), 1.0, grad)


def test_one_llc_per_checkpoint_with_one_setting_and_the_curve_drawn(folder):
    runs = load_runs(_config(folder))
    assert [e.checkpoints for e in runs.config.problems] == [[2], [20], [400]]
    assert set(runs.kinds.values()) == {"none"}  # no HMC per checkpoint by default
    plan = experiments.plan_experiments(runs)
    with ThreadPoolExecutor(2) as pool:
        code = experiments.execute(
            plan,
            lambda p: pool.submit(trial_app.execute_trial, p),
            lambda p: pool.submit(reference_app.execute_reference, p),
        )
    assert code == 0
    table = pd.read_parquet(folder / "results" / layout.RUNS_TABLE).sort_values("step")
    assert table.step.tolist() == [2, 20, 400] and table.pid.nunique() == 3
    assert (table.status == "ok").all() and (table.ref_kind == "none").all()
    assert table.set.nunique() == 1 and (table.eta0_units == 0.05).all()
    eta0 = table.hyperparams.map(lambda h: h["eta0"])
    assert eta0.tolist() == pytest.approx((0.05 * table.eps_max).tolist())
    assert table.train_loss.is_monotonic_decreasing and table.test_loss.notna().all()
    assert table.shift_sd.iloc[0] > 0.5 > table.shift_sd.iloc[-1]  # not blocked: recorded
    for step, llc, se in zip(table.step, table.llc_hat, table.se_hat, strict=True):
        exact = _exact(step)
        assert abs(llc - exact) < 4 * se + 0.05 * abs(exact), (step, llc, se, exact)
    written = make_report(folder / "results", artifacts=folder / "artifacts")
    (png,) = [p for p in written if p.name.startswith("training_")]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        "LLC over training" in (folder / "results" / layout.REPORT / layout.REPORT_MD).read_text()
    )
