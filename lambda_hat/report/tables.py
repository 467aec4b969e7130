"""The tables of ``lambda-hat report``, as rows of plain values: the best trial of every study
(:func:`best_table`), the validated configurations (:func:`validated_table`) and the runs of
``lambda-hat run`` (:func:`runs_table`), from what :mod:`lambda_hat.report.data` read."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from lambda_hat._io import finite_float
from lambda_hat.report.checks import chain_flags, is_interrupted, mala_of, reliability
from lambda_hat.report.data import Inputs, column, complete_trials, problem_labels, study_label
from lambda_hat.report.figures import best_trials
from lambda_hat.report.study_figures import finished, searched_params
from lambda_hat.runs.summary import summarize


def kinds_text(kinds: pd.Series) -> str:
    """``'diverged 3, timeout 1'`` from a column of failure kinds (most common first);
    interrupted ones are left out (:func:`interrupted_count`)."""
    counts = Counter(str(k) for k in kinds.fillna("unknown") if not is_interrupted(k))
    return ", ".join(f"{k} {n}" for k, n in counts.most_common())


def interrupted_count(kinds: pd.Series) -> int:
    """How many of a column of failure kinds were interrupted, not failed."""
    return int(sum(is_interrupted(k) for k in kinds))


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
    """One row per study: its trials' counts (``finished`` leaves out the ``interrupted``
    ones, counted apart) and its best successful trial
    (:func:`lambda_hat.report.figures.best_trials`: the smallest objective among ``ok`` rows)
    with the checks its chains missed (``flags``)."""
    best = best_trials(trials).set_index(["pid", "method"])
    rows = []
    for (pid, method), study in trials.groupby(["pid", "method"], sort=False):
        done = finished(study)
        failed = done[done.status != "ok"]
        cut = interrupted_count(failed.failure_kind)
        row: dict[str, Any] = {
            "label": study.study_label.iloc[0],
            "pid": pid,
            "method": method,
            "finished": len(done) - cut,
            "running": len(study) - len(done),
            "ok": int((done.status == "ok").sum()),
            "failed": kinds_text(failed.failure_kind) if len(failed) else "",
            "interrupted": cut,
        }
        if (pid, method) in best.index:
            b = best.loc[(pid, method)]
            names = searched_params(study) or [c for c in study if c.startswith("hp_")]
            row.update(
                trial=int(b.trial_number),
                hyperparams=hp_text(b, [c for c in names if pd.notna(b.get(c))]),
                **{k: finite_float(b.get(k)) for k in _NUMBERS},
                run_dir=b.get("run_dir"),
            )
            row["flags"] = chain_flags(row["rhat"], row["ess"], row["mala"])
        rows.append(row)
    return rows


_NUMBERS = ("llc_hat", "se_hat", "llc_ref", "se_ref", "error", "objective", "runtime_sec")
_NUMBERS += ("compile_sec", "rhat", "ess", "mala")


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
        reliable, note = reliability(rec_all)
        row: dict[str, Any] = {
            "study": label,
            "pid": pid,
            "method": method,
            "seeds": (rec_all or {}).get("seeds"),
            "reliable": reliable,
            "reliability": note,
        }
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
        row["flags"] = chain_flags(row.get("rhat"), row.get("ess"), row.get("mala"))
        rows.append(row)
    return rows


def _searched_only(hp: dict, trials: pd.DataFrame | None, pid: str, method: str) -> dict:
    """The hyperparameters the study searched (all of ``hp`` when that is not known)."""
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
        "compile_sec": _mean(mine.compile_sec),
        "rhat": _agg(mine.rhat, np.max),
        "ess": _agg(mine.ess, np.min),
        "mala": _agg(mine.mala, np.min),
        "run_dir": _first(mine, "run_dir"),
        "seed": _first(mine, "seed"),
    }


def _first(df: pd.DataFrame, col: str) -> Any:
    """The first non-null ``col`` of ``df`` as a plain value, or None."""
    vals = df[col].dropna() if col in df else []
    return None if len(vals) == 0 else getattr(vals.iloc[0], "item", lambda: vals.iloc[0])()


def _mean(s: pd.Series) -> float | None:
    return _agg(s, np.mean)


def _agg(s: pd.Series, fn) -> float | None:
    v = pd.to_numeric(s, errors="coerce").dropna()
    return finite_float(float(fn(v))) if len(v) else None


def runs_table(runs: pd.DataFrame) -> list[dict]:
    """One row per (problem, method, set) of llc_runs.parquet: runs, failures by kind, mean λ̂
    and its spread over seeds, mean SE and error, z and whether it agrees with the reference
    (as ``lambda-hat run`` prints them), worst R-hat, ESS and MALA acceptance, mean seconds."""
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
    agreement = _agreement(runs)
    rows = []
    for group, g in runs.groupby(keys, sort=False, dropna=False):
        problem, method = group[0], group[1]
        good = g[ok.loc[g.index]]
        row = {
            "problem": f"{names[problem]} ({problem})" if problem in names else problem,
            "pid": problem,
            "method": method,
            "set": group[2] if len(group) > 2 else None,
            "from": _source(g),
            "runs": len(g),
            "ok": len(good),
            "failed": kinds_text(column(g[~ok.loc[g.index]], "kind")),
            "interrupted": interrupted_count(column(g[~ok.loc[g.index]], "kind")),
            **_run_numbers(good),
            **agreement.get((problem, method, group[2] if len(group) > 2 else None), {}),
        }
        row["flags"] = chain_flags(row["rhat"], row["ess"], row["mala"])
        rows.append(row)
    return rows


def _run_numbers(good: pd.DataFrame) -> dict:
    """Means and extremes over a run set's successful seeds."""
    llc = pd.to_numeric(column(good, "llc_hat"), errors="coerce").dropna()
    error = column(good, "error")
    if error.isna().all() and {"llc_hat", "llc_ref"} <= set(good.columns):
        error = good.llc_hat - good.llc_ref
    mala = good.diagnostics.map(mala_of) if "diagnostics" in good else pd.Series(dtype=float)
    return {
        "llc_hat": _mean(llc),
        "sd": finite_float(float(llc.std(ddof=1))) if len(llc) > 1 else None,
        "se_hat": _mean(column(good, "se")),
        "error": _mean(error),
        "rhat": _agg(column(good, "rhat"), np.max),
        "ess": _agg(column(good, "ess"), np.min),
        "mala": _agg(mala, np.min),
        "runtime_sec": _mean(column(good, "seconds")),
        "compile_sec": _mean(column(good, "compile_sec")),
        "run_dir": _first(good, "run_dir"),
        "seed": _first(good, "seed"),
    }


