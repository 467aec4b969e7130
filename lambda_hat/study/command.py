"""The ``parsl-optuna`` command line: its arguments (:func:`build_parser`), the config
overrides they make (:func:`overrides`) and the checked plan in a few lines (:func:`describe`,
what ``--dry-run`` shows). The entry point is :func:`lambda_hat.study.pipeline.main`."""

from __future__ import annotations

import argparse

from lambda_hat.study import storage as studies
from lambda_hat.study.plan import Plan
from lambda_hat.study.resolved_space import describe_space, stored_curvatures
from lambda_hat.study.space import fmt_values


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``parsl-optuna``."""
    p = argparse.ArgumentParser(
        prog="parsl-optuna",
        description="HMC references, then Optuna tuning of SGLD / VI / MCLMC against them, "
        "on Parsl. Re-run the same command to resume.",
    )
    p.add_argument("--config", required=True, help="experiment YAML")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--local",
        action="store_true",
        help="run on this machine, one worker per core (the default)",
    )
    where.add_argument(
        "--parsl-config",
        metavar="FILE",
        help="Python file defining a Parsl `config` (e.g. parsl_configs/slurm.py)",
    )
    p.add_argument("--max-trials", type=int, help="finished trials per (problem, method)")
    p.add_argument("--batch-size", type=int, help="trials in flight at once, across studies")
    p.add_argument("--hmc-budget", type=float, metavar="SEC", help="budget per HMC reference")
    p.add_argument("--method-budget", type=float, metavar="SEC", help="budget per trial")
    p.add_argument(
        "--storage",
        metavar="URL",
        help="override optuna.storage: a database URL shared by several drivers "
        "(postgresql://user:pass@host/db) or a journal file path",
    )
    p.add_argument("--results", metavar="DIR", help="override paths.results")
    p.add_argument("--artifacts", metavar="DIR", help="override paths.artifacts")
    p.add_argument(
        "--trial-target",
        metavar="MODULE:FUNCTION",
        help="replace the method runner, e.g. "
        "lambda_hat.trial.synthetic:synthetic_trial to check the plumbing",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="check the config and print the plan; write nothing"
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    return p


def overrides(args: argparse.Namespace) -> dict:
    """The config values the flags override: ``{"optuna": {...}, "paths": {...}}``."""
    o: dict[str, dict] = {"optuna": {}, "paths": {}}
    for flag, key in (
        ("max_trials", "max_trials"),
        ("batch_size", "batch_size"),
        ("hmc_budget", "hmc_budget_sec"),
        ("method_budget", "method_budget_sec"),
        ("storage", "storage"),
    ):
        if getattr(args, flag) is not None:
            o["optuna"][key] = getattr(args, flag)
    for flag in ("results", "artifacts"):
        if getattr(args, flag) is not None:
            o["paths"][flag] = getattr(args, flag)
    return {k: v for k, v in o.items() if v}


def describe(plan: Plan) -> str:
    """The plan in a few lines: the studies, the sampler, where things are, the searched ranges."""
    oc = plan.cfg.optuna
    lines = [
        f"config {plan.exp.source}: {len(plan.pids)} problem(s) x {len(plan.cfg.methods)} "
        f"method(s), {oc.max_trials} finished trials each, {plan.batch_size} in flight, "
        f"sampler {oc.sampler}, objective {oc.objective}"
        f"{f' ({oc.ucb_sigmas:g} SE)' if oc.objective == 'ucb' else ''} [{', '.join(oc.objectives)}], pruner "
        f"{oc.pruner if studies.prunes(oc) else 'none'}",
        f"storage {studies.describe_storage(oc.storage or studies.journal_path(plan.results))}; "
        f"artifacts {plan.artifacts}; trial target {plan.trial_target}",
    ]
    if len(plan.gammas) > 1:
        lines.append("  references at γ = " + ", ".join(f"{g:g}" for g in plan.gammas))
    for pid, spec in zip(plan.pids, plan.exp.problems, strict=False):
        model = spec.model.family if spec.source is None else f"source {spec.source.source}"
        lines.append(f"  problem {pid}: model {model} data n={spec.data.n}")
    for name, c in plan.exp.classes.items():
        lines.append(
            f"  class {name}: {len(c.train)} train member(s), {len(c.holdout)} holdout; one "
            f"study per method, objective {c.config.objective}, halving "
            f"{'on' if c.config.halving else 'off'}, step sizes in units of each member's ε_max"
        )
    curvatures = stored_curvatures(plan.exp.problems, plan.cfg.reference, plan.artifacts)
    for m in plan.cfg.methods:
        space = describe_space(plan.spaces[m], m, curvatures)
        lines.append(
            f"  {m}: searched {space}"
            + (f"; fixed {fmt_values(plan.fixed[m])}" if plan.fixed[m] else "")
        )
    return "\n".join(lines)
