"""MCLMC (Robnik et al. 2023) through BlackJAX 1.7.1, tuned per chain, chains vmapped.

BlackJAX's unadjusted ``mclmc`` kernel with the default ``isokinetic_mclachlan`` integrator
(2 gradient evaluations per step). Unless the user fixes L and the step size
(``tune: false``), each chain runs ``blackjax.mclmc_find_L_and_step_size`` (1.7 API:
``logdensity_fn=`` keyword, three return values) and *keeps its tuned state* as the start of
sampling. The tuner's steps are counted as work.

``target_accept`` enters through the tuner's energy-error target. For a Gaussian energy error
of variance σ² a Metropolis test would accept with probability 2Φ(−σ/2); the desired energy
variance per dimension is BlackJAX's default 5e-4 at ``target_accept = 0.9`` and scales with
σ²(target_accept) around it, so lower targets mean larger steps.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
from blackjax.adaptation.mclmc_adaptation import MCLMCAdaptationState
from blackjax.mcmc.integrators import IntegratorState

from lambda_hat.posterior import LLCPosterior

__all__ = [
    "MCLMCChains",
    "MCLMCInfo",
    "GRADS_PER_STEP",
    "desired_energy_var",
    "tuning_steps",
    "init",
    "build_tuner",
    "build_chunk",
]

GRADS_PER_STEP = 2  # isokinetic McLachlan: two gradient evaluations per step
_DEFAULT_ENERGY_VAR = 5e-4  # BlackJAX's default desired energy variance per dimension


class MCLMCChains(NamedTuple):
    """Per-chain MCLMC state and parameters (leading axis: chain)."""

    state: IntegratorState  # position (C, d), momentum, logdensity (C,), logdensity_grad
    L: jax.Array  # (C,)
    step_size: jax.Array  # (C,)
    inverse_mass_matrix: jax.Array  # (C, d) diagonal


class MCLMCInfo(NamedTuple):
    """Per-step record, shape (C, m): L_n at the draw, energy error, NaN-free flag."""

    loss: jax.Array
    energy_change: jax.Array
    nonans: jax.Array


def desired_energy_var(target_accept: float) -> float:
    """Energy variance per dimension the tuner aims at for a given target acceptance."""
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
    z = NormalDist().inv_cdf(target_accept / 2)
    z0 = NormalDist().inv_cdf(0.9 / 2)
    return _DEFAULT_ENERGY_VAR * (z / z0) ** 2


def _tune_fracs(tune_frac: float) -> tuple[float, float, float]:
    return (tune_frac / 3,) * 3


def tuning_steps(num_steps: int, tune_frac: float) -> int:
    """Integrator steps ``mclmc_find_L_and_step_size`` spends (diagonal preconditioning on)."""
    f1, f2, f3 = _tune_fracs(tune_frac)
    n1, n2, n3 = round(num_steps * f1), round(num_steps * f2), round(num_steps * f3)
    total = n1 + n2 + (round(n2 / 3) if n2 > 1 else 0)
    return total + (n3 if n3 >= 2 else 0)


def init(posterior: LLCPosterior, keys: jax.Array, positions: jax.Array) -> IntegratorState:
    """Vmapped BlackJAX MCLMC states at ``positions`` (C, d) with random unit momenta."""
    return jax.vmap(lambda p, k: blackjax.mcmc.mclmc.init(p, posterior.logdensity, k))(
        positions, keys
    )


def build_tuner(
    posterior: LLCPosterior,
    num_steps: int,
    tune_frac: float,
    target_accept: float,
    step_size0: float | None,
    L_factor: float,
):
    """``tune(keys (C,), states) -> MCLMCChains``: per-chain BlackJAX tuning (unjitted).

    ``step_size0`` is the tuner's starting step size (None: BlackJAX's √d/4); the tuned L is
    multiplied by ``L_factor``.
    """
    kernel = blackjax.mcmc.mclmc.build_kernel()
    f1, f2, f3 = _tune_fracs(tune_frac)
    d = posterior.d
    energy_var = desired_energy_var(target_accept)

    def one_chain(key, state):
        start = MCLMCAdaptationState(
            jnp.sqrt(d) * 1.0,
            jnp.sqrt(d) * 0.25 if step_size0 is None else jnp.asarray(step_size0, jnp.float64),
            jnp.ones((d,)),
        )
        state, params, _ = blackjax.mclmc_find_L_and_step_size(
            mclmc_kernel=kernel,
            num_steps=num_steps,
            state=state,
            rng_key=key,
            logdensity_fn=posterior.logdensity,
            frac_tune1=f1,
            frac_tune2=f2,
            frac_tune3=f3,
            desired_energy_var=energy_var,
            params=start,
        )
        return state, params.L * L_factor, params.step_size, params.inverse_mass_matrix

    def tune(keys, states):
        return MCLMCChains(*jax.vmap(one_chain)(keys, states))

    return tune


def fixed_chains(states: IntegratorState, L: float, step_size: float) -> MCLMCChains:
    """Chains that sample with the given L and step size (no tuning, unit mass)."""
    C, d = states.position.shape
    return MCLMCChains(states, jnp.full((C,), L), jnp.full((C,), step_size), jnp.ones((C, d)))


def build_chunk(posterior: LLCPosterior):
    """``chunk(keys (C, m), chains) -> (chains, MCLMCInfo)``: m MCLMC steps per chain."""
    kernel = blackjax.mcmc.mclmc.build_kernel()

    def one_chain(keys, state, L, step_size, imm):
        def body(s, k):
            s, info = kernel(k, s, posterior.logdensity, imm, L, step_size)
            loss = posterior.loss_from_logdensity(s.position, s.logdensity)
            return s, MCLMCInfo(loss, info.energy_change, info.nonans)

        return jax.lax.scan(body, state, keys)

    def chunk(keys, chains: MCLMCChains):
        state, info = jax.vmap(one_chain)(
            keys, chains.state, chains.L, chains.step_size, chains.inverse_mass_matrix
        )
        return chains._replace(state=state), info

    return chunk
