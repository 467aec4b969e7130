"""After a class study: its recommendation and the held-out proof (plans/transfer.md).

1. **Recommendation.** The study's ``top_k`` settings re-run on every train member with fresh
   seeds (``optuna.validate``); the setting with the lowest mean class objective is the
   validated pick. ``<results>/classes/<class>/<method>/recommendation.json`` holds it in units
   (what ``lambda-hat run``'s ``from_study: {class: NAME}`` converts per problem).
2. **Held-out proof.** The same settings, and for SGLD the fixed baseline a devinterp user
   starts from (ε = 1e-4 absolute, RMSProp, 4 chains × 2,000 steps, the same posterior), run
   on every holdout member with ``holdout_seeds`` fresh seeds: ``<results>/transfer.parquet``
   (one row per run) and a printed table per holdout member.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from lambda_hat import layout
from lambda_hat._io import finite_float, read_json
from lambda_hat.config.recommendation import ClassRecommendation, write_class_recommendation
from lambda_hat.log import fmt_value, format_table
from lambda_hat.results.parquet import write_parquet
from lambda_hat.study.candidates import validation_seeds
from lambda_hat.study.classes import ClassTask, Member
from lambda_hat.study.tell import best_successful, successful_trials
from lambda_hat.trial import submit as trial_submit
from lambda_hat.trial.outcome import estimate_error

__all__ = ["BASELINE_SGLD", "Setting", "holdout_proof", "recommend", "transfer_table"]

log = logging.getLogger("lambda_hat.workflow")

BASELINE_SGLD = {
    "eta0": 1e-4,
    "precond_type": "rmsprop",
    "chains": 4,
    "steps": 2000,
}
"""The fixed SGLD baseline (absolute ε; Hitchcock & Hoogland 2025 recommend RMSProp)."""


@dataclass
class Setting:
    """One setting of a class study: its trial, its units, its tuned objective."""

    name: str
    units: dict
    trial: int | None
    objective: float | None
    absolute: bool = False  # the baseline: absolute values, no ε_max conversion
    steps_unit: str = "count"  # relaxation: steps scaled by ε_max(train) / ε_max(member)


def top_settings(task: ClassTask, k: int) -> list[Setting]:
    ok = sorted(successful_trials(task.study.get_trials(deepcopy=False)), key=lambda t: t.values[0])
    return [
        Setting(f"#{t.number}", {**task.fixed, **t.params}, t.number, t.values[0]) for t in ok[:k]
    ]


def _run(task: ClassTask, jobs: list[tuple], submit, label: str) -> None:
    """``jobs``: ``(key, setting, member, seed)``; fills ``out[key]`` with each run's metrics."""
    work = []
    for job in jobs:
        _, setting, member, seed = job
        try:
            if setting.absolute:
                payload = dict(task.payload_of(member), hyperparams=task.resolve(setting.units))
                payload["seed"] = seed
                run_id, run_dir = task.locate_of(member)(payload)
                payload.update(run_id=run_id, run_dir=str(run_dir))
            else:
                payload = task.payload(setting.units, member, seed, setting.steps_unit)
        except ValueError as exc:
            job[0]["metrics"] = {
                "status": "failed",
                "failure": {"kind": "error", "message": str(exc)},
            }
            continue
        work.append((job[0], payload, task.max_retries))

    def done(slot: dict, metrics: dict, stored: bool) -> None:
        slot["metrics"] = metrics

    trial_submit.run_all(
        work,
        submit,
        done,
        what="run",
        label=label,
        summary=label + ": %d run(s), %d reused, %d submitted",
    )


def _validated_scores(task: ClassTask, settings: list[Setting], fresh: list[int], submit):
    """Each setting's per-seed class objective on the train members: ``(mean, setting,
    per_seed)``, the mean ``inf`` unless every seed's runs all succeeded."""
    slots = {(s.name, m.pid, sd): {} for s in settings for m in task.members for sd in fresh}
    jobs = [
        (slots[k], s, m, sd)
        for s in settings
        for m in task.members
        for sd in fresh
        for k in [(s.name, m.pid, sd)]
    ]
    _run(task, jobs, submit, f"class {task.name}:{task.method} validation")
    scores = []
    for s in settings:
        per_seed = []
        for sd in fresh:
            values = [
                task.value(slots[s.name, m.pid, sd].get("metrics") or {}, m) for m in task.members
            ]
            per_seed.append(None if any(v is None for v in values) else sum(values) / len(values))
        ok = [v for v in per_seed if v is not None]
        scores.append((statistics.fmean(ok) if len(ok) == len(per_seed) else math.inf, s, ok))
    return scores


