"""Content-addressed HMC reference LLCs: ``artifacts/problems/<pid>/ref.json``.

A reference is computed once per (problem, reference settings) and reused: a valid ref.json
whose ``settings`` match the requested ones is returned as is (``force`` recomputes); a
corrupt, partial or mismatched one is recomputed, never trusted. Budgets (``budget_sec``) are
honoured between sampling chunks: the draws so far are kept and ``stopped_early`` is recorded.
A reference that misses its quality gate (rank-normalized R-hat > ``rhat_max`` or bulk ESS <
``ess_min``) is stored with ``gate.passed = false`` and reported loudly.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import importlib.metadata
import logging
import math
import multiprocessing
import os
from pathlib import Path

import jax
import numpy as np

from lambda_hat import __version__, engine
from lambda_hat._io import atomic_write_json, atomic_write_npz, read_json
from lambda_hat.config import ProblemSpec, ReferenceConfig
from lambda_hat.curvature import problem_curvature
from lambda_hat.diagnostics import chain_health
from lambda_hat.engine import Timer
from lambda_hat.estimator import estimate_llc
from lambda_hat.log import Progress, fmt_seconds, format_table, setup_logging
from lambda_hat.posterior import chain_starts
from lambda_hat.problems import Problem, build_problem
from lambda_hat.samplers import hmc
from lambda_hat.schema import as_dict, validate

log = logging.getLogger("lambda_hat.reference")

REF_SCHEMA = 1
# Settings that change what a reference estimates or how precisely; the budget, chunking,
# gate thresholds and worker count do not invalidate a stored reference.
_KEY_FIELDS = (
    "chains",
    "draws",
    "warmup",
    "target_accept",
    "max_tree_depth",
    "beta",
    "gamma",
    "seed",
)
_REQUIRED = ("llc_ref", "se_ref", "draws_per_chain", "gate", "settings", "beta", "gamma", "n")


def reference_settings(cfg: ReferenceConfig) -> dict:
    """The part of the reference config that a stored ref.json must match."""
    return {k: getattr(cfg, k) for k in _KEY_FIELDS}


def ref_path(problem: Problem) -> Path:
    return problem.path / "ref.json"


def evaluate_gate(ref: dict, cfg: ReferenceConfig) -> dict:
    """Quality gate: rank-normalized R-hat <= rhat_max and bulk ESS >= ess_min."""
    reasons = []
    rhat, ess = ref.get("rhat"), ref.get("ess_bulk")
    if rhat is None or not rhat <= cfg.rhat_max:
        reasons.append(f"R-hat {rhat if rhat is None else f'{rhat:.4f}'} > {cfg.rhat_max}")
    if ess is None or not ess >= cfg.ess_min:
        reasons.append(f"bulk ESS {ess if ess is None else f'{ess:.0f}'} < {cfg.ess_min:g}")
    return {
        "passed": not reasons,
        "reasons": reasons,
        "rhat_max": cfg.rhat_max,
        "ess_min": cfg.ess_min,
    }


def load_reference(problem: Problem, cfg: ReferenceConfig) -> dict | None:
    """The stored reference if it is complete and was made with the same settings, else None."""
    path = ref_path(problem)
    if not path.exists():
        return None
    ref = read_json(path)
    problems = []
    if ref is None:
        problems.append("unreadable or not JSON")
    else:
        if ref.get("schema") != REF_SCHEMA:
            problems.append(f"schema {ref.get('schema')} != {REF_SCHEMA}")
        if ref.get("pid") != problem.pid:
            problems.append(f"pid {ref.get('pid')} != {problem.pid}")
        missing = [k for k in _REQUIRED if ref.get(k) is None]
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        elif ref["settings"] != reference_settings(cfg):
            log.info("reference %s: settings changed, recomputing", problem.pid)
            return None
        elif not (ref["draws_per_chain"] > 0 and math.isfinite(ref["llc_ref"])):
            problems.append("no draws")
    if problems:
        log.warning(
            "reference %s: ignoring %s (%s); recomputing", problem.pid, path, "; ".join(problems)
        )
        return None
    ref["gate"] = evaluate_gate(ref, cfg)  # thresholds may have changed since it was stored
    return ref


def _versions() -> dict:
    out = {"lambda_hat": __version__}
    for pkg in ("jax", "jaxlib", "blackjax", "numpy", "optax"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _warmup(problem: Problem, post, cfg: ReferenceConfig, k_init, k_warm, timer: Timer):
    """Window adaptation per chain, vmapped; the adapted states start sampling."""
    C = cfg.chains
    positions = chain_starts(post, k_init, C)
    warm_keys = jax.random.split(k_warm, C)
    warm_fn = hmc.build_warmup(post, cfg.warmup, cfg.target_accept, cfg.max_tree_depth)
    key = ("hmc", "warmup", problem.pid, post.beta, post.gamma, C, cfg.warmup, cfg.target_accept)
    warm = timer.compiled((*key, cfg.max_tree_depth), warm_fn, warm_keys, positions)
    t0 = engine.clock()
    chains, warm_grads, warm_div = timer.call(warm, warm_keys, positions)
    sec_warm = engine.clock() - t0
    log.info(
        "reference %s: warm-up done in %s (compile %s); step sizes %s",
        problem.pid,
        fmt_seconds(sec_warm),
        fmt_seconds(timer.compile),
        np.array2string(np.asarray(chains.step_size), precision=3),
    )
    return chains, int(np.asarray(warm_grads).sum()), int(np.asarray(warm_div).sum()), sec_warm


def _sample(problem: Problem, post, cfg: ReferenceConfig, chains, k_sample, deadline, timer):
    """NUTS draws in chunks through the engine's loop (budget checked before each chunk)."""
    C = cfg.chains
    chunk_fn = hmc.build_sample_chunk(post, cfg.max_tree_depth)
    key = ("hmc", "sample", problem.pid, post.beta, post.gamma, C, cfg.max_tree_depth)
    progress = Progress(log, f"reference {problem.pid}", cfg.draws, "draws per chain")

    def run_chunk(chains, done, this):
        keys = jax.random.split(jax.random.fold_in(k_sample, done), C * this).reshape(C, this, -1)
        exe = timer.compiled(key, chunk_fn, keys, chains)
        chains, info = timer.call(exe, keys, chains)
        return chains, jax.tree.map(np.asarray, info), True

    def on_chunk(done, info):
        progress.update(done, f"acceptance {float(info.acceptance_rate.mean()):.2f}")

    out = engine.drive(
        run_chunk,
        chains,
        cfg.draws,
        min(cfg.chunk, cfg.draws),
        deadline,
        on_chunk=on_chunk,
        predict_budget=True,
    )
    if out.stopped_early:
        log.warning(
            "reference %s: budget %s spent after %d/%d draws; stopping early",
            problem.pid,
            fmt_seconds(cfg.budget_sec),
            out.done,
            cfg.draws,
        )
    return out


