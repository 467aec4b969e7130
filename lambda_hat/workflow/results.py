"""``results/optuna_trials.parquet``: one row per trial, built from each run's metrics.json.

Rows are built here, not with ``study.trials_dataframe()`` (mixed-type user attrs make that
fail to convert to Arrow). The trial's identity and state come from the study; the numbers come
from the run's ``metrics.json``, the source of truth a trial leaves behind.

Columns: ``pid``, ``method``, ``trial_id`` (the run id ``r_…``), ``trial_number``, ``state``
(Optuna's), ``status`` (``ok`` | ``failed``: use it to pick successes, since a parameter
failure is a COMPLETE trial with a constraint), ``hyperparams`` (struct), one ``hp_<name>``
column per hyperparameter, ``llc_hat``, ``se_hat``, ``llc_ref``, ``se_ref`` (the reference of the
trial's own posterior), ``beta``, ``gamma``, ``nbeta`` (that posterior: the run's, else its
reference's), ``objective``,
``error`` (λ̂ − λ̂_ref, signed), ``runtime_sec``, ``diagnostics`` (JSON text), ``failure_kind``,
``failure_message``, ``reused``, ``host``, ``started_at``, ``finished_at`` (UTC timestamps),
``run_dir``.

Example (also run by ``tests/test_workflow.py``)::

    import pandas as pd
    df = pd.read_parquet("results/optuna_trials.parquet")
    ok = df[df.status == "ok"]
    best = ok.loc[ok.groupby(["pid", "method"]).objective.idxmin()]
    curve = df.sort_values("trial_number").assign(
        best_so_far=lambda d: d.groupby(["pid", "method"]).objective.cummin())
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import pyarrow as pa
import pyarrow.parquet as pq
from optuna.trial import FrozenTrial, TrialState

from lambda_hat._io import atomic_write_bytes, finite_float, read_json, to_jsonable
from lambda_hat.outcome import KINDS, estimate_error

PARQUET_NAME = "optuna_trials.parquet"
_POSTERIOR = ("beta", "gamma", "nbeta")  # the trial's posterior, from metrics.json or its ref

_SCALARS: dict[str, pa.DataType] = {
    "pid": pa.string(),
    "method": pa.string(),
    "trial_id": pa.string(),
    "trial_number": pa.int64(),
    "state": pa.string(),
    "status": pa.string(),
    "llc_hat": pa.float64(),
    "se_hat": pa.float64(),
    "llc_ref": pa.float64(),
    "se_ref": pa.float64(),
    "beta": pa.float64(),
    "gamma": pa.float64(),
    "nbeta": pa.float64(),
    "objective": pa.float64(),
    "error": pa.float64(),
    "runtime_sec": pa.float64(),
    "diagnostics": pa.string(),
    "failure_kind": pa.string(),
    "failure_message": pa.string(),
    "reused": pa.bool_(),
    "host": pa.string(),
    "job_id": pa.string(),
    "node": pa.string(),
    "gpu": pa.string(),
    "startup_sec": pa.float64(),
    "started_at": pa.timestamp("us", tz="UTC"),
    "finished_at": pa.timestamp("us", tz="UTC"),
    "run_dir": pa.string(),
}


def _when(metrics_value: Any, fallback: datetime | None) -> datetime | None:
    if isinstance(metrics_value, int | float) and not isinstance(metrics_value, bool):
        return datetime.fromtimestamp(float(metrics_value), tz=UTC)
    if isinstance(metrics_value, str):
        try:
            dt = datetime.fromisoformat(metrics_value)
            return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
        except ValueError:
            pass
    if fallback is None:
        return None
    return fallback if fallback.tzinfo else fallback.astimezone(UTC)


def _text(x) -> str | None:
    return None if x is None else str(x)


def trial_row(
    trial: FrozenTrial, pid: str, method: str, ref: dict, metrics: dict | None = None
) -> dict:
    """One Parquet row for ``trial`` (its metrics.json is read unless ``metrics`` is given)."""
    run_dir = trial.user_attrs.get("run_dir")
    kind = KINDS.get(trial.user_attrs.get("failure_kind"))
    if kind is not None and not kind.finished:
        metrics = {}  # the run directory holds the result of the trial that re-ran its slot
    elif metrics is None:
        metrics = (read_json(Path(run_dir) / "metrics.json") if run_dir else None) or {}
    failure = metrics.get("failure") or {}
    status = metrics.get("status") or trial.user_attrs.get("status")
    if trial.user_attrs.get("failure_kind"):  # e.g. an absurd "ok" estimate told as diverged
        status = "failed"
    if status is None:
        status = "ok" if trial.state == TrialState.COMPLETE else "failed"
    llc_hat, llc_ref = finite_float(metrics.get("llc_hat")), finite_float(ref.get("llc_ref"))
    ok = status == "ok" and trial.state == TrialState.COMPLETE
    hp = metrics.get("hyperparams") or dict(trial.params)
    posterior = {**{k: ref.get(k) for k in _POSTERIOR}, **(metrics.get("posterior") or {})}
    return {
        "pid": pid,
        "method": method,
        "trial_id": trial.user_attrs.get("run_id") or metrics.get("run_id"),
        "trial_number": trial.number,
        "state": trial.state.name,
        "status": status,
        "hyperparams": to_jsonable(hp),
        "llc_hat": llc_hat,
        "se_hat": finite_float(metrics.get("se_hat")),
        "llc_ref": llc_ref,
        "se_ref": finite_float(ref.get("se_ref")),
        **{k: finite_float(posterior.get(k)) for k in _POSTERIOR},
        "objective": finite_float(trial.values[0]) if ok and trial.values else None,
        "error": estimate_error(llc_hat, llc_ref),
        "runtime_sec": finite_float(
            metrics.get("seconds")
            if not isinstance(metrics.get("seconds"), dict)
            else metrics["seconds"].get("total")
        ),
        "diagnostics": json.dumps(to_jsonable(metrics.get("diagnostics")), sort_keys=True)
        if metrics.get("diagnostics") is not None
        else None,
        "failure_kind": failure.get("kind") or trial.user_attrs.get("failure_kind"),
        "failure_message": failure.get("message") or trial.user_attrs.get("failure_message"),
        "reused": bool(trial.user_attrs.get("reused", False)),
        "host": metrics.get("host"),
        "job_id": _text(metrics.get("job_id")),
        "node": _text(metrics.get("node")),
        "gpu": _text(metrics.get("gpu")),
        "startup_sec": finite_float(metrics.get("startup_sec")),
        "started_at": _when(metrics.get("started_at"), trial.datetime_start),
        "finished_at": _when(metrics.get("finished_at"), trial.datetime_complete),
        "run_dir": run_dir,
    }


def study_rows(
    study: optuna.Study,
    pid: str,
    method: str,
    ref: dict,
    ref_of: Callable[[dict], dict] | None = None,
) -> list[dict]:
    """Rows for every trial of ``study`` except WAITING ones (RUNNING ones with their state).

    ``ref_of(params)`` is the reference of a trial's own posterior
    (:meth:`lambda_hat.workflow.task.StudyTask.trial_ref`); None: ``ref`` for every trial."""
    return [
        trial_row(t, pid, method, ref if ref_of is None else ref_of(t.params))
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING
    ]


def _hp_type(values: list[Any]) -> pa.DataType:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pa.float64()
    if not present:
        return pa.null()
    return pa.string()


def _cast(v: Any, tp: pa.DataType) -> Any:
    if v is None:
        return None
    if tp == pa.string() and not isinstance(v, str):
        return json.dumps(v)
    if tp == pa.float64():
        return float(v)
    return v


def to_table(rows: list[dict]) -> pa.Table:
    """The Arrow table of ``rows`` with a stable schema (hyperparameter types unified)."""
    names = sorted({k for r in rows for k in (r.get("hyperparams") or {})})
    types = {n: _hp_type([(r.get("hyperparams") or {}).get(n) for r in rows]) for n in names}
    cols: dict[str, pa.Array] = {}
    for name, tp in _SCALARS.items():
        if name == "state":
            cols["hyperparams"] = None  # placeholder keeps the column order readable
        cols[name] = pa.array([r.get(name) for r in rows], type=tp)
    hp_struct = pa.struct([pa.field(n, types[n]) for n in names])
    hp_values = [
        {n: _cast((r.get("hyperparams") or {}).get(n), types[n]) for n in names} for r in rows
    ]
    if names:
        cols["hyperparams"] = pa.array(hp_values, type=hp_struct)
    else:  # Parquet cannot store a struct without fields
        cols["hyperparams"] = pa.array([[] for _ in rows], type=pa.map_(pa.string(), pa.string()))
    for n in names:
        cols[f"hp_{n}"] = pa.array([v[n] for v in hp_values], type=types[n])
    return pa.table(cols)


def write_parquet(rows: list[dict], path: str | Path) -> Path:
    """Write ``rows`` as Parquet at ``path``, atomically."""
    buf = io.BytesIO()
    pq.write_table(to_table(rows), buf)
    return atomic_write_bytes(path, buf.getvalue())
