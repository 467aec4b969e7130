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
from lambda_hat.hashing import content_hash
from lambda_hat.log import fmt_seconds, setup_logging
from lambda_hat.parallel import session
from lambda_hat.precision import enable_x64
from lambda_hat.problem.build import problem_id
from lambda_hat.problem.spec import ProblemSpec
from lambda_hat.reference import app as reference_app
from lambda_hat.reference import stage as references
from lambda_hat.reference.stage import References, is_reference, reference_stage
from lambda_hat.results import tables as results
from lambda_hat.results.parquet import write_parquet
from lambda_hat.schema import ConfigError
from lambda_hat.study import class_stage, command, progress, transfer, validation
from lambda_hat.study import driver as tuning
from lambda_hat.study import storage as studies
from lambda_hat.study.guard import FailureGuard
from lambda_hat.study.payloads import base_payload, locator, resolver, trial_ref
from lambda_hat.study.plan import Plan, check_plan
from lambda_hat.study.pruning import PRUNING_STEPS
from lambda_hat.study.resolved_space import study_space
from lambda_hat.study.stopping import StopRule
from lambda_hat.study.tell import best_successful
from lambda_hat.trial import submit as trial_submit

__all__ = ["References", "execute", "is_reference", "main", "make_tasks", "reference_stage"]

log = logging.getLogger("lambda_hat.workflow")

# ---------------------------------------------------------------------------------- stages


def _ref_lookup(refs: dict, pid: str, gamma_varies: bool):
    """``StudyTask.refs`` for a study whose trials' γ varies (searched or fixed), else None."""
    if not isinstance(refs, References) or not gamma_varies:
        return None

    def ref_for(params: dict) -> dict:
        return trial_ref(refs.at(pid, params.get("gamma")))

    return ref_for


def make_tasks(plan: Plan, storage, refs: dict[str, dict]) -> list[tuning.StudyTask]:
    """One :class:`tuning.StudyTask` per usable (problem, method), studies created or loaded.

    Each task is built here from the plan; what it hands down (search space, payload, guard,
    reference lookup) are plain values."""
    specs = {}
    for spec in plan.exp.problems:
        specs.setdefault(problem_id(spec), spec)
    tasks = []
    for pid in plan.pids:
        for method in plan.cfg.methods:
            tasks.append(_study_task(plan, storage, refs, specs[pid], method))
    return tasks


def _study_task(
    plan: Plan, storage, refs: dict[str, dict], spec: ProblemSpec, method: str
) -> tuning.StudyTask:
    """The task of one (problem, method) study, its warm-start trials enqueued once."""
    oc, pid = plan.cfg.optuna, problem_id(spec)
    name = studies.study_name(pid, method)
    seed = oc.seed + int(content_hash(name)[:7], 16)
    study = studies.open_study(storage, pid, method, oc, seed, PRUNING_STEPS)
    resolved = study_space(plan.spaces[method], method, refs[pid], study)
    fixed = plan.fixed[method]
    gamma_varies = "gamma" in plan.spaces[method] or fixed.get("gamma") is not None
    task = tuning.StudyTask(
        pid=pid,
        method=method,
        study=study,
        space=resolved.space,
        base_payload=base_payload(spec, method, refs[pid], oc, plan.artifacts, plan.trial_target),
        ref=refs[pid],
        objective=oc.objective,
        objectives=tuple(oc.objectives),
        huber_delta=oc.huber_delta,
        ucb_sigmas=oc.ucb_sigmas,
        fixed=fixed,
        resolve=resolver(method),
        locate=locator(plan.trial_target, plan.artifacts, spec, method),
        guard=FailureGuard(
            max_consecutive_failures=oc.max_consecutive_failures,
            culprits=methods.culprits(method),
            step_limits=resolved.limits,
            space=resolved.space,
        ),
        max_retries=oc.infrastructure_retries,
        prune=studies.prunes(oc),
        refs=_ref_lookup(refs, pid, gamma_varies),
        stop_rule=StopRule.from_config(oc),
    )
    if plan.enqueue[method] and not study.user_attrs.get("warm_start_enqueued"):
        for params in plan.enqueue[method]:
            study.enqueue_trial(params, user_attrs={"warm_start": True})
        study.set_user_attr("warm_start_enqueued", True)
    return task


