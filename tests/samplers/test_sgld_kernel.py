"""SGLD's kernel driven directly: the literature's update, preconditioner moments that ignore
the localization, the block draws of both λ̂ estimators, and preconditioned SGLD (adapt P in
burn-in, freeze it) against the closed form.

Known answer (theory.precond_ula_llc): with a fixed diagonal P, full-batch Langevin on a
quadratic L_n is a Gaussian AR(1) chain whose stationary covariance solves a discrete Lyapunov
equation. The kernel runs on an anisotropic regression, where the adapted P is far from 1, so
the answer with P differs from plain SGLD's; each chain is scored with the P it froze.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.sgld import drive_sgld, expected_llc

from lambda_hat.llc.posterior import make_posterior
from lambda_hat.problem import theory
from lambda_hat.samplers import sgld


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


EPS, BATCH = 1e-4, 32


@pytest.mark.parametrize("table", [False, True])
def test_minibatch_draw_is_the_mean_of_the_steps_batch_losses(linear, table):
    """One block by hand: its draw is the mean of L_B(w) − L_B(w*) + L_n(w*) over its steps
    (L_B(w*) = L_n(w*) without the row-loss table), the chain the same for both estimators."""
    _, post, _ = linear
    rows = sgld.row_losses(post) if table else None
    kernel = sgld.build_kernel(post, BATCH, row_loss_star=rows)
    key, state, block_len = jax.random.PRNGKey(4), sgld.init(post.w_star + 0.01), 5
    terms, s = [], state
    for step in range(2 * block_len, 3 * block_len):  # block index 2
        s, info = kernel(jax.random.fold_in(key, step), s, EPS)
        terms.append(float(info.batch_loss) - float(info.batch_loss_star) + post.loss_star)
    outs = {}
    for estimator in ("minibatch", "full"):
        block = sgld.build_block(kernel, post, EPS, block_len, 0, estimator)
        outs[estimator] = block(key, state, 2)
        np.testing.assert_allclose(outs[estimator][0].position, s.position, rtol=1e-12)
    assert float(outs["minibatch"][1][0]) == pytest.approx(np.mean(terms), rel=1e-12)
    assert float(outs["full"][1][0]) == pytest.approx(float(post.loss(s.position)), rel=1e-12)


def test_row_loss_table_gives_the_batch_loss_at_w_star(linear):
    """At w = w* the looked-up L_B(w*) is the step's own L_B(w), and the table's mean L_n(w*)."""
    _, post, _ = linear
    rows = sgld.row_losses(post)
    assert float(jnp.mean(rows)) == pytest.approx(post.loss_star, rel=1e-12)
    kernel = sgld.build_kernel(post, BATCH, row_loss_star=rows)
    for seed in range(3):
        _, info = kernel(jax.random.PRNGKey(seed), sgld.init(post.w_star), EPS)
        assert float(info.batch_loss_star) == pytest.approx(float(info.batch_loss), rel=1e-12)
        assert float(info.batch_loss) != pytest.approx(post.loss_star, rel=1e-6)


def anisotropic_regression():
    """Linear regression 3 -> 1 whose inputs have scales 0.3, 1, 3 (Hessian spread 100):
    (posterior, Hessian, gradient of L_n at w*). w* is off the least-squares point, so the
    posterior mean is shifted and the closed form's mean term is exercised."""
    rng = np.random.default_rng(5)
    n, noise = 200, 0.5
    X = rng.normal(size=(n, 3)) * np.array([0.3, 1.0, 3.0])
    y = X @ np.array([0.5, -1.0, 0.2])[:, None] + noise * rng.normal(size=(n, 1))
    w_ls = np.linalg.lstsq(X, y, rcond=None)[0][:, 0]

    def apply(w, X):
        return X @ w[:, None]

    w_star = jnp.asarray(w_ls + np.array([0.02, -0.01, 0.001]))
    post = make_posterior(apply, jnp.asarray(X), jnp.asarray(y), noise, w_star)
    H = np.asarray(jax.hessian(post.loss)(w_star))
    return post, H, np.asarray(jax.grad(post.loss)(w_star))


@pytest.fixture(scope="module")
def anisotropic():
    return anisotropic_regression()


# ------------------------------------------------------------------ the kernel, frozen P


