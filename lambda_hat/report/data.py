"""What ``lambda-hat report`` reads, from the stored files alone (the tables it shows from
them: :mod:`lambda_hat.report.tables`).

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

import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lambda_hat import layout
from lambda_hat._io import finite_float, read_json
from lambda_hat.layout import problem_dir
from lambda_hat.report.checks import diagnostic, is_interrupted
from lambda_hat.study.resolved_space import RESOLVED_SPACE_ATTR
from lambda_hat.study.storage import study_name

log = logging.getLogger("lambda_hat.report")

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
    theory_only: dict[str, float | None] = field(default_factory=dict)  # pid -> λ, no HMC
    multi_objective: dict[tuple[str, str], bool] = field(default_factory=dict)
    log_scale: dict[tuple[str, str], dict[str, bool]] = field(default_factory=dict)
    eps_max: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
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
    return finite_float(diagnostic(diag, key))


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
    """``df`` with ``study_label``, ``fge``, ``compile_sec``, ``rhat``, ``ess`` and ``mala``
    (SGLD's MALA acceptance) columns: kept when the Parquet has them, else from the
    ``diagnostics`` column and the runs' metrics.json."""
    df = df.copy()
    df["study_label"] = [
        study_label(p, m, lab)
        for p, m, lab in zip(df.pid, df.method, column(df, "label"), strict=True)
    ]
    dirs = df.run_dir if "run_dir" in df else pd.Series([None] * len(df), index=df.index)
    if "failure_kind" in df:  # an interrupted trial's folder holds the run that re-ran its slot
        cut = np.array([is_interrupted(k) for k in df.failure_kind], bool)
        dirs = dirs.astype(object).where(~cut, None)
    diag = df.diagnostics if "diagnostics" in df else pd.Series([None] * len(df), index=df.index)
    _fill(df, "fge", lambda: [_from_metrics(d, ("work", "fge")) for d in dirs])
    _fill(df, "compile_sec", lambda: [_from_metrics(d, ("seconds", "compile")) for d in dirs])
    _fill(df, "mala", lambda: [_diagnostic(d, "mala_acceptance") for d in diag])
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
            info = read_json(problem_dir(inp.artifacts, pid) / layout.PROBLEM_INFO) or {}
            lam = (info.get("theory") or {}).get("lambda")
            inp.theory_only[pid] = lam
            known = "" if lam is None else f" (theory λ = {lam:.4g})"
            inp.missing.append(
                f"problem {pid}: no HMC reference{known}: a problem with reference: theory or "
                "none has none; `lambda-hat reference` computes one"
            )
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


def _eps_max(study) -> dict[str, float]:
    """name -> ε_max of each hyperparameter a stored study searched relative to its stability
    limit (its ``resolved_space`` user attr; :mod:`lambda_hat.study.resolved_space`)."""
    space = study.user_attrs.get(RESOLVED_SPACE_ATTR) or {}
    out = {}
    for name, rec in space.items():
        eps = finite_float((rec or {}).get("eps_max")) if isinstance(rec, dict) else None
        if eps is not None and eps > 0:
            out[name] = eps
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
            inp.eps_max[(pid, method)] = _eps_max(study)
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


def column(df: pd.DataFrame, quantity: str) -> pd.Series:
    """The column holding ``quantity`` under any of its names (:data:`_FIRST`), else nulls."""
    for name in _FIRST.get(quantity, (quantity,)):
        if name in df:
            return df[name]
    return pd.Series([None] * len(df), index=df.index, dtype=object)
