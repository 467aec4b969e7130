"""The result tables' rows and schema: ``results/optuna_trials.parquet`` (one row per trial)
and ``results/llc_runs.parquet`` (one row per experiment run, :mod:`experiments`).

Rows are built here, not with ``study.trials_dataframe()`` (mixed-type user attrs make that
fail to convert to Arrow). A trial's identity and state come from the study; the numbers of
every row come from the run's ``metrics.json``, the source of truth a run leaves behind. The
columns both tables share are built in one place: :func:`problem_columns` (what the problem
is), :func:`metrics_columns` (the estimate, its reference, diagnostics, work, where it ran).
The schema is documented in ``plans/results.md``.

Types a researcher can group by: ``hp_<name>`` columns have the method schema's dtype, and
integer ones read back in pandas as nullable ``Int64`` (``batch`` is 64, not 64.0);
``diagnostics`` is a struct (pandas: a dict per row), with ``rhat`` and ``ess_bulk`` also as
flat columns. ``label`` (:func:`problem_labels`, :func:`study_label`: ``linear·s0:sgld``) is
the readable name of a study that progress tables also show beside the pid.
"""

from __future__ import annotations

import functools
import io
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from optuna.trial import FrozenTrial, TrialState

from lambda_hat import layout, methods
from lambda_hat._io import atomic_write_bytes, finite_float, read_json, to_jsonable
from lambda_hat.problem.models import mlp_param_count
from lambda_hat.trial.outcome import KINDS, estimate_error
from lambda_hat.problem.build import problem_id, student_widths
from lambda_hat.trial.identity import POSTERIOR_HYPERPARAMS

PARQUET_NAME = layout.TRIALS_TABLE
_POSTERIOR = ("beta", "gamma", "nbeta")  # the run's posterior, from metrics.json or its ref

#: What the problem is (:func:`problem_columns`): presets by name, the resolved sizes.
PROBLEM_COLUMNS: dict[str, pa.DataType] = {
    "label": pa.string(),
    "model": pa.string(),
    "family": pa.string(),
    "widths": pa.list_(pa.int64()),
    "d": pa.int64(),
    "data": pa.string(),
    "n": pa.int64(),
    "teacher": pa.string(),
    "problem_seed": pa.int64(),
}

