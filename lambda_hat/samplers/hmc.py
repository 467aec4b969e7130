"""NUTS for the HMC reference: per-chain window adaptation, adapted state kept, chains vmapped.

Each chain adapts its own step size and diagonal inverse mass matrix with BlackJAX's window
adaptation (Stan's schedule) and *starts sampling from its adapted state*; warm-up draws are
discarded. Warm-up and sampling both run in compiled chunks so the caller can check a wall-clock
budget and report progress between chunks, and save the state to continue from.

The chunked warm-up (:func:`build_warmup_chunk`) runs BlackJAX 1.7.1's window-adaptation step
(``staged_adaptation``'s engine with the ``welford_diag`` metric: what ``window_adaptation``
runs) one step at a time over the precomputed per-step keys and Stan schedule. Any split of it
into chunks gives the same numbers bit for bit; against the one-shot :func:`build_warmup` it is
the same algorithm compiled differently, equal to rounding (adapted positions within ~1e-8 after
300 steps; ``tests/samplers/test_hmc_kernel.py`` checks both).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.base import get_filter_adapt_info_fn
from blackjax.adaptation.metric_recipes import lookup_recipe
from blackjax.adaptation.staged_adaptation import (
    StagedAdaptationState,
    _make_engine,
    build_schedule,
)
from blackjax.mcmc.hmc import HMCState

from lambda_hat._io import atomic_write_npz
from lambda_hat.llc.posterior import LLCPosterior

__all__ = [
    "ChunkInfo",
    "NUTSChains",
    "NUTSRun",
    "WarmupCarry",
    "build_sample_chunk",
    "build_warmup",
    "build_warmup_chunk",
    "build_warmup_init",
    "load_run",
    "read_meta",
    "save_run",
    "state_arrays",
    "state_from_arrays",
    "warmup_final",
    "warmup_inputs",
]


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


class WarmupCarry(NamedTuple):
    """Per-chain warm-up state between chunks (leading axis: chain)."""

    state: HMCState
    adapt: StagedAdaptationState  # dual averaging, Welford window, current step size and IMM
    grad_evals: jax.Array  # (C,) gradient evaluations spent so far
    divergent: jax.Array  # (C,) divergent warm-up transitions so far


def _engine(target_accept: float):
    """BlackJAX's window-adaptation (init, update, final), as ``window_adaptation`` builds it."""
    core = lookup_recipe("welford_diag").build_core(
        imm_shrinkage_to_previous=0.0, initial_inverse_mass_matrix=None
    )
    return _make_engine(core, target_acceptance_rate=target_accept)


def warmup_inputs(k_warm: jax.Array, chains: int, num_warmup: int):
    """Per-chain, per-step keys (C, W, 2) and Stan's schedule (W, 2) for ``num_warmup`` steps.

    The keys are those ``window_adaptation.run`` splits from each chain's key.
    """
    keys = jax.vmap(lambda k: jax.random.split(k, num_warmup))(jax.random.split(k_warm, chains))
    return keys, build_schedule(num_warmup)


def build_warmup_init(posterior: LLCPosterior, target_accept: float):
    """``init(positions (C, d)) -> WarmupCarry``: the state before the first warm-up step."""
    adapt_init = _engine(target_accept)[0]

    def one_chain(position):
        state = blackjax.nuts.init(position, posterior.logdensity)
        return state, adapt_init(position, 1.0)

    def init(positions):
        state, adapt = jax.vmap(one_chain)(positions)
        zeros = jnp.zeros(positions.shape[0], jnp.int64)
        return WarmupCarry(state, adapt, zeros, zeros)

    return init


def build_warmup_chunk(posterior: LLCPosterior, target_accept: float, max_num_doublings: int):
    """``chunk(carry, keys (C, W, 2), schedule (W, 2), first, m) -> carry``: warm-up steps
    ``first .. first + m − 1`` (``first``, ``m`` traced: one program for any chunking)."""
    adapt_step = _engine(target_accept)[1]
    kernel = blackjax.nuts.build_kernel(blackjax.mcmc.integrators.velocity_verlet)

    def one_chain(key, state, adapt, stage, index):
        new, info = kernel(
            key,
            state,
            posterior.logdensity,
            adapt.step_size,
            adapt.inverse_mass_matrix,
            max_num_doublings=max_num_doublings,
        )
        adapt = adapt_step(
            adapt, stage, new.position, new.logdensity_grad, info.acceptance_rate, index
        )
        return new, adapt, info.num_integration_steps, info.is_divergent

    def chunk(carry: WarmupCarry, keys, schedule, first, m):
        def body(j, c):
            stage = (schedule[j, 0], schedule[j, 1])
            state, adapt, grads, div = jax.vmap(one_chain, in_axes=(0, 0, 0, None, None))(
                keys[:, j], c.state, c.adapt, stage, j
            )
            return WarmupCarry(state, adapt, c.grad_evals + grads, c.divergent + div)

        return jax.lax.fori_loop(first, first + m, body, carry)

    return chunk


