"""SGLD with minibatches and optional RMSProp/Adam preconditioning, in the literature convention.

    Δw = −(ε/2)·P·[nβ ∇L_B(w) + γ(w − w*)] + √(εP)·ξ,        ξ ~ N(0, I)

(Welling & Teh 2011; Lau et al. 2023, devinterp). BlackJAX's ``sgld`` writes the same update as
w ← w + h∇log π + √(2h)ξ with h = ε/2; the preconditioned variants are not in BlackJAX, so
the update is written here. The localization term is not tempered, and the moment estimates
of the preconditioner use the loss gradient ∇L_B only, never the localization (Hitchcock &
Hoogland 2025). The diagonal preconditioner is normalized to mean 1, so ``eta0`` keeps its
meaning (the average step) across ``precond_type``: preconditioning only redistributes it.

- ``none``: P = 1.
- ``rmsprop``: v ← ρv + (1−ρ)g², P ∝ 1/(√v + δ).
- ``adam``: as RMSProp with bias correction, and the drift uses the bias-corrected first
  moment m̂ of nβ∇L_B (momentum) instead of the current gradient.

Health signal: SGLD's MALA acceptance (devinterp; healthy ≈ 0.9–0.95), the Metropolis
acceptance probability the proposal would have under the same minibatch's U_B, computed on the
last step of every block at the price of one extra minibatch gradient.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm

from lambda_hat.posterior import LLCPosterior

__all__ = ["SGLDState", "SGLDInfo", "init", "build_kernel", "build_block", "as_top_level_api"]


class SGLDState(NamedTuple):
    """One chain's SGLD state (all float arrays have shape (d,) unless noted)."""

    position: jax.Array
    m: jax.Array  # first moment of ∇L_B (adam), zeros otherwise
    v: jax.Array  # second moment of ∇L_B (rmsprop, adam), zeros otherwise
    count: jax.Array  # () int, steps taken (for the bias correction)


class SGLDInfo(NamedTuple):
    """What one step reports.

    batch_loss: L_B(w) on the step's minibatch, before the move.
    mala_accept: MALA acceptance probability of the move (NaN unless measured).
    """

    batch_loss: jax.Array
    mala_accept: jax.Array


def init(position: jax.Array) -> SGLDState:
    """Start a chain at ``position`` with zero moments."""
    z = jnp.zeros_like(position)
    return SGLDState(position, z, z, jnp.zeros((), jnp.int32))


def _batch_indices(key: jax.Array, n: int, batch: int) -> jax.Array | None:
    """Rows drawn with replacement; ``None`` (the full data) when ``batch >= n``."""
    return None if batch >= n else jax.random.randint(key, (batch,), 0, n)


def build_kernel(
    posterior: LLCPosterior,
    batch: int,
    precond_type: Literal["none", "rmsprop", "adam"] = "none",
    decay: float = 0.99,
    beta1: float = 0.9,
    eps: float = 1e-8,
):
    """``kernel(key, state, step_size, measure_mala) -> (state, SGLDInfo)`` (unjitted).

    The posterior's numbers, ``step_size``, ``decay``, ``beta1`` and ``eps`` may be traced;
    ``batch`` and ``precond_type`` shape the program. ``measure_mala`` is a Python bool: when true the step also evaluates U_B and its gradient
    at the proposal on the same minibatch to compute the MALA acceptance probability.
    """
    if precond_type not in ("none", "rmsprop", "adam"):
        raise ValueError(f"precond_type must be none, rmsprop or adam, got {precond_type!r}")
    nbeta, gamma, w_star, n = posterior.nbeta, posterior.gamma, posterior.w_star, posterior.n

    def loss_on(w, idx):
        return posterior.loss(w) if idx is None else posterior.batch_loss(w, idx)

    loss_and_grad = jax.value_and_grad(loss_on)

    def kernel(key, state: SGLDState, step_size, measure_mala: bool = False):
        k_batch, k_noise = jax.random.split(key)
        idx = _batch_indices(k_batch, n, batch)
        w = state.position
        loss, g = loss_and_grad(w, idx)
        count = state.count + 1
        m, v = state.m, state.v
        if precond_type == "none":
            P = jnp.ones_like(w)
            drift = nbeta * g
        else:
            v = decay * v + (1 - decay) * g**2
            if precond_type == "adam":
                m = beta1 * m + (1 - beta1) * g
                t = count.astype(w.dtype)
                v_hat = v / (1 - decay**t)
                drift = nbeta * m / (1 - beta1**t)
            else:
                v_hat = v
                drift = nbeta * g
            P = 1.0 / (jnp.sqrt(v_hat) + eps)
            P = P / jnp.mean(P)
        grad_u = drift + gamma * (w - w_star)
        noise = jax.random.normal(k_noise, w.shape, w.dtype)
        new_w = w - 0.5 * step_size * P * grad_u + jnp.sqrt(step_size * P) * noise
        accept = jnp.asarray(jnp.nan, w.dtype)
        if measure_mala:
            accept = _mala_accept(loss_and_grad, posterior, idx, w, loss, g, new_w, P, step_size)
        return SGLDState(new_w, m, v, count), SGLDInfo(loss, accept)

    return kernel


