"""Known answers on singular targets, for every sampler (issue 9, section 4).

The targets and their exact answers are ``helpers/singular.py``'s (the quadratures are checked
in ``tests/problem/test_theory.py``). The samplers are driven through their kernels directly.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from helpers.sgld import drive_sgld
from helpers.singular import EXACT, GAMMA, NBETA, N, singular_posterior

from lambda_hat.llc.estimator import estimate_llc
from lambda_hat.llc.posterior import chain_starts
from lambda_hat.problem import theory
from lambda_hat.samplers import hmc, mclmc, vi

# ----------------------------------------------------------------------------------- HMC


def run_hmc(name, chains=4, warmup=500, draws=2000, target_accept=0.9, seed=0):
    post = singular_posterior(name)
    k_start, k_warm, k_draw = jax.random.split(jax.random.PRNGKey(seed), 3)
    warm = jax.jit(hmc.build_warmup(post, warmup, target_accept, 10))
    state, _, _ = warm(jax.random.split(k_warm, chains), chain_starts(post, k_start, chains))
    keys = jax.random.split(k_draw, chains * draws).reshape(chains, draws, -1)
    _, info = jax.jit(hmc.build_sample_chunk(post, 10))(keys, state)
    return estimate_llc(np.asarray(info.loss), 0.0, post.nbeta), np.asarray(info.is_divergent)


@pytest.mark.parametrize("name", ["quartic", "product"])
def test_hmc_matches_quadrature(name):
    res, divergent = run_hmc(name)
    exact = EXACT[name]()
    assert abs(res["llc_hat"] - exact) < 3 * res["se_hat"], (res["llc_hat"], exact)
    assert res["se_hat"] < 0.03 * exact
    assert divergent.mean() < 0.05


# --------------------------------------------------------------------------------- MCLMC


def run_mclmc(name, steps=4000, chains=4, target_accept=0.95, fixed=None, seed=0):
    """MCLMC as the runner runs it: tuned on 30 % of ``steps`` (or ``fixed`` = (L, step size),
    unit mass), then ``steps`` draws, 10 % dropped. Returns (estimate, energy variance/dim)."""
    post = singular_posterior(name)
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    states = mclmc.init(post, jax.random.split(ks[0], chains), chain_starts(post, ks[1], chains))
    if fixed is not None:
        tuned = mclmc.fixed_chains(states, *fixed)
    else:
        sched = mclmc.tune_schedule(steps, 0.3)
        capacity = 1 << math.ceil(math.log2(max(sched.n1 + sched.n2 + 1, sched.n3, 2)))
        tune = jax.jit(mclmc.build_tuner(post, capacity, sched.n2 > 1, sched.n3 >= 2))
        target = mclmc.desired_energy_var(target_accept)
        tuned, positions = tune(
            jax.random.split(ks[2], chains), states, tuple(np.int64(sched)), target, 2**0.5 / 4
        )
        tuned = mclmc.finish_tuning(tuned, positions, sched.n3, 1.0)
    keys = jax.random.split(ks[3], chains * steps).reshape(chains, steps, -1)
    step = mclmc.build_step(post)

    def one_chain(keys, state, L, step_size, imm):
        return jax.lax.scan(lambda s, k: step(k, s, L, step_size, imm), state, keys)

    run = jax.jit(jax.vmap(one_chain))
    _, info = run(keys, tuned.state, tuned.L, tuned.step_size, tuned.inverse_mass_matrix)
    loss = np.asarray(info.loss)[:, steps // 10 :]
    energy_var = float(np.mean(np.asarray(info.energy_change) ** 2) / post.d)
    return estimate_llc(loss, 0.0, post.nbeta), energy_var


@pytest.mark.parametrize("name", ["quartic", "product"])
def test_mclmc_with_a_small_fixed_step_matches_quadrature(name):
    """Unadjusted MCLMC has a step-size bias: at step 0.3 (unit mass, L = 1.4, same keys) it
    reads 2 % low on both targets (-2.1 and -1.5 SE); at 0.1 it agrees."""
    res, _ = run_mclmc(name, chains=8, fixed=(2.0, 0.1))
    exact = EXACT[name]()
    assert abs(res["llc_hat"] - exact) < 3 * res["se_hat"], (res["llc_hat"], exact)
    assert res["se_hat"] < 0.03 * exact


@pytest.mark.slow  # ~12 s each on 2 shared cores (the tuner compiles)
@pytest.mark.parametrize("name", ["quartic", "product"])
def test_tuned_mclmc_matches_quadrature(name):
    """Tuned as the runner tunes, at target_accept 0.95. At the default 0.9 it read 1-2 % low
    on both targets in long runs (8 x 18,000 draws: -2.0 and -2.9 SE)."""
    res, _ = run_mclmc(name)
    exact = EXACT[name]()
    assert abs(res["llc_hat"] - exact) < 3 * res["se_hat"], (res["llc_hat"], exact)
    assert res["se_hat"] < 0.03 * exact


# ------------------------------------------------------------------------------------ VI


def run_vi(name, M, r, steps, mc_samples=1, fits=4, eval_samples=4096, lr=1e-2, seed=0):
    """VI as the runner fits it (whitening ``none``: a = nβ + γ, here the target has no
    curvature at w* to estimate); se = max(Monte Carlo SE, between-fit SE)."""
    post = singular_posterior(name)
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    whitening = vi.whitening_and_curvature(post, "none", ks[0], N, 1, 0.99)[0]
    optimizer = vi.build_optimizer(lr, steps)
    step = vi.build_step(post, whitening, optimizer, N, mc_samples)

    @jax.jit
    def fit(keys):
        def one(key):
            k_init, k_run = jax.random.split(key)
            state = vi.init(vi.init_params(k_init, post.d, M, r, 0.5), optimizer)
            keys = jax.random.split(k_run, steps)
            return jax.lax.scan(lambda s, k: step(k, s), state, keys)[0].params

        return jax.vmap(one)(keys)

    params = fit(jax.random.split(ks[1], fits))
    evaluate = jax.jit(jax.vmap(vi.build_eval(post, whitening, eval_samples)))
    loss = np.asarray(evaluate(jax.random.split(ks[2], fits), params)[0])
    res = estimate_llc(loss, 0.0, post.nbeta, independent=True)
    between = float(np.std(res["llc_per_chain"], ddof=1) / math.sqrt(fits))
    return res["llc_hat"], max(res["se_hat"], between)


def test_gaussian_vi_reaches_the_optimal_gaussian():
    """M = 1: the fit is the ELBO-optimal Gaussian (closed form). On the product target that
    is 36 % above the posterior's answer: the family, not the optimizer, is what misses."""
    llc, se = run_vi("product", M=1, r=2, steps=2000)
    best_gaussian = theory.gaussian_vi_product_llc(NBETA, GAMMA)
    assert abs(llc - best_gaussian) < 3 * se, (llc, best_gaussian, se)
    assert best_gaussian - EXACT["product"]() > 5 * se