def recommend(
    task: ClassTask, submit, top_k: int, seeds: int, results: Path, seed0: int
) -> dict | None:
    """Validate the top settings on the train members with fresh seeds; write and return the
    recommendation (None: the study has no successful trial)."""
    best = best_successful(task.study)
    if best is None:
        return None
    fresh = validation_seeds(seed0, seeds)
    scores = _validated_scores(task, top_settings(task, top_k), fresh, submit)
    score, chosen, per_seed = min(scores, key=lambda x: x[0])
    held = math.isfinite(score)
    rec = ClassRecommendation(
        class_=task.name,
        method=task.method,
        pick="validated" if held else "best",
        units={**task.fixed, **best.params},
        scaled=list(task.scaled),
        trial=best.number,
        objective=best.values[0],
        validated=_validated_entry(task, scores, chosen, score, per_seed, fresh) if held else None,
    )
    write_class_recommendation(results, rec)
    record = read_json(layout.class_recommendation(results, task.name, task.method))
    picked = record["validated"] or record
    log.info(
        "class %s:%s recommends trial %s (%s, validated %s)",
        task.name,
        task.method,
        picked["trial"],
        _fmt_units(picked["units"], task.scaled),
        fmt_value(score if held else None, ".3g"),
    )
    return record


def _validated_entry(task: ClassTask, scores, chosen: Setting, score, per_seed, fresh) -> dict:
    """The recommendation file's ``validated``: the winner's setting, its mean class objective
    over the fresh seeds, every candidate's, and the members it was validated on."""
    return {
        "trial": chosen.trial,
        "units": chosen.units,
        "mean": score,
        "per_seed": per_seed,
        "seeds": fresh,
        "candidates": [
            {
                "trial": s.trial,
                "objective": s.objective,
                "validated": v if math.isfinite(v) else None,
            }
            for v, s, _ in scores
        ],
        "members": [{"pid": m.pid, "label": m.label, "d": m.d} for m in task.members],
    }


def _fmt_units(units: dict, scaled) -> str:
    return ", ".join(
        f"{k}={fmt_value(v, '.3g', floats=True)}{' x eps_max' if k in scaled else ''}"
        for k, v in units.items()
    )


def holdout_proof(
    task: ClassTask,
    submit,
    record: dict | None,
    seeds: int,
    results: Path,
    seed0: int,
    baseline: bool,
) -> list[dict]:
    """The recommended and top settings (and the SGLD baseline) on every holdout member."""
    if not task.holdout or record is None:
        return []
    settings = top_settings(task, task.config.top_k)
    picked = record["validated"] or record
    rec = picked["trial"]
    settings.sort(key=lambda s: s.trial != rec)
    if all(s.trial != rec for s in settings):
        settings.insert(0, Setting(f"#{rec}", picked["units"], rec, None))
    if task.scaled and "steps" in settings[0].units:  # which unit of chain length transfers
        first = settings[0]
        name = f"{first.name}, steps x eps ratio"
        settings.insert(
            1, Setting(name, first.units, None, first.objective, steps_unit="relaxation")
        )
    if baseline and task.method == "sgld":
        settings.append(Setting("baseline", dict(BASELINE_SGLD), None, None, absolute=True))
    fresh = validation_seeds(seed0, seeds)
    jobs = [({}, s, m, sd) for s in settings for m in task.holdout for sd in fresh]
    _run(task, jobs, submit, f"class {task.name}:{task.method} holdout")
    rows = [_row(task, slot.get("metrics") or {}, s, m, sd, rec) for slot, s, m, sd in jobs]
    return rows


def _row(task: ClassTask, metrics: dict, s: Setting, m: Member, seed: int, rec) -> dict:
    llc, se = finite_float(metrics.get("llc_hat")), finite_float(metrics.get("se_hat"))
    ref, se_ref = finite_float(m.ref.get("llc_ref")), finite_float(m.ref.get("se_ref"))
    err = estimate_error(llc, ref)
    combined = math.hypot(se or 0.0, se_ref or 0.0)
    try:
        eps = m.eps_max(task.method) if task.scaled else None
    except ValueError:
        eps = None
    return {
        "class": task.name,
        "method": task.method,
        "pid": m.pid,
        "label": m.label,
        "d": m.d,
        "setting": s.name if s.trial != rec else f"{s.name} (recommended)",
        "trial_number": s.trial,
        "recommended": s.trial == rec and s.trial is not None,
        "baseline": s.absolute,
        "steps_unit": None if s.absolute else s.steps_unit,
        "seed": seed,
        "units": None if s.absolute else {k: s.units[k] for k in task.scaled if k in s.units},
        "eps_max": eps,
        "hyperparams": metrics.get("hyperparams"),
        "status": metrics.get("status"),
        "failure_kind": (metrics.get("failure") or {}).get("kind"),
        "llc_hat": llc,
        "se_hat": se,
        "llc_ref": ref,
        "se_ref": se_ref,
        "ref_kind": m.ref.get("kind", "hmc"),
        "error": err,
        "rel_error": abs(err) / abs(ref) if err is not None and ref else None,
        "z": err / combined if err is not None and combined > 0 else None,
        "run_id": metrics.get("run_id"),
    }


