"""MCLMC (Robnik et al. 2023) through BlackJAX 1.7.1, tuned per chain, chains vmapped.

BlackJAX's unadjusted ``mclmc`` kernel with the default ``isokinetic_mclachlan`` integrator
(2 gradient evaluations per step). Unless the user fixes L and the step size
(``tune: false``), each chain runs ``blackjax.mclmc_find_L_and_step_size`` (1.7 API:
``logdensity_fn=`` keyword, three return values) and *keeps its tuned state* as the start of
sampling. The tuner's steps are counted as work.

The tuner is BlackJAX 1.7.1's algorithm (``make_L_step_size_adaptation`` then
``make_adaptation_L``, diagonal preconditioning on) restated so that its step *counts* are
traced: the phases are ``fori_loop`` loops whose lengths are arguments, and their keys come from
``split(key, capacity)`` (with JAX's partitionable threefry, ``split(k, N)[i]`` does not depend
on N, so the keys are BlackJAX's). One compiled tuner then serves every ``steps`` up to its
capacity; only the small ESS program of phase 3 depends on the exact phase length.

``target_accept`` enters through the tuner's energy-error target. For a Gaussian energy error
of variance σ² a Metropolis test would accept with probability 2Φ(−σ/2); the desired energy
variance per dimension is BlackJAX's default 5e-4 at ``target_accept = 0.9`` and scales with
σ²(target_accept) around it, so lower targets mean larger steps.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
from blackjax.adaptation.mclmc_adaptation import handle_nans
from blackjax.diagnostics import effective_sample_size
from blackjax.mcmc.integrators import IntegratorState
from blackjax.util import incremental_value_update

from lambda_hat.llc.posterior import LLCPosterior

__all__ = [
    "MCLMCChains",
    "MCLMCInfo",
    "GRADS_PER_STEP",
    "desired_energy_var",
    "target_accept_for",
    "TuneSchedule",
    "tune_schedule",
    "tuning_steps",
    "init",
    "build_tuner",
    "finish_tuning",
    "fixed_chains",
    "pooled_chains",
    "energy_step_size",
    "energy_step_choice",
    "build_window",
    "build_step",
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


def target_accept_for(energy_var: float) -> float:
    """The ``target_accept`` whose energy target is ``energy_var`` (inverse of
    :func:`desired_energy_var`)."""
    z0 = NormalDist().inv_cdf(0.9 / 2)
    return 2 * NormalDist().cdf(z0 * math.sqrt(energy_var / _DEFAULT_ENERGY_VAR))


def _tune_fracs(tune_frac: float) -> tuple[float, float, float]:
    return (tune_frac / 3,) * 3


class TuneSchedule(NamedTuple):
    """Phase lengths of ``mclmc_find_L_and_step_size`` for ``num_steps`` (BlackJAX's rounding).

    n1: step-size steps; n2: step-size steps that also collect moments; readjust: step-size
    steps after the mass matrix is set (0 unless n2 > 1); n3: L-from-ESS steps (0 unless >= 2).
    """

    n1: int
    n2: int
    readjust: int
    n3: int

    @property
    def total(self) -> int:
        return self.n1 + self.n2 + self.readjust + self.n3


def tune_schedule(num_steps: int, tune_frac: float) -> TuneSchedule:
    """The tuner's phase lengths (diagonal preconditioning on), as BlackJAX computes them."""
    f1, f2, f3 = _tune_fracs(tune_frac)
    n1, n2, n3 = round(num_steps * f1), round(num_steps * f2), round(num_steps * f3)
    return TuneSchedule(n1, n2, round(n2 / 3) if n2 > 1 else 0, n3 if n3 >= 2 else 0)


def tuning_steps(num_steps: int, tune_frac: float) -> int:
    """Integrator steps ``mclmc_find_L_and_step_size`` spends (diagonal preconditioning on)."""
    return tune_schedule(num_steps, tune_frac).total


def init(posterior: LLCPosterior, keys: jax.Array, positions: jax.Array) -> IntegratorState:
    """Vmapped BlackJAX MCLMC states at ``positions`` (C, d) with random unit momenta."""
    return jax.vmap(lambda p, k: blackjax.mcmc.mclmc.init(p, posterior.logdensity, k))(
        positions, keys
    )


_DECAY = (150 - 1.0) / (150 + 1.0)  # BlackJAX's num_effective_samples = 150
_TRUST = 1.5  # BlackJAX's trust_in_estimate
_L_FACTOR = 0.4  # BlackJAX's l_factor (L from the autocorrelation time)


def _adapt_step(kernel, logdensity, dim, energy_var):
    """BlackJAX 1.7.1's step-size adaptation step (``predictor`` + moment update), verbatim."""

    def step(carry, mask, rng_key):
        previous_state, params, (time, x_average, step_size_max), streaming_avg = carry
        rng_key, nan_key = jax.random.split(rng_key)
        next_state, info = kernel(
            rng_key, previous_state, logdensity, params.inverse_mass_matrix, params.L,
            params.step_size,
        )  # fmt: skip
        success, state, step_size_max, energy_change = handle_nans(
            previous_state,
            next_state,
            params.step_size,
            step_size_max,
            info.energy_change,
            info.nonans,
            nan_key,
        )
        xi = (jnp.square(energy_change) / (dim * energy_var)) + 1e-8
        weight = jnp.exp(-0.5 * jnp.square(jnp.log(xi) / (6.0 * _TRUST)))
        x_average = _DECAY * x_average + weight * (xi / jnp.power(params.step_size, 6.0))
        time = _DECAY * time + weight
        step_size = jnp.power(x_average / time, -1.0 / 6.0)
        step_size = (step_size < step_size_max) * step_size + (
            step_size > step_size_max
        ) * step_size_max
        params = params._replace(step_size=step_size)
        x = state.position
        streaming_avg = incremental_value_update(
            expectation=jnp.array([x, jnp.square(x)]),
            incremental_val=streaming_avg,
            weight=mask * success * params.step_size,
        )
        return state, params, (time, x_average, step_size_max), streaming_avg

    return step


class _Params(NamedTuple):
    L: jax.Array
    step_size: jax.Array
    inverse_mass_matrix: jax.Array


def _phase3(kernel, logdensity, key, n3, capacity: int):
    """``run(state, params, positions) -> (state, positions)``: BlackJAX's phase 3, ``n3``
    steps at the tuned L and step size, each position kept for the autocorrelation estimate."""
    keys3 = jax.random.split(key, capacity)

    def run(state, params: _Params, positions):
        def sample(i, carry):
            s, pos = carry
            imm = params.inverse_mass_matrix
            s, _ = kernel(keys3[i], s, logdensity, imm, params.L, params.step_size)
            return s, pos.at[i].set(s.position)

        return jax.lax.fori_loop(0, n3, sample, (state, positions))

    return run


def build_tuner(posterior: LLCPosterior, capacity: int, precondition: bool, phase3: bool):
    """``tune(keys (C,), states, counts, energy_var, step_size0) -> (chains, positions)``.

    BlackJAX's ``mclmc_find_L_and_step_size`` (diagonal preconditioning) per chain, vmapped,
    with the phase lengths ``counts = (n1, n2, readjust, n3)`` traced (each < ``capacity``;
    see :func:`tune_schedule`); ``precondition`` is ``n2 > 1`` and ``phase3`` is ``n3 >= 2``.
    ``energy_var`` is the desired energy variance per dimension, ``step_size0`` the starting
    step size. Returns the chains after phases 1–2 (L = √d when preconditioned, as BlackJAX)
    and the (C, capacity, d) positions of phase 3, which :func:`finish_tuning` turns into L.
    """
    kernel = blackjax.mcmc.mclmc.build_kernel()
    d = posterior.d
    zeros = jnp.zeros((d,))

    def one_chain(key, state, counts, energy_var, step_size0):
        n1, n2, readjust, n3 = counts
        step = _adapt_step(kernel, posterior.logdensity, d, energy_var)
        fresh = (jnp.zeros(()), jnp.zeros(()), jnp.asarray(jnp.inf))
        avg0 = (jnp.zeros(()), jnp.array([zeros, zeros]))
        part1_key, part2_key = jax.random.split(key, 2)
        keys12 = jax.random.split(part1_key, capacity)  # == split(part1_key, n1 + n2 + 1)
        params = _Params(jnp.sqrt(d) * 1.0, jnp.asarray(step_size0), jnp.ones((d,)))

        def phase12(i, carry):
            return step(carry, (i >= n1).astype(zeros.dtype), keys12[i])

        state, params, _, (_, average) = jax.lax.fori_loop(
            0, n1 + n2, phase12, (state, params, fresh, avg0)
        )
        L, imm = params.L, params.inverse_mass_matrix
        if precondition:
            variances = average[1] - jnp.square(average[0])
            imm = variances
            params = params._replace(inverse_mass_matrix=imm)
            L = jnp.sqrt(d) * jnp.ones(())
            keys_r = jax.random.split(keys12[n1 + n2], capacity)

            def again(i, carry):
                return step(carry, jnp.ones(()), keys_r[i])

            state, params, _, _ = jax.lax.fori_loop(
                0, readjust, again, (state, params, fresh, avg0)
            )
        params = _Params(L, params.step_size, imm)
        positions = jnp.zeros((capacity, d))
        if phase3:
            phase3_run = _phase3(kernel, posterior.logdensity, part2_key, n3, capacity)
            state, positions = phase3_run(state, params, positions)
        return MCLMCChains(state, *params), positions

    def tune(keys, states, counts, energy_var, step_size0):
        return jax.vmap(one_chain, in_axes=(0, 0, None, None, None))(
            keys, states, counts, energy_var, step_size0
        )

    return tune


def finish_tuning(chains: MCLMCChains, positions: jax.Array, n3: int, L_factor) -> MCLMCChains:
    """BlackJAX's phase 3 (L = 0.4 · step size · autocorrelation time, from the ESS of the
    first ``n3`` phase-3 positions; unchanged when ``n3`` is 0), then L times ``L_factor``."""
    if n3 == 0:
        return chains._replace(L=chains.L * L_factor)

    def one(pos, L, step_size):
        ess = effective_sample_size(pos[None, :n3])
        tau = n3 / ess
        finite = jnp.isfinite(tau)
        return jnp.where(jnp.any(finite), _L_FACTOR * step_size * jnp.mean(tau, where=finite), L)

    L = jax.vmap(one)(positions, chains.L, chains.step_size)
    return chains._replace(L=L * L_factor)


def fixed_chains(states: IntegratorState, L, step_size) -> MCLMCChains:
    """Chains that sample with the given L and step size (no tuning, unit mass)."""
    C, d = states.position.shape
    return MCLMCChains(
        states,
        jnp.full((C,), L, states.position.dtype),
        jnp.full((C,), step_size, states.position.dtype),
        jnp.ones((C, d), states.position.dtype),
    )


def pooled_chains(chains: MCLMCChains) -> MCLMCChains:
    """Every chain at the same parameters: the mean of the chains' diagonal variance estimates
    (the inverse mass matrix), the median L and the geometric mean step size.

    All chains sample one posterior, so their tuning data can be pooled: four chains' estimates
    of the posterior's variances are better than each one's, and one step size set on the
    chains' energy errors together holds the energy error where the chains go, where each
    chain's own short tuning read its own region (plans/methods.md, "MCLMC's tuning").
    """
    C = chains.L.shape[0]
    imm = jnp.mean(chains.inverse_mass_matrix, axis=0)
    step_size = jnp.exp(jnp.mean(jnp.log(chains.step_size)))
    return chains._replace(
        L=jnp.full((C,), jnp.median(chains.L)),
        step_size=jnp.full((C,), step_size),
        inverse_mass_matrix=jnp.broadcast_to(imm, chains.inverse_mass_matrix.shape),
    )


ENERGY_EXPONENT = 6.0
"""Energy variance per step ∝ step size^6 for a second-order integrator (BlackJAX's model)."""
MAX_ENERGY_CHANGE = 4.0  # most a step size changes in one energy-variance round


def energy_step_size(rounds: list[tuple[float, float]]) -> float:
    """The next step size from the energy-variance rounds so far, ``(step size, achieved/target
    energy variance)`` each (ratio NaN/inf: the window hit NaNs, counts as far over).

    The achieved variance is not a smooth power of the step size where the posterior's
    curvature varies: on the 5-4-5 deep linear network it read 4e-4× the target at one step
    size and 1600× at 1.5 times it (a stability cliff the chains cross where they meet stiffer
    regions). So the rounds *bracket* the target: between the largest step size that met it
    (``lo``) and the smallest that missed (``hi``) the next is their geometric mean; with only
    one side known, the power-law guess ratio^(−1/6) (at most :data:`MAX_ENERGY_CHANGE`-fold,
    and below ``hi``). :func:`energy_step_choice` picks the step size to sample with.
    """
    lo, hi = _bracket(rounds)
    if lo is not None and hi is not None:
        return math.sqrt(lo * hi)
    step, ratio = rounds[-1]
    ratio = ratio if math.isfinite(ratio) else math.inf
    factor = min(max(ratio ** (-1.0 / ENERGY_EXPONENT), 1 / MAX_ENERGY_CHANGE), MAX_ENERGY_CHANGE)
    return step * factor


def energy_step_choice(rounds: list[tuple[float, float]]) -> float:
    """The step size to sample with after the rounds: the largest that met the target below the
    smallest that missed it, else the next guess (:func:`energy_step_size`)."""
    lo, _ = _bracket(rounds)
    return lo if lo is not None else energy_step_size(rounds)


def _bracket(rounds: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    """(largest step size with ratio <= 1 below every miss, smallest with ratio > 1)."""
    missed = [s for s, r in rounds if not r <= 1.0]
    hi = min(missed) if missed else None
    met = [s for s, r in rounds if r <= 1.0 and (hi is None or s < hi)]
    return (max(met) if met else None), hi


def build_window(posterior: LLCPosterior):
    """``window(keys (C,), chains, n) -> (chains, sq (C,), good (C,))``: ``n`` (traced) steps
    of every chain at its parameters; ``sq`` sums the squared energy changes of the NaN-free
    steps (inf for a chain whose position became non-finite: it is put back where it started),
    ``good`` counts them. The energy-variance rounds of the tuning run it."""
    step = build_step(posterior)

    def one(key, state, L, step_size, imm, n):
        def body(i, carry):
            s, sq, good = carry
            s, info = step(jax.random.fold_in(key, i), s, L, step_size, imm)
            ok = info.nonans & jnp.isfinite(info.energy_change)
            sq = sq + jnp.where(ok, jnp.square(info.energy_change), 0.0)
            return s, sq, good + ok.astype(sq.dtype)

        zero = jnp.zeros((), state.position.dtype)
        end, sq, good = jax.lax.fori_loop(0, n, body, (state, zero, zero))
        finite = jnp.all(jnp.isfinite(end.position))  # else: back to the start, counted as a miss
        end = jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), end, state)
        return end, jnp.where(finite, sq, jnp.inf), good

    def window(keys, chains: MCLMCChains, n):
        states, sq, good = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, None))(
            keys, chains.state, chains.L, chains.step_size, chains.inverse_mass_matrix, n
        )
        return chains._replace(state=states), sq, good

    return window


def build_step(posterior: LLCPosterior):
    """``step(key, state, L, step_size, imm) -> (state, MCLMCInfo)``: one chain, one step."""
    kernel = blackjax.mcmc.mclmc.build_kernel()

    def step(key, state, L, step_size, imm):
        s, info = kernel(key, state, posterior.logdensity, imm, L, step_size)
        loss = posterior.loss_from_logdensity(s.position, s.logdensity)
        return s, MCLMCInfo(loss, info.energy_change, info.nonans)

    return step
