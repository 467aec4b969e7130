"""Validated winners: each study's best configurations re-run on fresh seeds (stage 2b).

The best of N noisy trials is biased low (the winner's curse): its error is partly the luck of
the one seed it ran with. After tuning, the ``top_k`` best successful trials of every study
(by objective, distinct hyperparameters) are re-run on ``seeds`` fresh seeds — the tuning seed
+ 1, + 2, ..., the same seeds for every candidate, so candidates are compared on common random
numbers — through the same Parsl submitter and content addresses as the tuning trials
(``StudyTask.locate``): a rerun of the command reuses every stored ``metrics.json`` and a
killed validation resumes where it stopped.

The recommendation of a study is the candidate with the lowest mean |λ̂ − λ̂_ref| over its
fresh seeds, among the candidates with the fewest failed seeds (a configuration that fails on
a fresh seed is not trusted over one that does not). It is recorded as the study's user attr
``validation`` (read it with :func:`recommendation`) and in ``<results>/validation.json``;
every run is a row of ``<results>/validation.parquet``.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pyarrow as pa
import pyarrow.parquet as pq

from lambda_hat import layout
from lambda_hat._io import atomic_write_bytes, atomic_write_json, to_jsonable
from lambda_hat.config.tuning import ValidateConfig
from lambda_hat.log import fmt_value, format_table
from lambda_hat.results import tables as results
from lambda_hat.results.parquet import to_table
from lambda_hat.study.task import StudyTask
from lambda_hat.study.tell import successful_trials
from lambda_hat.trial import submit as trial_submit
from lambda_hat.trial.outcome import estimate_error, failure_of, screen_estimate

log = logging.getLogger("lambda_hat.workflow")

#: The study user attr holding the recommendation (a dict, see :func:`recommendation`).
USER_ATTR = "validation"


# ------------------------------------------------------------------- the selection rule


@dataclass(frozen=True)
class Candidate:
    """One configuration to validate: its rank in the study (1 = best trial), the trial it
    came from, that trial's objective and signed error, and the full resolved hyperparameters
    (what the runs are addressed by)."""

    rank: int
    trial_number: int
    objective: float
    tuned_error: float | None
    hyperparams: dict


@dataclass
class Validated:
    """A candidate's fresh-seed outcomes: |error| of each successful run, failed-run count."""

    candidate: Candidate
    abs_errors: list[float] = field(default_factory=list)
    failed: int = 0

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.abs_errors) if self.abs_errors else None

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.abs_errors) if len(self.abs_errors) > 1 else None


def validation_seeds(tuning_seed: int, n: int) -> list[int]:
    """The ``n`` fresh seeds: ``tuning_seed + 1, ..., tuning_seed + n`` (never the tuning one)."""
    return [int(tuning_seed) + 1 + i for i in range(n)]


