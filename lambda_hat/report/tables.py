"""The tables of ``lambda-hat report``: the best trial per study, the validated
recommendations and the ``lambda-hat run`` summaries, as rows of plain values, from what
:func:`lambda_hat.report.data.load_inputs` read."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from lambda_hat._io import finite_float
from lambda_hat.report.data import Inputs, column, complete_trials, problem_labels, study_label
from lambda_hat.report.figures import best_trials

__all__ = ["best_table", "hp_text", "kinds_text", "runs_table", "validated_table"]


def kinds_text(kinds: pd.Series) -> str:
    """``'diverged 3, timeout 1'`` from a column of failure kinds (most common first)."""
    counts = Counter(str(k) for k in kinds.fillna("unknown"))
    return ", ".join(f"{k} {n}" for k, n in counts.most_common())


def hp_text(row: pd.Series | dict, names: list[str]) -> str:
    """``'eta0=0.001, batch=64'`` for the named ``hp_<name>`` columns of ``row``."""
    out = []
    for col in names:
        v = row.get(col)
        if v is None or pd.isna(v):
            continue
        out.append(f"{col.removeprefix('hp_')}={_short(v)}")
    return ", ".join(out)


def best_table(trials: pd.DataFrame) -> list[dict]:
    """One row per study: its trials' counts and its best successful trial
    (:func:`lambda_hat.report.figures.best_trials`: the smallest objective among ``ok`` rows)."""
    from lambda_hat.report.study_figures import finished, searched_params

    best = best_trials(trials).set_index(["pid", "method"])
    rows = []
    for (pid, method), study in trials.groupby(["pid", "method"], sort=False):
        done = finished(study)
        failed = done[done.status != "ok"]
        row: dict[str, Any] = {
            "label": study.study_label.iloc[0],
            "pid": pid,
            "method": method,
            "finished": len(done),
            "running": len(study) - len(done),
            "ok": int((done.status == "ok").sum()),
            "failed": kinds_text(failed.failure_kind) if len(failed) else "",
        }
        if (pid, method) in best.index:
            b = best.loc[(pid, method)]
            names = searched_params(study) or [c for c in study if c.startswith("hp_")]
            row.update(
                trial=int(b.trial_number),
                hyperparams=hp_text(b, [c for c in names if pd.notna(b.get(c))]),
                **{k: finite_float(b.get(k)) for k in _NUMBERS},
            )
        rows.append(row)
    return rows


_NUMBERS = ("llc_hat", "se_hat", "llc_ref", "se_ref", "error", "objective", "runtime_sec")
_NUMBERS += ("rhat", "ess")


def validated_table(inp: Inputs) -> list[dict]:
    """One row per validated study: the recommended configuration of validation.json with the
    mean λ̂, runtime, worst R-hat and ESS of its fresh-seed runs (validation.parquet)."""
    studies = (inp.validation_json or {}).get("studies") or {}
    names = problem_labels(inp.trials)
    rows = []
    for name, rec_all in studies.items():
        rec = (rec_all or {}).get("recommended")
        pid, _, method = name.rpartition(":")
        label = study_label(pid, method, names.get(pid))
        row: dict[str, Any] = {"study": label, "seeds": (rec_all or {}).get("seeds")}
        if not rec:
            rows.append({**row, "note": "no candidate succeeded on every fresh seed"})
            continue
        hp = _searched_only(rec.get("hyperparams") or {}, inp.trials, pid, method)
        row.update(
            trial=rec.get("trial_number"),
            hyperparams=", ".join(f"{k}={_short(v)}" for k, v in sorted(hp.items())),
            mean_abs_error=finite_float(rec.get("mean_abs_error")),
            sd_abs_error=finite_float(rec.get("sd_abs_error")),
            n_ok=rec.get("n_ok"),
            n_failed=rec.get("n_failed"),
        )
        row.update(_validation_runs(inp.validation, name, rec.get("candidate")))
        rows.append(row)
    return rows


def _searched_only(hp: dict, trials: pd.DataFrame | None, pid: str, method: str) -> dict:
    """The hyperparameters the study searched (all of ``hp`` when that is not known)."""
    from lambda_hat.report.study_figures import searched_params

    if trials is None:
        return hp
    study = trials[(trials.pid == pid) & (trials.method == method)]
    names = [c.removeprefix("hp_") for c in searched_params(study)]
    return {k: v for k, v in hp.items() if k in names} or hp


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float | np.floating) else str(v)


def _validation_runs(df: pd.DataFrame | None, name: str, candidate: Any) -> dict:
    if df is None or not {"pid", "method", "candidate"} <= set(df.columns):
        return {}
    pid, _, method = name.rpartition(":")
    mine = df[(df.pid == pid) & (df.method == method) & (df.candidate == candidate)]
    if "status" in mine:
        mine = mine[mine.status == "ok"]
    if mine.empty:
        return {}
    mine = complete_trials(mine.assign(state="COMPLETE", objective=None))
    return {
        "llc_hat": _mean(mine.llc_hat),
        "runtime_sec": _mean(mine.runtime_sec),
        "rhat": _agg(mine.rhat, np.max),
        "ess": _agg(mine.ess, np.min),
    }


def _mean(s: pd.Series) -> float | None:
    return _agg(s, np.mean)


def _agg(s: pd.Series, fn) -> float | None:
    v = pd.to_numeric(s, errors="coerce").dropna()
    return finite_float(float(fn(v))) if len(v) else None


def runs_table(runs: pd.DataFrame) -> list[dict]:
    """One row per (problem, method) of llc_runs.parquet: runs, failures by kind, mean λ̂ and its
    spread over seeds, mean SE and error, worst R-hat and ESS, mean seconds."""
    key = next((c for c in ("pid", "problem", "label") if c in runs), None)
    if key is None or "method" not in runs:
        return []
    names = problem_labels(runs) if key == "pid" else {}
    keys = [key, "method", *(["set"] if "set" in runs else [])]
    ok = (
        runs.status == "ok"
        if "status" in runs
        else pd.to_numeric(column(runs, "llc_hat"), errors="coerce").notna()
    )
    rows = []
    for group, g in runs.groupby(keys, sort=False, dropna=False):
        problem, method = group[0], group[1]
        good = g[ok.loc[g.index]]
        llc = pd.to_numeric(column(good, "llc_hat"), errors="coerce").dropna()
        error = column(good, "error")
        if error.isna().all() and {"llc_hat", "llc_ref"} <= set(good.columns):
            error = good.llc_hat - good.llc_ref
        rows.append(
            {
                "problem": f"{names[problem]} ({problem})" if problem in names else problem,
                "method": method,
                "set": group[2] if len(group) > 2 else None,
                "from": _source(g),
                "runs": len(g),
                "ok": len(good),
                "failed": kinds_text(column(g[~ok.loc[g.index]], "kind")),
                "llc_hat": _mean(llc),
                "sd": finite_float(float(llc.std(ddof=1))) if len(llc) > 1 else None,
                "se_hat": _mean(column(good, "se")),
                "error": _mean(error),
                "rhat": _agg(column(good, "rhat"), np.max),
                "ess": _agg(column(good, "ess"), np.min),
                "runtime_sec": _mean(column(good, "seconds")),
            }
        )
    return rows


def _source(g: pd.DataFrame) -> str:
    """Where a set's hyperparameters came from: ``<study> #<trial> (<pick>)``, or ``fixed``."""
    if "source_study" not in g or g.source_study.isna().all():
        return "fixed"
    r = g.iloc[0]
    trial = f" #{int(r.source_trial)}" if "source_trial" in g and pd.notna(r.source_trial) else ""
    pick = f" ({r.source_pick})" if "source_pick" in g and pd.notna(r.source_pick) else ""
    return f"{r.source_study}{trial}{pick}"