#: The outcome of a run (:func:`metrics_columns`); ``diagnostics`` (a struct) comes after them.
METRIC_COLUMNS: dict[str, pa.DataType] = {
    "llc_hat": pa.float64(),
    "se_hat": pa.float64(),
    "llc_ref": pa.float64(),
    "se_ref": pa.float64(),
    "llc_theory": pa.float64(),
    "beta": pa.float64(),
    "gamma": pa.float64(),
    "nbeta": pa.float64(),
    "error": pa.float64(),
    "rhat": pa.float64(),
    "ess_bulk": pa.float64(),
    "fge": pa.float64(),
    "grad_evals": pa.int64(),
    "runtime_sec": pa.float64(),
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

#: ``optuna_trials.parquet``: the trial's identity, then the problem and the outcome.
TRIAL_COLUMNS: dict[str, pa.DataType] = {
    "pid": pa.string(),
    "method": pa.string(),
    "trial_id": pa.string(),
    "trial_number": pa.int64(),
    "state": pa.string(),
    "status": pa.string(),
    "objective": pa.float64(),
    **PROBLEM_COLUMNS,
    **METRIC_COLUMNS,
}

#: Integer columns pandas reads as nullable ``Int64`` (besides the integer ``hp_`` columns).
_NULLABLE_INTS = ("d", "n", "problem_seed", "grad_evals", "source_trial")


# ------------------------------------------------------------------------------- problems


def problem_label(model: str, seed: int) -> str:
    """A problem's readable name: its model preset and seed, ``linear·s0``."""
    return f"{model}·s{seed}"


def study_label(label: str, method: str) -> str:
    """A study's readable name: ``<problem label>:<method>``, ``linear·s0:sgld``."""
    return f"{label}:{method}"


def problem_labels(entries: Sequence, specs: Sequence) -> dict[str, str]:
    """pid -> label of the config's problems (``entries``: :class:`ProblemEntry`, in the order
    of their resolved ``specs``); labels two problems share get their pid's first hex digits."""
    base: dict[str, str] = {}
    for entry, spec in zip(entries, specs, strict=True):
        base.setdefault(problem_id(spec), problem_label(entry.model, entry.seed))
    counts: dict[str, int] = {}
    for label in base.values():
        counts[label] = counts.get(label, 0) + 1
    return {pid: f"{lab}·{pid[2:8]}" if counts[lab] > 1 else lab for pid, lab in base.items()}


def problem_columns(entry, spec, label: str) -> dict:
    """The problem columns of a row: presets by name, family, hidden widths, d, n, seed."""
    widths = student_widths(spec)
    data = spec.data
    return {
        "label": label,
        "model": entry.model,
        "family": spec.model.family,
        "widths": widths,
        "d": mlp_param_count(data.input_dim, widths, data.output_dim, spec.model.bias),
        "data": entry.data,
        "n": data.n,
        "teacher": entry.teacher,
        "problem_seed": spec.seed,
    }


def problem_table(entries: Sequence, specs: Sequence) -> dict[str, dict]:
    """pid -> :func:`problem_columns` of every problem of a config."""
    labels = problem_labels(entries, specs)
    out: dict[str, dict] = {}
    for entry, spec in zip(entries, specs, strict=True):
        pid = problem_id(spec)
        out.setdefault(pid, problem_columns(entry, spec, labels[pid]))
    return out


# ------------------------------------------------------------------------------- outcomes


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


def _int(x) -> int | None:
    f = finite_float(x)
    return None if f is None else int(f)


def metrics_columns(
    metrics: dict,
    ref: dict,
    started: datetime | None = None,
    finished: datetime | None = None,
) -> dict:
    """The outcome columns of a run's ``metrics.json`` scored against ``ref`` (its ref.json:
    ``llc_ref``, ``se_ref``, ``llc_theory`` and the posterior when the run has none), and its
    ``diagnostics`` as a dict; ``started``/``finished`` stand in for missing timestamps."""
    failure = metrics.get("failure") or {}
    llc_hat, llc_ref = finite_float(metrics.get("llc_hat")), finite_float(ref.get("llc_ref"))
    posterior = {**{k: ref.get(k) for k in _POSTERIOR}, **(metrics.get("posterior") or {})}
    diagnostics = metrics.get("diagnostics") or {}
    work = metrics.get("work") or {}
    seconds = metrics.get("seconds")
    return {
        "llc_hat": llc_hat,
        "se_hat": finite_float(metrics.get("se_hat")),
        "llc_ref": llc_ref,
        "se_ref": finite_float(ref.get("se_ref")),
        "llc_theory": finite_float(ref.get("llc_theory")),
        **{k: finite_float(posterior.get(k)) for k in _POSTERIOR},
        "error": estimate_error(llc_hat, llc_ref),
        "rhat": finite_float(diagnostics.get("rhat")),
        "ess_bulk": finite_float(diagnostics.get("ess_bulk")),
        "fge": finite_float(work.get("fge")),
        "grad_evals": _int(work.get("grad_evals")),
        "runtime_sec": finite_float(seconds.get("total") if isinstance(seconds, dict) else seconds),
        "diagnostics": to_jsonable(metrics["diagnostics"]) if metrics.get("diagnostics") else None,
        "failure_kind": failure.get("kind"),
        "failure_message": failure.get("message"),
        "reused": bool(metrics.get("reused", False)),
        "host": metrics.get("host"),
        "job_id": _text(metrics.get("job_id")),
        "node": _text(metrics.get("node")),
        "gpu": _text(metrics.get("gpu")),
        "startup_sec": finite_float(metrics.get("startup_sec")),
        "started_at": _when(metrics.get("started_at"), started),
        "finished_at": _when(metrics.get("finished_at"), finished),
        "run_dir": metrics.get("run_dir"),
    }


def trial_row(
    trial: FrozenTrial,
    pid: str,
    method: str,
    ref: dict,
    metrics: dict | None = None,
    problem: dict | None = None,
) -> dict:
    """One ``optuna_trials.parquet`` row for ``trial`` (its metrics.json is read unless
    ``metrics`` is given); ``problem``: its :func:`problem_columns` (None: left empty)."""
    run_dir = trial.user_attrs.get("run_dir")
    kind = KINDS.get(trial.user_attrs.get("failure_kind"))
    if kind is not None and not kind.finished:
        metrics = {}  # the run directory holds the result of the trial that re-ran its slot
    elif metrics is None:
        metrics = (read_json(Path(run_dir) / layout.METRICS) if run_dir else None) or {}
    status = metrics.get("status") or trial.user_attrs.get("status")
    if trial.user_attrs.get("failure_kind"):  # e.g. an absurd "ok" estimate told as diverged
        status = "failed"
    if status is None:
        status = "ok" if trial.state == TrialState.COMPLETE else "failed"
    ok = status == "ok" and trial.state == TrialState.COMPLETE
    cols = metrics_columns(metrics, ref, trial.datetime_start, trial.datetime_complete)
    cols["failure_kind"] = cols["failure_kind"] or trial.user_attrs.get("failure_kind")
    cols["failure_message"] = cols["failure_message"] or trial.user_attrs.get("failure_message")
    cols["reused"] = bool(trial.user_attrs.get("reused", False))
    cols["run_dir"] = run_dir
    return {
        "pid": pid,
        "method": method,
        "trial_id": trial.user_attrs.get("run_id") or metrics.get("run_id"),
        "trial_number": trial.number,
        "state": trial.state.name,
        "status": status,
        "objective": finite_float(trial.values[0]) if ok and trial.values else None,
        "hyperparams": to_jsonable(metrics.get("hyperparams") or dict(trial.params)),
        **(problem or {}),
        **cols,
    }


def study_rows(
    study: optuna.Study,
    pid: str,
    method: str,
    ref: dict,
    ref_of: Callable[[dict], dict] | None = None,
    problem: dict | None = None,
) -> list[dict]:
    """Rows for every trial of ``study`` except WAITING ones (RUNNING ones with their state).

    ``ref_of(params)`` is the reference of a trial's own posterior
    (:meth:`lambda_hat.study.task.StudyTask.trial_ref`); None: ``ref`` for every trial.
    ``problem``: the study's :func:`problem_columns`."""
    return [
        trial_row(t, pid, method, ref if ref_of is None else ref_of(t.params), problem=problem)
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING
    ]


# ------------------------------------------------------------------------------- the table


def _arrow_type(tp: Any) -> pa.DataType | None:
    """The Arrow type of a schema field annotation (``int | None`` -> int64), None if unknown."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Literal:
        return pa.string() if all(isinstance(a, str) for a in args) else None
    if args and typing.get_origin(tp) is not typing.Literal:
        return _arrow_type(args[0]) if len(args) == 1 else None
    return {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}.get(tp)


@functools.cache
def schema_types() -> dict[str, pa.DataType]:
    """Hyperparameter name -> Arrow type from the methods' schemas (and the posterior's γ);
    a name two methods type differently is left out (its type is inferred from the values)."""
    out: dict[str, pa.DataType | None] = {k: pa.float64() for k in POSTERIOR_HYPERPARAMS}
    for name in methods.METHODS:
        for key, tp in typing.get_type_hints(methods.get(name).hyper).items():
            arrow = _arrow_type(tp)
            out[key] = arrow if out.get(key, arrow) == arrow else None
    return {k: v for k, v in out.items() if v is not None}


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


def _fits(v: Any, tp: pa.DataType) -> bool:
    if v is None:
        return True
    if tp == pa.bool_():
        return isinstance(v, bool)
    if tp == pa.int64():
        return isinstance(v, int) and not isinstance(v, bool)
    if tp == pa.float64():
        return isinstance(v, int | float) and not isinstance(v, bool)
    return isinstance(v, str)


def _column_type(name: str, values: list[Any]) -> pa.DataType:
    """The schema's type of hyperparameter ``name`` when every value fits it, else inferred."""
    tp = schema_types().get(name)
    return tp if tp is not None and all(_fits(v, tp) for v in values) else _hp_type(values)