def compute_reference(problem: Problem, cfg: ReferenceConfig) -> dict:
    """Run NUTS on the problem's LLC posterior and write ref.json (+ ref_trace.npz)."""
    t_start = engine.clock()
    deadline = t_start + cfg.budget_sec if cfg.budget_sec is not None else math.inf
    post = problem.posterior(cfg.beta, cfg.gamma)
    timer = Timer()
    k_init, k_warm, k_sample = jax.random.split(jax.random.PRNGKey(cfg.seed), 3)
    log.info(
        "reference %s: NUTS %d chains x %d draws (+%d warm-up), d=%d, n=%d, nβ=%.4g, γ=%g",
        problem.pid,
        cfg.chains,
        cfg.draws,
        cfg.warmup,
        post.d,
        post.n,
        post.nbeta,
        post.gamma,
    )
    chains, grads_warm, div_warm, sec_warm = _warmup(problem, post, cfg, k_init, k_warm, timer)
    run_warm = timer.run
    out = _sample(problem, post, cfg, chains, k_sample, deadline, timer)
    info = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *out.infos)
    seconds = {
        "compile": timer.compile,
        "warmup": sec_warm,
        "sampling": timer.run - run_warm,
        "total": engine.clock() - t_start,
    }
    ref = _record(problem, post, cfg, out, info, grads_warm, div_warm, seconds)
    atomic_write_npz(
        problem.path / "ref_trace.npz", loss=info.loss, acceptance_rate=info.acceptance_rate
    )
    atomic_write_json(ref_path(problem), ref)
    _report(problem, ref)
    return ref


