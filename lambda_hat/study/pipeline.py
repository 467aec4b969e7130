"""``parsl-optuna``: references, batched ask-and-tell tuning, Parquet — resumable, on Parsl.

Stages, in order:

0. **Check** (nothing is written): the experiment YAML with the CLI overrides, every problem's
   presets, the methods' search-space overrides and warm-start trials, the sampler's package,
   the Parsl config file. Any error prints one paragraph naming the field and the fix, exit 2.
1. **References** (:mod:`references`): one per (problem, posterior γ), read on the driver when
   stored, else one Parsl app each, all in parallel, that builds the problem and the HMC
   reference of that posterior (cached by its settings). The γ are the
   config's and every γ choice of a search space (:attr:`Plan.gammas`). A reference that fails
   its quality gate stops tuning for that problem unless ``optuna.allow_failed_reference``.
2. **Tuning**: one study per (problem, method), interleaved by :class:`tuning.Driver`.
2b. **Validation** (``optuna.validate``): each study's top-k configurations re-run on fresh
   seeds (:mod:`validation`): ``<results>/validation.parquet``, the recommendations, a table.
3. **Aggregation**: ``<results>/optuna_trials.parquet`` and the study pickles; a table of the
   best hyperparameters per study.

Exit codes: 0 done; 1 some problem or study could not be tuned to the end (reason logged);
2 bad input, nothing written.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from lambda_hat import layout, methods
from lambda_hat.config.load import load_tuning
from lambda_hat.config.problem import ProblemSpec
from lambda_hat.config.schema import ConfigError, as_dict
from lambda_hat.hashing import content_hash
from lambda_hat.log import fmt_seconds, setup_logging
from lambda_hat.parallel import apps as execution
from lambda_hat.problem.build import problem_id
from lambda_hat.reference import stage as references
from lambda_hat.reference.stage import References, is_reference, reference_stage
from lambda_hat.results import tables as results
from lambda_hat.study import driver as tuning
from lambda_hat.study import progress, validation
from lambda_hat.study import storage as studies
from lambda_hat.study.guard import FailureGuard
from lambda_hat.study.plan import (
    Plan,
    check_plan,
    describe_space,
    stored_curvatures,
    study_space,
)
from lambda_hat.study.stopping import StopRule
from lambda_hat.study.tell import best_successful
from lambda_hat.trial import identity as runs

__all__ = ["References", "execute", "is_reference", "main", "make_tasks", "reference_stage"]

log = logging.getLogger("lambda_hat.workflow")

# ---------------------------------------------------------------------------------- stages


def _trial_ref(ref: dict) -> dict:
    return {k: v for k, v in ref.items() if k != "summary"}


def _ref_lookup(refs: dict, pid: str, method: str, plan: Plan):
    """``StudyTask.refs`` for a study whose trials' γ varies (searched or fixed), else None."""
    if not isinstance(refs, References) or not (
        "gamma" in plan.spaces[method] or plan.fixed[method].get("gamma") is not None
    ):
        return None

    def ref_for(params: dict) -> dict:
        return _trial_ref(refs.at(pid, params.get("gamma")))

    return ref_for