def _cast(v: Any, tp: pa.DataType) -> Any:
    if v is None:
        return None
    if tp == pa.string() and not isinstance(v, str):
        return json.dumps(v)
    if tp == pa.float64():
        return float(v)
    return v


def _struct(values: list[dict | None]) -> pa.Array:
    """A struct column of dicts (None: a null row); a key whose values Arrow cannot type as one
    column is kept as JSON text."""
    keys = sorted({k for v in values if v for k in v})
    if not keys:  # Parquet cannot store a struct without fields
        return pa.array([None] * len(values), type=pa.null())
    children = []
    for k in keys:
        col = [v.get(k) if v else None for v in values]
        try:
            children.append(pa.array(col))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            children.append(pa.array([None if x is None else json.dumps(x) for x in col]))
    mask = pa.array([not v for v in values], type=pa.bool_())
    return pa.StructArray.from_arrays(children, names=keys, mask=mask)


def to_table(rows: list[dict], columns: dict[str, pa.DataType] | None = None) -> pa.Table:
    """The Arrow table of ``rows``: ``columns`` (default :data:`TRIAL_COLUMNS`) with their
    types, ``diagnostics`` (a struct), ``hyperparams`` (a struct of every row's keys) and one
    ``hp_<name>`` column per hyperparameter with its schema dtype (:func:`schema_types`)."""
    columns = TRIAL_COLUMNS if columns is None else columns
    names = sorted({k for r in rows for k in (r.get("hyperparams") or {})})
    hp_rows = [r.get("hyperparams") or {} for r in rows]
    types = {n: _column_type(n, [h.get(n) for h in hp_rows]) for n in names}
    hp_values = [{n: _cast(h.get(n), types[n]) for n in names} for h in hp_rows]
    cols: dict[str, pa.Array] = {}
    for name, tp in columns.items():
        if name == "llc_hat":  # the hyperparameters before the outcome keeps the order readable
            if names:
                hp_struct = pa.struct([pa.field(n, types[n]) for n in names])
                cols["hyperparams"] = pa.array(hp_values, type=hp_struct)
            else:  # Parquet cannot store a struct without fields
                cols["hyperparams"] = pa.array(
                    [[] for _ in rows], type=pa.map_(pa.string(), pa.string())
                )
        cols[name] = pa.array([r.get(name) for r in rows], type=tp)
    diagnostics = [r.get("diagnostics") or None for r in rows]
    if all(d is None or isinstance(d, dict) for d in diagnostics):
        cols["diagnostics"] = _struct(diagnostics)
    else:  # a caller's JSON text (validation.parquet)
        cols["diagnostics"] = pa.array([_cast(d, pa.string()) for d in diagnostics], pa.string())
    for n in names:
        cols[f"hp_{n}"] = pa.array([v[n] for v in hp_values], type=types[n])
    return pa.table(cols)


