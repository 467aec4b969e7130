"""``lambda-hat run``: the experiments after tuning — problems x methods x hyperparameter sets
x seeds, each run once, into ``<results>/llc_runs.parquet``.

Stages, in order (the same pieces as ``parsl-optuna``):

0. **Check** (nothing is written): the experiments YAML (:mod:`lambda_hat.config.runs`),
   every ``from_study`` set resolved against its stored study — ``pick: best`` the study's best
   successful trial (its full hyperparameters from the trial's ``metrics.json``), ``pick:
   validated`` the validation stage's recommendation
   (:func:`lambda_hat.study.validation.recommendation`) — and the Parsl config. A missing
   results folder, study or validation is a :class:`ConfigError` that says what to run first.
1. **References**: the reference stage (:func:`lambda_hat.reference.stage.reference_stage`):
   one per (problem, posterior γ), read on the driver when stored, else one Parsl app each.
2. **Runs**: one Parsl app per (problem, method, set, seed), the tuning trial's app body
   (:func:`execution.execute_trial` -> :func:`lambda_hat.trial.runner.run_method_trial`) at the
   runner's content address (:func:`lambda_hat.trial.identity.run_dir_for`): a stored result is reused,
   so a rerun costs nothing and a killed run resumes; a lost worker is resubmitted.
3. **Table**: ``llc_runs.parquet`` (:data:`RUN_COLUMNS`, rows from
   :mod:`lambda_hat.results.tables`), written atomically, and a summary per (problem,
   method, set): mean λ̂ over the seeds, their spread, the agreement with the reference and
   with theory where it is known.

Exit codes: 0 every run succeeded; 1 some run or reference failed; 2 bad input.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pyarrow as pa

from lambda_hat import layout
from lambda_hat.config.problem import ProblemSpec
from lambda_hat.config.runs import FromStudy, Runs
from lambda_hat.config.schema import ConfigError, as_dict
from lambda_hat.log import Progress, fmt_seconds
from lambda_hat.parallel import apps as execution
from lambda_hat.problem.build import problem_id
from lambda_hat.reference import stage as references
from lambda_hat.results import tables as results
from lambda_hat.runs.summary import summary_table
from lambda_hat.study import storage as studies
from lambda_hat.study import validation
from lambda_hat.study.tell import best_successful
from lambda_hat.trial import identity as runs
from lambda_hat.trial.outcome import (
    TRACEBACK_CHARS,
    failed_metrics,
    failure_of,
    from_exception,
    is_retryable,
    screen_estimate,
)

log = logging.getLogger("lambda_hat.workflow")

PARQUET_NAME = layout.RUNS_TABLE

#: ``llc_runs.parquet``: the run's identity and source, then the problem and the outcome.
RUN_COLUMNS: dict[str, pa.DataType] = {
    "pid": pa.string(),
    "method": pa.string(),
    "set": pa.int64(),
    "seed": pa.int64(),
    "run_id": pa.string(),
    "status": pa.string(),
    "source_study": pa.string(),
    "source_trial": pa.int64(),
    "source_pick": pa.string(),
    **results.PROBLEM_COLUMNS,
    **results.METRIC_COLUMNS,
}


@dataclass(frozen=True)
class RunSet:
    """One resolved hyperparameter set of a method on one problem: its index in
    ``methods.<method>``, the full hyperparameters, and the study and trial they came from."""

    method: str
    index: int
    hyperparams: dict
    source_study: str | None = None
    source_trial: int | None = None
    source_pick: str | None = None


@dataclass
class ExperimentPlan:
    """Everything the run needs, checked before anything is written."""

    exp: Runs
    specs: dict[str, ProblemSpec]
    problems: dict[str, dict]  # pid -> results.problem_columns
    sets: dict[str, list[RunSet]]  # pid -> its sets, every method
    parsl_config: Any
    artifacts: Path
    results: Path

    def gammas(self, pid: str) -> list[float]:
        """γ of every posterior the problem's runs sample: the reference's, then the sets'."""
        first = float(self.exp.config.reference.gamma)
        out = {self.gamma_of(s) for s in self.sets[pid]}
        return [first, *sorted(out - {first})]

    def gamma_of(self, runset: RunSet) -> float:
        """The γ of the posterior a set's runs sample (the reference's unless it sets one)."""
        gamma = runset.hyperparams.get("gamma")
        return float(self.exp.config.reference.gamma if gamma is None else gamma)


