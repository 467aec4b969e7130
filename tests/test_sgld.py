"""SGLD against closed forms on a linear-Gaussian problem (the localized posterior is Gaussian:
:func:`lambda_hat.problem.theory.linear_gaussian_llc`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import solve_discrete_lyapunov

from lambda_hat.problem import theory
from lambda_hat.samplers import sgld
from lambda_hat.trial.runner import run_method_trial


def minibatch_ula_llc(post, H, F, eps, batch):
    """Stationary λ̂ of minibatch SGLD on a quadratic L_n, gradient noise Cov = F/batch.

    w' − w* = (I − εA/2)(w − w*) + √ε ξ + (ε/2)nβ η  ⇒  Σ = BΣBᵀ + εI + (ε²/4)(nβ)² F/batch.
    """
    A = post.nbeta * H + post.gamma * np.eye(len(H))
    B = np.eye(len(H)) - 0.5 * eps * A
    Q = eps * np.eye(len(H)) + 0.25 * eps**2 * post.nbeta**2 * F / batch
    sigma = solve_discrete_lyapunov(B, Q)
    return 0.5 * post.nbeta * np.trace(H @ sigma)


def test_full_batch_sgld_reproduces_ula(linear, tmp_path):
    problem, post, H = linear
    eps = 2e-4
    m = run_method_trial(
        problem,
        "sgld",
        {"eta0": eps, "batch": 256, "steps": 20000, "eval_every": 5},
        None,
        0,
        artifacts=tmp_path,
    )
    assert m["status"] == "ok", m["failure"]
    ula = theory.sgld_ula_llc(H, post.n, post.beta, post.gamma, eps)
    exact = theory.linear_gaussian_llc(H, post.n, post.beta, post.gamma)
    assert ula - exact > 10 * m["se_hat"]  # the two answers are far apart at this step
    assert abs(m["llc_hat"] - ula) < 4 * m["se_hat"], (m["llc_hat"], ula, m["se_hat"])
    assert m["diagnostics"]["batch"] == post.n  # batch >= n means full batch
    assert 0.5 < m["diagnostics"]["mala_acceptance"] < 1.0
    assert m["diagnostics"]["rhat"] < 1.01


def test_minibatch_sgld_small_step_lands_near_exact(linear, tmp_path):
    problem, post, H = linear
    eps, batch = 2e-5, 32
    m = run_method_trial(
        problem,
        "sgld",
        {"eta0": eps, "batch": batch, "steps": 40000, "eval_every": 10},
        None,
        0,
        artifacts=tmp_path,
    )
    assert m["status"] == "ok", m["failure"]
    exact = theory.linear_gaussian_llc(H, post.n, post.beta, post.gamma)
    per_sample = jax.vmap(jax.grad(lambda w, i: post.batch_loss(w, i[None])), (None, 0))(
        problem.w_star, jnp.arange(post.n)
    )
    F = np.cov(np.asarray(per_sample).T, bias=True)
    expected = minibatch_ula_llc(post, H, F, eps, batch)
    assert abs(m["llc_hat"] - expected) < 4 * m["se_hat"], (m["llc_hat"], expected)
    assert abs(m["llc_hat"] - exact) < 0.06 * exact
    # minibatch gradients (steps + one MALA probe per block); the default (minibatch) estimator
    # makes one full-data pass in all (each row's loss at w*)
    assert m["work"]["fge"] == pytest.approx(4 * (40000 + 4000) * batch / post.n + 1)


def test_preconditioner_moments_ignore_localization(linear):
    """RMSProp/Adam moments come from ∇L_B only: changing γ leaves them unchanged."""
    _, post, _ = linear
    w = post.w_star + 0.01
    for precond in ("rmsprop", "adam"):
        states = []
        for gamma in (0.0, 100.0):
            kernel = sgld.build_kernel(post._replace(gamma=gamma), 16, precond)
            states.append(kernel(jax.random.PRNGKey(3), sgld.init(w), 1e-4)[0])
        np.testing.assert_array_equal(states[0].v, states[1].v)
        np.testing.assert_array_equal(states[0].m, states[1].m)
        assert not np.allclose(states[0].position, states[1].position)


def test_full_batch_step_matches_the_literature_update(linear):
    """Δw = −(ε/2)[nβ∇L_n + γ(w − w*)] + √ε ξ, with ξ from the step's noise key."""
    _, post, _ = linear
    eps, w, key = 1e-4, post.w_star + 0.02, jax.random.PRNGKey(7)
    new, info = sgld.as_top_level_api(post, eps, batch=10**6).step(key, sgld.init(w))
    grad_u = post.nbeta * jax.grad(post.loss)(w) + post.gamma * (w - post.w_star)
    xi = jax.random.normal(jax.random.split(key)[1], w.shape)
    np.testing.assert_allclose(new.position, w - 0.5 * eps * grad_u + np.sqrt(eps) * xi)
    assert info.batch_loss == pytest.approx(float(post.loss(w)))
