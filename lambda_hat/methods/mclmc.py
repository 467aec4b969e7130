"""MCLMC: hyperparameters, search spaces and the adapter onto :mod:`lambda_hat.samplers.mclmc`.

With ``tune`` (default) each chain runs the traced restatement of BlackJAX's
``mclmc_find_L_and_step_size`` (step size, L and a diagonal mass matrix per chain), then the
chains are pooled to one set of parameters and the energy-variance rounds bracket the step
size that holds their energy error at the target (:func:`_hold_energy`); every tuning step
counts as work. With ``tune: false`` the chains sample at the given step size and L; that mode
searches the step size relative to ε_max (:func:`untuned_space`, :func:`space_for`).

Either mode's run whose energy error exceeds ``miss_factor`` × its target fails
(:mod:`lambda_hat.methods.mclmc_energy`). plans/methods.md, "MCLMC's tuning".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from optuna.distributions import FloatDistribution, IntDistribution

from lambda_hat.llc.engine import Diverged, Timer, concat, drive_units, f64, first_nonfinite, i64
from lambda_hat.llc.posterior import chain_starts
from lambda_hat.methods._base import Method, Target, kept, partial_llc, run_output, traced_posterior
from lambda_hat.methods.mclmc_energy import (
    DEFAULT_ENERGY_FRAC,
    DEFAULT_MISS_FACTOR,
    ENERGY_MARGIN,
    ENERGY_ROUNDS,
    MIN_WINDOW,
    energy_miss,
    tuning_diagnostics,
)
from lambda_hat.methods.stability import StabilityRange
from lambda_hat.samplers import mclmc as mclmc_kernel
from lambda_hat.schema import ConfigError, config_dataclass, field

OMEGA_H = 2.553
"""Largest stable ω·h of BlackJAX's ``isokinetic_mclachlan`` on a harmonic mode (plans/curvature.md)."""


@config_dataclass
class MCLMCHyper:
    """Microcanonical Langevin Monte Carlo (BlackJAX ``mclmc``, isokinetic McLachlan).

    With ``tune`` (default) BlackJAX's ``mclmc_find_L_and_step_size`` adapts the step size,
    L and a diagonal mass matrix per chain, and the energy-variance rounds then set one step
    size for all chains: ``step_size`` is only the tuner's start, ``target_accept`` sets the
    energy target and ``L`` multiplies the tuned L. With ``tune: false`` ``step_size`` and
    ``L`` are used as given and ``target_accept`` sets only the energy check's target.
    """

    step_size: float | None = field(None, "step size (tuner's start; None: sqrt(d)/4)", gt=0)
    target_accept: float = field(
        0.9, "Metropolis acceptance one step's energy error would have (tuner target)", gt=0, lt=1
    )
    L: float = field(1.0, "momentum decoherence length (tuned: a multiplier of the tuned L)", gt=0)
    steps: int = field(1000, "sampling steps per chain after tuning, burn-in included", ge=2)
    tune: bool = field(True, "run BlackJAX's tuner first (its steps count as work)")
    tune_frac: float = field(0.3, "tuning steps as a fraction of steps (split in 3 phases)", gt=0)
    energy_frac: float = field(
        DEFAULT_ENERGY_FRAC,
        "tuned: steps (fraction of steps) of the energy-variance rounds that hold the chains' "
        "pooled energy error at the target before sampling (0: BlackJAX's per-chain tuning only)",
        ge=0,
    )
    miss_factor: float = field(
        DEFAULT_MISS_FACTOR,
        "a run whose energy error per dimension exceeds this many times its target fails",
        gt=1,
    )
    burnin_frac: float = field(0.1, "fraction of the sampling steps discarded", ge=0, lt=1)
    chains: int = field(4, "independent chains, vmapped (tuned each, then pooled)", ge=1)


def space() -> dict:
    """The default (tuned) mode's space: target_accept 0.75..0.97 (energy targets 3.3e-3 ..
    4.5e-5 per dimension, BlackJAX's 5e-4 inside), L 0.5..3 (a multiplier of the tuned L),
    steps 200..2000. The step size is the tuner's output, so it is not searched."""
    return {
        "target_accept": FloatDistribution(0.75, 0.97),
        "L": FloatDistribution(0.5, 3.0),
        "steps": IntDistribution(200, 2000),
    }


def untuned_space() -> dict:
    """The space of ``tune: false``: step_size log 0.02..0.5 × ε_max = 2.553·√((d−1)/a_max)
    (the integrator's stability limit at w*; absolute 1e-4..1e-1 when a_max is unknown), L log
    0.3..10 (absolute, unit mass), steps 200..2000; ``target_accept`` only sets the energy
    check's target, so it is not searched."""
    return {
        "step_size": StabilityRange(
            0.02, 0.5, log=True, fallback=FloatDistribution(1e-4, 1e-1, log=True)
        ),
        "L": FloatDistribution(0.3, 10.0, log=True),
        "steps": IntDistribution(200, 2000),
    }