def make_tasks(plan: Plan, storage, refs: dict[str, dict]) -> list[tuning.StudyTask]:
    """One :class:`tuning.StudyTask` per usable (problem, method), studies created or loaded."""
    oc = plan.cfg.optuna
    specs = {}
    for spec in plan.exp.problems:
        specs.setdefault(problem_id(spec), spec)
    tasks = []
    for pid in plan.pids:
        for method in plan.cfg.methods:
            name = studies.study_name(pid, method)
            seed = oc.seed + int(content_hash(name)[:7], 16)
            study = studies.open_study(storage, pid, method, oc, seed, tuning.PRUNING_STEPS)
            resolved = study_space(plan.spaces[method], method, refs[pid], study)
            base = {
                "pid": pid,
                "spec": as_dict(specs[pid]),
                "method": method,
                "budget_sec": oc.method_budget_sec,
                "seed": oc.seed,
                "ref": _trial_ref(refs[pid]),
                "artifacts": str(plan.artifacts),
                "target": plan.trial_target,
                "isolate": oc.isolate,
                "timeout_grace": oc.timeout_grace,
                "warm": None if oc.warm is None else as_dict(oc.warm),
            }
            task = tuning.StudyTask(
                pid=pid,
                method=method,
                study=study,
                space=resolved.space,
                base_payload=base,
                ref=refs[pid],
                objective=oc.objective,
                objectives=tuple(oc.objectives),
                huber_delta=oc.huber_delta,
                fixed=plan.fixed[method],
                resolve=_resolver(method),
                locate=_locator(plan, specs[pid], method),
                guard=FailureGuard(
                    max_consecutive_failures=oc.max_consecutive_failures,
                    culprits=methods.culprits(method),
                    step_limits=resolved.limits,
                    space=resolved.space,
                ),
                max_retries=oc.infrastructure_retries,
                prune=studies.prunes(oc),
                refs=_ref_lookup(refs, pid, method, plan),
                stop_rule=StopRule.from_config(oc),
            )
            if plan.enqueue[method] and not study.user_attrs.get("warm_start_enqueued"):
                for params in plan.enqueue[method]:
                    study.enqueue_trial(params, user_attrs={"warm_start": True})
                study.set_user_attr("warm_start_enqueued", True)
            tasks.append(task)
    return tasks


def _resolver(method: str):
    def resolve(hp: dict) -> dict:
        return runs.resolve_hyperparams(method, hp)

    return resolve


def _locator(plan: Plan, spec: ProblemSpec, method: str):
    """Where the trial's runner will write: the runner's own content address for the default
    target (from plain values, no problem arrays, and the payload's reference: that of the
    trial's posterior), the generic one (:func:`execution.trial_location`) for any other."""
    if plan.trial_target != execution.DEFAULT_TRIAL_TARGET:
        return execution.trial_location
    pid = problem_id(spec)

    def locate(payload: dict) -> tuple[str, Path]:
        manifest = runs.manifest(
            pid,
            spec.data.n,
            method,
            payload["hyperparams"],
            payload["budget_sec"],
            payload["seed"],
            payload.get("ref"),
        )
        run_dir = runs.run_dir_for(plan.artifacts, pid, method, manifest)
        return run_dir.name, run_dir

    return locate


def aggregate(plan: Plan, tasks: list[tuning.StudyTask]) -> Path:
    """Stage 3: the Parquet table and the study pickles."""
    rows, problems = [], results.problem_table(plan.cfg.problems, plan.exp.problems)
    for t in tasks:
        problem = problems.get(t.pid)
        rows.extend(results.study_rows(t.study, t.pid, t.method, t.ref, t.trial_ref, problem))
        studies.export_pickle(t.study, plan.results, t.pid, t.method)
    return results.write_parquet(rows, plan.results / layout.TRIALS_TABLE)


def best_rows(tasks: list[tuning.StudyTask]) -> list[dict]:
    out = []
    for t in tasks:
        best = best_successful(t.study)
        if best is None:
            out.append(
                {
                    "study": t.name,
                    "number": None,
                    "note": t.stop_reason.splitlines()[0]
                    if t.stop_reason
                    else "no successful trial",
                }
            )
            continue
        out.append(
            {
                "study": t.name,
                "number": best.number,
                "objective": best.values[0],
                "llc_hat": best.user_attrs.get("llc_hat"),
                "llc_ref": t.trial_ref(best.params).get("llc_ref"),
                "params": best.params,
            }
        )
    return out


@contextlib.contextmanager
def parsl_session(plan: Plan, attempts: int = 5) -> Iterator[None]:
    """:func:`execution.parsl_session` with the run's logs under ``<results>/runinfo``.

    Two drivers sharing the results directory that start together can pick the same numbered
    Parsl run directory (Parsl lists, then creates: one gets FileExistsError); that start is
    retried after a short random wait, with the next free number.
    """
    with contextlib.ExitStack() as stack:
        for attempt in range(attempts):
            try:
                stack.enter_context(
                    execution.parsl_session(plan.parsl_config, plan.results / layout.RUNINFO)
                )
                break
            except FileExistsError:
                if attempt == attempts - 1:
                    raise
                time.sleep(random.uniform(0.1, 1.0))
        yield