# ---------------------------------------------------------------------------- stage 0


def _storage_of(fs: FromStudy, where: str):
    """The tuning run's storage; a ConfigError saying what to run when there is none."""
    tune = "run parsl-optuna with the tuning config first (e.g. parsl-optuna --config "
    tune += "config/optuna_demo.yaml --local), or point from_study.results at its paths.results."
    if fs.storage is not None:
        return studies.open_storage_at(fs.storage), studies.describe_storage(fs.storage)
    folder = Path(fs.results)
    if not folder.is_dir():
        raise ConfigError(f"{where}.results", f"there is no results folder {folder}.", tune)
    journal = studies.journal_path(folder)
    if not journal.is_file():
        raise ConfigError(f"{where}.results", f"{folder} holds no study journal {journal}.", tune)
    return studies.open_storage_at(journal), str(journal)


def _tuned(study: optuna.Study, fs: FromStudy, where: str) -> tuple[dict, int]:
    """The picked hyperparameters of ``study`` and the trial they came from."""
    name = study.study_name
    if fs.pick == "validated":
        rec = validation.recommendation(study)
        if rec is None:
            raise ConfigError(
                f"{where}.pick",
                f"study {name} has no validated recommendation.",
                "run parsl-optuna with optuna.validate set (e.g. {top_k: 3, seeds: 3}) and "
                "the same config first, or use pick: best.",
            )
        return dict(rec["hyperparams"]), int(rec["trial_number"])
    best = best_successful(study)
    if best is None:
        raise ConfigError(
            f"{where}.pick",
            f"study {name} has no successful trial.",
            "tune it further (raise optuna.max_trials and rerun parsl-optuna) or use fixed values.",
        )
    metrics = runs.load_metrics(best.user_attrs.get("run_dir") or "")
    if not metrics or not isinstance(metrics.get("hyperparams"), dict):
        raise ConfigError(
            f"{where}.pick",
            f"the run of trial #{best.number} of {name} ({best.user_attrs.get('run_dir')}) has "
            "no metrics.json with its hyperparameters.",
            "run lambda-hat run where the tuning run's artifacts are, or use fixed values.",
        )
    return dict(metrics["hyperparams"]), best.number


def _from_study(fs: FromStudy, pid: str, method: str, where: str, opened: dict) -> tuple:
    """``(hyperparams, study name, trial number)`` of a ``from_study`` set on problem ``pid``."""
    key = fs.storage or str(Path(fs.results).resolve())
    if key not in opened:
        opened[key] = _storage_of(fs, f"{where}.from_study")
    storage, described = opened[key]
    name = studies.study_name(pid, method)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        raise ConfigError(
            f"{where}.from_study",
            f"{described} has no study {name} (it has: {', '.join(sorted(names)) or 'none'}).",
            f"tune this problem with {method} first (the problem must be written as in the "
            "tuning config, so that its pid is the same), or use fixed values.",
        )
    study = optuna.load_study(study_name=name, storage=storage)
    hp, number = _tuned(study, fs, f"{where}.from_study")
    return hp, name, number


def _resolve_sets(exp: Runs, pids: list[str]) -> dict[str, list[RunSet]]:
    cfg, opened = exp.config, {}
    out: dict[str, list[RunSet]] = {pid: [] for pid in pids}
    try:
        for method, sets in cfg.methods.items():
            for i, hs in enumerate(sets):
                where = f"methods.{method}[{i}]"
                for pid in pids:
                    source: tuple = (None, None, None)
                    hp = dict(hs.fixed)
                    if hs.from_study is not None:
                        tuned, name, number = _from_study(hs.from_study, pid, method, where, opened)
                        hp = {**tuned, **hs.fixed}
                        source = (name, number, hs.from_study.pick)
                    hp = runs.resolve_hyperparams(method, hp, f"{where}.fixed")
                    out[pid].append(RunSet(method, i, hp, *source))
    finally:
        for storage, _ in opened.values():
            if isinstance(storage, studies.Journal):
                storage.backend.close()
    return out