_SUMMARY_COLUMNS = ("pid", "method", "set", "status", "llc_hat", "se_hat", "llc_ref", "se_ref")


def _agreement(runs: pd.DataFrame) -> dict[tuple, dict]:
    """(pid, method, set) -> ``z`` and ``agrees`` exactly as ``lambda-hat run`` prints them
    (:func:`lambda_hat.runs.summary.summarize`); empty for a table without its columns."""
    if not set(_SUMMARY_COLUMNS) <= set(runs.columns):
        return {}
    extra = ("llc_theory", "label", "source_study", "source_pick", "source_trial")
    df = runs.reindex(columns=[*_SUMMARY_COLUMNS, *extra]).astype(object)
    records = df.where(df.notna(), None).to_dict("records")
    return {
        (s["pid"], s["method"], s["set"]): {"z": s["z"], "agrees": s["agrees"]}
        for s in summarize(records)
    }


def _source(g: pd.DataFrame) -> str:
    """Where a set's hyperparameters came from: ``<study> #<trial> (<pick>)``, or ``fixed``."""
    if "source_study" not in g or g.source_study.isna().all():
        return "fixed"
    r = g.iloc[0]
    trial = f" #{int(r.source_trial)}" if "source_trial" in g and pd.notna(r.source_trial) else ""
    pick = f" ({r.source_pick})" if "source_pick" in g and pd.notna(r.source_pick) else ""
    return f"{r.source_study}{trial}{pick}"