def warmup_final(carry: WarmupCarry, target_accept: float) -> NUTSChains:
    """The adapted chains after the last warm-up step (averaged step size, last IMM)."""
    adapt_final = _engine(target_accept)[2]
    step, imm = jax.vmap(adapt_final)(carry.adapt)
    return NUTSChains(carry.state, step, imm)


def _template(posterior: LLCPosterior, target_accept: float, chains: int, kind: str):
    """Shapes and dtypes of a ``kind`` ("warm": WarmupCarry, "chains": NUTSChains) state."""
    init = build_warmup_init(posterior, target_accept)
    positions = jax.ShapeDtypeStruct((chains, posterior.d), jnp.float64)
    warm = jax.eval_shape(init, positions)
    return warm if kind == "warm" else jax.eval_shape(warmup_final, warm, target_accept)


def state_arrays(tree, kind: str) -> dict[str, np.ndarray]:
    """A WarmupCarry / NUTSChains as named host arrays (``<kind>_<i>``) for an ``.npz``."""
    return {f"{kind}_{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(tree))}


def state_from_arrays(
    arrays, posterior: LLCPosterior, target_accept: float, chains: int, kind: str
):
    """The state :func:`state_arrays` saved, or ValueError when it does not fit the posterior."""
    template = _template(posterior, target_accept, chains, kind)
    leaves, tree = jax.tree.flatten(template)
    if sum(k.startswith(f"{kind}_") for k in arrays) != len(leaves):
        raise ValueError(f"{kind}: not {len(leaves)} arrays")
    out = []
    for i, t in enumerate(leaves):
        x = np.asarray(arrays[f"{kind}_{i}"])
        if x.shape != t.shape or x.dtype != t.dtype:
            raise ValueError(f"{kind}_{i}: {x.shape} {x.dtype}, expected {t.shape} {t.dtype}")
        out.append(jnp.asarray(x))
    return jax.tree.unflatten(tree, out)


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


@dataclasses.dataclass
class NUTSRun:
    """Where a chunked NUTS run stands — fresh, or resumed from :func:`save_run`'s file.

    Sampling chunk ``i`` draws its keys from ``fold_in(k, i·chunk)``, so ``chunk`` is fixed for
    the run's life: a continuation then gives the draws of an uninterrupted run.
    """

    chunk: int  # draws per sampling chunk
    warmup_done: int = 0
    warm: WarmupCarry | None = None  # mid-warm-up state (chunked warm-up)
    chains: NUTSChains | None = None  # adapted chains, once warm-up is done
    infos: list = dataclasses.field(default_factory=list)  # ChunkInfo of numpy (C, m)
    draws_done: int = 0
    grads_warm: int = 0  # warm-up totals, set when warm-up ends
    div_warm: int = 0
    seconds: dict = dataclasses.field(default_factory=dict)  # spent so far, by phase
    sessions: int = 0
    sec_per_step: float | None = None  # measured run time per step (not saved)

    def info(self) -> ChunkInfo | None:
        """All draws so far, (C, draws_done) per field; None before the first."""
        if not self.infos:
            return None
        return jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *self.infos)


_COUNTS = ("warmup_done", "draws_done", "grads_warm", "div_warm")


def save_run(path: Path, run: NUTSRun, meta: dict | None = None) -> None:
    """The run's chains' state and draws so far as one ``.npz`` (written atomically), with
    ``meta`` (plain JSON values: what the caller needs to continue it) as a JSON string."""
    arrays: dict = {k: getattr(run, k) for k in _COUNTS}
    if meta is not None:
        arrays["meta"] = np.asarray(json.dumps(meta))
    if run.warm is not None:
        arrays.update(state_arrays(run.warm, "warm"))
    else:
        arrays.update(state_arrays(run.chains, "chains"))
    if (info := run.info()) is not None:
        arrays.update({f"info_{k}": v for k, v in info._asdict().items()})
    atomic_write_npz(path, **arrays)


def read_meta(path: Path) -> dict | None:
    """The ``meta`` :func:`save_run` stored (None when the file has none: an older one);
    OSError/ValueError when the file is missing or unreadable."""
    with np.load(path) as z:
        return json.loads(str(z["meta"])) if "meta" in z.files else None


def load_run(
    path: Path, posterior: LLCPosterior, target_accept: float, chains: int, kind: str
) -> NUTSRun:
    """The run :func:`save_run` wrote (``kind``: "warm" mid-warm-up, "chains" mid-sampling);
    OSError/KeyError/ValueError when the file is missing or does not fit."""
    with np.load(path) as z:
        a = {k: z[k] for k in z.files if k != "meta"}
    run = NUTSRun(chunk=0, **{k: int(a[k]) for k in _COUNTS})
    state = state_from_arrays(a, posterior, target_accept, chains, kind)
    run.warm, run.chains = (state, None) if kind == "warm" else (None, state)
    if run.draws_done:
        info = ChunkInfo(*(a[f"info_{k}"] for k in ChunkInfo._fields))
        if info.loss.shape != (chains, run.draws_done):
            raise ValueError(f"saved draws {info.loss.shape} != {(chains, run.draws_done)}")
        run.infos = [info]
    return run
