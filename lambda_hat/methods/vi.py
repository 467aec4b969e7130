"""VI: hyperparameters, search space and the adapter onto :mod:`lambda_hat.samplers.vi`.

A mixture of factor analyzers q(w) = Σ π_m N(μ_m, D_m + U_m U_mᵀ) in whitened coordinates,
ELBO maximized by Adam; ``chains`` independent fits, vmapped, then ``eval_samples`` draws from
each fitted q give E_q[L_n].

The coordinates default to the Lanczos eigenbasis of the curvature at w* and each fit starts
at the curvature estimate (:func:`lambda_hat.samplers.vi.whitening_and_curvature`); a fit
whose ELBO still rose clearly in its last quarter (:func:`elbo_trend`) fails as ``diverged``
(``check: elbo_trend``) with its estimate kept; the evaluation draws' importance weights say
how far q is from the posterior (:func:`importance`); the budget is checked between short
chunks (:func:`_drive`). plans/methods.md, plans/vi.md.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from lambda_hat.llc.engine import (
    Diverged,
    Timer,
    chunk_capacity,
    concat,
    drive,
    first_nonfinite,
    i64,
    unit_chunk,
)
from lambda_hat.methods._base import (
    Dtype,
    Method,
    Target,
    dtype_field,
    run_output,
    traced_posterior,
)
from lambda_hat.methods.vi_drift import DEFAULT_DRIFT_TOL, drift_check
from lambda_hat.samplers import vi as vi_kernel
from lambda_hat.schema import config_dataclass, field

Precond = Literal["none", "rmsprop", "adam", "lanczos"]

TREND_SE = 4.0  # a late ELBO gain this many SEs above 0 is not noise
TREND_REL = 0.05  # ... and it counts when it implies a λ̂ still moving by this fraction
CHECKS_PER_CHUNK = 8  # budget checks per compiled chunk's capacity
MIN_STEPS_PER_CHECK = 16


@config_dataclass
class VIHyper:
    """Mixture of factor analyzers q(w) = Σ π_m N(μ_m, D_m + U_m U_mᵀ), ELBO maximized."""

    lr: float = field(1e-2, "Adam learning rate (cosine-decayed to 1% over the steps)", gt=0)
    M: int = field(4, "mixture components", ge=1)
    r: int = field(2, "rank of each component's factor loading U_m (0: diagonal)", ge=0)
    whitening_mode: Precond = field(
        "lanczos",
        "coordinates of the fit: lanczos (the Laplace approximation's eigenbasis at w*, from "
        "Hessian-vector products) or a diagonal from loss-gradient moments (none/rmsprop/adam)",
    )
    steps: int = field(5000, "optimizer steps", ge=1)
    batch_size: int = field(128, "minibatch for the ELBO gradient (>= n: full batch)", ge=1)
    chains: int = field(4, "independent fits, vmapped (their spread gives R-hat)", ge=1)
    mc_samples: int = field(1, "reparameterized draws per component per step", ge=1)
    eval_samples: int = field(256, "draws from q per fit for E_q[L_n] (full-data passes)", ge=2)
    whiten_steps: int = field(200, "minibatch gradients at w* used to estimate the whitening", ge=1)
    whiten_decay: float = field(0.99, "EMA decay of the whitening moments", gt=0, lt=1)
    lanczos_steps: int = field(
        128,
        "Hessian-vector products at w* for the lanczos whitening (top curvature directions)",
        ge=1,
    )
    init_spread: float = field(
        0.1, "spread of the initial component means (in posterior sd's from the curvature)", ge=0
    )
    drift_steps: int = field(
        200,
        "MALA steps from draws of each fitted q (a full-data gradient each): a fit whose "
        "estimate they move by more than drift_tol fails; 0 skips the check",
        ge=0,
    )
    drift_tol: float = field(
        DEFAULT_DRIFT_TOL, "largest relative drift of λ̂ under those steps that passes", gt=0
    )
    dtype: Dtype = dtype_field()


def space() -> dict:
    """lr log 1e-5..5e-2; M {4,8,16}; r {1,2,4}; whitening_mode; steps 2k..20k; batch_size."""
    return {
        "lr": FloatDistribution(1e-5, 5e-2, log=True),
        "M": CategoricalDistribution([4, 8, 16]),
        "r": CategoricalDistribution([1, 2, 4]),
        "whitening_mode": CategoricalDistribution(["none", "rmsprop", "adam", "lanczos"]),
        "steps": IntDistribution(2000, 20000),
        "batch_size": CategoricalDistribution([32, 64, 128, 256]),
    }


def _setup(target: Target, hp: dict, key, opt_args, timer: Timer):
    """Whitening at w*, initial mixtures, optimizer states and the per-fit keys."""
    C, d, M, r = hp["chains"], target.post.d, hp["M"], hp["r"]
    mode, white_batch, white_steps = hp["whitening_mode"], hp["batch_size"], hp["whiten_steps"]
    lanczos = hp["lanczos_steps"] if mode == "lanczos" else 0

    def setup(args, key, decay, spread, opt_args):
        post = traced_posterior(target, args)
        optimizer = vi_kernel.build_optimizer(*opt_args)
        k_white, k_init, k_run, k_eval = jax.random.split(key, 4)
        whitening, scale = vi_kernel.whitening_and_curvature(
            post, mode, k_white, white_batch, white_steps, decay, max(lanczos, 1)
        )
        params = jax.vmap(lambda k: vi_kernel.init_params(k, d, M, r, spread, scale))(
            jax.random.split(k_init, C)
        )
        state = jax.vmap(lambda p: vi_kernel.init(p, optimizer))(params)
        return whitening, state, jax.random.split(k_run, C), jax.random.split(k_eval, C)

    return timer.once(
        ("vi", "setup", target.key, mode, white_batch, white_steps, lanczos, C, M, r),
        setup,
        target.args,
        key,
        target.real(hp["whiten_decay"]),
        target.real(hp["init_spread"]),
        opt_args,
    )


def run(target: Target, hp: dict, key, deadline: float, timer: Timer) -> dict:
    """Fit the mixtures on ``target`` (see :data:`lambda_hat.methods.RunOutput`)."""
    post = target.post
    C, steps, n = hp["chains"], hp["steps"], post.n
    M, r, S = hp["M"], hp["r"], hp["mc_samples"]
    batch = min(hp["batch_size"], n)
    opt_args = (target.real(hp["lr"]), target.real(max(steps, 1)))
    whitening, state, chain_keys, eval_keys = _setup(target, hp, key, opt_args, timer)
    if not all(np.isfinite(np.asarray(x)).all() for x in whitening):
        raise Diverged(0, "non-finite whitening estimate at w*")

    def unit(consts, state, i):
        args, whitening, opt_args, chain_keys = consts
        post = traced_posterior(target, args)
        step = vi_kernel.build_step(post, whitening, vi_kernel.build_optimizer(*opt_args), batch, S)
        return jax.vmap(lambda ck, s: step(jax.random.fold_in(ck, i), s))(chain_keys, state)

    def first_bad(info, finite):
        return first_nonfinite(np.asarray(info.elbo), finite)

    key = ("vi", target.key, C, M, r, S, batch)
    consts = (target.args, whitening, opt_args, chain_keys)
    state, infos, done, early = _drive(timer, key, unit, consts, state, steps, deadline, first_bad)
    elbo = concat(infos, "elbo")
    num = hp["eval_samples"]

    def evaluate(args, whitening, keys, params):
        post = traced_posterior(target, args)
        return jax.vmap(vi_kernel.build_eval(post, whitening, num))(keys, params)

    loss, log_w = (
        np.asarray(x)
        for x in timer.once(
            ("vi", "eval", target.key, C, M, r, num),
            evaluate,
            target.args,
            whitening,
            eval_keys,
            state.params,
        )
    )
    if first_nonfinite(loss) is not None:
        raise Diverged(done, "non-finite L_n at a draw from the fitted q")
    out = _output(hp, n, done, early, elbo, loss, state)
    out["diagnostics"].update(importance(log_w, loss, post.nbeta, post.loss_star))
    drift_check(target, hp, whitening, eval_keys, state.params, timer, out)
    return out


def _drive(timer: Timer, key: tuple, unit, consts, state, steps: int, deadline: float, first_bad):
    """The fit's chunk loop, with the budget kept: the compiled chunk holds ``chunk_capacity``
    steps (one program per capacity, as :func:`lambda_hat.llc.engine.drive_units`) but runs
    CHECKS_PER_CHUNK-th of them at a time, and a chunk that would end past the deadline at the
    rate so far is not started (``predict_budget``): a fit whose chunk of 1024 steps took 80 s
    overran a 5 s budget by 90 s."""
    capacity = chunk_capacity(steps)
    chunk = unit_chunk(unit, capacity, lambda s: s.params)
    exe = timer.compiled((*key, "chunk", capacity), chunk, consts, state, i64(0), i64(0))

    def run_chunk(carry, first, m):
        carry, bufs, finite = timer.call(exe, consts, carry, i64(first), i64(m))
        info = jax.tree_util.tree_map(lambda b: np.asarray(b)[:, :m], jax.device_get(bufs))
        return carry, info, finite

    length = max(MIN_STEPS_PER_CHECK, capacity // CHECKS_PER_CHUNK)
    return drive(
        run_chunk,
        state,
        steps,
        min(capacity, length),
        deadline,
        first_bad=first_bad,
        predict_budget=True,
    )


def _output(hp: dict, n: int, done: int, early: bool, elbo, loss, state) -> dict:
    C, M, S, steps = hp["chains"], hp["M"], hp["mc_samples"], hp["steps"]
    batch = min(hp["batch_size"], n)
    tail = max(1, elbo.shape[1] // 10)
    # ELBO gradients on minibatches, the whitening pass (once, shared by the fits) and the
    # evaluation draws (one full-data L_n pass each)
    whiten = hp["whiten_steps"] * hp["batch_size"] / n
    fge = C * done * M * S * batch / n + whiten + C * hp["eval_samples"]
    logits = np.asarray(state.params.logits)
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    trend = elbo_trend(elbo, int(state.params.mu.shape[-1]))
    out = {
        **run_output(loss, loss, 0, done, steps, early, (done, steps)),
        "independent": True,
        "work": {
            "grad_evals": C * done * M * S + hp["whiten_steps"],
            "fge": fge,
            "loss_evals": C * hp["eval_samples"],
        },
        "diagnostics": {
            "elbo_final": float(np.mean(elbo[:, -tail:])),
            "elbo_final_per_chain": np.mean(elbo[:, -tail:], axis=1).tolist(),
            "mixture_weights": weights.tolist(),
            **trend,
        },
        "trace": {"loss": loss, "elbo": elbo},
    }
    if trend["elbo_moving"]:
        out["failure"] = _unconverged(trend, done, steps, early)
    elif early and done < steps / 2:
        out["failure"] = {
            "kind": "timeout",
            "message": f"VI fit cut short by the budget after {done} of {steps} steps "
            "(its learning rate had not decayed: the fit is not finished)",
        }
    return out


def _unconverged(trend: dict, done: int, steps: int, early: bool) -> dict:
    """The failure of a fit whose ELBO was still rising: ``timeout`` when the budget cut it
    short (machine-dependent), else ``diverged`` (deterministic in the manifest)."""
    message = (
        f"VI did not converge: the ELBO rose by {trend['elbo_gain']:.3g} nats "
        f"(± {trend['elbo_gain_se']:.2g}) from the third to the last quarter of the fit"
    )
    if early:
        return {"kind": "timeout", "message": message + " when the budget ended it"}
    return {
        "kind": "diverged",
        "check": "elbo_trend",
        "message": message + ": raise lr or steps",
        "step": done,
        "steps_planned": steps,
    }


def importance(log_w: np.ndarray, loss: np.ndarray, nbeta: float, loss_star: float) -> dict:
    """Self-normalized importance sampling of the posterior with each fit's q as proposal:
    the effective sample size per fit (Kish, 1/Σw̄²) and the IS estimate nβ(Σ w̄ L − L*).

    An ESS near the draws means q ≈ the posterior (and λ̂ from q is trustworthy); an ESS of a
    few draws means q is far from it (KL(q‖p) ≳ log of the draws) and the IS estimate rests on
    the few heaviest draws. A low ESS alone does not say λ̂ from q is wrong, so it is recorded,
    not gated: the tiny MLP reads within 3 % of HMC at an ESS of 3–5 % (plans/vi.md, "What
    does not work as a gate").
    """
    shifted = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    w = shifted / shifted.sum(axis=1, keepdims=True)
    ess = 1.0 / np.sum(w**2, axis=1)
    llc_is = nbeta * (np.sum(w * loss, axis=1) - loss_star)
    return {
        "is_ess_per_chain": ess.tolist(),
        "is_ess_frac": float(ess.mean() / log_w.shape[1]),
        "llc_is": float(llc_is.mean()),
        "llc_is_per_chain": llc_is.tolist(),
    }


def elbo_trend(elbo: np.ndarray, d: int, blocks: int = 10) -> dict:
    """How much the ELBO still rose late in the fit, and whether that means "not converged".

    gain = mean ELBO of the last quarter of the steps − mean of the third quarter, per fit and
    averaged over fits; its SE from batch means (``blocks`` per quarter, so slow drift and
    autocorrelation widen it). The fit is *moving* when the mean gain exceeds both
    :data:`TREND_SE` SEs (not noise) and d·ε²/4 nats with ε = :data:`TREND_REL` (a Gaussian
    q = N(0, (1+ε)Σ) lies d·ε²/4 nats below the ELBO of N(0, Σ), and its λ̂ is off by ε: a
    fit still climbing by more than that has an estimate that is still changing by more
    than ε). None (no check) for fits shorter than 8 × ``blocks`` steps.
    """
    C, T = elbo.shape
    empty = {"elbo_gain": None, "elbo_gain_se": None, "elbo_gain_per_chain": None}
    if T < 8 * blocks:
        return {**empty, "elbo_moving": False}
    q3 = elbo[:, T // 2 : 3 * T // 4]
    q4 = elbo[:, 3 * T // 4 :]

    def mean_and_var(x):
        means = np.stack([b.mean(axis=1) for b in np.array_split(x, blocks, axis=1)], axis=1)
        return means.mean(axis=1), means.var(axis=1, ddof=1) / blocks

    (m3, v3), (m4, v4) = mean_and_var(q3), mean_and_var(q4)
    gain = m4 - m3
    mean_gain = float(gain.mean())
    se = float(math.sqrt(float(np.sum(v3 + v4))) / C)
    moving = mean_gain > TREND_SE * se and mean_gain > d * TREND_REL**2 / 4
    return {
        "elbo_gain": mean_gain,
        "elbo_gain_se": se,
        "elbo_gain_per_chain": gain.tolist(),
        "elbo_moving": bool(moving),
    }


METHOD = Method(
    name="vi",
    hyper=VIHyper,
    space=space,
    run=run,
    culprits={
        "diverged": ("lr", "steps"),
        "timeout": ("steps", "whiten_steps", "M"),
        "oom": ("batch_size", "M", "r"),
    },
    revision=lambda hp: "lanczos whitening, importance diagnostics, drift check",
)
