"""MCLMC against the exact λ̂ of a linear-Gaussian problem, and its BlackJAX plumbing."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lambda_hat import theory
from lambda_hat.runner import run_method_trial
from lambda_hat.samplers import mclmc


@pytest.fixture(scope="module")
def linear(linear_problem):
    problem = linear_problem
    post = problem.posterior()
    H = np.asarray(jax.hessian(post.loss)(problem.w_star))
    return problem, post, H


def test_mclmc_reproduces_exact_llc(linear, tmp_path):
    problem, post, H = linear
    m = run_method_trial(problem, "mclmc", {"steps": 2000}, None, 0, artifacts=tmp_path)
    assert m["status"] == "ok", m["failure"]
    exact = theory.linear_gaussian_llc(H, post.n, post.beta, post.gamma)
    assert abs(m["llc_hat"] - exact) < 4 * m["se_hat"], (m["llc_hat"], exact, m["se_hat"])
    assert m["se_hat"] < 0.05 * exact
    tune = mclmc.tuning_steps(2000, 0.3)
    assert m["work"]["tuning_steps"] == tune
    assert m["work"]["grad_evals"] == 4 * 2 * (2000 + tune)  # 2 gradients per step, all chains
    assert m["diagnostics"]["nan_steps"] == 0
    assert m["diagnostics"]["rhat"] < 1.01


def test_target_accept_sets_the_energy_target():
    assert mclmc.desired_energy_var(0.9) == pytest.approx(5e-4)  # BlackJAX's default
    values = [mclmc.desired_energy_var(a) for a in (0.6, 0.8, 0.9, 0.95)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    with pytest.raises(ValueError, match="target_accept"):
        mclmc.desired_energy_var(1.0)