def test_gaussian_vi_on_the_quartic_matches_quadrature():
    """On the quartic the optimal Gaussian is within 1.1 % of the answer (the virial identity
    4E[nβK] + γE‖w‖² = 2 holds for both), below the fit's SE."""
    llc, se = run_vi("quartic", M=1, r=0, steps=3000, mc_samples=8)
    assert abs(llc - theory.gaussian_vi_monomial_llc([4, 4], NBETA, GAMMA)) < 3 * se
    assert abs(llc - EXACT["quartic"]()) < 3 * se, (llc, EXACT["quartic"](), se)


@pytest.mark.slow  # ~12-30 s on 2 shared cores
def test_mixture_vi_on_the_product_matches_quadrature():
    llc, se = run_vi("product", M=16, r=2, steps=8000, mc_samples=4)
    assert abs(llc - EXACT["product"]()) < 3 * se, (llc, EXACT["product"](), se)
    assert se < 0.03 * EXACT["product"]()


# ---------------------------------------------------------------------------------- SGLD


def sgld_ula(eps, precond=None) -> float:
    """Full-batch SGLD's exact stationary answer on the quartic, averaged over chains' P."""
    P = [None] if precond is None else np.asarray(precond)
    return float(np.mean([theory.monomial_ula_llc([4, 4], NBETA, GAMMA, eps, p) for p in P]))


@pytest.mark.parametrize("precond", ["none", "rmsprop", "adam"])
def test_sgld_matches_its_exact_ula_answer_on_the_quartic(precond):
    """Full batch at ε = 4e-3, where the discretization bias is ~4 SE: the kept draws match
    the grid-exact stationary law of the chain with the P each chain froze."""
    post = singular_posterior("quartic")
    eps = 4e-3
    res, state, _ = drive_sgld(post, eps, 40000, 64, precond, every=5)
    expected = sgld_ula(eps, None if precond == "none" else state.precond)
    se = res["se_hat"]
    assert abs(res["llc_hat"] - expected) < 3 * se, (res["llc_hat"], expected, se)
    if precond == "none":
        assert expected - EXACT["quartic"]() > 3 * se  # the test sees the step's bias


def test_small_step_sgld_matches_quadrature_on_the_product():
    post = singular_posterior("product")
    res, _, _ = drive_sgld(post, 5e-4, 20000, 64, every=10)
    exact = EXACT["product"]()
    assert abs(res["llc_hat"] - exact) < 3 * res["se_hat"], (res["llc_hat"], exact)
