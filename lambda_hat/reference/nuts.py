"""Computing HMC reference LLCs (NUTS): ``artifacts/problems/<pid>/ref.json``.

Where a reference lives, which stored one is reused and its quality gate are
:mod:`lambda_hat.reference.store`'s. A reference is computed once per (problem, reference
settings) and reused: a valid ref.json whose ``settings`` match the requested ones is returned
as is (``force`` recomputes); a corrupt, partial or mismatched one is recomputed, never
trusted. Warm-up and sampling run in chunks, and the run is saved after every chunk
(``ref_state.npz``, :mod:`lambda_hat.reference.checkpoint`): a reference interrupted by Ctrl-C,
kill -9 or a lost node is continued by the next call from its last chunk, to the draws an
uninterrupted run gives. Budgets (``budget_sec``) are honoured between chunks: the work so far
is kept, ``stopped_early`` (and ``stopped_in``: warmup or sampling) is recorded and the saved
state stays. A reference stopped early is reused only for a budget no larger than
the one it had; a larger budget (or none) *extends* it from the saved state — the same draws an
uninterrupted run with a budget gives — or recomputes it when the state is unusable (logged).
A reference that misses its quality gate (R-hat > ``rhat_max``, bulk ESS < ``ess_min``,
divergent draws > ``max_divergence_frac``, or no draws at all) is stored with
``gate.passed = false`` and reported loudly.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import logging
import math

import jax
import numpy as np

from lambda_hat import __version__, layout
from lambda_hat._io import atomic_write_json, atomic_write_npz
from lambda_hat.llc import engine
from lambda_hat.llc.diagnostics import chain_health
from lambda_hat.llc.engine import Timer
from lambda_hat.llc.estimator import estimate_llc
from lambda_hat.llc.posterior import chain_starts
from lambda_hat.log import fmt_seconds, fmt_value, setup_logging
from lambda_hat.precision import enable_x64
from lambda_hat.problem.build import Problem, build_problem
from lambda_hat.problem.spec import ProblemSpec
from lambda_hat.reference import checkpoint
from lambda_hat.reference.checkpoint import Checkpoint
from lambda_hat.reference.curvature import curvature_record
from lambda_hat.reference.kinds import plain_reference
from lambda_hat.reference.settings import ReferenceConfig
from lambda_hat.reference.store import (
    REF_SCHEMA,
    evaluate_gate,
    ref_path,
    reference_home,
    reference_settings,
    stored_reference,
)
from lambda_hat.samplers import hmc
from lambda_hat.schema import as_dict, validate

log = logging.getLogger("lambda_hat.reference")


def _versions() -> dict:
    out = {"lambda_hat": __version__}
    for pkg in ("jax", "jaxlib", "blackjax", "numpy", "optax"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _warmup(problem: Problem, post, cfg: ReferenceConfig, run: hmc.NUTSRun, keys, deadline, ckpt):
    """Window adaptation per chain, vmapped, in chunks (:func:`_chunked_warmup`, saved after
    each); the adapted states start sampling. A budget stop leaves ``run.warm`` to continue."""
    timer, W = ckpt.timer, cfg.warmup
    t0, c0 = engine.clock(), timer.compile
    ckpt.begin("warmup", run)
    _chunked_warmup(post, cfg, run, problem.pid, keys, deadline, ckpt)
    sec = engine.clock() - t0 - (timer.compile - c0)  # compile is reported apart
    run.seconds["warmup"] += sec
    if run.chains is None:
        at = f"step {run.warmup_done} of {W}"
        spent = fmt_seconds(cfg.budget_sec)
        log.warning(
            "reference %s: budget %s spent during warm-up (%s): no draws", problem.pid, spent, at
        )
        return
    ckpt.begin("", run)
    ckpt.save(run)  # warm-up done: a record for the driver (logged below)
    log.info(
        "reference %s: warm-up done in %s (compile %s); step sizes %s",
        problem.pid,
        fmt_seconds(sec),
        fmt_seconds(timer.compile),
        np.array2string(np.asarray(run.chains.step_size), precision=3),
    )


def _chunked_warmup(post, cfg: ReferenceConfig, run: hmc.NUTSRun, pid, keys, deadline, ckpt):
    """The warm-up in chunks through the engine's loop, from ``run.warm`` or the start: BlackJAX's
    window adaptation, the same bits for any split (:func:`hmc.build_warmup_chunk`), so a
    continued warm-up is the uninterrupted one."""
    ta, W, timer = cfg.target_accept, cfg.warmup, ckpt.timer
    k_init, k_warm = keys
    key = ("hmc", "warmup", pid, post.beta, post.gamma, cfg.chains, W, ta)
    if run.warm is None:
        positions = chain_starts(post, k_init, cfg.chains)
        run.warm = timer.once((*key, "init"), hmc.build_warmup_init(post, ta), positions)
    steps, schedule = hmc.warmup_inputs(k_warm, cfg.chains, W)
    chunk_fn = hmc.build_warmup_chunk(post, ta, cfg.max_tree_depth)
    args = (run.warm, steps, schedule, engine.i64(0), engine.i64(0))
    exe = timer.compiled((*key, cfg.max_tree_depth, "chunk"), chunk_fn, *args)
    start = run.warmup_done

    def run_chunk(carry, first, m):
        at = engine.i64(start + first)
        carry = timer.call(exe, carry, steps, schedule, at, engine.i64(m))
        run.warm, run.warmup_done = carry, start + first + m
        return carry, None, True

    t_run = timer.run
    out = engine.drive(
        run_chunk,
        run.warm,
        W - start,
        engine.chunk_capacity(W),
        deadline,
        on_chunk=lambda done, info: ckpt.save(run),
        predict_budget=True,
    )
    run.sec_per_step = (timer.run - t_run) / max(out.done, 1)
    if not out.stopped_early:
        final = functools.partial(hmc.warmup_final, target_accept=ta)
        run.chains = timer.once(("hmc", "warmup_final", ta), final, out.carry)
        run.grads_warm = int(np.asarray(out.carry.grad_evals).sum())
        run.div_warm = int(np.asarray(out.carry.divergent).sum())
        run.warm = None


def _sample(
    problem: Problem, post, cfg: ReferenceConfig, run: hmc.NUTSRun, k_sample, deadline, ckpt
):
    """NUTS draws in chunks through the engine's loop (budget checked before each chunk, the
    run saved after each), continuing at ``run.draws_done``; chunk ``i`` always draws from
    ``fold_in(k, i·chunk)``, so a continued run draws what an uninterrupted one draws."""
    C, timer = cfg.chains, ckpt.timer
    chunk_fn = hmc.build_sample_chunk(post, cfg.max_tree_depth)
    key = ("hmc", "sample", problem.pid, post.beta, post.gamma, C, cfg.max_tree_depth)
    start = run.draws_done

    def run_chunk(chains, done, this):
        first = start + done
        keys = jax.random.split(jax.random.fold_in(k_sample, first), C * this).reshape(C, this, -1)
        exe = timer.compiled(key, chunk_fn, keys, chains)
        chains, info = timer.call(exe, keys, chains)
        info = jax.tree.map(np.asarray, info)
        run.chains, run.draws_done = chains, first + this
        run.infos.append(info)
        return chains, info, True

    def on_chunk(done, info):
        ckpt.save(run, float(info.acceptance_rate.mean()))

    if run.draws_done:  # seconds per draw: from the draws so far, else from the warm-up's steps
        run.sec_per_step = run.seconds["sampling"] / run.draws_done
    m = min(run.chunk, cfg.draws - start)
    if run.sec_per_step and engine.clock() + run.sec_per_step * m > deadline:
        log.warning("reference %s: no time left for the next %d draws; stopping", problem.pid, m)
        return
    ckpt.begin("sampling", run)
    t_run = timer.run
    out = engine.drive(
        run_chunk,
        run.chains,
        cfg.draws - start,
        run.chunk,
        deadline,
        on_chunk=on_chunk,
        predict_budget=True,
    )
    run.seconds["sampling"] += timer.run - t_run
    if out.stopped_early:
        at = f"{run.draws_done}/{cfg.draws} draws"
        spent = fmt_seconds(cfg.budget_sec)
        log.warning(
            "reference %s: budget %s spent after %s; stopping early", problem.pid, spent, at
        )


def compute_reference(
    problem: Problem, cfg: ReferenceConfig, resume: hmc.NUTSRun | None = None
) -> dict:
    """Run NUTS on the problem's LLC posterior and write ref.json (+ ref_trace.npz),
    continuing ``resume`` when given. The run is saved after every chunk
    (:class:`lambda_hat.reference.checkpoint.Checkpoint`); a finished reference removes the
    saved state, one stopped by its budget keeps it.

    The budget covers the reference's whole life: a resumed one has what its earlier
    sessions did not spend.
    """
    t_start = engine.clock()
    if resume is None:  # an unusable state or stale progress of an earlier run: not this one's
        checkpoint.clear(problem.path)
    run = resume or hmc.NUTSRun(
        chunk=min(cfg.chunk, cfg.draws), seconds=dict.fromkeys(checkpoint.SECONDS, 0.0)
    )
    left = math.inf if cfg.budget_sec is None else cfg.budget_sec - run.seconds["total"]
    deadline = t_start + left
    post = problem.posterior(cfg.beta, cfg.gamma)
    ckpt = Checkpoint(problem.path, problem.pid, cfg, run, Timer())
    k_init, k_warm, k_sample = jax.random.split(jax.random.PRNGKey(cfg.seed), 3)
    shape = f"{cfg.chains} chains x {cfg.draws} draws (+{cfg.warmup} warm-up)"
    where = f"; resuming at warm-up {run.warmup_done}, draw {run.draws_done}" if resume else ""
    log.info(
        "reference %s: NUTS %s, d=%d, n=%d, nβ=%.4g, γ=%g%s",
        *(problem.pid, shape, post.d, post.n, post.nbeta, post.gamma, where),
    )
    if run.chains is None:
        _warmup(problem, post, cfg, run, (k_init, k_warm), deadline, ckpt)
    if run.chains is not None and run.draws_done < cfg.draws:
        _sample(problem, post, cfg, run, k_sample, deadline, ckpt)
    run.sessions += 1
    run.seconds["compile"] += ckpt.timer.compile
    run.seconds["total"] += engine.clock() - t_start
    ref = _record(problem, post, cfg, run)
    if (info := run.info()) is not None:
        trace = {"loss": info.loss, "acceptance_rate": info.acceptance_rate}
        atomic_write_npz(problem.path / layout.REF_TRACE, **trace)
    if ref.get("stopped_early"):
        ckpt.save_state(run, dict(run.seconds), run.sessions)
    atomic_write_json(ref_path(problem), ref)
    checkpoint.clear(problem.path, state=not ref.get("stopped_early"))
    _report(problem, ref)
    return ref


def _record(problem: Problem, post, cfg: ReferenceConfig, run: hmc.NUTSRun) -> dict:
    """The ref.json contents."""
    none = dict.fromkeys(("llc_hat", "se_hat", "llc_per_chain", "rhat", "ess_bulk", "ess_tail"))
    info = run.info()
    est = estimate_llc(info.loss, post.loss_star, post.nbeta) if info is not None else none
    grads_sample = int(info.num_integration_steps.sum()) if info is not None else 0
    if run.warm is not None:  # stopped during warm-up: what it spent so far
        run.grads_warm = int(np.asarray(run.warm.grad_evals).sum())
        run.div_warm = int(np.asarray(run.warm.divergent).sum())
    theory = problem.info.get("theory")
    stopped_in = None
    if run.chains is None:
        stopped_in = "warmup"
    elif run.draws_done < cfg.draws:
        stopped_in = "sampling"
    ref = {
        "schema": REF_SCHEMA,
        "pid": problem.pid,
        "llc_ref": est["llc_hat"],
        "se_ref": est["se_hat"],
        "llc_per_chain": est["llc_per_chain"],
        "rhat": est["rhat"],
        "ess_bulk": est["ess_bulk"],
        "ess_tail": est["ess_tail"],
        "divergences": int(info.is_divergent.sum()) if info is not None else 0,
        "divergences_per_chain": None if info is None else info.is_divergent.sum(1).tolist(),
        "divergences_warmup": run.div_warm,
        "acceptance_rate": float(info.acceptance_rate.mean()) if info is not None else None,
        "step_size": None if run.chains is None else np.asarray(run.chains.step_size).tolist(),
        "chains": cfg.chains,
        "draws_per_chain": run.draws_done,
        "warmup": cfg.warmup,
        "warmup_done": run.warmup_done,
        "stopped_early": stopped_in is not None,
        "stopped_in": stopped_in,
        "budget_sec": cfg.budget_sec,
        "sessions": run.sessions,
        "chunk": run.chunk,
        "grad_evals": {
            "warmup": run.grads_warm,
            "sampling": grads_sample,
            "total": run.grads_warm + grads_sample,
        },
        "seconds": dict(run.seconds),
        "beta": post.beta,
        "gamma": post.gamma,
        "nbeta": post.nbeta,
        "n": post.n,
        "d": post.d,
        "loss_star": post.loss_star,
        "chain_health": chain_health(info.loss, post.loss_star) if info is not None else None,
        "theory": theory,
        "llc_theory": theory["lambda"] if theory else None,
        "settings": reference_settings(cfg),
        "spec": as_dict(problem.spec),
        "versions": _versions(),
        "backend": jax.default_backend(),
    }
    ref["gate"] = evaluate_gate(ref, cfg)
    return ref


def _report(problem: Problem, ref: dict) -> None:
    msg = (
        f"reference {problem.pid}: λ̂ = {fmt_value(ref['llc_ref'], '.4g')} ± "
        f"{fmt_value(ref['se_ref'], '.2g')}, R-hat {fmt_value(ref['rhat'], '.4f')}, ESS {fmt_value(ref['ess_bulk'], '.0f')}, "
        f"{ref['divergences']} divergences, {fmt_seconds(ref['seconds']['total'])}"
    )
    if ref["llc_theory"] is not None:
        msg += f"; theory λ = {ref['llc_theory']:.4g}"
    log.info(msg)
    if not ref["gate"]["passed"]:
        fix = "reference.draws or reference.warmup (or target_accept for divergences)"
        if ref.get("stopped_early"):
            fix = "reference.budget_sec (a larger budget extends this reference)"
        log.warning(
            "!!! reference %s FAILED its quality gate: %s. Do not tune against it: raise %s.",
            problem.pid,
            "; ".join(ref["gate"]["reasons"]),
            fix,
        )


def _larger(budget: float | None, than: float | None) -> bool:
    """Whether ``budget`` allows more than ``than`` (None: no budget)."""
    return than is not None and (budget is None or budget > than)


def ensure_reference(problem: Problem, cfg: ReferenceConfig, force: bool = False) -> dict:
    """The problem's reference: reused when a valid matching ref.json exists, else computed.

    A reference interrupted (Ctrl-C, kill, a lost node: no ref.json at these settings) is
    continued from the state it saved after its last chunk. A stored reference stopped early
    by its budget is reused only for a budget no larger; for a larger one (or none) it is
    extended from its saved state. An unusable state is recomputed — logged either way.
    ``force`` recomputes from nothing.
    """
    if force:
        checkpoint.clear(problem.path)
        return compute_reference(problem, cfg)
    ref = stored_reference(problem, cfg)
    if ref is not None and not (
        ref.get("stopped_early") and _larger(cfg.budget_sec, ref.get("budget_sec"))
    ):
        est = f"{fmt_value(ref['llc_ref'], '.4g')} ± {fmt_value(ref['se_ref'], '.2g')}"
        if ref.get("stopped_early"):
            est += f"; stopped early under budget {fmt_seconds(ref['budget_sec'])}"
        log.info("reference %s: cached (λ̂ = %s)", problem.pid, est)
        return ref
    run = checkpoint.resumable(problem, cfg, ref)
    return compute_reference(problem, cfg) if run is None else compute_reference(problem, cfg, run)


def reference_job(
    spec: dict,
    cfg: dict,
    artifacts: str,
    force: bool = False,
    verbose: int | None = 0,
    gamma: float | None = None,
    kind: str = "hmc",
) -> dict:
    """Build the problem and its reference from plain dicts (for worker processes).

    ``gamma`` (when it is not ``cfg``'s) asks for the reference of the posterior at that γ, the
    other settings the config's: it is stored in its own folder (:func:`reference_home`).
    ``kind`` theory or none runs no NUTS (:func:`lambda_hat.reference.kinds.plain_reference`)."""
    enable_x64()  # a worker or a spawned process lambda_hat owns (references need float64)
    if verbose is not None:
        setup_logging(verbose)
    spec_obj = validate(spec, ProblemSpec, "spec")
    cfg_obj = validate(cfg, ReferenceConfig, "reference")
    primary = gamma is None or float(gamma) == cfg_obj.gamma
    if not primary:
        cfg_obj = dataclasses.replace(cfg_obj, gamma=float(gamma))
    problem = build_problem(spec_obj, artifacts)
    if kind != "hmc":
        return plain_reference(problem, cfg_obj, kind)
    ref = ensure_reference(reference_home(problem, cfg_obj, primary), cfg_obj, force)
    return {
        **ref,
        "kind": "hmc",
        "summary": problem.summary(),
        "curvature": curvature_record(problem, ref["beta"], ref["gamma"]),
    }
