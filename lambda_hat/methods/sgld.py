"""SGLD: hyperparameters, search space and the adapter onto :mod:`lambda_hat.samplers.sgld`.

Literature convention (Welling & Teh 2011; Lau et al. 2023, "Quantifying degeneracy in singular
models via the learning coefficient"): Δw = −(ε/2)·P·[nβ ∇L_B(w) + γ(w − w*)] + √(εP)·ξ with
ε = ``eta0`` and P the diagonal preconditioner. The chains run in blocks of ``eval_every``
steps; each block gives one draw of the L_n trace — the mean of the minibatch losses its steps
computed for their gradients (``estimator: minibatch``, free) or one full-data L_n pass at its
end (``estimator: full``) — and one MALA-acceptance probe on a minibatch (the health signal).
The choice of default and cadence is measured in plans/sgld-estimator.md.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from lambda_hat.llc.engine import Timer, concat, drive_units, first_nonfinite, i64
from lambda_hat.llc.posterior import chain_starts
from lambda_hat.methods._base import (
    Dtype,
    Method,
    Target,
    dtype_field,
    kept,
    mean_or_none,
    partial_llc,
    run_output,
    traced_posterior,
)
from lambda_hat.methods.stability import StabilityRange, langevin_step_limit
from lambda_hat.samplers import sgld as sgld_kernel
from lambda_hat.schema import config_dataclass, field

Precond = Literal["none", "rmsprop", "adam"]
Estimator = Literal["minibatch", "full"]


def block_length(eval_every: int | None, n: int, batch: int, steps: int, estimator: str) -> int:
    """Steps per block: ``eval_every``, or by default (plans/sgld-estimator.md)

    - ``minibatch``: min(⌈n/B⌉, max(1, steps // 100)), one draw per epoch but >= 100 per chain
      (a draw is free; the block's one cost is the MALA probe's gradient);
    - ``full``: ⌈n/B⌉, one L_n pass per epoch (a pass costs about as much as the epoch's n/B
      minibatch gradients; thinner lost precision on the linear problem, denser cost more).

    Never more than ``steps``.
    """
    epoch = -(-n // min(batch, n))
    if eval_every is None and estimator == "full":
        eval_every = epoch
    elif eval_every is None:
        eval_every = min(epoch, max(1, steps // 100))
    return min(eval_every, steps)


@config_dataclass
class SGLDHyper:
    """Stochastic-gradient Langevin dynamics (Welling & Teh 2011, as Lau et al. 2023 write it):

    Δw = −(ε/2)·P·[nβ ∇L_B(w) + γ(w − w*)] + √(εP)·ξ,  ε = ``eta0``, P the preconditioner.
    """

    eta0: float = field(1e-5, "step size ε (constant)", gt=0)
    gamma: float | None = field(
        None, "localization strength γ of the sampled posterior; None: the reference's", ge=0
    )
    batch: int = field(128, "minibatch size (rows drawn with replacement; >= n: full batch)", ge=1)
    precond_type: Precond = field("none", "diagonal preconditioner from loss-gradient moments")
    steps: int = field(10000, "SGLD steps per chain, burn-in included", ge=2)
    burnin_frac: float = field(0.2, "fraction of the steps discarded as burn-in", ge=0, lt=1)
    chains: int = field(4, "independent chains, vmapped", ge=1)
    estimator: Estimator = field(
        "minibatch",
        "E[L_n] from the steps' own minibatch losses (free) or full-data L_n passes (one per "
        "block)",
    )
    eval_every: int | None = field(
        None,
        "steps per block: one trace draw and one MALA probe each (full: one L_n pass each); "
        "None: minibatch min(n/batch, steps/100), full n/batch (one per epoch)",
        ge=1,
    )
    precond_decay: float = field(0.99, "EMA decay of the squared-gradient moment", gt=0, lt=1)
    adam_beta1: float = field(0.9, "EMA decay of the gradient moment (adam only)", ge=0, lt=1)
    precond_eps: float = field(1e-8, "added to sqrt(v) in the preconditioner", gt=0)
    dtype: Dtype = dtype_field()


def space() -> dict:
    """eta0 log 1e-3..1 x ε_max = 4/a_max (the problem's full-batch stability limit; absolute
    1e-6..1e-1 when a_max is unknown); batch {32,64,128,256}; precond_type; steps 5k..20k.

    ``gamma`` is not searched: every method samples the reference's posterior (issue 9); a
    user who wants γ varied lists choices, each scored against its own reference."""
    return {
        "eta0": StabilityRange(
            1e-3, 1.0, log=True, fallback=FloatDistribution(1e-6, 1e-1, log=True)
        ),
        "batch": CategoricalDistribution([32, 64, 128, 256]),
        "precond_type": CategoricalDistribution(["none", "rmsprop", "adam"]),
        "steps": IntDistribution(5000, 20000),
    }


def _start(target: Target, C: int, key, table: bool, timer: Timer):
    """(initial states, chain keys, each row's loss at w* or None unless ``table``), each from
    a cached program; the table is one forward pass over the data, once per trial."""

    def setup(args, key):
        post = traced_posterior(target, args)
        k_start, k_run = jax.random.split(key)
        starts = chain_starts(post, k_start, C)
        return jax.vmap(sgld_kernel.init)(starts), jax.random.split(k_run, C)

    def rows(args):
        return sgld_kernel.row_losses(traced_posterior(target, args))

    state, chain_keys = timer.once(("sgld", "setup", target.key, C), setup, target.args, key)
    rows_star = timer.once(("sgld", "rows", target.key), rows, target.args) if table else None
    return state, chain_keys, rows_star


class _Schedule(NamedTuple):
    """How a run's steps are laid out: ``E`` steps per block, ``blocks`` blocks, the minibatch
    size, the steps the preconditioner adapts for, and whether the control variate's table of
    w* row losses is needed."""

    E: int
    blocks: int
    batch: int
    adapt: int
    table: bool


def _schedule(hp: dict, n: int) -> _Schedule:
    steps, batch = hp["steps"], min(hp["batch"], n)
    E = block_length(hp["eval_every"], n, batch, steps, hp["estimator"])
    blocks = -(-steps // E)  # the last block may run up to E − 1 steps past ``steps``
    # P adapts during the first half of the burn-in and is then frozen: the second half lets
    # the chains relax to the frozen sampler's law (plans/sgld-preconditioning.md).
    adapt = 0 if hp["precond_type"] == "none" else int(hp["burnin_frac"] * blocks) * E // 2
    table = hp["estimator"] == "minibatch" and batch < n  # the control variate's w* row losses
    return _Schedule(E, blocks, batch, adapt, table)


def run(target: Target, hp: dict, key, deadline: float, timer: Timer) -> dict:
    """Run the SGLD chains on ``target`` (see :data:`lambda_hat.methods.RunOutput`)."""
    post = target.post
    C, estimator, precond = hp["chains"], hp["estimator"], hp["precond_type"]
    E, blocks, batch, adapt, table = sch = _schedule(hp, post.n)
    state, chain_keys, rows_star = _start(target, C, key, table, timer)
    consts = (
        target.args,
        target.real(hp["eta0"]),
        target.real(hp["precond_decay"]),
        target.real(hp["adam_beta1"]),
        target.real(hp["precond_eps"]),
        i64(E),
        i64(adapt),
        chain_keys,
        rows_star,
    )

    def unit(consts, state, b):
        args, eta, decay, beta1, eps, E, adapt, chain_keys, rows_star = consts
        post = traced_posterior(target, args)
        kernel = sgld_kernel.build_kernel(post, batch, precond, decay, beta1, eps, rows_star)
        block = sgld_kernel.build_block(kernel, post, eta, E, adapt, estimator)
        return jax.vmap(block, in_axes=(0, 0, None))(chain_keys, state, b)

    def first_bad(info, finite):
        return first_nonfinite(info[0], finite)

    state, infos, done, early = drive_units(
        timer,
        ("sgld", target.key, C, batch, precond, estimator),
        unit,
        consts,
        state,
        blocks,
        deadline,
        first_bad,
        E,
        lambda s: s.position,
        lambda infos: partial_llc(concat(infos, 0), post, hp["burnin_frac"]),
    )
    return _output(hp, sch, post.n, state, infos, done, early)


def _output(hp: dict, sch: _Schedule, n: int, state, infos, done: int, early: bool) -> dict:
    """The RunOutput of the blocks run: draws after burn-in (none from before the
    preconditioner froze), the work, the MALA-probe diagnostics and the trace."""
    E, blocks, batch, adapt, table = sch
    C = hp["chains"]
    loss, accept = concat(infos, 0).astype(np.float64), concat(infos, 1).astype(np.float64)
    draws, burn = kept(loss, hp["burnin_frac"])
    if burn * E < adapt:  # stopped early: no kept draw from before the freeze
        burn = min(-(-adapt // E), loss.shape[1])
        draws = loss[:, burn:]
    acc_kept = accept[:, burn:]
    grads_per_chain = done * (E + 1)  # E steps + the MALA probe's extra gradient per block
    # full: one L_n pass per block and chain; minibatch: the w* row-loss table, once
    passes = C * done if hp["estimator"] == "full" else int(table)
    return {
        **run_output(loss, draws, burn, done, blocks, early, (done * E, blocks * E)),
        "work": {
            "grad_evals": C * grads_per_chain,
            "fge": C * grads_per_chain * batch / n + passes,  # a gradient on B rows: B/n
            "loss_evals": passes,
        },
        "diagnostics": {
            "mala_acceptance": mean_or_none(acc_kept),
            "mala_acceptance_per_chain": [mean_or_none(a) for a in acc_kept],
            "eval_every": E,
            "batch": batch,
            "precond_adapt_steps": adapt,
        },
        "trace": {"loss": loss, "mala_accept": accept, "precond": np.asarray(state.precond)},
    }


def step_limit(a_max: float, d: int) -> float:
    """ε_max of ``eta0``: full-batch Langevin's 4/a_max (SGLD is its minibatch version, P = I)."""
    del d  # the Langevin limit depends on the stiffest direction only
    return langevin_step_limit(a_max)


METHOD = Method(
    name="sgld",
    hyper=SGLDHyper,
    space=space,
    run=run,
    culprits={"diverged": ("eta0",), "timeout": ("steps",), "oom": ("batch",)},
    revision=lambda hp: None if hp["precond_type"] == "none" else "precond frozen after burn-in",
    step_limit=step_limit,
)
