"""Variational LLC: a Gaussian family is exact on a linear-Gaussian problem."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from lambda_hat import theory
from lambda_hat.runner import run_method_trial
from lambda_hat.samplers import vi


def test_gaussian_vi_reproduces_exact_llc_by_maximizing_the_elbo(linear, tmp_path):
    problem, post, H = linear
    hp = {"M": 1, "r": 3, "steps": 2000, "batch_size": 256, "eval_samples": 1024}
    m = run_method_trial(problem, "vi", hp, None, 0, artifacts=tmp_path)
    assert m["status"] == "ok", m["failure"]
    exact = theory.linear_gaussian_llc(H, post.n, post.beta, post.gamma)
    assert abs(m["llc_hat"] - exact) < 4 * m["se_hat"], (m["llc_hat"], exact, m["se_hat"])
    assert m["se_hat"] < 0.03 * exact  # enough draws from q that the SE is small
    with np.load(f"{m['run_dir']}/trace.npz") as z:
        elbo = z["elbo"]
    assert elbo.shape == (4, 2000)
    assert elbo[:, -100:].mean() > elbo[:, :20].mean() + 0.2  # the ELBO went up
    assert elbo[:, -100:].std() < 1e-3  # and settled (sticking-the-landing gradients)


def test_mixture_density_matches_scipy():
    key = jax.random.PRNGKey(0)
    d, M, r = 5, 3, 2
    p = vi.init_params(key, d, M, r, spread=1.0)
    p = p._replace(log_sd=0.3 * jax.random.normal(key, (M, d)), logits=np.array([0.0, 1.0, -1.0]))
    z = np.linspace(-1, 1, d)
    pis = np.exp(p.logits) / np.exp(p.logits).sum()
    expected = sum(
        pis[m]
        * multivariate_normal(p.mu[m], np.diag(np.exp(2 * p.log_sd[m])) + p.U[m] @ p.U[m].T).pdf(z)
        for m in range(M)
    )
    assert float(jax.jit(vi.log_q)(p, z)) == pytest.approx(np.log(expected), rel=1e-10)
    draws = np.asarray(
        jax.jit(vi.sample, static_argnums=2)(
            p._replace(logits=np.array([0.0, -50.0, -50.0])), key, 20000
        )
    )
    cov0 = np.diag(np.exp(2 * p.log_sd[0])) + p.U[0] @ p.U[0].T
    np.testing.assert_allclose(np.cov(draws.T), cov0, atol=0.05)


def test_whitening_estimates_the_curvature(linear):
    """B·Var(∇L_B) at w* is the per-sample Fisher, ≈ diag H for a well-specified model."""
    _, post, H = linear
    a_adam = vi.whitening_precision(post, "adam", jax.random.PRNGKey(1), 64, 2000, 0.999)
    np.testing.assert_allclose(a_adam, post.nbeta * np.diag(H) + post.gamma, rtol=0.25)
    a_none = vi.whitening_precision(post, "none", jax.random.PRNGKey(1), 64, 10, 0.99)
    np.testing.assert_allclose(a_none, post.nbeta + post.gamma)