def _references(plan: Plan) -> References:
    """Stage 1: the reference stage at the plan's problems and γ, on the Parsl reference app."""
    submit = execution.reference_submitter()
    gammas = dict.fromkeys(plan.pids, plan.gammas)
    return reference_stage(plan.exp.problems, plan.cfg.reference, plan.artifacts, submit, gammas)


def execute(plan: Plan) -> int:
    """Run stages 1-3 (after :func:`check_plan`). Returns the exit code."""
    oc = plan.cfg.optuna
    t0 = time.monotonic()
    plan.results.mkdir(parents=True, exist_ok=True)
    storage = studies.open_storage(oc, plan.results)
    code = 0
    with parsl_session(plan):
        refs = _references(plan)
        for pid in list(plan.pids):
            references.report(refs, pid)
            why = references.unusable(refs, pid, oc.allow_failed_reference)
            if why:
                log.error("problem %s is not tuned: %s", pid, why)
                plan.pids.remove(pid)
                code = 1
        tasks = make_tasks(plan, storage, refs)
        labels = results.problem_labels(plan.cfg.problems, plan.exp.problems)
        show = progress.StudyTable(tasks, oc.max_trials, labels=labels)
        last_parquet = [time.monotonic()]

        def tick() -> None:
            show()
            if time.monotonic() - last_parquet[0] > 60:
                aggregate(plan, tasks)
                last_parquet[0] = time.monotonic()

        submit = execution.trial_submitter()
        driver = tuning.Driver(
            tasks,
            submit,
            max_trials=oc.max_trials,
            batch_size=plan.batch_size,
            on_tick=tick,
            tick_sec=10.0,
            sync=lambda: studies.sync_storage(storage, wait=False),
        )
        for t in tasks:
            driver.recover(t)
        show(force=True)
        driver.run()
        validated = validation.validate_studies(tasks, submit, oc.validate, plan.results)
    studies.sync_storage(storage)
    show(force=True)
    path = aggregate(plan, tasks)
    print(progress.best_table(best_rows(tasks), labels))
    if validated is not None:
        print(validation.table(validated))
        code = 1 if any(v.validated and v.chosen is None for v in validated) else code
    for t in tasks:
        if t.stop_reason:
            log.error("study %s stopped early:\n%s", t.name, t.stop_reason)
            code = 1
        elif best_successful(t.study) is None:
            log.error("study %s has no successful trial", t.name)
            code = 1
    log.info("wrote %s (%s)", path, fmt_seconds(time.monotonic() - t0))
    return code


# ---------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
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


def _overrides(args: argparse.Namespace) -> dict:
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
    oc = plan.cfg.optuna
    lines = [
        f"config {plan.exp.source}: {len(plan.pids)} problem(s) x {len(plan.cfg.methods)} "
        f"method(s), {oc.max_trials} finished trials each, {plan.batch_size} in flight, "
        f"sampler {oc.sampler}, objective {oc.objective} {oc.objectives}, pruner "
        f"{oc.pruner if studies.prunes(oc) else 'none'}",
        f"storage {studies.describe_storage(oc.storage or studies.journal_path(plan.results))}; "
        f"artifacts {plan.artifacts}; trial target {plan.trial_target}",
    ]
    if len(plan.gammas) > 1:
        lines.append("  references at γ = " + ", ".join(f"{g:g}" for g in plan.gammas))
    for pid, spec in zip(plan.pids, plan.exp.problems, strict=False):
        lines.append(f"  problem {pid}: model {spec.model.family} data n={spec.data.n}")
    curvatures = stored_curvatures(plan)
    for m in plan.cfg.methods:
        space = describe_space(plan.spaces[m], m, curvatures)
        lines.append(
            f"  {m}: searched {space}" + (f"; fixed {plan.fixed[m]}" if plan.fixed[m] else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``parsl-optuna``."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    # Parsl starts its worker pool with fork+exec (subprocess), which is safe; JAX's fork hook
    # warns about any fork in a process that imported it.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    try:
        exp = load_tuning(args.config, _overrides(args))
        plan = check_plan(exp, args.parsl_config, args.trial_target)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("%s", describe(plan))
    if args.dry_run:
        return 0
    try:
        return execute(plan)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP (execution.parsl_session)
        log.error(
            "interrupted: finished trials are saved; the executors were shut down. "
            "Run the same command again to resume."
        )
        return 130