def aggregate(tasks: list[tuning.StudyTask], problems: dict[str, dict], out: Path) -> Path:
    """Stage 3: the Parquet table under ``out`` (``problems``: pid -> its problem columns,
    :func:`lambda_hat.results.tables.problem_table`) and the study pickles."""
    rows = []
    for t in tasks:
        problem = problems.get(t.pid)
        limits = t.guard.step_limits if t.guard is not None else None
        rows.extend(
            results.study_rows(t.study, t.pid, t.method, t.ref, t.trial_ref, problem, limits)
        )
        studies.export_pickle(t.study, out, t.pid, t.method)
    return write_parquet(rows, out / layout.TRIALS_TABLE)


def best_rows(tasks: list[tuning.StudyTask]) -> list[dict]:
    out = []
    for t in tasks:
        best = best_successful(t.study)
        if best is None:
            out.append(
                {
                    "study": t.name,
                    "number": None,
                    "note": t.counts.stop_reason.splitlines()[0]
                    if t.counts.stop_reason
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
def parsl_session(parsl_config, out: Path, attempts: int = 5) -> Iterator[None]:
    """:func:`session.parsl_session` of ``parsl_config`` with its logs under ``<out>/runinfo``.

    Two drivers sharing the results directory that start together can pick the same numbered
    Parsl run directory (Parsl lists, then creates: one gets FileExistsError); that start is
    retried after a short random wait, with the next free number.
    """
    with contextlib.ExitStack() as stack:
        for attempt in range(attempts):
            try:
                stack.enter_context(session.parsl_session(parsl_config, out / layout.RUNINFO))
                break
            except FileExistsError:
                if attempt == attempts - 1:
                    raise
                time.sleep(random.uniform(0.1, 1.0))
        yield


def _references(plan: Plan) -> References:
    """Stage 1: the reference stage at the plan's problems and γ (class members: the
    reference's γ), on the Parsl reference app."""
    submit = reference_app.submitter()
    gammas = dict.fromkeys(plan.pids, plan.gammas)
    specs = [*plan.exp.problems, *class_stage.class_specs(plan)]
    cfg, kinds = plan.cfg.reference, plan.exp.kinds
    return reference_stage(specs, cfg, plan.artifacts, submit, gammas, kinds=kinds)


def _classes(plan: Plan, storage, refs: References, submit, validated) -> int:
    """Stage 2c: the class studies, their recommendations and the held-out proof."""
    if not plan.exp.classes:
        return 0
    oc = plan.cfg.optuna
    for pid in class_stage.class_pids(plan):
        references.report(refs, pid)
    tasks, problems = class_stage.make_class_tasks(plan, storage, refs)
    for why in problems:
        log.error("%s", why)
    for task in tasks[:: max(1, len(plan.cfg.methods))]:  # once per class
        gap = class_stage.theory_gap(task)
        if gap is not None:
            log.info(
                "class %s: HMC vs theory on %d train member(s): mean gap %+.1f%% (largest "
                "%+.1f%%), the finite-nβ, finite-γ offset a theory reference does not have",
                task.name,
                gap[2],
                100 * gap[0],
                100 * gap[1],
            )
    class_stage.run_class_studies(tasks, submit, plan.batch_size)
    studies.sync_storage(storage)
    path = class_stage.write_class_table(tasks, plan.results)
    if path is not None:
        log.info("wrote %s", path)
    rows = []
    for task in tasks:
        v = oc.validate
        record = transfer.recommend(
            task, submit, v.top_k if v else 1, v.seeds if v else 1, plan.results, oc.seed
        )
        cfg = task.config
        rows += transfer.holdout_proof(
            task, submit, record, cfg.holdout_seeds, plan.results, oc.seed, cfg.baseline
        )
    if rows:
        log.info("wrote %s", transfer.write_transfer(rows, plan.results))
        print(transfer.transfer_table(rows, transfer.per_problem_errors(validated)))
    for task in tasks:
        if task.stop_reason:
            log.error("class study %s stopped early:\n%s", task.label, task.stop_reason)
            problems.append(task.label)
        elif best_successful(task.study) is None:
            log.error("class study %s has no successful trial", task.label)
            problems.append(task.label)
    return 1 if problems else 0


def execute(plan: Plan) -> int:
    """Run stages 1-3 (after :func:`check_plan`). Returns the exit code."""
    oc = plan.cfg.optuna
    t0 = time.monotonic()
    plan.results.mkdir(parents=True, exist_ok=True)
    storage = studies.open_storage(oc, plan.results)
    code = 0
    with parsl_session(plan.parsl_config, plan.results):
        refs = _references(plan)
        for pid in list(plan.pids):
            references.report(refs, pid)
            why = references.unusable(refs, pid, oc.allow_failed_reference)
            if why:
                log.error("problem %s is not tuned: %s", pid, why)
                plan.pids.remove(pid)
                code = 1
        tasks = make_tasks(plan, storage, refs)
        problems = results.problem_table(plan.cfg.problems, plan.exp.problems)
        labels = {pid: row["label"] for pid, row in problems.items()}
        show = progress.StudyTable(tasks, oc.max_trials, labels=labels)
        submit = trial_submit.submitter()
        validated = _tune(plan, storage, tasks, problems, show, submit) if tasks else None
        code = max(code, _classes(plan, storage, refs, submit, validated))
    studies.sync_storage(storage)
    if tasks:
        code = max(code, _summarize(plan, tasks, problems, labels, validated, show))
    log.info("done (%s)", fmt_seconds(time.monotonic() - t0))
    return code


def _tune(plan: Plan, storage, tasks, problems, show, submit):
    """Stage 2 and 2b: the per-problem studies, then their validation (its result)."""
    oc = plan.cfg.optuna
    last_parquet = [time.monotonic()]

    def tick() -> None:
        show()
        if time.monotonic() - last_parquet[0] > 60:
            aggregate(tasks, problems, plan.results)
            last_parquet[0] = time.monotonic()

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
    return validation.validate_studies(tasks, submit, oc.validate, plan.results)


def _summarize(plan: Plan, tasks, problems, labels, validated, show) -> int:
    """Stage 3 for the per-problem studies: the tables, the Parquet file, the exit code."""
    code = 0
    show(force=True)
    path = aggregate(tasks, problems, plan.results)
    print(progress.best_table(best_rows(tasks), labels))
    if validated is not None:
        print(validation.table(validated))
        code = 1 if any(v.validated and v.chosen is None for v in validated) else code
    for t in tasks:
        if t.counts.stop_reason:
            log.error("study %s stopped early:\n%s", t.name, t.counts.stop_reason)
            code = 1
        elif best_successful(t.study) is None:
            log.error("study %s has no successful trial", t.name)
            code = 1
    log.info("wrote %s", path)
    return code


def interrupted_message(exc: BaseException) -> str:
    """What an interrupt during the reference stage kept: each unfinished reference's last
    saved chunk (no trial had started)."""
    return (
        f"interrupted during the reference stage, before any trial: {exc}. The executors were "
        "shut down. Run the same command again: each reference continues from its last saved "
        "chunk (at most one chunk per reference is redone)."
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``parsl-optuna`` (a process lambda_hat owns: float64 on)."""
    enable_x64()
    args = command.build_parser().parse_args(argv)
    setup_logging(args.verbose)
    # Parsl starts its worker pool with fork+exec (subprocess), which is safe; JAX's fork hook
    # warns about any fork in a process that imported it.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    try:
        exp = load_tuning(args.config, command.overrides(args))
        plan = check_plan(exp, args.parsl_config, args.trial_target)
        class_stage.check_classes(plan)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("%s", command.describe(plan))
    if args.dry_run:
        return 0
    try:
        return execute(plan)
    except references.ReferenceInterrupted as exc:
        log.error("%s", interrupted_message(exc))
        return 130
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP (session.parsl_session)
        log.error(
            "interrupted: finished trials are saved; the executors were shut down. "
            "Run the same command again to resume."
        )
        return 130