def top_candidates(
    scored: Iterable[tuple[float, int, dict, float | None]], k: int
) -> list[Candidate]:
    """The ``k`` best of ``(objective, trial_number, hyperparams, tuned_error)``: lowest
    objective first (ties: earlier trial), one candidate per distinct hyperparameter set."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for objective, number, hp, err in sorted(scored, key=lambda s: (s[0], s[1])):
        key = json.dumps(to_jsonable(hp), sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        out.append(Candidate(len(out) + 1, number, objective, err, hp))
        if len(out) == k:
            break
    return out


def pick(validated: list[Validated]) -> int | None:
    """Index of the recommended candidate: fewest failed seeds, then lowest mean |error|, then
    the better tuning rank; None when no candidate has a successful run."""
    usable = [i for i, v in enumerate(validated) if v.abs_errors]
    if not usable:
        return None
    return min(
        usable,
        key=lambda i: (validated[i].failed, validated[i].mean, validated[i].candidate.rank),
    )


# ------------------------------------------------------------------------ the stage


@dataclass
class StudyValidation:
    """The validation of one study: its candidates' outcomes, the index of the pick (None: no
    candidate had a successful run) and the Parquet rows."""

    task: StudyTask
    seeds: list[int]
    validated: list[Validated]
    rows: list[dict]
    chosen: int | None


@dataclass
class _Job:
    task: StudyTask
    candidate: Candidate
    seed: int
    payload: dict
    ref: dict  # the reference of this run's own posterior (task.trial_ref)
    metrics: dict | None = None


def candidates_of(task: StudyTask, k: int) -> list[Candidate]:
    """A study's top ``k`` successful trials as candidates, hyperparameters resolved as the
    driver resolves them (fixed values, then the trial's, then ``task.resolve``)."""
    scored = []
    for t in successful_trials(task.study.get_trials(deepcopy=False)):
        hp = {**task.fixed, **t.params}
        llc_ref = task.trial_ref(t.params).get("llc_ref")
        hp = task.resolve(hp) if task.resolve is not None else hp
        err = estimate_error(t.user_attrs.get("llc_hat"), llc_ref)
        scored.append((t.values[0], t.number, hp, err))
    return top_candidates(scored, k)


def _jobs(task: StudyTask, candidates: list[Candidate], seeds: list[int]) -> list[_Job]:
    jobs = []
    for cand in candidates:
        for seed in seeds:
            payload = dict(task.base_payload, hyperparams=cand.hyperparams, seed=seed)
            ref = task.trial_ref(cand.hyperparams)
            if task.refs is not None:  # a posterior setting (γ) varies: its own reference
                payload["ref"] = ref
            run_id, run_dir = task.locate(payload)
            payload.update(run_id=run_id, run_dir=str(run_dir))
            jobs.append(_Job(task, cand, seed, payload, ref))
    return jobs


def _run_jobs(jobs: list[_Job], submit: Callable[[dict], Future]) -> int:
    """Give every job its metrics: stored ones reused, the rest submitted at once and waited
    for (lost workers resubmitted ``task.max_retries`` times). Returns how many were reused."""

    def done(job: _Job, metrics: dict, stored: bool) -> None:
        job.metrics = metrics

    return trial_submit.run_all(
        [(job, job.payload, job.task.max_retries) for job in jobs],
        submit,
        done,
        what="run",
        label="validation",
        summary="validation: %d run(s), %d reused, %d submitted",
    )


def validate_studies(
    tasks: list[StudyTask],
    submit: Callable[[dict], Future],
    cfg: ValidateConfig | None,
    results_dir: str | Path,
) -> list[StudyValidation] | None:
    """The stage: validate every study, write ``validation.parquet`` and ``validation.json``
    under ``results_dir`` and the studies' ``validation`` user attr. ``cfg`` None: nothing is
    run or written, returns None."""
    if cfg is None:
        return None
    plans = []
    for task in tasks:
        seeds = validation_seeds(task.base_payload["seed"], cfg.seeds)
        cands = candidates_of(task, cfg.top_k)
        if not cands:
            log.warning("study %s: no successful trial to validate", task.name)
        plans.append((task, seeds, cands, _jobs(task, cands, seeds)))
    _run_jobs([j for *_, jobs in plans for j in jobs], submit)
    out = [_settle(task, seeds, cands, jobs) for task, seeds, cands, jobs in plans]
    results_dir = Path(results_dir)
    write_parquet([r for v in out for r in v.rows], results_dir / layout.VALIDATION_TABLE)
    atomic_write_json(
        results_dir / layout.VALIDATION_JSON, {"studies": {v.task.name: summary(v) for v in out}}
    )
    for v in out:
        if v.validated and v.chosen is None:
            log.error("study %s: every validation run failed; no recommendation", v.task.name)
        rec = summary(v)["recommended"]
        if rec is not None and v.task.study.user_attrs.get(USER_ATTR) != rec:
            v.task.study.set_user_attr(USER_ATTR, rec)
    return out


def _settle(
    task: StudyTask, seeds: list[int], cands: list[Candidate], jobs: list[_Job]
) -> StudyValidation:
    by_rank = {c.rank: Validated(c) for c in cands}
    rows = []
    for job in jobs:
        metrics = screen_estimate(dict(job.metrics or {}), job.ref)
        row = _row(job, metrics)
        rows.append(row)
        v = by_rank[job.candidate.rank]
        if row["status"] == "ok" and row["abs_error"] is not None:
            v.abs_errors.append(row["abs_error"])
        else:
            v.failed += 1
    validated = [by_rank[c.rank] for c in cands]
    return StudyValidation(task, seeds, validated, rows, pick(validated))


# --------------------------------------------------------------------- records


def _row(job: _Job, metrics: dict) -> dict:
    """One ``validation.parquet`` row: the run's identity, outcome and timing (the outcome
    columns of :func:`lambda_hat.results.tables.metrics_columns`)."""
    task, cand = job.task, job.candidate
    failure = failure_of(metrics) or {}
    cols = results.metrics_columns(metrics, job.ref)
    err = cols["error"]
    ok = metrics.get("status") == "ok" and err is not None
    diagnostics = metrics.get("diagnostics")
    return {
        "pid": task.pid,
        "method": task.method,
        "candidate": cand.rank,
        "trial_number": cand.trial_number,
        "seed": job.seed,
        "trial_id": job.payload["run_id"],
        "status": "ok" if ok else "failed",
        "hyperparams": to_jsonable(cand.hyperparams),
        **cols,
        "abs_error": abs(err) if err is not None else None,
        "diagnostics": None if diagnostics is None else json.dumps(to_jsonable(diagnostics)),
        "failure_kind": None if ok else failure.get("kind", "error"),
        "failure_message": None if ok else failure.get("message"),
        "run_dir": job.payload["run_dir"],
    }


_EXTRA = {"candidate": pa.int64(), "seed": pa.int64(), "abs_error": pa.float64()}
_COLUMNS = (
    "pid method candidate trial_number seed run_id status hyperparams llc_hat se_hat llc_ref "
    "se_ref error abs_error runtime_sec compile_sec failure_kind failure_message reused host started_at "
    "finished_at run_dir diagnostics"
).split()


def write_parquet(rows: list[dict], path: str | Path) -> Path:
    """``rows`` as Parquet at ``path``, atomically: the trials table's types
    (:func:`lambda_hat.results.parquet.to_table`, hyperparameters as a struct and one
    ``hp_<name>`` column each) with ``trial_id`` named ``run_id``, plus ``candidate``,
    ``seed`` and ``abs_error``."""
    table = to_table(rows)
    table = table.rename_columns(["run_id" if c == "trial_id" else c for c in table.column_names])
    for name, tp in _EXTRA.items():
        table = table.append_column(name, pa.array([r[name] for r in rows], type=tp))
    hp_cols = [c for c in table.column_names if c.startswith("hp_")]
    table = table.select(_COLUMNS + hp_cols)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    return atomic_write_bytes(path, buf.getvalue().to_pybytes())


def summary(v: StudyValidation) -> dict:
    """The JSON record of a study's validation; ``recommended`` is what the user attr holds."""
    cands = [
        {
            "candidate": x.candidate.rank,
            "trial_number": x.candidate.trial_number,
            "tuned_objective": x.candidate.objective,
            "tuned_error": x.candidate.tuned_error,
            "mean_abs_error": x.mean,
            "sd_abs_error": x.sd,
            "n_ok": len(x.abs_errors),
            "n_failed": x.failed,
            "hyperparams": x.candidate.hyperparams,
        }
        for x in v.validated
    ]
    rec = None if v.chosen is None else dict(cands[v.chosen], seeds=v.seeds)
    return to_jsonable({"seeds": v.seeds, "candidates": cands, "recommended": rec})


def recommendation(study: optuna.Study) -> dict | None:
    """The validated recommendation of a study (``hyperparams``, ``candidate``,
    ``trial_number``, ``mean_abs_error``, ``sd_abs_error``, ``n_ok``, ``n_failed``, ``seeds``,
    ``tuned_objective``, ``tuned_error``), or None when it was never validated."""
    rec = study.user_attrs.get(USER_ATTR)
    return dict(rec) if isinstance(rec, dict) else None


def table(out: list[StudyValidation]) -> str:
    """Per study and candidate: tuned |error| of its trial, validated mean |error| ± sd over
    the fresh seeds, successful/all runs and the searched hyperparameters; ``*`` marks the
    recommendation."""
    rows = []
    for v in out:
        if not v.validated:
            rows.append([v.task.name, "-", "-", "-", "-", "-", "no successful trial"])
        for i, x in enumerate(v.validated):
            c = x.candidate
            tuned = abs(c.tuned_error) if c.tuned_error is not None else c.objective
            searched = sorted((k, val) for k, val in c.hyperparams.items() if k in v.task.space)
            params = ", ".join(
                f"{k}={fmt_value(val, '.4g', '-', floats=True)}" for k, val in searched
            )
            rows.append(
                [
                    v.task.name,
                    f"{c.rank}{'*' if i == v.chosen else ''}",
                    f"#{c.trial_number}",
                    fmt_value(tuned, ".4g", "-", floats=True),
                    f"{fmt_value(x.mean, '.4g', '-', floats=True)} ± "
                    f"{fmt_value(x.sd, '.4g', '-', floats=True)}",
                    f"{len(x.abs_errors)}/{len(x.abs_errors) + x.failed}",
                    params,
                ]
            )
    header = ["study", "cand", "trial", "tuned |err|", "validated |err|", "ok", "hyperparameters"]
    return format_table(header, rows)