def space_for(fixed: Mapping[str, Any]) -> dict:
    """The default space given the values a config fixes: :func:`untuned_space` when it fixes
    ``tune: false``, else :func:`space`."""
    tune = fixed.get("tune", True)
    untuned = tune is False or (isinstance(tune, str) and tune.strip().lower() == "false")
    return untuned_space() if untuned else space()


def check(hp: MCLMCHyper, where: str) -> None:
    """A fixed (untuned) run needs its step size."""
    if not hp.tune and hp.step_size is None:
        raise ConfigError(
            f"{where}.step_size", "is required when tune is false.", "set step_size or tune: true."
        )


def _tune(target: Target, hp: dict, states, tune_keys, timer: Timer):
    """Per-chain tuning (step size, L, mass matrix): the tuned chains and the tuner's steps."""
    C, d = hp["chains"], target.post.d
    sched = mclmc_kernel.tune_schedule(hp["steps"], hp["tune_frac"])
    capacity = 1 << math.ceil(math.log2(max(sched.n1 + sched.n2 + 1, sched.n3, 2)))
    flags = (sched.n2 > 1, sched.n3 >= 2)

    def tune(args, keys, states, counts, energy_var, step_size0):
        post = traced_posterior(target, args)
        return mclmc_kernel.build_tuner(post, capacity, *flags)(
            keys, states, counts, energy_var, step_size0
        )

    step0 = hp["step_size"] if hp["step_size"] is not None else math.sqrt(d) * 0.25
    tune_args = (
        target.args,
        tune_keys,
        states,
        tuple(i64(x) for x in sched[:3]) + (i64(sched.n3),),
        f64(mclmc_kernel.desired_energy_var(hp["target_accept"])),
        f64(step0),
    )
    chains, positions = timer.once(
        ("mclmc", "tune", target.key, C, capacity, flags), tune, *tune_args
    )
    chains = timer.once(
        ("mclmc", "finish_tuning", C, d, capacity, sched.n3),
        lambda ch, pos, f: mclmc_kernel.finish_tuning(ch, pos, sched.n3, f),
        chains,
        positions,
        f64(hp["L"]),
    )
    if not np.isfinite(np.asarray(chains.state.position)).all():
        raise Diverged(sched.total, "non-finite parameters during MCLMC tuning")
    return chains, sched.total


def _chains(target: Target, hp: dict, key, timer: Timer):
    """The chains ready to sample (tuned, or at the given step size and L), each chain's
    sampling key and the tuner's steps (0 untuned)."""
    C = hp["chains"]

    def setup(args, key):
        post = traced_posterior(target, args)
        k_start, k_mom, k_tune, k_run = jax.random.split(key, 4)
        starts = chain_starts(post, k_start, C)
        states = mclmc_kernel.init(post, jax.random.split(k_mom, C), starts)
        energy_keys = jax.random.split(jax.random.fold_in(k_tune, 1), C)
        return states, jax.random.split(k_tune, C), jax.random.split(k_run, C), energy_keys

    states, tune_keys, chain_keys, energy_keys = timer.once(
        ("mclmc", "setup", target.key, C), setup, target.args, key
    )
    if hp["tune"]:
        chains, tune_steps = _tune(target, hp, states, tune_keys, timer)
        chains, held, rounds = _hold_energy(target, hp, chains, energy_keys, timer)
        tune_steps += held
    else:
        chains = mclmc_kernel.fixed_chains(states, f64(hp["L"]), f64(hp["step_size"]))
        tune_steps, rounds = 0, []
    return chains, chain_keys, (tune_steps, rounds)