def _mala_accept(loss_and_grad, posterior, idx, w, loss, g, new_w, P, step_size):
    """min(1, π_B(w')q(w|w') / π_B(w)q(w'|w)) for the Langevin proposal with preconditioner P.

    The proposal densities use the plain gradient of U_B (for adam the move used m̂ instead:
    the number then measures the discretization only, which is what the health signal is for).
    """
    nbeta, gamma, w_star = posterior.nbeta, posterior.gamma, posterior.w_star
    new_loss, new_g = loss_and_grad(new_w, idx)

    def u(wx, lx):
        return nbeta * lx + 0.5 * gamma * jnp.sum((wx - w_star) ** 2)

    def log_q(to, frm, grad_frm):
        mean = frm - 0.5 * step_size * P * grad_frm
        return -jnp.sum((to - mean) ** 2 / P) / (2 * step_size)

    grad_old = nbeta * g + gamma * (w - w_star)
    grad_new = nbeta * new_g + gamma * (new_w - w_star)
    log_ratio = (
        -u(new_w, new_loss) + u(w, loss) + log_q(w, new_w, grad_new) - log_q(new_w, w, grad_old)
    )
    return jnp.exp(jnp.minimum(0.0, log_ratio))


def build_block(kernel, posterior: LLCPosterior, step_size, block_len):
    """``block(chain_key, state, block_index) -> (state, (loss, mala_accept))``.

    A block is ``block_len`` steps whose last one measures the MALA acceptance; it then records
    the full-data L_n at the block's end (one draw of the thinned trace). Step keys are
    ``fold_in(chain_key, global step)``, so results do not depend on how blocks are chunked.
    ``step_size`` and ``block_len`` may be traced (the steps run in a ``fori_loop``), so one
    compiled program serves every step size and thinning.
    """

    def block(chain_key, state, block_index):
        first = block_index * block_len

        def plain(i, s):
            return kernel(jax.random.fold_in(chain_key, first + i), s, step_size)[0]

        state = jax.lax.fori_loop(0, block_len - 1, plain, state)
        key = jax.random.fold_in(chain_key, first + block_len - 1)
        state, info = kernel(key, state, step_size, measure_mala=True)
        return state, (posterior.loss(state.position), info.mala_accept)

    return block


def as_top_level_api(
    posterior: LLCPosterior,
    step_size: float,
    batch: int,
    precond_type: Literal["none", "rmsprop", "adam"] = "none",
    decay: float = 0.99,
    beta1: float = 0.9,
    eps: float = 1e-8,
) -> SamplingAlgorithm:
    """SGLD targeting ``posterior`` with step ε = ``step_size``: ``SamplingAlgorithm(init, step)``.

    >>> algo = as_top_level_api(posterior, 1e-4, batch=64)          # doctest: +SKIP
    >>> state, info = algo.step(key, algo.init(posterior.w_star))   # doctest: +SKIP
    """
    if step_size <= 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    kernel = build_kernel(posterior, batch, precond_type, decay, beta1, eps)

    def step(key, state):
        return kernel(key, state, step_size)

    return SamplingAlgorithm(init, step)
