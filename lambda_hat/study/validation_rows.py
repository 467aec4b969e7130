"""The rows of ``<results>/validation.parquet``: one per validation run (its identity,
outcome and timing), written atomically with the trials table's types."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lambda_hat._io import atomic_write_bytes, to_jsonable
from lambda_hat.results import tables as results
from lambda_hat.results.parquet import to_table
from lambda_hat.trial.outcome import failure_of

__all__ = ["run_row", "write_parquet"]


def run_row(where: dict, hyperparams: dict, payload: dict, ref: dict, metrics: dict) -> dict:
    """One ``validation.parquet`` row: ``where`` (``pid``, ``method``, ``candidate``,
    ``trial_number``, ``seed``), the run's id and directory from its ``payload``, and the
    outcome columns of :func:`lambda_hat.results.tables.metrics_columns` against ``ref``."""
    failure = failure_of(metrics) or {}
    cols = results.metrics_columns(metrics, ref)
    err = cols["error"]
    ok = metrics.get("status") == "ok" and err is not None
    diagnostics = metrics.get("diagnostics")
    return {
        **where,
        "trial_id": payload["run_id"],
        "status": "ok" if ok else "failed",
        "hyperparams": to_jsonable(hyperparams),
        **cols,
        "abs_error": abs(err) if err is not None else None,
        "diagnostics": None if diagnostics is None else json.dumps(to_jsonable(diagnostics)),
        "failure_kind": None if ok else failure.get("kind", "error"),
        "failure_message": None if ok else failure.get("message"),
        "run_dir": payload["run_dir"],
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
