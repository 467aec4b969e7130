"""Validated winners: each study's best configurations re-run on fresh seeds (stage 2b).

The best of N noisy trials is biased low (the winner's curse): its error is partly the luck of
the one seed it ran with. After tuning, the ``top_k`` best successful trials of every study
(by objective, distinct hyperparameters) are re-run on ``seeds`` fresh seeds — the tuning seed
+ 1, + 2, ..., the same seeds for every candidate, so candidates are compared on common random
numbers — through the same Parsl submitter and content addresses as the tuning trials
(``StudyTask.locate``): a rerun of the command reuses every stored ``metrics.json`` and a
killed validation resumes where it stopped.

The recommendation of a study is, among the candidates with the fewest failed seeds (a
configuration that fails on a fresh seed is not trusted over one that does not), the one whose
validated error is best by the study's objective: with ``ucb`` (the default) the mean signed
error's |ē| plus ``ucb_sigmas`` combined SEs (:meth:`Validated.bound`, the tuning objective
applied to the fresh-seed mean), with ``abs``/``huber`` the lowest mean |λ̂ − λ̂_ref|. Each
candidate gets a verdict (:func:`lambda_hat.study.reliability.verdict`: "reliable" when its
mean error is within two combined SEs of the reference). The recommendation and its verdict
(``reliable``, ``reliability``) are the study's user attr ``validation`` (read it with
:func:`recommendation`) and in ``<results>/validation.json``; every candidate's verdict is the
user attr ``validation_verdicts`` (by trial number, for ``lambda-hat run``'s ``pick: best``);
every run is a row of ``<results>/validation.parquet``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import optuna

from lambda_hat import layout
from lambda_hat._io import atomic_write_json, to_jsonable
from lambda_hat.config.tuning import ValidateConfig
from lambda_hat.log import fmt_value, format_table
from lambda_hat.study import reliability
from lambda_hat.study.candidates import (
    Candidate,
    Validated,
    pick,
    top_candidates,
    validation_seeds,
)
from lambda_hat.study.task import StudyTask
from lambda_hat.study.tell import successful_trials
from lambda_hat.study.validation_rows import run_row, write_parquet
from lambda_hat.trial import submit as trial_submit
from lambda_hat.trial.outcome import estimate_error, screen_estimate

__all__ = [
    "Candidate",
    "StudyValidation",
    "Validated",
    "pick",
    "recommendation",
    "table",
    "top_candidates",
    "validate_studies",
    "validation_seeds",
    "verdict_of_trial",
    "write_parquet",
]

log = logging.getLogger("lambda_hat.workflow")

#: The study user attr holding the recommendation (a dict, see :func:`recommendation`).
USER_ATTR = "validation"
#: The study user attr holding every candidate's verdict: {trial number: {reliable, reliability}}.
VERDICTS_ATTR = "validation_verdicts"


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
    fix: str = ""  # what would make a recommendation that is not reliable hold up

    def verdict(self, i: int) -> dict:
        """Candidate ``i``'s ``{"reliable", "reliability"}`` (:func:`reliability.verdict`)."""
        x = self.validated[i]
        return reliability.verdict(x.errors, x.se_hats, x.se_ref, x.candidate.tuned_error, self.fix)

    @property
    def study_verdict(self) -> dict:
        """The recommendation's verdict; without one, not reliable (nothing held up)."""
        if self.chosen is not None:
            return self.verdict(self.chosen)
        reason = (
            "no candidate had a successful validation run"
            if self.validated
            else ("no successful trial to validate")
        )
        return {"reliable": False, "reliability": {"z": None, "reason": reason, "fix": self.fix}}


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


def _fix(task: StudyTask, top_k: int) -> str:
    """The study's fix text: its finished trials and the high end of its searched ``steps``."""
    steps = task.space.get("steps")
    high = getattr(steps, "high", None) if steps is not None else task.fixed.get("steps")
    return reliability.fix_text(task.method, task.counts.finished or None, high, top_k)


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
    out = [
        _settle(task, seeds, cands, jobs, _fix(task, cfg.top_k))
        for task, seeds, cands, jobs in plans
    ]
    results_dir = Path(results_dir)
    write_parquet([r for v in out for r in v.rows], results_dir / layout.VALIDATION_TABLE)
    atomic_write_json(
        results_dir / layout.VALIDATION_JSON, {"studies": {v.task.name: summary(v) for v in out}}
    )
    for v in out:
        if v.validated and v.chosen is None:
            log.error("study %s: every validation run failed; no recommendation", v.task.name)
        record = summary(v)
        attrs = v.task.study.user_attrs
        rec = record["recommended"]
        if rec is not None and attrs.get(USER_ATTR) != rec:
            v.task.study.set_user_attr(USER_ATTR, rec)
        if v.validated and attrs.get(VERDICTS_ATTR) != verdicts(record):
            v.task.study.set_user_attr(VERDICTS_ATTR, verdicts(record))
        if rec is not None and not rec["reliable"]:
            log.warning(
                "study %s: the recommendation is not reliable yet: %s. Fix: %s",
                v.task.name,
                rec["reliability"]["reason"],
                rec["reliability"]["fix"],
            )
    return out


