"""What ``lambda-hat report`` reads, and the tables it shows, from the stored files alone.

Inputs (each optional; what is absent becomes a line of :attr:`Inputs.missing`, never an
error): ``<results>/optuna_trials.parquet`` (``parsl-optuna``), ``validation.parquet`` and
``validation.json`` (its validation stage), ``llc_runs.parquet`` (``lambda-hat run``), the
study pickles ``studies/optuna_llc/<pid>:<method>.pkl`` (how many objectives each study had)
and ``<artifacts>/problems/<pid>/ref.json`` plus each trial's ``metrics.json`` (FGE, R-hat and
ESS when the Parquet lacks them); every name from :mod:`lambda_hat.layout`. Columns are looked
up by name with fallbacks, so a Parquet written by an older or newer version still reports what
it has.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lambda_hat import layout
from lambda_hat._io import finite_float, read_json
from lambda_hat.layout import problem_dir
from lambda_hat.report.figures import best_trials
from lambda_hat.study.storage import study_name

log = logging.getLogger("lambda_hat.report.page")

TRIAL_COLUMNS = ("pid", "method", "trial_number", "state", "status", "objective")
_FIRST = {  # a quantity -> the column names that may hold it, preferred first
    "se": ("llc_se", "se_hat"),
    "ess": ("ess", "ess_bulk"),
    "kind": ("failure_kind", "failure"),
    "seconds": ("seconds", "runtime_sec"),
}


@dataclass
class Inputs:
    """Everything the report draws from; a None table was missing or unreadable."""

    results: Path
    artifacts: Path
    trials: pd.DataFrame | None = None
    validation: pd.DataFrame | None = None
    validation_json: dict | None = None
    runs: pd.DataFrame | None = None
    refs: dict[str, dict | None] = field(default_factory=dict)
    multi_objective: dict[tuple[str, str], bool] = field(default_factory=dict)
    log_scale: dict[tuple[str, str], dict[str, bool]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def read_table(
    path: Path, missing: list[str], made_by: str, need: tuple[str, ...] = ()
) -> pd.DataFrame | None:
    """The Parquet at ``path``, or None with a line in ``missing`` saying why and what makes it."""
    if not path.exists():
        missing.append(f"no {path.name} in {path.parent}: {made_by} writes it")
        return None
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # a torn or foreign file must not stop the rest of the report
        missing.append(f"{path} is unreadable ({type(exc).__name__}: {exc})")
        return None
    lacking = [c for c in need if c not in df.columns]
    if lacking:
        missing.append(f"{path} lacks columns {', '.join(lacking)}: not used")
        return None
    return df


def _diagnostic(diag: Any, key: str) -> float | None:
    if isinstance(diag, str):
        try:
            diag = json.loads(diag)
        except ValueError:
            return None
    return finite_float(diag.get(key)) if isinstance(diag, dict) else None


def _from_metrics(run_dir: Any, keys: tuple[str, ...]) -> float | None:
    """A number at ``keys`` in a run's metrics.json, or None."""
    if not isinstance(run_dir, str):
        return None
    obj: Any = read_json(Path(run_dir) / layout.METRICS)
    for k in keys:
        obj = obj.get(k) if isinstance(obj, dict) else None
    return finite_float(obj)


def _fill(df: pd.DataFrame, col: str, values) -> None:
    """``df[col]`` where it is missing or null, from ``values()`` (computed only if needed)."""
    if col in df and df[col].notna().all():
        return
    other = pd.Series(values(), index=df.index, dtype=object)
    df[col] = other if col not in df else df[col].astype(object).where(df[col].notna(), other)


def complete_trials(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``study_label``, ``fge``, ``rhat`` and ``ess`` columns: kept when the Parquet
    has them, else from the ``diagnostics`` column and the runs' metrics.json."""
    df = df.copy()
    df["study_label"] = [
        study_label(p, m, lab)
        for p, m, lab in zip(df.pid, df.method, _column(df, "label"), strict=True)
    ]
    dirs = df.run_dir if "run_dir" in df else pd.Series([None] * len(df), index=df.index)
    diag = df.diagnostics if "diagnostics" in df else pd.Series([None] * len(df), index=df.index)
    _fill(df, "fge", lambda: [_from_metrics(d, ("work", "fge")) for d in dirs])
    _fill(df, "rhat", lambda: [_diagnostic(d, "rhat") for d in diag])
    if "ess" not in df and "ess_bulk" in df:
        df["ess"] = df.ess_bulk
    _fill(df, "ess", lambda: [_diagnostic(d, "ess_bulk") for d in diag])
    for col in ("runtime_sec", "llc_hat", "se_hat", "llc_ref", "se_ref", "error", "failure_kind"):
        if col not in df:
            df[col] = None
    return df


def study_label(pid: str, method: str, label: Any = None) -> str:
    """A study's readable name: ``<problem label>:<method>`` (``linear·s0:sgld``) when the
    Parquet has a problem ``label``, else ``<pid>:<method>``."""
    if not isinstance(label, str) or not label:
        return study_name(pid, method)
    return label if label.endswith(f":{method}") else f"{label}:{method}"


def problem_labels(df: pd.DataFrame | None) -> dict[str, str]:
    """pid -> the Parquet's problem ``label`` (pids without one are left out)."""
    if df is None or "label" not in df:
        return {}
    named = df[["pid", "label"]].dropna().drop_duplicates("pid")
    return {p: lab for p, lab in named.itertuples(index=False) if isinstance(lab, str) and lab}


def artifacts_of(trials: pd.DataFrame | None, results: str | Path) -> Path:
    """``<artifacts>`` from a trial's run directory (:func:`lambda_hat.layout.artifacts_of`),
    else the ``artifacts/`` folder beside the results."""
    if trials is not None and "run_dir" in trials:
        for d in trials.run_dir.dropna():
            if (found := layout.artifacts_of(d)) is not None:
                return found
    return Path(results).parent / layout.ARTIFACTS


def _references(inp: Inputs, gate: Callable[[dict], dict] | None) -> None:
    """ref.json of every problem in the trials or under ``<artifacts>/problems`` (None when
    missing or without λ̂_ref), its gate re-evaluated by ``gate`` when given."""
    pids = [] if inp.trials is None else list(dict.fromkeys(inp.trials.pid))
    root = inp.artifacts / layout.PROBLEMS
    if root.is_dir():
        pids += sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in pids)
    for pid in pids:
        ref = read_json(problem_dir(inp.artifacts, pid) / layout.REF)
        if ref is None:
            inp.missing.append(f"problem {pid}: no ref.json: run `lambda-hat reference`")
        elif ref.get("pid") != pid or finite_float(ref.get("llc_ref")) is None:
            inp.missing.append(f"problem {pid}: ref.json has no usable λ̂_ref (a failed reference)")
            ref = None
        elif gate is not None:
            ref = {**ref, "gate": gate(ref)}
        if ref is not None and not (ref.get("gate") or {}).get("passed", True):
            reasons = "; ".join((ref.get("gate") or {}).get("reasons") or [])
            inp.missing.append(f"problem {pid}: the reference failed its quality gate ({reasons})")
        inp.refs[pid] = ref


