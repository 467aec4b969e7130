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

**Adapt, then freeze** (plans/sgld-preconditioning.md). A step either *adapts* (``adapt``
true: the moments follow ∇L_B and P follows the moments; Adam's m̂ drives the move) or is
*frozen* (P = ``state.precond``, the P of the last adapting step; moments untouched; the drift
is the plain gradient of U). A P that keeps following the chain's recent gradients depends on
the position, and without the correction term of Li et al. (2016) the chain then targets
another law (measured +8 % to +42 % on the linear-Gaussian model, growing as ε shrinks); with P fixed the frozen
steps are preconditioned Langevin, which targets the posterior up to the usual O(ε)
discretization bias (a Lyapunov closed form on quadratic models:
:func:`lambda_hat.problem.theory.precond_ula_llc`). Callers adapt during burn-in only.

Health signal: SGLD's MALA acceptance (devinterp; healthy ≈ 0.9–0.95), the Metropolis
acceptance probability the proposal would have under the same minibatch's U_B, computed on the
last step of every block at the price of one extra *minibatch* gradient (never a full-data
pass). For frozen steps it is the exact acceptance of the fixed-P Langevin proposal.

Estimators (:func:`build_block`, plans/sgld-estimator.md): λ̂ reads E[L_n] either from the
minibatch losses the gradient steps compute anyway, with each row's loss at w* as a control
variate (``minibatch``, free), or from full-data L_n evaluations, one per block (``full``).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm

from lambda_hat.llc.posterior import LLCPosterior, minibatch_indices

__all__ = [
    "SGLDInfo",
    "SGLDState",
    "as_top_level_api",
    "build_block",
    "build_kernel",
    "init",
    "row_losses",
]


class SGLDState(NamedTuple):
    """One chain's SGLD state (all float arrays have shape (d,) unless noted)."""

    position: jax.Array
    m: jax.Array  # first moment of ∇L_B (adam), zeros otherwise
    v: jax.Array  # second moment of ∇L_B (rmsprop, adam), zeros otherwise
    count: jax.Array  # () int, steps taken (for the bias correction)
    precond: jax.Array  # diagonal P (mean 1) of the last step: the frozen P once adapting ends


class SGLDInfo(NamedTuple):
    """What one step reports.

    batch_loss: L_B(w) on the step's minibatch, before the move.
    mala_accept: MALA acceptance probability of the move (NaN unless measured).
    batch_loss_star: L_B(w*) on the same minibatch, looked up in the kernel's ``row_loss_star``
      table; L_n(w*) (its expectation) on a full batch or without a table.
    """

    batch_loss: jax.Array
    mala_accept: jax.Array
    batch_loss_star: jax.Array


def init(position: jax.Array, precond: jax.Array | None = None) -> SGLDState:
    """Start a chain at ``position`` with zero moments and P = ``precond`` (default ones).

    A given ``precond`` is what frozen steps use until an adapting step replaces it (unused by
    ``precond_type="none"``, whose P is always 1).
    """
    z = jnp.zeros_like(position)
    P = jnp.ones_like(position) if precond is None else jnp.asarray(precond, position.dtype)
    return SGLDState(position, z, z, jnp.zeros((), jnp.int32), P)


def _preconditioned(state: SGLDState, g, count, adapt, nbeta, hyper: tuple):
    """(P, drift, m, v): adapted from this step's ∇L_B, or the frozen P and plain drift.

    ``hyper`` is ``(precond_type, decay, beta1, eps)`` of :func:`build_kernel`.
    """
    precond_type, decay, beta1, eps = hyper
    v = decay * state.v + (1 - decay) * g**2
    m = state.m
    if precond_type == "adam":
        m = beta1 * m + (1 - beta1) * g
        t = count.astype(g.dtype)
        v_hat = v / (1 - decay**t)
        drift = nbeta * m / (1 - beta1**t)
    else:
        v_hat = v
        drift = nbeta * g
    P = 1.0 / (jnp.sqrt(v_hat) + eps)
    P = P / jnp.mean(P)
    adapt = jnp.asarray(adapt)
    return (
        jnp.where(adapt, P, state.precond),
        jnp.where(adapt, drift, nbeta * g),
        jnp.where(adapt, m, state.m),
        jnp.where(adapt, v, state.v),
    )


def build_kernel(
    posterior: LLCPosterior,
    batch: int,
    precond_type: Literal["none", "rmsprop", "adam"] = "none",
    decay: float = 0.99,
    beta1: float = 0.9,
    eps: float = 1e-8,
    row_loss_star: jax.Array | None = None,
):
    """``kernel(key, state, step_size, measure_mala, adapt) -> (state, SGLDInfo)`` (unjitted).

    ``row_loss_star`` ((n,), optional, may be traced): each row's loss at w*
    (:func:`row_losses`), from which the step reports L_B(w*) on its minibatch for free.

    The posterior's numbers, ``step_size``, ``decay``, ``beta1`` and ``eps`` may be traced;
    ``batch`` and ``precond_type`` shape the program. ``measure_mala`` is a Python bool: when
    true the step also evaluates U_B and its gradient at the proposal on the same minibatch to
    compute the MALA acceptance probability. ``adapt`` (a bool, may be traced) says whether the
    step adapts the preconditioner or uses the frozen ``state.precond`` (see the module
    docstring); ``precond_type="none"`` ignores it. It defaults to true, a burn-in step: draws
    that are kept must come from frozen steps.
    """
    if precond_type not in ("none", "rmsprop", "adam"):
        raise ValueError(f"precond_type must be none, rmsprop or adam, got {precond_type!r}")
    nbeta, gamma, w_star, n = posterior.nbeta, posterior.gamma, posterior.w_star, posterior.n

    def loss_on(w, idx):
        return posterior.loss(w) if idx is None else posterior.batch_loss(w, idx)

    loss_and_grad = jax.value_and_grad(loss_on)

    def kernel(key, state: SGLDState, step_size, measure_mala: bool = False, adapt=True):
        k_batch, k_noise = jax.random.split(key)
        idx = minibatch_indices(k_batch, n, batch)
        w = state.position
        loss, g = loss_and_grad(w, idx)
        count = state.count + 1
        if precond_type == "none":
            P, drift, m, v = jnp.ones_like(w), nbeta * g, state.m, state.v
            kept_P = state.precond
        else:
            hyper = (precond_type, decay, beta1, eps)
            P, drift, m, v = _preconditioned(state, g, count, adapt, nbeta, hyper)
            kept_P = P
        grad_u = drift + gamma * (w - w_star)
        noise = jax.random.normal(k_noise, w.shape, w.dtype)
        new_w = w - 0.5 * step_size * P * grad_u + jnp.sqrt(step_size * P) * noise
        accept = jnp.asarray(jnp.nan, w.dtype)
        if measure_mala:
            accept = _mala_accept(loss_and_grad, posterior, idx, w, loss, g, new_w, P, step_size)
        if row_loss_star is None or idx is None:
            loss_star = jnp.asarray(posterior.loss_star, w.dtype)
        else:
            loss_star = jnp.mean(row_loss_star[idx])
        return SGLDState(new_w, m, v, count, kept_P), SGLDInfo(loss, accept, loss_star)

    return kernel


def row_losses(posterior: LLCPosterior) -> jax.Array:
    """(n,) each row's loss at w* (one forward pass over the data; their mean is L_n(w*))."""
    return jax.vmap(lambda i: posterior.batch_loss(posterior.w_star, i[None]))(
        jnp.arange(posterior.n)
    )


def _mala_accept(loss_and_grad, posterior, idx, w, loss, g, new_w, P, step_size):
    """min(1, π_B(w')q(w|w') / π_B(w)q(w'|w)) for the Langevin proposal with preconditioner P.

    The proposal densities use the plain gradient of U_B. For frozen steps that is the move
    itself; for adapting adam steps the move used m̂ instead, and the number then measures the
    discretization only (burn-in; not reported).
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


def build_block(
    kernel,
    posterior: LLCPosterior,
    step_size,
    block_len,
    adapt_steps,
    estimator: Literal["minibatch", "full"] = "minibatch",
):
    """``block(chain_key, state, block_index) -> (state, (loss, mala_accept))``.

    A block is ``block_len`` steps whose last one measures the MALA acceptance. Its ``loss``
    (one draw of the thinned trace) is, with ``estimator="minibatch"``, the mean over the
    block's steps of L_B(w) − L_B(w*) + L_n(w*) on the minibatch each step drew for its
    gradient: L_B(w*) is a lookup in the kernel's ``row_loss_star`` (a control variate that
    removes the minibatch noise w and w* share; without a table it is L_n(w*), and the draw the
    plain mean of L_B(w)). No extra work, and unbiased for the mean of L_n(w) over the block's
    states, the batch being drawn independently of w. With ``"full"`` the draw is the full-data
    L_n at the block's end (one more pass over the data).

    Step keys are ``fold_in(chain_key, global step)``, so results do not depend on how blocks
    are chunked, nor on the estimator. Global steps below ``adapt_steps`` adapt the
    preconditioner, later ones use it frozen. ``step_size``, ``block_len`` and ``adapt_steps``
    may be traced (the steps run in a ``fori_loop``), so one compiled program serves every step
    size, thinning and burn-in.
    """
    if estimator not in ("minibatch", "full"):
        raise ValueError(f"estimator must be minibatch or full, got {estimator!r}")

    def drawn(info):
        return info.batch_loss - info.batch_loss_star

    def block(chain_key, state, block_index):
        first = block_index * block_len

        def plain(i, carry):
            s, total = carry
            step = first + i
            key = jax.random.fold_in(chain_key, step)
            s, info = kernel(key, s, step_size, adapt=step < adapt_steps)
            return s, total + drawn(info)

        zero = jnp.zeros((), state.position.dtype)
        state, total = jax.lax.fori_loop(0, block_len - 1, plain, (state, zero))
        last = first + block_len - 1
        key = jax.random.fold_in(chain_key, last)
        state, info = kernel(key, state, step_size, measure_mala=True, adapt=last < adapt_steps)
        if estimator == "full":
            return state, (posterior.loss(state.position), info.mala_accept)
        loss = (total + drawn(info)) / block_len + posterior.loss_star
        return state, (loss, info.mala_accept)

    return block


def as_top_level_api(
    posterior: LLCPosterior,
    step_size: float,
    batch: int,
    precond_type: Literal["none", "rmsprop", "adam"] = "none",
    decay: float = 0.99,
    beta1: float = 0.9,
    eps: float = 1e-8,
    adapt_steps: int = 0,
) -> SamplingAlgorithm:
    """SGLD targeting ``posterior`` with step ε = ``step_size``: ``SamplingAlgorithm(init, step)``.

    The first ``adapt_steps`` steps of a chain (counted by ``state.count``) adapt the
    preconditioner, later ones keep it frozen; with 0, P is ``init``'s ``precond`` throughout.
    Discard at least the adapting steps as burn-in.

    >>> algo = as_top_level_api(posterior, 1e-4, batch=64)          # doctest: +SKIP
    >>> state, info = algo.step(key, algo.init(posterior.w_star))   # doctest: +SKIP
    """
    if step_size <= 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if adapt_steps < 0:
        raise ValueError(f"adapt_steps must be >= 0, got {adapt_steps}")
    kernel = build_kernel(posterior, batch, precond_type, decay, beta1, eps)

    def step(key, state):
        return kernel(key, state, step_size, adapt=state.count < adapt_steps)

    return SamplingAlgorithm(init, step)
