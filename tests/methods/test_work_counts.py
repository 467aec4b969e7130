"""Work counts against hand counts: ``fge`` counts every pass over the data a method makes.

Unit: one full-data pass, forward or gradient (a pass over B rows is B/n). ``grad_evals``
counts gradient evaluations on whatever batch; ``loss_evals`` the forward-only full passes.
"""

from __future__ import annotations

import pytest

from lambda_hat.trial.runner import run_method_trial


@pytest.mark.parametrize("estimator", ["minibatch", "full"])
def test_sgld_counts_its_minibatch_gradients_probe_and_loss_passes(
    linear_problem, tmp_path, estimator
):
    hp = {"steps": 200, "batch": 32, "chains": 2, "eval_every": 10, "estimator": estimator}
    m = run_method_trial(linear_problem, "sgld", hp, None, 0, artifacts=tmp_path)
    assert m["status"] == "ok", m["failure"]
    # 20 blocks per chain, each: 10 steps + 1 MALA-probe gradient on 32 of 200 rows; the full
    # estimator adds 1 L_n pass per block and chain, the minibatch one reads the steps' own
    # batch losses and makes one pass in all (each row's loss at w*, its control variate)
    passes = 2 * 20 if estimator == "full" else 1
    assert m["work"]["grad_evals"] == 2 * 20 * 11
    assert m["work"]["loss_evals"] == passes
    assert m["work"]["fge"] == pytest.approx(2 * 20 * 11 * 32 / 200 + passes)  # 110.4 | 71.4


def test_vi_counts_fit_whitening_and_evaluation_draws(linear_problem, tmp_path):
    m = run_method_trial(linear_problem, "vi", {"steps": 300}, None, 0, artifacts=tmp_path)
    assert m["failure"] is None or m["failure"]["kind"] == "diverged", m["failure"]
    # 4 fits x 300 steps x M = 4 components x 1 draw, batch 128 of 200 rows; whitening once:
    # 200 gradients of 128 rows; evaluation: 4 fits x 256 full-data L_n passes; the drift
    # check: 4 fits x 32 draws x (1 + 200 MALA steps) full-data gradients
    assert m["work"]["grad_evals"] == 4 * 300 * 4 + 200 + 4 * 32 * 201
    assert m["work"]["loss_evals"] == 4 * 256
    fit = 4 * 300 * 4 * 128 / 200 + 200 * 128 / 200
    assert m["work"]["fge"] == pytest.approx(fit + 1024 + 4 * 32 * 201)


def test_mclmc_counts_start_tuning_and_sampling_gradients(linear_problem, tmp_path):
    m = run_method_trial(
        linear_problem, "mclmc", {"steps": 200, "chains": 2}, None, 0, artifacts=tmp_path
    )
    assert m["status"] == "ok", m["failure"]
    # tuner for 200 steps at tune_frac 0.3: phases 20 + 20 + 7 (readjust) + 20 = 67 steps, then
    # the energy-variance rounds at energy_frac 0.2: 4 windows of 40 // 4 = 10 steps
    assert m["work"]["tuning_steps"] == 67 + 40
    # per chain: 1 gradient at the start, 2 per integrator step (107 tuning + 200 sampling)
    assert m["work"]["grad_evals"] == 2 * (1 + 2 * (107 + 200))
    assert m["work"]["fge"] == m["work"]["grad_evals"]  # full-batch gradients
