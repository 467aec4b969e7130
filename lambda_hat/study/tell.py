"""How a trial's outcome is told to Optuna, which told trials count as finished, and which trial
is the best successful one.

A tuning job whose failed trials are scored ``inf`` (or told as Optuna ``FAIL``) teaches the
sampler nothing about *where* things fail: every built-in Optuna sampler skips ``FAIL`` trials,
and a constant worst score ties all failures. Here each outcome is told as its kind says
(:data:`lambda_hat.trial.outcome.KINDS`):

- a success: ``COMPLETE``, its objective value(s), constraint ``-1`` (feasible);
- ``diverged``, ``timeout``, ``oom``: ``COMPLETE`` with a finite placeholder value and a graded
  constraint in (0, 1] (:func:`constraint_value`), so the sampler learns where they happen;
- ``pruned``: ``PRUNED`` (Optuna takes the last intermediate value);
- every other kind: ``FAIL`` (not learned).

The constraint goes through Optuna 5's ``Trial.set_constraint`` (stored as the system attr
``constraints:failure``), which TPE, GP and NSGA-II read without any ``constraints_func``:
TPE ranks infeasible trials by the sum of their positive constraints, GP models the constraint
with its own Gaussian process. See ``plans/failures.md`` for the reasons and the benchmark.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from lambda_hat._io import finite_float
from lambda_hat.trial.outcome import KINDS, failure_of

__all__ = [
    "CONSTRAINT_KEY",
    "SUCCESS_CONSTRAINT",
    "TellArgs",
    "best_successful",
    "successful_trials",
    "constraint_value",
    "counts_as_finished",
    "describe_best",
    "failure_from_attrs",
    "placeholder_values",
    "progress_of",
    "tell",
    "tell_args",
]

CONSTRAINT_KEY = "failure"
"""Name of the one constraint lambda_hat sets on every trial (system attr ``constraints:failure``)."""

SUCCESS_CONSTRAINT = -1.0
_MIN_FAILED_CONSTRAINT = 0.05  # a failure on its very last step is still infeasible
_MESSAGE_ATTR_CHARS = 500  # Optuna user attrs are stored in the journal: keep them short
# failure fields copied into the user attrs as failure_<field>
_ATTR_FIELDS = ("step", "steps_planned", "fraction_done", "exc_type", "signal", "exit_code")


def progress_of(failure: Mapping[str, Any]) -> float | None:
    """How far a failed trial got, in [0, 1], or ``None`` when it did not say.

    A divergence is graded on a log scale of the step (``log1p(step) / log1p(steps_planned)``):
    how early a run blows up grows roughly with the log of how far the step size is past
    stability, so step 10 vs 100 vs 1,000 of 10,000 must stay distinguishable, which a linear
    fraction (0.001, 0.01, 0.1) would not. Other kinds use ``fraction_done`` as given.
    ``failure`` is in the one spelling (:func:`lambda_hat.trial.outcome.failure_of`).
    """
    step, total = finite_float(failure.get("step")), finite_float(failure.get("steps_planned"))
    frac = finite_float(failure.get("fraction_done"))
    if total is None and step is not None and frac is not None and frac > 0:
        total = step / frac  # the runner reports step and fraction_done = step / steps
    if failure.get("kind") == "diverged" and step is not None and total and total > 0:
        return min(1.0, max(0.0, math.log1p(max(step, 0.0)) / math.log1p(total)))
    if frac is None and step is not None and total and total > 0:
        frac = step / total
    return None if frac is None else min(1.0, max(0.0, frac))


def constraint_value(metrics: Mapping[str, Any] | None) -> float:
    """Graded constraint told to the sampler: ``-1`` for a success, in (0, 1] for a failure.

    For a failure, ``0.05 + 0.95 * (1 - progress)`` (:func:`progress_of`): diverging at step 10 of
    10,000 scores higher (worse) than at step 9,000, a timeout with 10% done worse than one with
    90% done; a failure that reports no progress (``oom``, ``crashed``) scores 1. Always finite.
    """
    failure = failure_of(metrics)
    if failure is None:
        return SUCCESS_CONSTRAINT
    progress = progress_of(failure)
    if progress is None:
        return 1.0
    return _MIN_FAILED_CONSTRAINT + (1.0 - _MIN_FAILED_CONSTRAINT) * (1.0 - progress)


class TellArgs(NamedTuple):
    """How one result is told to Optuna (see :func:`tell_args`)."""

    state: TrialState
    values: list[float] | None  # None for FAIL
    constraint: float | None  # None for FAIL: a FAIL trial is never read by the samplers
    user_attrs: dict[str, Any]


def _objective_values(raw: Any) -> list[float] | None:
    vals = list(raw) if isinstance(raw, Sequence) and not isinstance(raw, str) else [raw]
    out = [finite_float(v) for v in vals]
    return None if not out or any(v is None for v in out) else out  # type: ignore[misc]


def _failure_attrs(failure: Mapping[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "status": "failed",
        "failure_kind": failure["kind"],
        "failure_message": str(failure.get("message", ""))[:_MESSAGE_ATTR_CHARS],
    }
    progress = progress_of(failure)
    if progress is not None:
        attrs["failure_progress"] = progress
    for key in _ATTR_FIELDS:
        if failure.get(key) is not None:
            attrs[f"failure_{key}"] = failure[key]
    return attrs


def failure_from_attrs(attrs: Mapping[str, Any]) -> dict:
    """The failure dict recorded in a trial's user attrs by :func:`tell` (the inverse of what
    :func:`tell_args` records); a trial without them (FAIL by Optuna itself) is an ``error``."""
    failure = {"kind": attrs.get("failure_kind") or "error", "message": ""}
    failure["message"] = attrs.get("failure_message") or "failed without a recorded reason"
    for key, value in attrs.items():
        if key.startswith("failure_") and key not in ("failure_kind", "failure_message"):
            failure[key.removeprefix("failure_")] = value
    return failure


def tell_args(
    metrics: Mapping[str, Any] | None,
    objective_fn: Callable[[Mapping[str, Any]], float | Sequence[float]],
    placeholder: float | Sequence[float] = 1.0,
) -> TellArgs:
    """Decide how a trial result is told: ``(state, values, constraint, user_attrs)``.

    - success: ``COMPLETE`` with ``objective_fn(metrics)`` and constraint ``-1``;
    - a kind told ``COMPLETE`` (``diverged``/``timeout``/``oom``): the finite ``placeholder``
      (one value per objective; use :func:`placeholder_values`) and the graded
      :func:`constraint_value`;
    - ``pruned``: ``PRUNED`` (no values: Optuna uses the last reported intermediate value);
    - every other kind: ``FAIL`` (not learned). Whether the study must abort is the guard's call.

    An objective that raises or is not finite turns the trial into an ``error`` ``FAIL``: nothing
    non-finite ever reaches the storage.
    """
    failure = failure_of(metrics)
    if failure is None:
        try:
            values = _objective_values(objective_fn(metrics))  # type: ignore[arg-type]
            problem = None if values is not None else "objective is not finite"
        except Exception as exc:  # the objective must never crash the driver
            values, problem = None, f"objective raised {type(exc).__name__}: {exc}"
        if values is not None:
            return TellArgs(
                TrialState.COMPLETE,
                values,
                SUCCESS_CONSTRAINT,
                {"status": "ok", "constraint": SUCCESS_CONSTRAINT},
            )
        failure = {"kind": "error", "message": problem}
    attrs = _failure_attrs(failure)
    state = TrialState[KINDS[failure["kind"]].told]
    if state == TrialState.COMPLETE:
        values = _objective_values(placeholder)
        if values is None:
            raise ValueError(f"placeholder must be finite, got {placeholder!r}")
        constraint = constraint_value({"status": "failed", "failure": failure})
        attrs.update(constraint=constraint, objective_is_placeholder=True)
        return TellArgs(state, values, constraint, attrs)
    return TellArgs(state, None, None, attrs)


def counts_as_finished(state: TrialState, kind: str | None) -> bool:
    """True for a trial that ran to an outcome about its hyperparameters (``max_trials``).

    A ``FAIL`` counts unless its failure kind is not *finished* (:data:`lambda_hat.trial.outcome.KINDS`:
    ``interrupted``, ``infrastructure``): then its slot is asked again.
    """
    if state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return state == TrialState.FAIL and (kind not in KINDS or KINDS[kind].finished)


def successful_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and t.user_attrs.get("status", "ok") == "ok"
        and all(c <= 0.0 for c in t.constraints.values())
        and t.values is not None
    ]


def placeholder_values(study: optuna.Study, fallback: float = 1.0) -> list[float]:
    """Finite objective values for a parameter failure: the worst successful value seen so far
    per objective (so GP and CMA-ES see a failure as bad, not as a wild outlier), else
    ``fallback``. TPE ignores them: it ranks infeasible trials by their constraint alone."""
    ok = successful_trials(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    out = []
    for i, direction in enumerate(study.directions):
        vals = [t.values[i] for t in ok]
        if not vals:
            out.append(float(fallback))
        else:
            out.append(
                max(vals) if direction == optuna.study.StudyDirection.MINIMIZE else min(vals)
            )
    return out


def tell(
    study: optuna.Study,
    trial: optuna.Trial | int,
    metrics: Mapping[str, Any] | None,
    objective_fn: Callable[[Mapping[str, Any]], float | Sequence[float]],
    fallback: float = 1.0,
) -> TellArgs:
    """Tell ``metrics`` to ``study`` the lambda_hat way and return what was told.

    Sets the user attrs and the ``failure`` constraint (Optuna 5 ``set_constraint``) before
    ``study.tell``, as the samplers read constraints when the trial finishes. ``trial`` is the
    :class:`optuna.Trial` from ``study.ask()`` or its number (after a driver restart).
    """
    if isinstance(trial, int):
        trial = optuna.Trial(
            study, study._storage.get_trial_id_from_study_id_trial_number(study._study_id, trial)
        )
    failure = failure_of(metrics)
    learned = failure is not None and KINDS[failure["kind"]].told == "COMPLETE"
    # placeholder_values reads every trial: only parameter failures need it (O(n) per tell)
    placeholder = placeholder_values(study, fallback) if learned else fallback
    args = tell_args(metrics, objective_fn, placeholder)
    for key, value in args.user_attrs.items():
        trial.set_user_attr(key, value)
    if args.constraint is not None:
        trial.set_constraint(CONSTRAINT_KEY, args.constraint)
    values = (
        None if args.values is None else (args.values[0] if len(args.values) == 1 else args.values)
    )
    study.tell(trial, values, state=args.state)
    return args


def best_successful(study: optuna.Study, objective_index: int = 0) -> FrozenTrial | None:
    """The best *successful* trial (status ok, feasible, ``COMPLETE``), or ``None`` if there is
    none. Unlike ``study.best_trial`` it never returns a placeholder and never raises."""
    ok = successful_trials(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if not ok:
        return None
    sign = (
        1.0 if study.directions[objective_index] == optuna.study.StudyDirection.MINIMIZE else -1.0
    )
    return min(ok, key=lambda t: sign * t.values[objective_index])


def describe_best(study: optuna.Study, objective_index: int = 0) -> str:
    """One line: the best successful trial, or that the study has none and how its trials ended."""
    best = best_successful(study, objective_index)
    if best is not None:
        return f"best trial #{best.number}: value {best.values[objective_index]:.6g}, {best.params}"
    kinds = collections.Counter(
        t.user_attrs.get("failure_kind", t.state.name.lower()) for t in study.get_trials()
    )
    summary = ", ".join(f"{k}: {n}" for k, n in kinds.most_common()) or "no trials"
    return f"study {study.study_name!r} has no successful trial ({summary})"
