"""One trial of a cheap LLC method (SGLD, VI, MCLMC): the single entry point.

:func:`run_method_trial` is what the tuning workflow and ``lambda-hat trial`` call. Contract:

- It validates the hyperparameters first (a :class:`~lambda_hat.config.ConfigError` naming the
  field is the only exception it raises, before any work or file).
- It writes ``<artifacts>/runs/<pid>/<method>/<run id>/manifest.json`` (everything that
  determines the run; ``run id = content_hash(manifest, "r_")``), then runs, then writes
  ``metrics.json`` and ``trace.npz`` — all atomically. ``metrics.json`` is written in every
  case and is strict JSON (no NaN/Infinity): a parameter-dependent problem (divergence, an
  exception, a spent budget) becomes ``status: failed`` with a ``failure`` record, never an
  exception. An exception's traceback is stored in ``traceback.txt`` beside it.
- Work runs in compiled chunks (a ``fori_loop`` over a traced number of units, chains
  ``vmap``\\ ped, step keys ``fold_in(chain key, step)`` so chunking never changes a result).
  Between chunks it checks the wall clock against ``budget_sec`` and stops gracefully
  (``stopped_early``, estimate from the draws so far), and checks for non-finite losses or
  parameters (``diverged`` + step). Programs are compiled with ``jit(...).lower(...).compile()``
  (compile time is reported apart from run time) and **reused by later trials in the process**:
  the data, w*, β, γ, L_n(w*) and every continuous hyperparameter are traced arguments, and
  programs are cached under the method, the problem, the discrete hyperparameters and a
  power-of-two chunk capacity (:func:`chunk_capacity`), so a trial with other step sizes,
  learning rates or ``steps`` traces and compiles nothing (``tests/test_compilation.py``).

The posterior is :class:`~lambda_hat.posterior.LLCPosterior` with β and γ taken from ``ref``
(the HMC reference's settings, so that λ̂ and λ̂_HMC estimate the same quantity; defaults
1/log n and 1 without one) — except SGLD, whose ``gamma`` hyperparameter is its own
localization strength (see plans/methods.md).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lambda_hat import diagnostics, isolation, methods
from lambda_hat._io import atomic_write_bytes, atomic_write_json, atomic_write_npz, read_json
from lambda_hat.config import ConfigError
from lambda_hat.estimator import estimate_llc
from lambda_hat.hashing import content_hash
from lambda_hat.log import fmt_seconds
from lambda_hat.posterior import LLCPosterior, chain_starts, gaussian_nll, regression_posterior
from lambda_hat.problems import Problem
from lambda_hat.samplers import mclmc as mclmc_mod
from lambda_hat.samplers import sgld as sgld_mod
from lambda_hat.samplers import vi as vi_mod

__all__ = [
    "run_method_trial",
    "load_metrics",
    "run_dir_for",
    "trial_manifest",
    "chunk_capacity",
    "clear_compiled_cache",
    "add_cli",
]

log = logging.getLogger("lambda_hat.runner")

RUN_SCHEMA = 1
TARGET_CHUNKS = 20  # budget/divergence checks per run: at most this many, at least half
MIN_CHUNK = 16  # units per chunk at least (short runs: fewer chunks, fewer programs)
MIN_DRAWS = 4  # kept draws per chain below which no estimate is made
_clock = time.perf_counter  # the one clock (tests may substitute it)


class _Diverged(Exception):
    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


class _Pruned(Exception):
    """The tuning driver asked the trial to stop (``isolation.stop_requested``)."""

    def __init__(self, step: int, steps_planned: int, llc_hat: float | None):
        super().__init__(f"stopped on request (pruned) at step {step} of {steps_planned}")
        self.step, self.steps_planned, self.llc_hat = step, steps_planned, llc_hat


def _partial_llc(loss: np.ndarray, post, burnin_frac: float) -> float | None:
    """λ̂ from the L_n draws so far (burn-in dropped), for progress reports; None if too few."""
    kept, _ = _kept(loss, burnin_frac)
    if kept.shape[1] < MIN_DRAWS:
        return None
    return float(estimate_llc(kept, post.loss_star, post.nbeta)["llc_hat"])


# ----------------------------------------------------------------------------- run identity


def _posterior_settings(problem: Problem, method: str, hp: dict, ref: dict | None) -> dict:
    ref = ref or {}
    beta = ref.get("beta")
    beta = float(beta) if beta is not None else 1.0 / math.log(problem.n)
    gamma = hp["gamma"] if method == "sgld" else ref.get("gamma")
    gamma = float(gamma) if gamma is not None else 1.0
    return {"n": int(problem.n), "beta": beta, "gamma": gamma}


def trial_manifest(
    problem: Problem,
    method: str,
    hyperparams: dict,
    budget_sec: float | None,
    seed: int,
    ref: dict | None = None,
) -> dict:
    """Everything that determines a run (hyperparameters resolved; raises ConfigError)."""
    hp = methods.validate_hyperparams(method, hyperparams)
    return {
        "schema": RUN_SCHEMA,
        "pid": problem.pid,
        "method": method,
        "hyperparams": hp,
        "seed": int(seed),
        "budget_sec": None if budget_sec is None else float(budget_sec),
        "posterior": _posterior_settings(problem, method, hp, ref),
    }


def run_dir_for(artifacts: str | Path, pid: str, method: str, manifest: dict) -> Path:
    """``<artifacts>/runs/<pid>/<method>/r_<hash of manifest>``."""
    return Path(artifacts) / "runs" / pid / method / content_hash(manifest, "r_")


def load_metrics(run_dir: str | Path) -> dict | None:
    """A finished run's metrics (None when missing, corrupt, or not a finished record)."""
    m = read_json(Path(run_dir) / "metrics.json")
    if m is None or m.get("status") not in ("ok", "failed"):
        return None
    return m


