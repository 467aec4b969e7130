"""``lambda-hat run``: the experiments after tuning — problems x methods x hyperparameter sets
x seeds, each run once, into ``<results>/llc_runs.parquet``.

Stages, in order (the same pieces as ``parsl-optuna``):

0. **Check** (nothing is written, :mod:`lambda_hat.runs.plan`): the experiments YAML, every
   ``from_study`` set resolved against its stored study, and the Parsl config.
1. **References**: the reference stage (:func:`lambda_hat.reference.stage.reference_stage`):
   one per (problem, posterior γ), read on the driver when stored, else one Parsl app each.
2. **Runs**: one Parsl app per (problem, method, set, seed), the tuning trial's app body
   (:func:`lambda_hat.trial.app.execute_trial` -> :func:`lambda_hat.trial.runner.run_method_trial`)
   at the runner's content address (:func:`lambda_hat.trial.identity.locator`): a stored result
   is reused, so a rerun costs nothing and a killed run resumes; a lost worker is resubmitted.
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
from concurrent.futures import Future
from dataclasses import dataclass

import pyarrow as pa

from lambda_hat import layout
from lambda_hat.log import fmt_seconds
from lambda_hat.parallel import session
from lambda_hat.reference import app as reference_app
from lambda_hat.reference import stage as references
from lambda_hat.results import tables as results
from lambda_hat.results.parquet import write_parquet
from lambda_hat.runs.plan import ExperimentPlan, RunSet, describe, plan_experiments
from lambda_hat.runs.summary import summary_table
from lambda_hat.schema import as_dict
from lambda_hat.trial import identity as runs
from lambda_hat.trial import submit as trial_submit
from lambda_hat.trial.outcome import (
    failure_of,
    screen_estimate,
)

__all__ = [
    "RUN_COLUMNS",
    "ExperimentPlan",
    "Job",
    "describe",
    "execute",
    "make_jobs",
    "plan_experiments",
    "run_columns",
    "run_jobs",
]

log = logging.getLogger("lambda_hat.workflow")


#: ``llc_runs.parquet``: the run's identity and source (``from_class``: the class study of a
#: ``from_study: {class}`` set; ``ref_kind``: hmc | theory | none; ``eps_max``: the method's
#: stability limit on the problem), then the problem and the outcome; a ``<name>_units``
#: column per hyperparameter given in ε_max units follows ``eps_max`` (:func:`run_columns`).
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
    "from_class": pa.string(),
    "ref_kind": pa.string(),
    "eps_max": pa.float64(),
    **results.PROBLEM_COLUMNS,
    **results.METRIC_COLUMNS,
}


def run_columns(rows: list[dict]) -> dict[str, pa.DataType]:
    """:data:`RUN_COLUMNS` with a ``<name>_units`` column (the fraction of ε_max) after
    ``eps_max`` for every hyperparameter some row gives in units."""
    names = sorted({k for r in rows for k in r.get("units") or {}})
    out: dict[str, pa.DataType] = {}
    for key, tp in RUN_COLUMNS.items():
        out[key] = tp
        if key == "eps_max":
            out.update({f"{n}_units": pa.float64() for n in names})
    return out


# ---------------------------------------------------------------------------- stages 1-2


@dataclass
class Job:
    """One run: where it is, what it runs, and (once done) its metrics."""

    pid: str
    runset: RunSet
    seed: int
    payload: dict
    ref: dict
    eps_max: float | None = None
    metrics: dict | None = None


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
            try:
                hp, eps_max = s.absolute(ref.get("curvature"))
            except ValueError as exc:
                label = results.study_label(plan.problems[pid]["label"], s.method)
                skipped.append(f"{label} ({pid}) set {s.index} is not run: {exc}")
                continue
            locate = runs.locator(
                runs.DEFAULT_TRIAL_TARGET, plan.artifacts, pid, spec.data.n, s.method
            )
            for seed in cfg.seeds:
                payload = {
                    "pid": pid,
                    "spec": as_dict(spec),
                    "method": s.method,
                    "hyperparams": hp,
                    "budget_sec": cfg.budget_sec,
                    "seed": seed,
                    "ref": ref,
                    "artifacts": str(plan.artifacts),
                    "target": runs.DEFAULT_TRIAL_TARGET,
                    "isolate": cfg.isolate,
                    "timeout_grace": cfg.timeout_grace,
                }
                run_id, run_dir = locate(payload)
                payload.update(run_id=run_id, run_dir=str(run_dir))
                jobs.append(Job(pid, s, seed, payload, ref, eps_max))
    return jobs, skipped


def run_jobs(jobs: list[Job], submit: Callable[[dict], Future], max_retries: int) -> int:
    """Give every job its metrics: stored results reused, the rest submitted at once and
    waited for (a lost worker's run resubmitted up to ``max_retries`` times). Returns the
    number reused."""

    def done(job: Job, metrics: dict, stored: bool) -> None:
        job.metrics = metrics if stored else screen_estimate(metrics, job.ref)

    return trial_submit.run_all(
        [(job, job.payload, max_retries) for job in jobs],
        submit,
        done,
        what="app",
        label="runs",
        summary="runs: %d, %d reused, %d submitted",
    )


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
        "from_class": s.from_class,
        "ref_kind": job.ref.get("kind", "hmc"),
        "eps_max": job.eps_max,
        **{f"{k}_units": f for k, f in s.units.items()},
        "units": s.units,
        "hyperparams": job.payload["hyperparams"],
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
        with session.parsl_session(plan.parsl_config, plan.results / layout.RUNINFO):
            jobs, skipped = _stages(plan, trial_submit.submitter(), reference_app.submitter())
    else:
        jobs, skipped = _stages(plan, submit_trial, submit_reference)
    rows = [job_row(plan, j) for j in jobs]
    path = write_parquet(rows, plan.results / layout.RUNS_TABLE, run_columns(rows))
    verdicts = {
        (pid, s.method, s.index): s.source_verdict for pid, sets in plan.sets.items() for s in sets
    }
    print(summary_table(rows, verdicts))
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
        plan.specs.values(),
        cfg.reference,
        plan.artifacts,
        submit_reference,
        gammas,
        kinds=plan.exp.kinds,
    )
    jobs, skipped = make_jobs(plan, refs)
    run_jobs(jobs, submit_trial, plan.exp.config.infrastructure_retries)
    return jobs, skipped
