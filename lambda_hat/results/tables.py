"""The result tables' columns and rows: ``results/optuna_trials.parquet`` (one row per trial)
and ``results/llc_runs.parquet`` (one row per run of ``lambda-hat run``); their Arrow types
and the Parquet writer are :mod:`lambda_hat.results.parquet`.

Rows are built here, not with ``study.trials_dataframe()`` (mixed-type user attrs make that
fail to convert to Arrow). A trial's identity and state come from the study; the numbers of
every row come from the run's ``metrics.json``, the source of truth a run leaves behind. The
columns both tables share are built in one place: :func:`problem_columns` (what the problem
is), :func:`metrics_columns` (the estimate, its reference, diagnostics, work, where it ran).
The schema is documented in ``plans/results.md``.

``label`` (:func:`problem_labels`, :func:`study_label`: ``linear·s0:sgld``) is the readable
name of a study that progress tables also show beside the pid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import pyarrow as pa
from optuna.trial import FrozenTrial, TrialState

from lambda_hat import layout
from lambda_hat._io import finite_float, read_json, to_jsonable
from lambda_hat.problem.build import problem_id, student_widths
from lambda_hat.problem.models import mlp_param_count
from lambda_hat.trial.outcome import KINDS, estimate_error

_POSTERIOR = ("beta", "gamma", "nbeta")  # the run's posterior, from metrics.json or its ref

#: What the problem is (:func:`problem_columns`): presets by name, the resolved sizes; a
#: source's checkpoint: its training step, the training and test loss the source gave at it,
#: and ``shift_sd`` (a source's move of the posterior's mode along ∇L_n, in its SDs).
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
    "step": pa.int64(),
    "train_loss": pa.float64(),
    "test_loss": pa.float64(),
    "shift_sd": pa.float64(),
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
    "compile_sec": pa.float64(),
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


# ------------------------------------------------------------------------------- problems


def problem_label(model: str, seed: int) -> str:
    """A problem's readable name: its model preset and seed, ``linear·s0``."""
    return f"{model}·s{seed}"


def entry_name(entry) -> str:
    """A problem entry's short name: its model preset, or its source's function name."""
    source = getattr(entry, "source", None)
    if source is None:
        return entry.model
    steps = getattr(entry, "checkpoints", None)
    step = f"@{steps[0]}" if steps is not None and len(steps) == 1 else ""
    return source.rpartition(":")[2] + step


def study_label(label: str, method: str) -> str:
    """A study's readable name: ``<problem label>:<method>``, ``linear·s0:sgld``."""
    return f"{label}:{method}"


def problem_labels(entries: Sequence, specs: Sequence) -> dict[str, str]:
    """pid -> label of the config's problems (``entries``: :class:`ProblemEntry`, in the order
    of their resolved ``specs``); labels two problems share get their pid's first hex digits."""
    base: dict[str, str] = {}
    for entry, spec in zip(entries, specs, strict=True):
        base.setdefault(problem_id(spec), problem_label(entry_name(entry), entry.seed))
    counts: dict[str, int] = {}
    for label in base.values():
        counts[label] = counts.get(label, 0) + 1
    return {pid: f"{lab}·{pid[2:8]}" if counts[lab] > 1 else lab for pid, lab in base.items()}


def problem_columns(entry, spec, label: str) -> dict:
    """The problem columns of a row: presets by name, family, hidden widths, d, n, seed."""
    widths = student_widths(spec)
    data, src = spec.data, spec.source
    return {
        "label": label,
        "model": entry.model if src is None else src.source,
        "family": spec.model.family if src is None else "source",
        "widths": widths,
        "d": mlp_param_count(data.input_dim, widths, data.output_dim, spec.model.bias)
        if src is None
        else src.d,
        "data": entry.data,
        "n": data.n,
        "teacher": entry.teacher,
        "problem_seed": spec.seed,
        "step": None if src is None else src.step,
        "train_loss": None if src is None else src.train_loss,
        "test_loss": None if src is None else src.test_loss,
        "shift_sd": None if src is None else src.shift_sd,
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
        "compile_sec": finite_float(seconds.get("compile")) if isinstance(seconds, dict) else None,
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
    limits: dict[str, float] | None = None,
) -> dict:
    """One ``optuna_trials.parquet`` row for ``trial`` (its metrics.json is read unless
    ``metrics`` is given); ``problem``: its :func:`problem_columns` (None: left empty);
    ``limits``: ε_max of each hyperparameter searched relative to it, which gives the row's
    ``units`` (value / ε_max, the unit a setting transfers in) and ``eps_max``."""
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
    hyperparams = to_jsonable(metrics.get("hyperparams") or dict(trial.params))
    return {
        "pid": pid,
        "method": method,
        "trial_id": trial.user_attrs.get("run_id") or metrics.get("run_id"),
        "trial_number": trial.number,
        "state": trial.state.name,
        "status": status,
        "objective": finite_float(trial.values[0]) if ok and trial.values else None,
        "hyperparams": hyperparams,
        **units_columns(hyperparams, limits),
        **(problem or {}),
        **cols,
    }


def units_columns(hyperparams: dict, limits: dict[str, float] | None) -> dict:
    """``units`` ({name: value / ε_max} for each name with a limit) and ``eps_max`` (the
    first such limit; one step-size limit per method) of a run's absolute ``hyperparams``."""
    units = {
        k: hyperparams[k] / eps
        for k, eps in (limits or {}).items()
        if eps and isinstance(hyperparams.get(k), int | float)
    }
    eps_max = next((eps for eps in (limits or {}).values() if eps), None)
    return {"units": units or None, "eps_max": eps_max}


def study_rows(
    study: optuna.Study,
    pid: str,
    method: str,
    ref: dict,
    ref_of: Callable[[dict], dict] | None = None,
    problem: dict | None = None,
    limits: dict[str, float] | None = None,
) -> list[dict]:
    """Rows for every trial of ``study`` except WAITING ones (RUNNING ones with their state).

    ``ref_of(params)`` is the reference of a trial's own posterior
    (:meth:`lambda_hat.study.task.StudyTask.trial_ref`); None: ``ref`` for every trial.
    ``problem``: the study's :func:`problem_columns`; ``limits``: :func:`trial_row`'s."""
    return [
        trial_row(
            t,
            pid,
            method,
            ref if ref_of is None else ref_of(t.params),
            problem=problem,
            limits=limits,
        )
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING
    ]
