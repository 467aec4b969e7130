"""Content-addressed HMC reference LLCs: ``artifacts/problems/<pid>/ref.json``.

A reference is computed once per (problem, reference settings) and reused: a valid ref.json
whose ``settings`` match the requested ones is returned as is (``force`` recomputes); a
corrupt, partial or mismatched one is recomputed, never trusted. Budgets (``budget_sec``) are
honoured between sampling chunks: the draws so far are kept and ``stopped_early`` is recorded.
A reference that misses its quality gate (rank-normalized R-hat > ``rhat_max`` or bulk ESS <
``ess_min``) is stored with ``gate.passed = false`` and reported loudly.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import importlib.metadata
import logging
import math
import multiprocessing
import os
import time
from pathlib import Path

import jax
import numpy as np

from lambda_hat import __version__
from lambda_hat._io import atomic_write_json, atomic_write_npz, read_json
from lambda_hat.config import ProblemSpec, ReferenceConfig, load_experiment
from lambda_hat.diagnostics import chain_health
from lambda_hat.estimator import estimate_llc
from lambda_hat.log import Progress, fmt_seconds, setup_logging
from lambda_hat.posterior import chain_starts
from lambda_hat.problems import Problem, build_problem, problem_id
from lambda_hat.samplers import hmc
from lambda_hat.schema import ConfigError, as_dict, validate

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


def _timed_compile(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def compute_reference(problem: Problem, cfg: ReferenceConfig) -> dict:
    """Run NUTS on the problem's LLC posterior and write ref.json (+ ref_trace.npz)."""
    t_start = time.perf_counter()
    post = problem.posterior(cfg.beta, cfg.gamma)
    C = cfg.chains
    key = jax.random.PRNGKey(cfg.seed)
    k_init, k_warm, k_sample = jax.random.split(key, 3)
    log.info(
        "reference %s: NUTS %d chains x %d draws (+%d warm-up), d=%d, n=%d, nβ=%.4g, γ=%g",
        problem.pid,
        C,
        cfg.draws,
        cfg.warmup,
        post.d,
        post.n,
        post.nbeta,
        post.gamma,
    )

    positions = chain_starts(post, k_init, C)
    warm_keys = jax.random.split(k_warm, C)
    warm_fn = hmc.build_warmup(post, cfg.warmup, cfg.target_accept, cfg.max_tree_depth)
    warm, compile_warm = _timed_compile(warm_fn, warm_keys, positions)
    t0 = time.perf_counter()
    chains, warm_grads, warm_div = warm(warm_keys, positions)
    jax.block_until_ready(chains)
    sec_warm = time.perf_counter() - t0
    log.info(
        "reference %s: warm-up done in %s (compile %s); step sizes %s",
        problem.pid,
        fmt_seconds(sec_warm),
        fmt_seconds(compile_warm),
        np.array2string(np.asarray(chains.step_size), precision=3),
    )

    chunk_fn = hmc.build_sample_chunk(post, cfg.max_tree_depth)
    m = min(cfg.chunk, cfg.draws)
    keys0 = jax.random.split(k_sample, C * m).reshape(C, m, -1)
    chunk, compile_chunk = _timed_compile(chunk_fn, keys0, chains)
    tail_chunk = None

    infos, done, stopped_early, sec_sample = [], 0, False, 0.0
    progress = Progress(log, f"reference {problem.pid}", cfg.draws, "draws per chain")
    while done < cfg.draws:
        elapsed = time.perf_counter() - t_start
        this = min(m, cfg.draws - done)
        per_draw = sec_sample / done if done else 0.0
        if done and cfg.budget_sec is not None and elapsed + per_draw * this > cfg.budget_sec:
            stopped_early = True
            log.warning(
                "reference %s: budget %s spent after %d/%d draws; stopping early",
                problem.pid,
                fmt_seconds(cfg.budget_sec),
                done,
                cfg.draws,
            )
            break
        keys = jax.random.split(jax.random.fold_in(k_sample, done), C * this).reshape(C, this, -1)
        if this == m:
            fn = chunk
        else:
            if tail_chunk is None:
                tail_chunk, extra = _timed_compile(chunk_fn, keys, chains)
                compile_chunk += extra
            fn = tail_chunk
        t0 = time.perf_counter()
        chains, info = fn(keys, chains)
        info = jax.tree.map(np.asarray, info)
        sec_sample += time.perf_counter() - t0
        infos.append(info)
        done += this
        progress.update(done, f"acceptance {float(info.acceptance_rate.mean()):.2f}")

    info = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *infos)
    est = estimate_llc(info.loss, post.loss_star, post.nbeta)
    grads_sample = int(info.num_integration_steps.sum())
    grads_warm = int(np.asarray(warm_grads).sum())
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
        "divergences_warmup": int(np.asarray(warm_div).sum()),
        "acceptance_rate": float(info.acceptance_rate.mean()),
        "step_size": np.asarray(chains.step_size).tolist(),
        "chains": C,
        "draws_per_chain": done,
        "warmup": cfg.warmup,
        "stopped_early": stopped_early,
        "budget_sec": cfg.budget_sec,
        "grad_evals": {
            "warmup": grads_warm,
            "sampling": grads_sample,
            "total": grads_warm + grads_sample,
        },
        "seconds": {
            "compile": compile_warm + compile_chunk,
            "warmup": sec_warm,
            "sampling": sec_sample,
            "total": time.perf_counter() - t_start,
        },
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
    atomic_write_npz(
        problem.path / "ref_trace.npz", loss=info.loss, acceptance_rate=info.acceptance_rate
    )
    atomic_write_json(ref_path(problem), ref)
    _report(problem, ref)
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
    return {**ref, "summary": problem.summary()}


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


def format_table(refs: list[dict]) -> str:
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
    rows = [header]
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
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _select(problems: list[ProblemSpec], wanted: list[str] | None) -> list[ProblemSpec]:
    if not wanted:
        return problems
    out = []
    pids = [problem_id(p) for p in problems]
    for w in wanted:
        if w.isdigit() and int(w) < len(problems):
            out.append(problems[int(w)])
        elif w in pids:
            out.append(problems[pids.index(w)])
        else:
            raise ConfigError(
                "--problem",
                f"{w!r} is neither an index nor a pid of this config ({', '.join(pids)}).",
                "pass an index (0, 1, ...) or a pid.",
            )
    return out


def _cmd_reference(args: argparse.Namespace) -> int:
    overrides = {}
    if args.budget is not None:
        overrides["reference"] = {"budget_sec": args.budget}
    exp = load_experiment(args.config, overrides)
    specs = _select(exp.problems, args.problem)
    cfg = exp.config.reference
    refs = run_references(specs, cfg, exp.config.paths.artifacts, args.force, args.verbose)
    print(format_table(refs))
    failed = [r["pid"] for r in refs if not r["gate"]["passed"]]
    if failed:
        print(
            f"\nWARNING: {len(failed)} reference(s) failed the quality gate: "
            f"{', '.join(failed)} (see the log above for why)."
        )
    return 1 if failed else 0


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "reference",
        help="compute (or reuse) HMC reference LLCs",
        description="Compute the HMC reference LLC of every problem in "
        "the config (cached by pid in artifacts/problems/<pid>/ref.json).",
    )
    p.add_argument("--config", required=True, help="experiment YAML")
    p.add_argument("--force", action="store_true", help="recompute even if cached")
    p.add_argument("--problem", action="append", help="only this pid or index (repeatable)")
    p.add_argument("--budget", type=float, help="wall-clock budget per reference, seconds")
    p.set_defaults(func=_cmd_reference)