def _log_scales(study) -> dict[str, bool]:
    """Which searched hyperparameters a stored study sampled on a log scale (its trials'
    distributions; categorical ones are left out)."""
    out: dict[str, bool] = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            if hasattr(dist, "log"):
                out.setdefault(name, bool(dist.log))
    return out


def _studies(inp: Inputs, objectives: list[str] | None) -> None:
    """How many objectives each study had (the config's, else the study pickle's) and which
    hyperparameters it searched on a log scale (the pickle's)."""
    if inp.trials is None:
        return
    unknown = []
    for pid, method in inp.trials[["pid", "method"]].drop_duplicates().itertuples(index=False):
        try:
            path = layout.pickle_path(inp.results, study_name(pid, method))
            study = pickle.loads(path.read_bytes())
        except Exception:  # no pickle yet, or one from another version
            study = None
        if study is not None:
            inp.log_scale[(pid, method)] = _log_scales(study)
        if objectives is not None:
            inp.multi_objective[(pid, method)] = len(objectives) > 1
        elif study is not None:
            inp.multi_objective[(pid, method)] = len(study.directions) > 1
        else:
            inp.multi_objective[(pid, method)] = False
            unknown.append(study_name(pid, method))
    if unknown:
        inp.missing.append(
            f"objectives unknown for {', '.join(unknown)} (no study pickle): drawn as single "
            "objective, no Pareto front (pass --config to say)"
        )


def load_inputs(
    results: str | Path,
    artifacts: str | Path | None = None,
    objectives: list[str] | None = None,
    gate: Callable[[dict], dict] | None = None,
) -> Inputs:
    """Read everything the report can use under ``results`` (and ``artifacts``: by default the
    one the trials' run directories live in). ``objectives`` (the config's) says which studies
    are multi-objective, else the study pickles do; ``gate(ref)`` re-evaluates a reference's
    quality gate (default: the one stored in ref.json)."""
    results = Path(results)
    missing: list[str] = []
    trials = read_table(results / layout.TRIALS_TABLE, missing, "parsl-optuna", TRIAL_COLUMNS)
    if trials is not None:
        trials = complete_trials(trials)
    where = Path(artifacts) if artifacts is not None else artifacts_of(trials, results)
    inp = Inputs(results=results, artifacts=where, trials=trials, missing=missing)
    made = "parsl-optuna's validation stage (optuna.validate)"
    inp.validation = read_table(results / layout.VALIDATION_TABLE, missing, made)
    inp.validation_json = read_json(results / layout.VALIDATION_JSON)
    if inp.validation_json is None and (results / layout.VALIDATION_JSON).exists():
        missing.append(f"{results / layout.VALIDATION_JSON} is unreadable")
    inp.runs = read_table(results / layout.RUNS_TABLE, missing, "`lambda-hat run`")
    _references(inp, gate)
    _studies(inp, objectives)
    return inp


# ----------------------------------------------------------------------------------- tables


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


def _column(df: pd.DataFrame, quantity: str) -> pd.Series:
    for name in _FIRST.get(quantity, (quantity,)):
        if name in df:
            return df[name]
    return pd.Series([None] * len(df), index=df.index, dtype=object)


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
        else pd.to_numeric(_column(runs, "llc_hat"), errors="coerce").notna()
    )
    rows = []
    for group, g in runs.groupby(keys, sort=False, dropna=False):
        problem, method = group[0], group[1]
        good = g[ok.loc[g.index]]
        llc = pd.to_numeric(_column(good, "llc_hat"), errors="coerce").dropna()
        error = _column(good, "error")
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
                "failed": kinds_text(_column(g[~ok.loc[g.index]], "kind")),
                "llc_hat": _mean(llc),
                "sd": finite_float(float(llc.std(ddof=1))) if len(llc) > 1 else None,
                "se_hat": _mean(_column(good, "se")),
                "error": _mean(error),
                "rhat": _agg(_column(good, "rhat"), np.max),
                "ess": _agg(_column(good, "ess"), np.min),
                "runtime_sec": _mean(_column(good, "seconds")),
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