def _record(problem, post, cfg, out, info, grads_warm, div_warm, seconds) -> dict:
    """The ref.json contents."""
    est = estimate_llc(info.loss, post.loss_star, post.nbeta)
    grads_sample = int(info.num_integration_steps.sum())
    theory = problem.info.get("theory")
    ref = {
        "schema": REF_SCHEMA,
        "pid": problem.pid,
        "llc_ref": est["llc_hat"],
        "se_ref": est["se_hat"],
        "llc_per_chain": est["llc_per_chain"],
        "rhat": est["rhat"],
        "ess_bulk": est["ess_bulk"],
        "ess_tail": est["ess_tail"],
        "divergences": int(info.is_divergent.sum()),
        "divergences_warmup": div_warm,
        "acceptance_rate": float(info.acceptance_rate.mean()),
        "step_size": np.asarray(out.carry.step_size).tolist(),
        "chains": cfg.chains,
        "draws_per_chain": out.done,
        "warmup": cfg.warmup,
        "stopped_early": out.stopped_early,
        "budget_sec": cfg.budget_sec,
        "grad_evals": {
            "warmup": grads_warm,
            "sampling": grads_sample,
            "total": grads_warm + grads_sample,
        },
        "seconds": seconds,
        "beta": post.beta,
        "gamma": post.gamma,
        "nbeta": post.nbeta,
        "n": post.n,
        "d": post.d,
        "loss_star": post.loss_star,
        "chain_health": chain_health(info.loss, post.loss_star),
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
        f"reference {problem.pid}: λ̂ = {ref['llc_ref']:.4g} ± {ref['se_ref']:.2g}, "
        f"R-hat {_fmt(ref['rhat'], '.4f')}, ESS {_fmt(ref['ess_bulk'], '.0f')}, "
        f"{ref['divergences']} divergences, {fmt_seconds(ref['seconds']['total'])}"
    )
    if ref["llc_theory"] is not None:
        msg += f"; theory λ = {ref['llc_theory']:.4g}"
    log.info(msg)
    if not ref["gate"]["passed"]:
        log.warning(
            "!!! reference %s FAILED its quality gate: %s. Do not tune against it: "
            "raise reference.draws or reference.warmup (or check the problem).",
            problem.pid,
            "; ".join(ref["gate"]["reasons"]),
        )


def _fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def ensure_reference(problem: Problem, cfg: ReferenceConfig, force: bool = False) -> dict:
    """The problem's reference: reused when a valid matching ref.json exists, else computed."""
    if not force and (ref := load_reference(problem, cfg)) is not None:
        log.info(
            "reference %s: cached (λ̂ = %.4g ± %.2g)", problem.pid, ref["llc_ref"], ref["se_ref"]
        )
        return ref
    return compute_reference(problem, cfg)


def reference_job(
    spec: dict, cfg: dict, artifacts: str, force: bool = False, verbose: int = 0
) -> dict:
    """Build the problem and its reference from plain dicts (for worker processes)."""
    if verbose is not None:
        setup_logging(verbose)
    spec_obj = validate(spec, ProblemSpec, "spec")
    cfg_obj = validate(cfg, ReferenceConfig, "reference")
    problem = build_problem(spec_obj, artifacts)
    ref = ensure_reference(problem, cfg_obj, force)
    return {**ref, "summary": problem.summary(), "curvature": _curvature_record(problem, ref)}


def _curvature_record(problem: Problem, ref: dict) -> dict:
    """a_max of nβ·∇²L_n(w*) + γI at the reference's β, γ, as plain numbers for the driver (it
    resolves the ``scale: stability`` ranges with them and loads no arrays); ``{"error": ..}``
    when it could not be computed (the reference itself stands: scaled ranges then search
    their absolute fallback)."""
    try:
        c = problem_curvature(problem, ref["beta"], ref["gamma"])
    except Exception as exc:  # an optional extra: never lose the reference over it
        log.warning("curvature %s: not computed (%s: %s)", problem.pid, type(exc).__name__, exc)
        return {"error": f"{type(exc).__name__}: {exc}"}
    keep = ("a_max", "h_max", "d", "n", "beta", "gamma", "eps_max_sgld", "converged", "path")
    return {k: getattr(c, k) for k in keep}


def run_references(
    specs: list[ProblemSpec],
    cfg: ReferenceConfig,
    artifacts: str,
    force: bool = False,
    verbose: int = 0,
) -> list[dict]:
    """References of all ``specs``, in parallel processes where cores allow (order kept)."""
    workers = min(len(specs), cfg.workers or os.cpu_count() or 1)
    args = [(as_dict(s), dataclasses.asdict(cfg), str(artifacts), force, verbose) for s in specs]
    if workers <= 1:
        return [reference_job(*a) for a in args]
    ctx = multiprocessing.get_context("spawn")  # never fork a process that imported JAX
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(reference_job, *zip(*args, strict=True)))


def reference_table(refs: list[dict]) -> str:
    """The summary table printed by ``lambda-hat reference``."""
    header = [
        "pid",
        "model",
        "d",
        "n",
        "λ̂_ref ± se",
        "R-hat",
        "ESS",
        "div",
        "time",
        "λ theory",
        "gate",
    ]
    rows = []
    for r in refs:
        rows.append(
            [
                r["pid"],
                r.get("summary", ""),
                str(r["d"]),
                str(r["n"]),
                f"{r['llc_ref']:.4g} ± {r['se_ref']:.2g}",
                _fmt(r["rhat"], ".4f"),
                _fmt(r["ess_bulk"], ".0f"),
                str(r["divergences"]),
                fmt_seconds(r["seconds"]["total"]),
                _fmt(r["llc_theory"], ".4g"),
                "ok" if r["gate"]["passed"] else "FAILED",
            ]
        )
    return format_table(header, rows)
