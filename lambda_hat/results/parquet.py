"""The result tables as Arrow and Parquet: types a researcher can group by.

``hp_<name>`` columns have the method schema's dtype (:func:`schema_types`), and integer ones
read back in pandas as nullable ``Int64`` (``batch`` is 64, not 64.0); ``diagnostics`` is a
struct (pandas: a dict per row), with ``rhat`` and ``ess_bulk`` also as flat columns
(:mod:`lambda_hat.results.tables`). Every file is written atomically.
"""

from __future__ import annotations

import functools
import io
import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lambda_hat import methods
from lambda_hat._io import atomic_write_bytes, finite_float
from lambda_hat.results.tables import TRIAL_COLUMNS
from lambda_hat.trial.identity import POSTERIOR_HYPERPARAMS

#: Integer columns pandas reads as nullable ``Int64`` (besides the integer ``hp_`` columns).
_NULLABLE_INTS = ("d", "n", "problem_seed", "grad_evals", "source_trial")


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
    _units(rows, cols)
    return pa.table(cols)


def _units(rows: list[dict], cols: dict[str, pa.Array]) -> None:
    """``eps_max`` and one ``<name>_units`` column (value / ε_max) per hyperparameter any
    row's ``units`` holds: the unit a setting transfers in, beside its absolute value."""
    units = [r.get("units") or {} for r in rows]
    names = sorted({k for u in units for k in u})
    if not names and not any("eps_max" in r for r in rows):
        return
    cols["eps_max"] = pa.array([finite_float(r.get("eps_max")) for r in rows], pa.float64())
    for n in names:
        cols[f"{n}_units"] = pa.array([finite_float(u.get(n)) for u in units], pa.float64())


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
