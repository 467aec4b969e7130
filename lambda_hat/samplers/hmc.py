"""NUTS for the HMC reference: per-chain window adaptation, adapted state kept, chains vmapped.

Each chain adapts its own step size and diagonal inverse mass matrix with BlackJAX's window
adaptation (Stan's schedule) and *starts sampling from its adapted state*; warm-up draws are
discarded. Sampling runs in compiled chunks of ``lax.scan`` so the caller can check a wall-clock
budget and report progress between chunks. The loss trace is read back from the cached
log-density (no extra forward pass): L_n = −(log p + (γ/2)‖w − w*‖²)/(nβ).
"""

from __future__ import annotations

from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
from blackjax.adaptation.base import get_filter_adapt_info_fn
from blackjax.mcmc.hmc import HMCState

from lambda_hat.posterior import LLCPosterior

__all__ = ["NUTSChains", "ChunkInfo", "build_warmup", "build_sample_chunk"]


class NUTSChains(NamedTuple):
    """Per-chain NUTS state and adapted parameters (leading axis: chain)."""

    state: HMCState  # position (C, d), logdensity (C,), logdensity_grad (C, d)
    step_size: jax.Array  # (C,)
    inverse_mass_matrix: jax.Array  # (C, d) diagonal


class ChunkInfo(NamedTuple):
    """What the estimator and diagnostics need from each draw (shape (C, m))."""

    loss: jax.Array  # L_n at the draw
    acceptance_rate: jax.Array
    is_divergent: jax.Array
    num_integration_steps: jax.Array  # gradient evaluations spent on the draw


def build_warmup(
    posterior: LLCPosterior, num_warmup: int, target_accept: float, max_num_doublings: int
):
    """``warmup(keys (C,), positions (C, d)) -> (NUTSChains, grad_evals (C,), divergent (C,))``.

    Unjitted; the caller jits (and can AOT-compile to time compilation separately).
    """

    def one_chain(key, position):
        adapt = blackjax.window_adaptation(
            blackjax.nuts,
            posterior.logdensity,
            target_acceptance_rate=target_accept,
            adaptation_info_fn=get_filter_adapt_info_fn(
                info_keys={"num_integration_steps", "is_divergent"}
            ),
            max_num_doublings=max_num_doublings,
        )
        (state, params), info = adapt.run(key, position, num_warmup)
        return (
            state,
            params["step_size"],
            params["inverse_mass_matrix"],
            jnp.sum(info.info.num_integration_steps),
            jnp.sum(info.info.is_divergent),
        )

    def warmup(keys, positions):
        state, step, imm, grads, div = jax.vmap(one_chain)(keys, positions)
        return NUTSChains(state, step, imm), grads, div

    return warmup


def build_sample_chunk(posterior: LLCPosterior, max_num_doublings: int):
    """``chunk(keys (C, m), chains) -> (chains, ChunkInfo)``: m NUTS draws per chain."""

    def one_chain(keys, state, step_size, imm):
        kernel = blackjax.nuts(
            posterior.logdensity, step_size, imm, max_num_doublings=max_num_doublings
        )

        def body(s, k):
            s, info = kernel.step(k, s)
            loss = posterior.loss_from_logdensity(s.position, s.logdensity)
            return s, ChunkInfo(
                loss, info.acceptance_rate, info.is_divergent, info.num_integration_steps
            )

        return jax.lax.scan(body, state, keys)

    def chunk(keys, chains: NUTSChains):
        state, info = jax.vmap(one_chain)(
            keys, chains.state, chains.step_size, chains.inverse_mass_matrix
        )
        return chains._replace(state=state), info

    return chunk
