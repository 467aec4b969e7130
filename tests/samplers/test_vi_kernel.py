"""VI's pieces driven directly: Lanczos whitening (the Laplace eigenbasis), the mixture density,
and the curvature estimate the fit starts from.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from lambda_hat.samplers import vi


def test_lanczos_whitening_is_the_laplace_eigenbasis():
    """A = I + rank 2 (d = 6): the Krylov space breaks down after 3 steps and Lanczos goes on
    from a fresh direction; Q diag(scale) then maps N(0, I) onto N(0, A⁻¹) exactly."""
    rng = np.random.default_rng(0)
    B = rng.normal(size=(6, 2))
    A = np.eye(6) + 50.0 * B @ B.T
    theta, V = jax.jit(lambda k: vi.lanczos_eigenpairs(lambda v: A @ v, k, 6, 6))(
        jax.random.PRNGKey(0)
    )
    np.testing.assert_allclose(np.sort(theta), np.linalg.eigvalsh(A), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(V.T @ V, np.eye(6), atol=1e-10)
    Y, T = vi._orthogonal_completion(V[:, ::-1][:, :2])  # the top two directions
    wh = vi.Whitening(np.array([0.1, 0.2, 1, 1, 1, 1.0]), Y, T)
    M = np.asarray(jax.vmap(lambda z: vi.to_weights(wh, z))(np.eye(6))).T
    Q = M / wh.scale
    np.testing.assert_allclose(Q.T @ Q, np.eye(6), atol=1e-12)
    np.testing.assert_allclose(np.abs(Q[:, :2]), np.abs(V[:, ::-1][:, :2]), atol=1e-12)
    assert float(vi.log_det(wh)) == pytest.approx(np.linalg.slogdet(M)[1], rel=1e-12)


def test_the_linear_laplace_is_exact_in_lanczos_coordinates(linear):
    _, post, H = linear
    wh, scale = vi.whitening_and_curvature(post, "lanczos", jax.random.PRNGKey(0), 64, 10, 0.99)
    M = np.asarray(jax.vmap(lambda z: vi.to_weights(wh, z))(np.eye(3))).T
    A = post.nbeta * H + post.gamma * np.eye(3)
    np.testing.assert_allclose(M.T @ A @ M, np.eye(3), atol=1e-8)
    np.testing.assert_allclose(scale, 1.0)


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
    adam = vi.whitening_and_curvature(post, "adam", jax.random.PRNGKey(1), 64, 2000, 0.999)[0]
    np.testing.assert_allclose(adam.scale**-2, post.nbeta * np.diag(H) + post.gamma, rtol=0.25)
    none = vi.whitening_and_curvature(post, "none", jax.random.PRNGKey(1), 64, 10, 0.99)[0]
    np.testing.assert_allclose(none.scale**-2, post.nbeta + post.gamma)