def per_problem_errors(validated) -> dict[tuple, float]:
    """(method, pid) -> validated mean |error| / λ_ref of each per-problem study's pick."""
    out = {}
    for v in validated or []:
        if v.chosen is None:
            continue
        ref = finite_float(v.task.ref.get("llc_ref"))
        mean = v.validated[v.chosen].mean
        if ref and mean is not None:
            out[v.task.method, v.task.pid] = mean / abs(ref)
    return out


#: ``transfer.parquet``: one row per holdout run; ``hyperparams`` (absolute), ``eps_max`` and
#: ``<name>_units`` come with them (:func:`lambda_hat.results.to_table`).
TRANSFER_COLUMNS = {
    "class": pa.string(),
    "method": pa.string(),
    "pid": pa.string(),
    "label": pa.string(),
    "d": pa.int64(),
    "setting": pa.string(),
    "trial_number": pa.int64(),
    "recommended": pa.bool_(),
    "baseline": pa.bool_(),
    "steps_unit": pa.string(),
    "seed": pa.int64(),
    "status": pa.string(),
    "failure_kind": pa.string(),
    "llc_hat": pa.float64(),
    "se_hat": pa.float64(),
    "llc_ref": pa.float64(),
    "se_ref": pa.float64(),
    "ref_kind": pa.string(),
    "error": pa.float64(),
    "rel_error": pa.float64(),
    "z": pa.float64(),
    "run_id": pa.string(),
}


def write_transfer(rows: list[dict], results: Path) -> Path | None:
    path = Path(results) / layout.TRANSFER_TABLE
    return write_parquet(rows, path, TRANSFER_COLUMNS) if rows else None


def summarize_transfer(rows: list[dict]) -> list[dict]:
    """One record per (class, method, holdout member, setting): the mean λ̂ over its successful
    seeds, its SE (√Σse²/k), the reference, z with the combined SE, and the relative error."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["class"], r["method"], r["pid"], r["label"], r["setting"])
        groups.setdefault(key, []).append(r)
    out = []
    for (cls, method, pid, label, setting), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok" and r["llc_hat"] is not None]
        rec = {"class": cls, "method": method, "pid": pid, "label": label, "setting": setting}
        rec.update(runs=len(rs), ok=len(ok), baseline=rs[0]["baseline"], d=rs[0]["d"])
        rec.update(recommended=rs[0]["recommended"], ref=rs[0]["llc_ref"])
        rec.update(ref_kind=rs[0]["ref_kind"], failure=rs[0]["failure_kind"])
        if ok:
            mean = statistics.fmean(r["llc_hat"] for r in ok)
            se = math.sqrt(sum((r["se_hat"] or 0.0) ** 2 for r in ok)) / len(ok)
            ref, combined = ok[0]["llc_ref"], math.hypot(se, ok[0]["se_ref"] or 0.0)
            rec.update(llc_hat=mean, se_hat=se)
            rec["z"] = (mean - ref) / combined if ref is not None and combined > 0 else None
            rec["rel_error"] = abs(mean - ref) / abs(ref) if ref else None
        out.append(rec)
    return out


def transfer_table(rows: list[dict], per_problem: dict[tuple, float] | None = None) -> str:
    """Each holdout member's settings: mean λ̂ ± SE over seeds against the reference, z,
    relative error; ``per_problem``: (method, pid) -> the relative error of a per-problem
    tuned and validated setting (its validated mean |error| / λ_ref), shown beside."""
    out_rows = []
    shown = set()
    members = list(dict.fromkeys(r["pid"] for r in rows))
    for s in sorted(summarize_transfer(rows), key=lambda s: members.index(s["pid"])):
        study = f"{s['class']}:{s['method']}"
        if "llc_hat" not in s:
            cells = [f"failed ({s['failure']})", "", "", ""]
        else:
            cells = [
                f"{s['llc_hat']:.4g} ± {s['se_hat']:.2g} ({s['ok']}/{s['runs']} ok)",
                f"{fmt_value(s['ref'], '.4g')} ({s['ref_kind']})",
                fmt_value(s["z"], "+.2f"),
                fmt_value(s["rel_error"], ".1%"),
            ]
        out_rows.append([study, s["label"], s["setting"], *cells])
        key = (s["method"], s["pid"])
        if key in (per_problem or {}) and key not in shown:
            shown.add(key)
            rel = fmt_value(per_problem[key], ".1%")
            out_rows.append([study, s["label"], "per-problem tuned+validated", "", "", "", rel])
    header = ["study", "holdout member", "setting", "λ̂ ± SE (mean over seeds)", "reference"]
    return "held-out proof\n" + format_table([*header, "z", "rel. error"], out_rows)