def _hold_energy(target: Target, hp: dict, chains, keys, timer: Timer):
    """The energy-variance rounds: the chains pooled to one set of parameters
    (:func:`lambda_hat.samplers.mclmc.pooled_chains`), then :data:`ENERGY_ROUNDS` windows of
    ``energy_frac · steps / ENERGY_ROUNDS`` steps whose pooled energy error per dimension
    brackets the step size that meets the target (:func:`~lambda_hat.samplers.mclmc.
    energy_step_size`); sampling runs at :data:`ENERGY_MARGIN` × the largest that met it.
    Returns the chains, the steps spent and the rounds' record (none when the windows would be
    shorter than :data:`MIN_WINDOW` steps: BlackJAX's per-chain tuning alone)."""
    C, d = hp["chains"], target.post.d
    window = round(hp["energy_frac"] * hp["steps"]) // ENERGY_ROUNDS
    if window < MIN_WINDOW:
        return chains, 0, []
    desired = mclmc_kernel.desired_energy_var(hp["target_accept"])
    chains = timer.once(("mclmc", "pool", C, d), mclmc_kernel.pooled_chains, chains)

    def run_window(args, keys, chains, n, r):
        post = traced_posterior(target, args)
        keys = jax.vmap(lambda k: jax.random.fold_in(k, r))(keys)
        return mclmc_kernel.build_window(post)(keys, chains, n)

    rounds: list[tuple[float, float]] = []
    for r in range(ENERGY_ROUNDS):
        chains, sq, good = timer.once(
            ("mclmc", "window", target.key, C),
            run_window,
            target.args,
            keys,
            chains,
            i64(window),
            i64(r),
        )
        good_steps = float(np.sum(good))
        ratio = float(np.sum(sq)) / (good_steps * d) / desired if good_steps else math.inf
        rounds.append((float(np.asarray(chains.step_size)[0]), ratio))
        last = r + 1 == ENERGY_ROUNDS
        step = (
            mclmc_kernel.energy_step_choice(rounds) * ENERGY_MARGIN
            if last
            else mclmc_kernel.energy_step_size(rounds)
        )
        chains = chains._replace(step_size=np.full((C,), step, np.float64))
    if not np.isfinite(np.asarray(chains.state.position)).all():
        raise Diverged(ENERGY_ROUNDS * window, "non-finite parameters during MCLMC tuning")
    record = [{"step_size": e, "energy_var_ratio": _finite_or_none(q)} for e, q in rounds]
    return chains, ENERGY_ROUNDS * window, record


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def run(target: Target, hp: dict, key, deadline: float, timer: Timer) -> dict:
    """Run the MCLMC chains on ``target`` (see :data:`lambda_hat.methods.RunOutput`)."""
    post = target.post
    C, steps, d = hp["chains"], hp["steps"], post.d
    if d < 2:
        raise ConfigError("method", "MCLMC needs at least 2 parameters.", "use another method.")
    chains, chain_keys, tuning = _chains(target, hp, key, timer)

    def unit(consts, chains, i):
        args, chain_keys = consts
        step = mclmc_kernel.build_step(traced_posterior(target, args))
        keys = jax.vmap(lambda ck: jax.random.fold_in(ck, i))(chain_keys)
        state, info = jax.vmap(step)(
            keys, chains.state, chains.L, chains.step_size, chains.inverse_mass_matrix
        )
        return chains._replace(state=state), info

    def first_bad(info, finite):
        stuck = (~np.asarray(info.nonans)).mean() > 0.5
        bad = first_nonfinite(np.asarray(info.loss), finite)
        return bad if bad is not None else (info.loss.shape[1] - 1 if stuck else None)

    chains, infos, done, early = drive_units(
        timer,
        ("mclmc", target.key, C),
        unit,
        (target.args, chain_keys),
        chains,
        steps,
        deadline,
        first_bad,
        1,
        lambda ch: ch.state.position,
        lambda infos: partial_llc(concat(infos, "loss"), post, hp["burnin_frac"]),
    )
    return _output(hp, d, chains, infos, (done, early, tuning))


def _output(hp: dict, d: int, chains, infos, progress: tuple) -> dict:
    """The RunOutput of the sampling steps run (``progress``: steps done, stopped early, the
    tuner's steps), with the tuning diagnostics and, for a tuning that missed its energy
    target, the failure."""
    done, early, (tune_steps, rounds) = progress
    C, steps = hp["chains"], hp["steps"]
    loss = concat(infos, "loss")
    energy = concat(infos, "energy_change")
    nonans = concat(infos, "nonans")
    draws, burn = kept(loss, hp["burnin_frac"])
    # every chain's start gradient (init), the tuner's steps and the sampling steps
    grads = C * (1 + mclmc_kernel.GRADS_PER_STEP * (tune_steps + done))
    diagnostics = tuning_diagnostics(chains, energy[:, burn:], d, hp)
    diagnostics["energy_rounds"] = rounds
    out = {
        **run_output(loss, draws, burn, done, steps, early, (done, steps)),
        "work": {
            "grad_evals": grads,
            "fge": float(grads),
            "loss_evals": 0,
            "tuning_steps": tune_steps,
        },
        "diagnostics": {**diagnostics, "nan_steps": int((~nonans).sum())},
        "trace": {"loss": loss, "energy_change": energy},
    }
    failure = energy_miss(diagnostics, hp, done)
    return out if failure is None else {**out, "failure": failure}


def step_limit(a_max: float, d: int) -> float:
    """ε_max of ``step_size``: 2.553·√((d−1)/a_max), the isokinetic McLachlan integrator's
    limit ωh < 2.553 in BlackJAX's time units (plans/curvature.md)."""
    return OMEGA_H * math.sqrt(max(d - 1, 1) / a_max)


METHOD = Method(
    name="mclmc",
    hyper=MCLMCHyper,
    space=space,
    run=run,
    culprits={"diverged": ("step_size",), "timeout": ("steps",), "oom": ()},
    check=check,
    step_limit=step_limit,
    space_for=space_for,
)
