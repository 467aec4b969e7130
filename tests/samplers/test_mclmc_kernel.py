"""MCLMC's BlackJAX plumbing: the energy target, and the traced-length tuner against BlackJAX's."""

from __future__ import annotations

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from blackjax.adaptation.mclmc_adaptation import MCLMCAdaptationState

from lambda_hat.samplers import mclmc


def test_target_accept_sets_the_energy_target():
    assert mclmc.desired_energy_var(0.9) == pytest.approx(5e-4)  # BlackJAX's default
    values = [mclmc.desired_energy_var(a) for a in (0.6, 0.8, 0.9, 0.95)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    with pytest.raises(ValueError, match="target_accept"):
        mclmc.desired_energy_var(1.0)


@pytest.mark.slow  # compiles BlackJAX's tuner as well: ~10-20 s on 2 shared cores
def test_tuner_is_blackjax_mclmc_find_L_and_step_size(linear):
    """The traced-length tuner reproduces BlackJAX's (same keys, same phases) to rounding."""
    _, post, _ = linear
    steps, tune_frac, energy_var, step0 = 90, 0.3, mclmc.desired_energy_var(0.8), 0.05
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    starts = post.w_star + 0.01 * jax.random.normal(jax.random.PRNGKey(1), (2, post.d))
    states = mclmc.init(post, jax.random.split(jax.random.PRNGKey(2), 2), starts)

    def blackjax_tuner(key, state):
        state, params, _ = blackjax.mclmc_find_L_and_step_size(
            mclmc_kernel=blackjax.mcmc.mclmc.build_kernel(),
            num_steps=steps,
            state=state,
            rng_key=key,
            logdensity_fn=post.logdensity,
            frac_tune1=tune_frac / 3,
            frac_tune2=tune_frac / 3,
            frac_tune3=tune_frac / 3,
            desired_energy_var=energy_var,
            params=MCLMCAdaptationState(jnp.sqrt(post.d), step0, jnp.ones(post.d)),
        )
        return state.position, params.L, params.step_size, params.inverse_mass_matrix

    expected = jax.jit(jax.vmap(blackjax_tuner))(keys, states)
    sched = mclmc.tune_schedule(steps, tune_frac)
    assert sched == (9, 9, 3, 9) and sched.total == mclmc.tuning_steps(steps, tune_frac)
    tune = mclmc.build_tuner(post, 32, True, True)  # capacity 32 > 9 + 9 + 1: keys as BlackJAX's
    chains, positions = jax.jit(tune)(keys, states, tuple(np.int64(sched)), energy_var, step0)
    chains = mclmc.finish_tuning(chains, positions, sched.n3, 1.0)
    got = (chains.state.position, chains.L, chains.step_size, chains.inverse_mass_matrix)
    for name, a, b in zip(("position", "L", "step_size", "imm"), expected, got, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9, err_msg=name)