def test_frozen_step_is_plain_preconditioned_langevin_and_its_mala_is_exact(anisotropic):
    """A frozen step (adam too) moves by −(ε/2)P∇U + √(εP)ξ, leaves the moments alone, and its
    MALA acceptance is the Metropolis–Hastings ratio of that fixed-P proposal."""
    post, _, _ = anisotropic
    eps, key = 3e-3, jax.random.PRNGKey(11)
    P = jnp.array([2.2, 0.6, 0.2])
    w = post.w_star + jnp.array([0.05, -0.02, 0.01])
    state = sgld.init(w, P)._replace(m=jnp.full(3, 0.3), v=jnp.full(3, 0.7))

    def u(x):
        return post.nbeta * post.loss(x) + post.localization(x)

    for precond in ("rmsprop", "adam"):
        kernel = jax.jit(sgld.build_kernel(post, post.n, precond), static_argnums=3)
        new, info = kernel(key, state, eps, True, False)
        xi = jax.random.normal(jax.random.split(key)[1], (3,))
        expected = w - 0.5 * eps * P * jax.grad(u)(w) + jnp.sqrt(eps * P) * xi
        np.testing.assert_allclose(new.position, expected, rtol=1e-12)
        np.testing.assert_array_equal(new.precond, P)
        np.testing.assert_array_equal(new.m, state.m)
        np.testing.assert_array_equal(new.v, state.v)

        x, y = np.asarray(w), np.asarray(new.position)

        def log_q(to, frm):
            mean = frm - 0.5 * eps * np.asarray(P) * np.asarray(jax.grad(u)(frm))
            return -np.sum((to - mean) ** 2 / np.asarray(P)) / (2 * eps)

        log_r = float(u(x) - u(y)) + log_q(x, y) - log_q(y, x)
        assert float(info.mala_accept) == pytest.approx(min(1.0, math.exp(log_r)), rel=1e-9)


@pytest.mark.parametrize("eps", [3e-3, 1e-3])
def test_fixed_P_langevin_matches_the_lyapunov_closed_form(anisotropic, eps):
    """P given at init and never adapted: the kept draws match the closed form with that P,
    which is far from plain SGLD's answer at the same step."""
    post, H, g = anisotropic
    P = np.array([2.2, 0.6, 0.2])
    res, state, _ = drive_sgld(post, eps, 5000, 64, "rmsprop", every=5, adapt_steps=0, P0=P)
    np.testing.assert_array_equal(np.asarray(state.precond), np.tile(P, (64, 1)))
    expected = theory.precond_ula_llc(H, post.n, post.beta, post.gamma, eps, P, g)
    plain = theory.precond_ula_llc(H, post.n, post.beta, post.gamma, eps, None, g)
    se = res["se_hat"]
    assert abs(res["llc_hat"] - expected) < 3 * se, (res["llc_hat"], expected, se)
    assert abs(plain - expected) > 10 * se  # the test tells P's closed form from plain SGLD's


# ------------------------------------------------------------- adapt in burn-in, then freeze


@pytest.mark.parametrize("precond", ["none", "rmsprop", "adam"])
def test_adapted_then_frozen_sgld_matches_the_closed_form(anisotropic, precond):
    """The whole scheme on the anisotropic problem, two step sizes, each chain with the P it
    froze; adapted P spreads the step by more than 5x across coordinates."""
    post, H, g = anisotropic
    for eps in (3e-3, 1e-3):
        res, state, acc = drive_sgld(post, eps, 10000, 32, precond, every=5)
        P = np.asarray(state.precond)
        expected = expected_llc(H, post, eps, P, g)
        se = res["se_hat"]
        assert abs(res["llc_hat"] - expected) < 3 * se, (precond, eps, res["llc_hat"], expected)
        if precond != "none":
            assert np.all(P.max(axis=1) / P.min(axis=1) > 5)
            np.testing.assert_allclose(P.mean(axis=1), 1.0, rtol=1e-12)  # P has mean 1
        assert 0.5 < np.nanmean(acc) < 1.0


def test_adapting_throughout_is_biased(anisotropic):
    """The scheme this replaces: P following the chain's last ~100 gradients for every kept
    draw misses the closed form of even its own average P by many SE (no Γ correction)."""
    post, H, g = anisotropic
    eps = 1e-3
    res, _, _ = drive_sgld(post, eps, 10000, 32, "rmsprop", every=5, adapt_steps=10**9)
    _, frozen, _ = drive_sgld(post, eps, 10000, 32, "rmsprop", every=5)
    expected = expected_llc(H, post, eps, np.asarray(frozen.precond), g)
    assert res["llc_hat"] - expected > 4 * res["se_hat"], (res["llc_hat"], expected)
