"""Preconditioned SGLD targets the posterior: adapt P in burn-in, freeze it, check closed forms.

Known answer (theory.precond_ula_llc): with a fixed diagonal P, full-batch Langevin on a
quadratic L_n is a Gaussian AR(1) chain whose stationary covariance solves a discrete Lyapunov
equation. The kernel is driven directly on an anisotropic regression (where the adapted P is
far from 1, so the answer with P differs from plain SGLD's), and through the runner on the
shared linear problem, each time with the P the run actually froze.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lambda_hat.llc.estimator import estimate_llc
from lambda_hat.llc.posterior import chain_starts, make_posterior
from lambda_hat.problem import theory
from lambda_hat.samplers import sgld
from lambda_hat.trial.runner import run_method_trial

# ------------------------------------------------------------------------------- helpers


def drive_sgld(
    post, eps, steps, chains, precond="none", every=10, seed=0, adapt_steps=None, P0=None
):
    """Run full-batch SGLD as the runner does (blocks of ``every`` steps, L_n at each block's
    end, 20 % burn-in, P adapted during its first half unless ``adapt_steps`` says otherwise;
    ``P0``: every chain's initial P).

    Returns (estimate_llc dict of the kept draws, final states, kept MALA acceptances).
    """
    blocks = steps // every
    burn = blocks // 5
    if adapt_steps is None:
        adapt_steps = 0 if precond == "none" else burn * every // 2
    k_start, k_run = jax.random.split(jax.random.PRNGKey(seed))
    states = jax.vmap(lambda w: sgld.init(w, P0))(chain_starts(post, k_start, chains))
    loss, accept, state = _sgld_program(post, precond, every, blocks)(
        jax.random.split(k_run, chains), states, jnp.float64(eps), jnp.int64(adapt_steps)
    )
    kept = np.asarray(loss)[:, burn:]
    return estimate_llc(kept, post.loss_star, post.nbeta), state, np.asarray(accept)[:, burn:]


_PROGRAMS: dict = {}


def _sgld_program(post, precond, every, blocks):
    """The jitted run of ``blocks`` blocks per chain, step size and adapt length traced
    (one compile per posterior, preconditioner and shape, as in the runner)."""
    key = (id(post), precond, every, blocks)
    if key not in _PROGRAMS:
        kernel = sgld.build_kernel(post, post.n, precond)

        @jax.jit
        def run(keys, states, eps, adapt):
            block = sgld.build_block(kernel, post, eps, every, adapt, "full")

            def chain(key, state):
                return jax.lax.scan(lambda s, b: block(key, s, b), state, jnp.arange(blocks))

            state, (loss, accept) = jax.vmap(chain)(keys, states)
            return loss, accept, state

        _PROGRAMS[key] = run
    return _PROGRAMS[key]


def expected_llc(H, post, eps, precond, grad=None, grad_cov=None) -> float:
    """The closed form averaged over chains, each with the P it froze ((C, d) array)."""
    values = [
        theory.precond_ula_llc(H, post.n, post.beta, post.gamma, eps, P, grad, grad_cov)
        for P in np.asarray(precond)
    ]
    return float(np.mean(values))


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


# ----------------------------------------------------------------------------- closed form


def test_closed_form_reduces_to_the_known_cases():
    H = np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]])
    n, beta, gamma, eps = 100, 0.5, 1.0, 1e-3
    assert theory.precond_ula_llc(H, n, beta, gamma, eps) == pytest.approx(
        theory.sgld_ula_llc(H, n, beta, gamma, eps), rel=1e-12
    )
    g = np.array([0.01, -0.02, 0.005])
    for P in (None, np.array([2.0, 0.5, 0.5])):
        assert theory.precond_ula_llc(H, n, beta, gamma, 1e-9, P, g) == pytest.approx(
            theory.linear_gaussian_llc(H, n, beta, gamma, g), rel=1e-6
        )
    # Diagonal H and P: coordinate i is a scalar AR(1) chain with variance 1/(a(1 − εPa/4)).
    h, P = np.array([2.0, 1.0, 0.5]), np.array([0.4, 1.0, 1.6])
    a = n * beta * h + gamma
    by_hand = 0.5 * np.sum(n * beta * h / (a * (1 - eps * P * a / 4)))
    assert theory.precond_ula_llc(np.diag(h), n, beta, gamma, eps, P) == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="unstable"):
        theory.precond_ula_llc(H, n, beta, gamma, 0.5, P)


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


# ------------------------------------------------------------------------- through the runner


def _trial(problem, tmp_path, precond, eps, batch, steps):
    hp = {"eta0": eps, "batch": batch, "steps": steps, "eval_every": 10, "precond_type": precond}
    m = run_method_trial(problem, "sgld", hp, None, 0, artifacts=tmp_path)
    assert m["status"] == "ok", m["failure"]
    with np.load(Path(m["run_dir"]) / "trace.npz") as z:
        return m, z["precond"]


@pytest.mark.parametrize("precond", ["none", "rmsprop", "adam"])
def test_runner_full_batch_matches_the_closed_form_with_the_recorded_P(linear, tmp_path, precond):
    """The runner freezes P halfway through the burn-in and records it (trace.npz); the
    estimate matches the closed form with that P at two step sizes (before the fix RMSProp
    read 1.647 and Adam 2.175 at ε = 2e-5, against 1.527)."""
    problem, post, H = linear
    g = np.asarray(jax.grad(post.loss)(problem.w_star))
    for eps, steps in ((2e-4, 20000), (2e-5, 40000)):
        m, P = _trial(problem, tmp_path, precond, eps, 256, steps)
        assert P.shape == (4, post.d)
        assert m["diagnostics"]["precond_adapt_steps"] == (0 if precond == "none" else steps // 10)
        expected = expected_llc(H, post, eps, P, g)
        assert abs(m["llc_hat"] - expected) < 3 * m["se_hat"], (eps, m["llc_hat"], expected)
        assert 0.5 < m["diagnostics"]["mala_acceptance"] < 1.0


def _gradient_noise(problem, post, batch):
    """Covariance of a with-replacement minibatch gradient of L at w*: F / batch."""
    per_sample = jax.vmap(jax.grad(lambda w, i: post.batch_loss(w, i[None])), (None, 0))(
        problem.w_star, jnp.arange(post.n)
    )
    return np.cov(np.asarray(per_sample).T, bias=True) / batch


@pytest.mark.parametrize("precond", ["rmsprop", pytest.param("adam", marks=pytest.mark.slow)])
def test_runner_minibatch_matches_plain_sgld(linear, tmp_path, precond):
    """Batch 32: the reference is the Lyapunov closed form with the frozen P *and* the
    minibatch gradient noise (ε²/4)(nβ)²·P F P / B; on this problem P ≈ 1, so it is also
    plain SGLD's closed form and plain SGLD's estimate, within 3 SE."""
    problem, post, H = linear
    eps, batch, C = 2e-5, 32, _gradient_noise(problem, post, 32)
    m, P = _trial(problem, tmp_path, precond, eps, batch, 40000)
    expected = expected_llc(H, post, eps, P, grad_cov=C)
    plain_form = theory.precond_ula_llc(H, post.n, post.beta, post.gamma, eps, grad_cov=C)
    plain, _ = _trial(problem, tmp_path, "none", eps, batch, 40000)
    se = m["se_hat"]
    assert abs(m["llc_hat"] - expected) < 3 * se, (m["llc_hat"], expected, se)
    assert abs(expected - plain_form) < 0.5 * se
    assert abs(m["llc_hat"] - plain["llc_hat"]) < 3 * math.hypot(se, plain["se_hat"])