def plan_experiments(exp: Runs, parsl_config_path: str | None = None) -> ExperimentPlan:
    """Stage 0: resolve every set and load the Parsl config; raises ConfigError, writes nothing.

    ``parsl_config_path`` None: this machine, one worker per core (``--local``)."""
    specs: dict[str, ProblemSpec] = {}
    for spec in exp.problems:
        specs.setdefault(problem_id(spec), spec)
    try:
        sets = _resolve_sets(exp, list(specs))
    except ConfigError as exc:
        raise ConfigError(exc.where, exc.problem, exc.fix, source=exp.source) from None
    paths = exp.config.paths
    res = Path(paths.results).resolve()
    parsl_config = (
        execution.load_parsl_config(parsl_config_path)
        if parsl_config_path
        else execution.local_config(run_dir=res / layout.RUNINFO)
    )
    return ExperimentPlan(
        exp,
        specs,
        results.problem_table(exp.config.problems, exp.problems),
        sets,
        parsl_config,
        Path(paths.artifacts).resolve(),
        res,
    )


def describe(plan: ExperimentPlan) -> str:
    """The plan in a few lines: counts, then every set with its source."""
    cfg = plan.exp.config
    n_runs = sum(len(s) for s in plan.sets.values()) * len(cfg.seeds)
    lines = [
        f"config {plan.exp.source}: {len(plan.specs)} problem(s), {n_runs} run(s) "
        f"(seeds {cfg.seeds}, {fmt_seconds(cfg.budget_sec)} each); artifacts {plan.artifacts}"
    ]
    for pid, sets in plan.sets.items():
        for s in sets:
            src = (
                f" from {s.source_study} #{s.source_trial} ({s.source_pick})"
                if s.source_study
                else ""
            )
            label = results.study_label(plan.problems[pid]["label"], s.method)
            lines.append(f"  {label} ({pid}) set {s.index}{src}: {s.hyperparams}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- stages 1-2


@dataclass
class Job:
    """One run: where it is, what it runs, and (once done) its metrics."""

    pid: str
    runset: RunSet
    seed: int
    payload: dict
    ref: dict
    metrics: dict | None = None
    attempts: int = 1


def _result(fut: Future) -> dict:
    try:
        out = fut.result()
        if not isinstance(out, dict):
            raise TypeError(f"the app returned {type(out).__name__}, not a dict")
        return out
    except Exception as exc:
        return failed_metrics(**from_exception(exc, traceback_chars=TRACEBACK_CHARS))


def make_jobs(plan: ExperimentPlan, refs: references.References) -> tuple[list[Job], list[str]]:
    """Every run of the usable problems at its content address, and why others were left."""
    cfg, jobs, skipped = plan.exp.config, [], []
    for pid, spec in plan.specs.items():
        why = references.unusable(refs, pid, cfg.allow_failed_reference, "allow_failed_reference")
        if why:
            skipped.append(f"problem {pid} ({plan.problems[pid]['label']}) is not run: {why}")
            continue
        for s in plan.sets[pid]:
            ref = refs.at(pid, plan.gamma_of(s))
            ref = {k: v for k, v in ref.items() if k != "summary"}
            for seed in cfg.seeds:
                payload = {
                    "pid": pid,
                    "spec": as_dict(spec),
                    "method": s.method,
                    "hyperparams": s.hyperparams,
                    "budget_sec": cfg.budget_sec,
                    "seed": seed,
                    "ref": ref,
                    "artifacts": str(plan.artifacts),
                    "target": execution.DEFAULT_TRIAL_TARGET,
                    "isolate": cfg.isolate,
                    "timeout_grace": cfg.timeout_grace,
                }
                manifest = runs.manifest(
                    pid, spec.data.n, s.method, s.hyperparams, cfg.budget_sec, seed, ref
                )
                run_dir = runs.run_dir_for(plan.artifacts, pid, s.method, manifest)
                payload.update(run_id=run_dir.name, run_dir=str(run_dir))
                jobs.append(Job(pid, s, seed, payload, ref))
    return jobs, skipped


def run_jobs(jobs: list[Job], submit: Callable[[dict], Future], max_retries: int) -> int:
    """Give every job its metrics: stored results reused, the rest submitted at once and
    waited for (a lost worker's run resubmitted up to ``max_retries`` times). Returns the
    number reused."""
    pending: dict[Future, Job] = {}
    reused = 0
    for job in jobs:
        stored = execution.load_valid_metrics(job.payload["run_dir"])
        if stored is not None:
            job.metrics, reused = dict(stored, reused=True), reused + 1
        else:
            pending[_submit(submit, job.payload)] = job
    log.info("runs: %d, %d reused, %d submitted", len(jobs), reused, len(pending))
    total, progress = len(pending), Progress(log, "runs", len(pending), "runs", every_sec=10.0)
    while pending:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for fut in done:
            job = pending.pop(fut)
            metrics = _result(fut)
            if is_retryable(metrics, job.attempts, max_retries):
                job.attempts += 1
                pending[_submit(submit, job.payload)] = job
                continue
            job.metrics = screen_estimate(metrics, job.ref)
            progress.update(total - len(pending))
    return reused


def _submit(submit: Callable[[dict], Future], payload: dict) -> Future:
    try:
        return submit(payload)
    except Exception as exc:
        fut: Future = Future()
        fut.set_exception(exc)
        return fut


# ---------------------------------------------------------------------------- stage 3


def job_row(plan: ExperimentPlan, job: Job) -> dict:
    """One ``llc_runs.parquet`` row (:data:`RUN_COLUMNS`)."""
    metrics = dict(job.metrics or {})
    failure = failure_of(metrics)
    cols = results.metrics_columns(metrics, job.ref)
    ok = metrics.get("status") == "ok" and failure is None and cols["llc_hat"] is not None
    s = job.runset
    return {
        "pid": job.pid,
        "method": s.method,
        "set": s.index,
        "seed": job.seed,
        "run_id": job.payload["run_id"],
        "status": "ok" if ok else "failed",
        "source_study": s.source_study,
        "source_trial": s.source_trial,
        "source_pick": s.source_pick,
        "hyperparams": s.hyperparams,
        **plan.problems[job.pid],
        **cols,
        "failure_kind": None if ok else (failure or {}).get("kind", "error"),
        "failure_message": None if ok else (failure or {}).get("message"),
        "run_dir": job.payload["run_dir"],
    }


def execute(
    plan: ExperimentPlan,
    submit_trial: Callable[[dict], Future] | None = None,
    submit_reference: Callable[[dict], Future] | None = None,
) -> int:
    """Stages 1-3 (after :func:`plan_experiments`); returns the exit code. The submitters
    default to the Parsl apps inside a session of ``plan.parsl_config``; given both, no Parsl
    is started (tests)."""
    t0 = time.monotonic()
    plan.results.mkdir(parents=True, exist_ok=True)
    if submit_trial is None or submit_reference is None:
        with execution.parsl_session(plan.parsl_config, plan.results / layout.RUNINFO):
            jobs, skipped = _stages(
                plan, execution.trial_submitter(), execution.reference_submitter()
            )
    else:
        jobs, skipped = _stages(plan, submit_trial, submit_reference)
    rows = [job_row(plan, j) for j in jobs]
    path = results.write_parquet(rows, plan.results / PARQUET_NAME, RUN_COLUMNS)
    print(summary_table(rows))
    for line in skipped:
        log.error("%s", line)
    failed = sum(r["status"] != "ok" for r in rows)
    if failed:
        log.error("%d of %d run(s) failed (failure_kind in %s)", failed, len(rows), path)
    log.info("wrote %s (%s)", path, fmt_seconds(time.monotonic() - t0))
    return 1 if failed or skipped else 0


def _stages(plan: ExperimentPlan, submit_trial, submit_reference) -> tuple[list[Job], list[str]]:
    cfg, gammas = plan.exp.config, {pid: plan.gammas(pid) for pid in plan.specs}
    refs = references.reference_stage(
        plan.specs.values(), cfg.reference, plan.artifacts, submit_reference, gammas
    )
    jobs, skipped = make_jobs(plan, refs)
    run_jobs(jobs, submit_trial, plan.exp.config.infrastructure_retries)
    return jobs, skipped