def _settle(
    task: StudyTask, seeds: list[int], cands: list[Candidate], jobs: list[_Job], fix: str
) -> StudyValidation:
    by_rank = {
        c.rank: Validated(c, se_ref=task.trial_ref(c.hyperparams).get("se_ref")) for c in cands
    }
    rows = []
    for job in jobs:
        metrics = screen_estimate(dict(job.metrics or {}), job.ref)
        cand = job.candidate
        where = {
            "pid": task.pid,
            "method": task.method,
            "candidate": cand.rank,
            "trial_number": cand.trial_number,
            "seed": job.seed,
        }
        row = run_row(where, cand.hyperparams, job.payload, job.ref, metrics)
        rows.append(row)
        v = by_rank[job.candidate.rank]
        if row["status"] == "ok" and row["error"] is not None:
            v.errors.append(row["error"])
            v.se_hats.append(row["se_hat"])
        else:
            v.failed += 1
    validated = [by_rank[c.rank] for c in cands]
    sigmas = task.ucb_sigmas if task.objective == "ucb" else None
    return StudyValidation(task, seeds, validated, rows, pick(validated, sigmas), fix)


# --------------------------------------------------------------------- records


def summary(v: StudyValidation) -> dict:
    """The JSON record of a study's validation: ``seeds``, ``candidates`` (each with its
    verdict), ``recommended`` (what the user attr holds) and the study's ``reliable`` and
    ``reliability`` (the recommendation's verdict; not reliable without one)."""
    cands = [
        {
            "candidate": x.candidate.rank,
            "trial_number": x.candidate.trial_number,
            "tuned_objective": x.candidate.objective,
            "tuned_error": x.candidate.tuned_error,
            "mean_abs_error": x.mean,
            "sd_abs_error": x.sd,
            "mean_error": x.mean_error,
            "se_mean_error": x.se_mean,
            "n_ok": len(x.errors),
            "n_failed": x.failed,
            "hyperparams": x.candidate.hyperparams,
            **v.verdict(i),
        }
        for i, x in enumerate(v.validated)
    ]
    rec = None if v.chosen is None else dict(cands[v.chosen], seeds=v.seeds)
    out = {"seeds": v.seeds, "candidates": cands, "recommended": rec, **v.study_verdict}
    return to_jsonable(out)


def verdicts(record: dict) -> dict:
    """Every candidate's verdict by trial number (the ``validation_verdicts`` user attr) from
    a :func:`summary` record."""
    return {
        str(c["trial_number"]): {"reliable": c["reliable"], "reliability": c["reliability"]}
        for c in record["candidates"]
    }


def recommendation(study: optuna.Study) -> dict | None:
    """The validated recommendation of a study (``hyperparams``, ``candidate``,
    ``trial_number``, ``mean_abs_error``, ``sd_abs_error``, ``mean_error``, ``se_mean_error``,
    ``n_ok``, ``n_failed``, ``seeds``, ``tuned_objective``, ``tuned_error``, ``reliable``,
    ``reliability``), or None when it was never validated."""
    rec = study.user_attrs.get(USER_ATTR)
    return dict(rec) if isinstance(rec, dict) else None


def verdict_of_trial(study: optuna.Study, number: int) -> dict | None:
    """``{"reliable", "reliability"}`` of trial ``number`` when it was validated, else None."""
    stored = study.user_attrs.get(VERDICTS_ATTR)
    found = stored.get(str(number)) if isinstance(stored, dict) else None
    return dict(found) if isinstance(found, dict) else None


def _candidate_row(v: StudyValidation, i: int) -> list[str]:
    x = v.validated[i]
    c = x.candidate
    tuned = abs(c.tuned_error) if c.tuned_error is not None else c.objective
    searched = sorted((k, val) for k, val in c.hyperparams.items() if k in v.task.space)
    params = ", ".join(f"{k}={fmt_value(val, '.4g', '-', floats=True)}" for k, val in searched)
    return [
        v.task.name,
        f"{c.rank}{'*' if i == v.chosen else ''}",
        f"#{c.trial_number}",
        fmt_value(tuned, ".4g", "-", floats=True),
        f"{fmt_value(x.mean, '.4g', '-', floats=True)} ± {fmt_value(x.sd, '.4g', '-', floats=True)}",
        fmt_value(x.z, "+.2f", "-"),
        f"{len(x.errors)}/{len(x.errors) + x.failed}",
        params,
    ]


def table(out: list[StudyValidation]) -> str:
    """Per study and candidate: tuned |error| of its trial, validated mean |error| ± sd over
    the fresh seeds, z of the validated mean error against the reference (combined SE),
    successful/all runs and the searched hyperparameters; ``*`` marks the recommendation.
    Below, one line per study: its recommendation's mark, "reliable" or "not reliable yet"
    with the reason and the fix (:func:`lambda_hat.study.reliability.verdict`)."""
    rows, notes = [], []
    for v in out:
        if not v.validated:
            rows.append([v.task.name, "-", "-", "-", "-", "-", "-", "no successful trial"])
        rows.extend(_candidate_row(v, i) for i in range(len(v.validated)))
        which = "" if v.chosen is None else f" (candidate {v.chosen + 1})"
        notes.append(reliability.mark_line(f"{v.task.name}{which}", v.study_verdict))
    header = "study cand trial".split()
    header += ["tuned |err|", "validated |err|", "z", "ok", "hyperparameters"]
    return "\n".join([format_table(header, rows), *notes])