# ------------------------------------------------------------------- compiled-program cache

# Compiled programs of this process, reused across trials: key = (what the program computes,
# the static settings that shape it, the abstract signature of its arguments). Everything that
# varies between trials of one (problem, method) — continuous hyperparameters, β, γ, w*, L_n(w*),
# keys, step counts — is an *argument*, so a new trial finds its programs here and compiles
# nothing. A program closes over the problem's ``apply`` and noise only, which its pid fixes.
_COMPILED: OrderedDict[tuple, Any] = OrderedDict()
CACHE_SIZE = 256  # programs kept per process (least recently used dropped first)


def clear_compiled_cache() -> None:
    """Forget this process's compiled trial programs (the next trial compiles afresh)."""
    _COMPILED.clear()


def _signature(args) -> tuple:
    leaves, tree = jax.tree_util.tree_flatten(args)
    return (
        tree,
        tuple((np.shape(x), str(x.dtype), bool(getattr(x, "weak_type", False))) for x in leaves),
    )


def _f64(x) -> np.ndarray:
    return np.asarray(x, np.float64)


def _i64(x) -> np.ndarray:
    return np.asarray(x, np.int64)


def chunk_capacity(total: int) -> int:
    """Units per compiled chunk: total / TARGET_CHUNKS rounded up to a power of two, >= 16.

    The chunk program loops over a *traced* number of units (<= capacity), so a run of any
    length uses the executable of its capacity bucket: varying ``steps`` between trials does
    not create a new program for each value (a run has 10–20 chunks, fewer when short).
    """
    return max(MIN_CHUNK, 1 << math.ceil(math.log2(max(1, -(-total // TARGET_CHUNKS)))))


class _Timer:
    def __init__(self) -> None:
        self.compile = 0.0
        self.run = 0.0
        self.compiled_programs = 0

    def compiled(self, key: tuple, fn: Callable, *args) -> Callable:
        """The program ``fn`` for ``args`` from the process cache, compiled (and timed) once.

        ``fn`` must close over nothing but what ``key`` names (static settings, the problem).
        """
        full = (key, _signature(args))
        exe = _COMPILED.get(full)
        if exe is None:
            t0 = _clock()
            exe = jax.jit(fn).lower(*args).compile()
            self.compile += _clock() - t0
            self.compiled_programs += 1
            _COMPILED[full] = exe
            while len(_COMPILED) > CACHE_SIZE:
                _COMPILED.popitem(last=False)
        else:
            _COMPILED.move_to_end(full)
        return exe

    def call(self, compiled: Callable, *args) -> Any:
        t0 = _clock()
        out = jax.block_until_ready(compiled(*args))
        self.run += _clock() - t0
        return out

    def once(self, key: tuple, fn: Callable, *args) -> Any:
        """Run the (cached) program ``fn`` on ``args``: setup work, one executable."""
        return self.call(self.compiled(key, fn, *args), *args)


class _Target(NamedTuple):
    """The trial's posterior: host numbers, and the same as arguments of compiled programs."""

    post: LLCPosterior  # floats, for the estimator and host arithmetic
    args: tuple  # (X, y, w*, β, γ, L_n(w*)): traced by every program
    apply: Callable
    noise: float
    key: tuple  # (pid, n, d): what the closure over ``apply`` and ``noise`` depends on


def _traced_posterior(target: _Target, args: tuple) -> LLCPosterior:
    X, y, w_star, beta, gamma, loss_star = args
    return regression_posterior(target.apply, X, y, target.noise, w_star, beta, gamma, loss_star)


def _target(problem: Problem, beta: float, gamma: float, timer: _Timer) -> _Target:
    """The posterior at (β, γ), L_n(w*) computed by a cached program (no per-trial trace)."""
    apply, noise = problem.model.apply, float(problem.spec.data.noise)
    key = (problem.pid, int(problem.n), int(problem.d))

    def loss(X, y, w):
        return gaussian_nll(apply(w, X), y, noise)

    X, y, w_star = problem.X, problem.y, problem.w_star
    loss_star = float(timer.once(("loss", key), loss, X, y, w_star))
    post = regression_posterior(apply, X, y, noise, w_star, float(beta), float(gamma), loss_star)
    args = (X, y, w_star, _f64(beta), _f64(gamma), _f64(loss_star))
    return _Target(post, args, apply, noise, key)


# ------------------------------------------------------------------------------ the driver


def _fill(shape: jax.ShapeDtypeStruct, capacity: int) -> jax.Array:
    out = (shape.shape[0], capacity, *shape.shape[1:])
    if jnp.issubdtype(shape.dtype, jnp.floating):
        return jnp.full(out, jnp.nan, shape.dtype)
    return jnp.zeros(out, shape.dtype)


def _units(unit: Callable, carry, first, m, capacity: int):
    """``unit(carry, first + j)`` for j < m (traced), outputs into (C, capacity, ...) buffers."""
    out_shapes = jax.eval_shape(unit, carry, first)[1]
    bufs = jax.tree_util.tree_map(lambda s: _fill(s, capacity), out_shapes)

    def body(j, c):
        carry, bufs = c
        carry, out = unit(carry, first + j)
        bufs = jax.tree_util.tree_map(
            lambda b, o: jax.lax.dynamic_update_index_in_dim(b, o, j, 1), bufs, out
        )
        return carry, bufs

    return jax.lax.fori_loop(0, m, body, (carry, bufs))


def _all_finite(tree) -> jax.Array:
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _drive(
    key: tuple,
    unit: Callable,
    consts,
    carry,
    total: int,
    deadline: float,
    timer: _Timer,
    first_bad: Callable[[Any, bool], int | None],
    unit_steps: int,
    watch: Callable = lambda carry: carry,
    estimate: Callable[[list], float | None] | None = None,
):
    """Run ``unit(consts, carry, unit_index) -> (carry, out)`` over ``total`` units in chunks.

    One compiled chunk program (per ``key`` and capacity bucket) takes ``consts``, the carry,
    the first unit and the number of units as arguments. Returns (carry, list of per-chunk
    outputs as host arrays (C, m, ...), units done, stopped_early). Raises
    :class:`_Diverged` at the first chunk holding a non-finite unit (``first_bad`` gets the
    chunk's outputs and whether ``watch(carry)`` is all finite). Under isolation, each chunk
    reports its progress and ``estimate(infos)`` (the λ̂ so far) to the tuning driver, and a
    stop request raises :class:`_Pruned` (see ``plans/workflow.md``, pruning).
    """
    capacity = chunk_capacity(total)

    def chunk(consts, carry, first, m):
        carry, bufs = _units(lambda c, u: unit(consts, c, u), carry, first, m, capacity)
        return carry, bufs, _all_finite(watch(carry))

    exe = timer.compiled((*key, "chunk", capacity), chunk, consts, carry, _i64(0), _i64(0))
    infos, done = [], 0
    while done < total:
        m = min(capacity, total - done)
        carry, bufs, finite = timer.call(exe, consts, carry, _i64(done), _i64(m))
        info = jax.tree_util.tree_map(lambda b, m=m: np.asarray(b)[:, :m], jax.device_get(bufs))
        bad = first_bad(info, bool(finite))
        if bad is not None:
            step = (done + bad + 1) * unit_steps
            raise _Diverged(step, f"non-finite loss or parameters by step {step}")
        infos.append(info)
        done += m
        if os.environ.get(isolation.PROGRESS_ENV):
            llc = estimate(infos) if estimate is not None else None
            isolation.report_progress(done / total, step=done * unit_steps, llc_hat=llc)
            if done < total and isolation.stop_requested():
                raise _Pruned(done * unit_steps, total * unit_steps, llc)
        if done < total and _clock() >= deadline:
            return carry, infos, done, True
    return carry, infos, done, False


def _concat(infos: list, field) -> np.ndarray:
    return np.concatenate(
        [np.asarray(getattr(i, field) if isinstance(field, str) else i[field]) for i in infos],
        axis=1,
    )


def _first_nonfinite(loss: np.ndarray, finite: bool = True) -> int | None:
    """Index along axis 1 of the first non-finite loss in any chain (the last if not finite)."""
    bad = ~np.isfinite(loss).all(axis=0)
    if not finite:
        bad[-1] = True
    return int(np.argmax(bad)) if bad.any() else None


def _kept(loss: np.ndarray, burnin_frac: float) -> tuple[np.ndarray, int]:
    burn = int(burnin_frac * loss.shape[1])
    return loss[:, burn:], burn


# ---------------------------------------------------------------------------------- methods
# Each method's programs are keyed by (method, program, problem key, discrete settings) and
# take the posterior and every continuous hyperparameter as arguments.


def _run_sgld(target: _Target, hp: dict, key, deadline: float, timer: _Timer) -> dict:
    post = target.post
    C, steps, n = hp["chains"], hp["steps"], post.n
    batch = min(hp["batch"], n)
    E = hp["eval_every"]
    if E is None:
        E = min(-(-n // batch), max(1, steps // 100))
    E = min(E, steps)
    blocks = -(-steps // E)  # the last block may run up to E − 1 steps past ``steps``
    precond = hp["precond_type"]
    # P adapts during the first half of the burn-in and is then frozen: the second half lets
    # the chains relax to the frozen sampler's law (plans/sgld-preconditioning.md).
    adapt = 0 if precond == "none" else int(hp["burnin_frac"] * blocks) * E // 2

    def setup(args, key):
        post = _traced_posterior(target, args)
        k_start, k_run = jax.random.split(key)
        starts = chain_starts(post, k_start, C)
        return jax.vmap(sgld_mod.init)(starts), jax.random.split(k_run, C)

    state, chain_keys = timer.once(("sgld", "setup", target.key, C), setup, target.args, key)
    consts = (
        target.args,
        _f64(hp["eta0"]),
        _f64(hp["precond_decay"]),
        _f64(hp["adam_beta1"]),
        _f64(hp["precond_eps"]),
        _i64(E),
        _i64(adapt),
        chain_keys,
    )

    def unit(consts, state, b):
        args, eta, decay, beta1, eps, E, adapt, chain_keys = consts
        post = _traced_posterior(target, args)
        kernel = sgld_mod.build_kernel(post, batch, precond, decay, beta1, eps)
        block = sgld_mod.build_block(kernel, post, eta, E, adapt)
        return jax.vmap(block, in_axes=(0, 0, None))(chain_keys, state, b)

    def first_bad(info, finite):
        return _first_nonfinite(info[0], finite)

    state, infos, done, early = _drive(
        ("sgld", target.key, C, batch, precond),
        unit,
        consts,
        state,
        blocks,
        deadline,
        timer,
        first_bad,
        E,
        lambda s: s.position,
        lambda infos: _partial_llc(_concat(infos, 0), post, hp["burnin_frac"]),
    )
    loss, accept = _concat(infos, 0), _concat(infos, 1)
    kept, burn = _kept(loss, hp["burnin_frac"])
    if burn * E < adapt:  # stopped early: no kept draw from before the freeze
        burn = min(-(-adapt // E), loss.shape[1])
        kept = loss[:, burn:]
    acc_kept = accept[:, burn:]
    grads_per_chain = done * (E + 1)  # E steps + the MALA probe's extra gradient per block
    return {
        "loss": loss,
        "kept": kept,
        "burnin": burn,
        "units_done": done,
        "units_total": blocks,
        "stopped_early": early,
        "steps_done": done * E,
        "steps_planned": blocks * E,
        "work": {
            "grad_evals": C * grads_per_chain,
            "fge": C * grads_per_chain * batch / n,
            "loss_evals": C * done,
        },
        "diagnostics": {
            "mala_acceptance": _mean_or_none(acc_kept),
            "mala_acceptance_per_chain": [_mean_or_none(a) for a in acc_kept],
            "eval_every": E,
            "batch": batch,
            "precond_adapt_steps": adapt,
        },
        "trace": {"loss": loss, "mala_accept": accept, "precond": np.asarray(state.precond)},
    }


def _run_mclmc(target: _Target, hp: dict, key, deadline: float, timer: _Timer) -> dict:
    post = target.post
    C, steps, d = hp["chains"], hp["steps"], post.d
    if d < 2:
        raise ConfigError("method", "MCLMC needs at least 2 parameters.", "use another method.")
    tune_steps = 0

    def setup(args, key):
        post = _traced_posterior(target, args)
        k_start, k_mom, k_tune, k_run = jax.random.split(key, 4)
        starts = chain_starts(post, k_start, C)
        states = mclmc_mod.init(post, jax.random.split(k_mom, C), starts)
        return states, jax.random.split(k_tune, C), jax.random.split(k_run, C)

    states, tune_keys, chain_keys = timer.once(
        ("mclmc", "setup", target.key, C), setup, target.args, key
    )
    if hp["tune"]:
        sched = mclmc_mod.tune_schedule(steps, hp["tune_frac"])
        capacity = 1 << math.ceil(math.log2(max(sched.n1 + sched.n2 + 1, sched.n3, 2)))
        flags = (sched.n2 > 1, sched.n3 >= 2)

        def tune(args, keys, states, counts, energy_var, step_size0):
            post = _traced_posterior(target, args)
            return mclmc_mod.build_tuner(post, capacity, *flags)(
                keys, states, counts, energy_var, step_size0
            )

        step0 = hp["step_size"] if hp["step_size"] is not None else math.sqrt(d) * 0.25
        tune_args = (
            target.args,
            tune_keys,
            states,
            tuple(_i64(x) for x in sched[:3]) + (_i64(sched.n3),),
            _f64(mclmc_mod.desired_energy_var(hp["target_accept"])),
            _f64(step0),
        )
        chains, positions = timer.once(
            ("mclmc", "tune", target.key, C, capacity, flags), tune, *tune_args
        )
        chains = timer.once(
            ("mclmc", "finish_tuning", C, d, capacity, sched.n3),
            lambda ch, pos, f: mclmc_mod.finish_tuning(ch, pos, sched.n3, f),
            chains,
            positions,
            _f64(hp["L"]),
        )
        del positions
        tune_steps = sched.total
        if not np.isfinite(np.asarray(chains.state.position)).all():
            raise _Diverged(tune_steps, "non-finite parameters during MCLMC tuning")
    else:
        chains = mclmc_mod.fixed_chains(states, _f64(hp["L"]), _f64(hp["step_size"]))

    def unit(consts, chains, i):
        args, chain_keys = consts
        step = mclmc_mod.build_step(_traced_posterior(target, args))
        keys = jax.vmap(lambda ck: jax.random.fold_in(ck, i))(chain_keys)
        state, info = jax.vmap(step)(
            keys, chains.state, chains.L, chains.step_size, chains.inverse_mass_matrix
        )
        return chains._replace(state=state), info

    def first_bad(info, finite):
        stuck = (~np.asarray(info.nonans)).mean() > 0.5
        bad = _first_nonfinite(np.asarray(info.loss), finite)
        return bad if bad is not None else (info.loss.shape[1] - 1 if stuck else None)

    chains, infos, done, early = _drive(
        ("mclmc", target.key, C),
        unit,
        (target.args, chain_keys),
        chains,
        steps,
        deadline,
        timer,
        first_bad,
        1,
        lambda ch: ch.state.position,
        lambda infos: _partial_llc(_concat(infos, "loss"), post, hp["burnin_frac"]),
    )
    loss = _concat(infos, "loss")
    energy = _concat(infos, "energy_change")
    nonans = _concat(infos, "nonans")
    kept, burn = _kept(loss, hp["burnin_frac"])
    grads = C * mclmc_mod.GRADS_PER_STEP * (tune_steps + done)
    return {
        "loss": loss,
        "kept": kept,
        "burnin": burn,
        "units_done": done,
        "units_total": steps,
        "stopped_early": early,
        "steps_done": done,
        "steps_planned": steps,
        "work": {
            "grad_evals": grads,
            "fge": float(grads),
            "loss_evals": 0,
            "tuning_steps": tune_steps,
        },
        "diagnostics": {
            "L": np.asarray(chains.L).tolist(),
            "step_size": np.asarray(chains.step_size).tolist(),
            "desired_energy_var": mclmc_mod.desired_energy_var(hp["target_accept"]),
            "energy_var_per_dim": float(np.mean(energy[:, burn:] ** 2) / d),
            "nan_steps": int((~nonans).sum()),
        },
        "trace": {"loss": loss, "energy_change": energy},
    }


def _run_vi(target: _Target, hp: dict, key, deadline: float, timer: _Timer) -> dict:
    post = target.post
    C, steps, n, d = hp["chains"], hp["steps"], post.n, post.d
    M, r, S = hp["M"], hp["r"], hp["mc_samples"]
    batch = min(hp["batch_size"], n)
    mode, white_batch, white_steps = hp["whitening_mode"], hp["batch_size"], hp["whiten_steps"]
    opt_args = (_f64(hp["lr"]), _f64(max(steps, 1)))

    def setup(args, key, decay, spread, opt_args):
        post = _traced_posterior(target, args)
        optimizer = vi_mod.build_optimizer(*opt_args)
        k_white, k_init, k_run, k_eval = jax.random.split(key, 4)
        precision = vi_mod.whitening_precision(post, mode, k_white, white_batch, white_steps, decay)
        params = jax.vmap(lambda k: vi_mod.init_params(k, d, M, r, spread))(
            jax.random.split(k_init, C)
        )
        state = jax.vmap(lambda p: vi_mod.init(p, optimizer))(params)
        return precision, state, jax.random.split(k_run, C), jax.random.split(k_eval, C)

    precision, state, chain_keys, eval_keys = timer.once(
        ("vi", "setup", target.key, mode, white_batch, white_steps, C, M, r),
        setup,
        target.args,
        key,
        _f64(hp["whiten_decay"]),
        _f64(hp["init_spread"]),
        opt_args,
    )
    if not np.isfinite(np.asarray(precision)).all():
        raise _Diverged(0, "non-finite whitening estimate at w*")

    def unit(consts, state, i):
        args, precision, opt_args, chain_keys = consts
        post = _traced_posterior(target, args)
        step = vi_mod.build_step(post, precision, vi_mod.build_optimizer(*opt_args), batch, S)
        return jax.vmap(lambda ck, s: step(jax.random.fold_in(ck, i), s))(chain_keys, state)

    def first_bad(info, finite):
        return _first_nonfinite(np.asarray(info.elbo), finite)

    state, infos, done, early = _drive(
        ("vi", target.key, C, M, r, S, batch),
        unit,
        (target.args, precision, opt_args, chain_keys),
        state,
        steps,
        deadline,
        timer,
        first_bad,
        1,
        lambda s: s.params,
    )
    elbo = _concat(infos, "elbo")
    num = hp["eval_samples"]

    def evaluate(args, precision, keys, params):
        post = _traced_posterior(target, args)
        return jax.vmap(vi_mod.build_eval(post, precision, num))(keys, params)

    loss = np.asarray(
        timer.once(
            ("vi", "eval", target.key, C, M, r, num),
            evaluate,
            target.args,
            precision,
            eval_keys,
            state.params,
        )
    )
    bad = _first_nonfinite(loss)
    if bad is not None:
        raise _Diverged(done, "non-finite L_n at a draw from the fitted q")
    tail = max(1, elbo.shape[1] // 10)
    grads = C * (done * M * S * batch + hp["whiten_steps"] * hp["batch_size"])
    logits = np.asarray(state.params.logits)
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return {
        "loss": loss,
        "kept": loss,
        "burnin": 0,
        "units_done": done,
        "units_total": steps,
        "stopped_early": early,
        "steps_done": done,
        "steps_planned": steps,
        "independent": True,
        "work": {
            "grad_evals": C * (done * M * S + hp["whiten_steps"]),
            "fge": grads / n,
            "loss_evals": C * hp["eval_samples"],
        },
        "diagnostics": {
            "elbo_final": float(np.mean(elbo[:, -tail:])),
            "elbo_final_per_chain": np.mean(elbo[:, -tail:], axis=1).tolist(),
            "mixture_weights": weights.tolist(),
        },
        "trace": {"loss": loss, "elbo": elbo},
    }


_RUNNERS = {"sgld": _run_sgld, "mclmc": _run_mclmc, "vi": _run_vi}


def _mean_or_none(x) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


# ------------------------------------------------------------------------------ the trial


def run_method_trial(
    problem: Problem,
    method: str,
    hyperparams: dict | None,
    budget_sec: float | None,
    seed: int,
    ref: dict | None = None,
    artifacts: str | Path = "artifacts",
) -> dict:
    """Run one trial of ``method`` on ``problem`` and return (and store) its metrics.

    ``ref`` is a ref.json dict: its ``beta``/``gamma`` fix the posterior and, when it has
    ``llc_ref``, the metrics gain ``llc_ref``, ``se_ref``, ``error = llc_hat − llc_ref`` and
    ``abs_error``. Raises only :class:`ConfigError` for invalid hyperparameters (before any
    work); every other problem is reported in the returned metrics (``status: failed``).
    """
    t_start = _clock()
    manifest = trial_manifest(problem, method, hyperparams or {}, budget_sec, seed, ref)
    run_dir = run_dir_for(artifacts, problem.pid, method, manifest)
    run_id = run_dir.name
    atomic_write_json(run_dir / "manifest.json", manifest)
    hp, ps = manifest["hyperparams"], manifest["posterior"]
    deadline = t_start + budget_sec if budget_sec is not None else math.inf
    timer = _Timer()
    metrics: dict[str, Any] = {
        "schema": RUN_SCHEMA,
        "run_id": run_id,
        "pid": problem.pid,
        "method": method,
        "seed": int(seed),
        "hyperparams": hp,
        "status": "failed",
        "failure": None,
        "llc_hat": None,
        "se_hat": None,
        "llc_per_chain": None,
        "stopped_early": False,
        "fraction_done": 0.0,
        "diagnostics": {},
        "work": {},
        "draws": {},
        "posterior": dict(ps),
    }
    log.info("trial %s: %s on %s, %s", run_id, method, problem.pid, hp)
    try:
        target = _target(problem, ps["beta"], ps["gamma"], timer)
        post = target.post
        metrics["posterior"].update(nbeta=post.nbeta, loss_star=post.loss_star, d=post.d)
        out = _RUNNERS[method](target, hp, jax.random.PRNGKey(seed), deadline, timer)
        _fill_result(metrics, out, post)
        atomic_write_npz(run_dir / "trace.npz", **out["trace"])
    except _Pruned as exc:
        metrics["failure"] = {
            "kind": "pruned",
            "message": str(exc),
            "step": exc.step,
            "fraction_done": exc.step / max(1, exc.steps_planned),
        }
        metrics["llc_hat"] = exc.llc_hat
        metrics["work"] = {"steps": exc.step, "steps_planned": exc.steps_planned}
    except _Diverged as exc:
        metrics["failure"] = {
            "kind": "diverged",
            "message": str(exc),
            "step": exc.step,
            "fraction_done": _fraction(exc.step, hp),
        }
    except Exception as exc:  # a trial never raises: the failure is the result
        tb_path = run_dir / "traceback.txt"
        atomic_write_bytes(tb_path, traceback.format_exc().encode())
        metrics["failure"] = {
            "kind": "error",
            "message": f"{type(exc).__name__}: {exc}",
            "exception_type": type(exc).__name__,
            "traceback": str(tb_path),
            "step": None,
            "fraction_done": None,
        }
    except BaseException as exc:  # interrupted: still leave a valid record, then re-raise
        metrics["failure"] = {
            "kind": "interrupted",
            "message": type(exc).__name__,
            "step": None,
            "fraction_done": None,
        }
        raise
    finally:
        if metrics["failure"] is not None:
            metrics["status"] = "failed"
            metrics["fraction_done"] = metrics["failure"].get("fraction_done")
        metrics["seconds"] = {
            "compile": timer.compile,
            "run": timer.run,
            "total": _clock() - t_start,
        }
        metrics["compiled_programs"] = timer.compiled_programs
        _add_objective(metrics, ref)
        atomic_write_json(run_dir / "metrics.json", metrics)
        metrics["run_dir"] = str(run_dir)
    _log_result(metrics)
    return metrics


def _fraction(step: int | None, hp: dict) -> float | None:
    return None if step is None else min(1.0, step / max(1, hp["steps"]))


def _fill_result(metrics: dict, out: dict, post: LLCPosterior) -> None:
    kept = out["kept"]
    frac = out["units_done"] / max(1, out["units_total"])
    metrics.update(stopped_early=out["stopped_early"], fraction_done=frac)
    metrics["work"] = {
        "steps": out["steps_done"],
        "steps_planned": out["steps_planned"],
        "chains": int(kept.shape[0]),
        **out["work"],
    }
    metrics["draws"] = {
        "chains": int(kept.shape[0]),
        "kept_per_chain": int(kept.shape[1]),
        "burnin_per_chain": out["burnin"],
    }
    metrics["diagnostics"] = dict(out["diagnostics"])
    if kept.shape[1] < MIN_DRAWS:
        metrics["failure"] = {
            "kind": "timeout",
            "message": f"budget spent with {kept.shape[1]} kept draws per chain (need {MIN_DRAWS})",
            "step": out["steps_done"],
            "fraction_done": frac,
        }
        return
    est = estimate_llc(kept, post.loss_star, post.nbeta, independent=out.get("independent", False))
    se = est["se_hat"]
    if out.get("independent") and kept.shape[0] >= 2:
        # Independent fits: the spread of their λ̂ also holds the optimization noise, which the
        # Monte Carlo SE of the pooled draws does not see; report the larger of the two.
        between = float(np.std(est["llc_per_chain"], ddof=1) / math.sqrt(kept.shape[0]))
        metrics["diagnostics"].update(se_mc=se, se_between_fits=between)
        se = max(se, between) if se is not None and math.isfinite(se) else between
    metrics.update(llc_hat=est["llc_hat"], se_hat=se, llc_per_chain=est["llc_per_chain"])
    metrics["diagnostics"].update(
        rhat=est["rhat"],
        ess_bulk=est["ess_bulk"],
        ess_tail=est["ess_tail"],
        chain_health=diagnostics.chain_health(
            out["loss"] if out["burnin"] else kept, post.loss_star
        ),
    )
    metrics["status"] = "ok"


def _add_objective(metrics: dict, ref: dict | None) -> None:
    if not ref or ref.get("llc_ref") is None:
        return
    metrics["llc_ref"] = float(ref["llc_ref"])
    metrics["se_ref"] = None if ref.get("se_ref") is None else float(ref["se_ref"])
    llc = metrics.get("llc_hat")
    ok = llc is not None and math.isfinite(llc)
    metrics["error"] = llc - metrics["llc_ref"] if ok else None
    metrics["abs_error"] = abs(metrics["error"]) if ok else None


def _log_result(m: dict) -> None:
    secs = m["seconds"]
    if m["status"] == "ok":
        log.info(
            "trial %s: λ̂ = %.4g ± %.2g%s (%s, compile %s)",
            m["run_id"],
            m["llc_hat"],
            m["se_hat"] or float("nan"),
            " [stopped early]" if m["stopped_early"] else "",
            fmt_seconds(secs["total"]),
            fmt_seconds(secs["compile"]),
        )
    else:
        f = m["failure"]
        log.warning("trial %s: failed (%s): %s", m["run_id"], f["kind"], f["message"])


# ------------------------------------------------------------------------------------ CLI


def add_cli(subparsers) -> None:
    """``lambda-hat trial``: one run of one method on one problem."""
    p = subparsers.add_parser(
        "trial",
        help="run one SGLD / VI / MCLMC trial on one problem",
        description="Run one trial and write artifacts/runs/<pid>/<method>/<run id>/.",
    )
    p.add_argument("--config", required=True, help="experiment YAML")
    p.add_argument("--problem", required=True, help="problem pid, or its index in the config")
    p.add_argument("--method", required=True, choices=methods.METHODS)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a hyperparameter (repeatable), e.g. --set eta0=1e-4",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="wall-clock budget (s); default: optuna.method_budget_sec",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_trial)


def _parse_sets(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError("--set", f"got {item!r}.", "write NAME=VALUE, e.g. eta0=1e-4.")
        out[name.strip()] = yaml.safe_load(value)
    return out


def _select_problem(exp, wanted: str, artifacts: str) -> Problem:
    from lambda_hat.problems import build_problem, problem_id

    specs = exp.problems
    if wanted.isdigit():
        i = int(wanted)
        if i >= len(specs):
            raise ConfigError(
                "--problem",
                f"index {i} out of range (config has {len(specs)}).",
                f"use 0..{len(specs) - 1} or a pid.",
            )
        return build_problem(specs[i], artifacts)
    for spec in specs:
        if problem_id(spec) == wanted:
            return build_problem(spec, artifacts)
    pids = ", ".join(problem_id(s) for s in specs)
    raise ConfigError(
        "--problem",
        f"no problem {wanted!r} in the config ({pids}).",
        "use one of these pids or an index.",
    )


def _cmd_trial(args: argparse.Namespace) -> int:
    from lambda_hat.config import load_experiment
    from lambda_hat.reference import load_reference

    exp = load_experiment(args.config)
    cfg = exp.config
    hp = methods.validate_hyperparams(args.method, _parse_sets(args.set), "--set")
    problem = _select_problem(exp, args.problem, cfg.paths.artifacts)
    ref = load_reference(problem, cfg.reference) or {
        "beta": cfg.reference.beta,
        "gamma": cfg.reference.gamma,
    }
    budget = args.budget if args.budget is not None else cfg.optuna.method_budget_sec
    m = run_method_trial(problem, args.method, hp, budget, args.seed, ref, cfg.paths.artifacts)
    llc = "n/a" if m["llc_hat"] is None else f"{m['llc_hat']:.4g} ± {m['se_hat'] or 0:.2g}"
    line = f"{args.method} on {problem.pid}: {m['status']}, λ̂ = {llc}"
    if m.get("llc_ref") is not None:
        line += f" (HMC {m['llc_ref']:.4g} ± {m['se_ref'] or 0:.2g})"
    if m["failure"]:
        line += f"; {m['failure']['kind']}: {m['failure']['message']}"
    print(line)
    print(f"metrics: {Path(m['run_dir']) / 'metrics.json'}")
    return 0 if m["status"] == "ok" else 1