def _pandas_ints(table: pa.Table) -> pa.Table:
    """Record in the table's pandas metadata that its integer ``hp_`` columns (and the
    nullable integer columns) are nullable ``Int64``: pandas otherwise reads an integer column
    with a null (another method's hyperparameter) as float."""
    ints = {
        c
        for c in table.column_names
        if table.schema.field(c).type == pa.int64() and (c.startswith("hp_") or c in _NULLABLE_INTS)
    }
    empty = table.slice(0, 0).to_pandas()
    for c in ints:
        empty[c] = empty[c].astype(pd.Int64Dtype())
    meta = pa.Table.from_pandas(empty, schema=table.schema, preserve_index=False).schema.metadata
    return table.replace_schema_metadata(meta)


def write_parquet(
    rows: list[dict], path: str | Path, columns: dict[str, pa.DataType] | None = None
) -> Path:
    """Write ``rows`` (:func:`to_table` with ``columns``) as Parquet at ``path``, atomically."""
    buf = io.BytesIO()
    pq.write_table(_pandas_ints(to_table(rows, columns)), buf)
    return atomic_write_bytes(path, buf.getvalue())


def hyperparams_of(row: Mapping[str, Any]) -> dict:
    """A table row's own hyperparameters (a pandas row or a dict), with their schema types.

    In pandas the ``hyperparams`` struct holds every method's keys (None for another method's)
    and its integers come back as floats, a pandas rule for nested columns; the ``hp_<name>``
    columns keep them as ``Int64``. This reads the ``hp_`` columns of the row's method:
    ``hyperparams_of(df.loc[i])`` is ``{"eta0": 1e-4, "batch": 64, ...}``."""
    names = _method_keys(row.get("method"))
    out = {}
    for key in row.keys():
        name = key[3:] if isinstance(key, str) and key.startswith("hp_") else None
        if name is None or (names is not None and name not in names):
            continue
        v = row[key]
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            continue
        tp = schema_types().get(name)
        out[name] = int(v) if tp == pa.int64() else (v.item() if hasattr(v, "item") else v)
    return out


def _method_keys(method: Any) -> set[str] | None:
    if method not in methods.METHODS:
        return None
    return set(typing.get_type_hints(methods.get(method).hyper)) | set(POSTERIOR_HYPERPARAMS)
