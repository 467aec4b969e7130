"""Failed trials as information: failure kinds, graded constraints, and a per-study guard.

A tuning job whose failed trials are scored ``inf`` (or told as Optuna ``FAIL``) teaches the
sampler nothing about *where* things fail: every built-in Optuna sampler skips ``FAIL`` trials,
and a constant worst score ties all failures. lambda_hat instead sorts every failure into one of
:data:`FAILURE_KINDS` and tells the study accordingly (:func:`tell_args`, :func:`tell`):

==================  ====================================================================
kind                how it is told to Optuna
==================  ====================================================================
success             ``COMPLETE``, objective value, constraint ``-1`` (feasible)
``diverged``        ``COMPLETE``, finite placeholder value, graded constraint in (0, 1]
``timeout``         idem (the graded constraint uses the fraction of the work done)
``oom``             idem
``error``           ``FAIL`` (a bug, not a property of the parameters); counted by the guard
``crashed``         ``FAIL``; counted by the guard
``interrupted``     ``FAIL``, not counted (the driver died; the slot is re-asked)
``infrastructure``  retried (:func:`is_retryable`), then ``FAIL``; not counted
``pruned``          ``PRUNED`` (stopped by the driver's pruner); not counted by the guard
==================  ====================================================================

The constraint goes through Optuna 5's ``Trial.set_constraint`` (stored as the system attr
``constraints:failure``), which TPE, GP and NSGA-II read without any ``constraints_func``:
TPE ranks infeasible trials by the sum of their positive constraints, GP models the constraint
with its own Gaussian process. See ``plans/failures.md`` for the reasons and the benchmark.

:class:`FailureGuard` watches one study: it aborts on *systematic* failures (the same exception
from the first trials, import and config errors) and stops a study that has produced
``max_consecutive_failures`` failures without a single success, with :meth:`FailureGuard.diagnosis`
saying what failed, where, and what to change.

Metrics dicts have the trial runner's shape: ``{"status": "ok", ...}`` on success and
``{"status": "failed", "failure": {"kind": ..., "message": ..., ...}}`` otherwise (build the
latter with :func:`failed_metrics`). Failure fields read here, all optional: ``fraction_done``
(0..1), ``step`` and ``steps_total`` (for ``diverged``), ``exc_type``, ``traceback_path``,
``phase`` (``"import"`` for a target that cannot be imported), ``signal``/``exit_code``.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "CONSTRAINT_KEY",
    "FAILURE_KINDS",
    "INFRASTRUCTURE",
    "NOT_LEARNED_KINDS",
    "PARAMETER_KINDS",
    "PRUNED",
    "SYSTEMATIC_EXC_TYPES",
    "Decision",
    "FailureGuard",
    "TellArgs",
    "best_successful",
    "constraint_value",
    "describe_best",
    "failed_metrics",
    "failure_of",
    "is_retryable",
    "is_success",
    "metrics_from_exception",
    "placeholder_values",
    "progress_of",
    "tell",
    "tell_args",
]

FAILURE_KINDS: tuple[str, ...] = (
    "diverged",
    "timeout",
    "oom",
    "crashed",
    "error",
    "interrupted",
    "infrastructure",
    "pruned",
)
"""Every kind a failed trial can have (``metrics["failure"]["kind"]``)."""

PRUNED = "pruned"
"""Stopped early by the tuning driver's pruner: told ``PRUNED`` (Optuna then takes the last
intermediate value as the trial's value, and TPE ranks pruned trials after complete ones)."""

PARAMETER_KINDS: frozenset[str] = frozenset({"diverged", "timeout", "oom"})
"""Failures caused by the hyperparameters: told to the sampler so that it learns where they are."""

INFRASTRUCTURE: frozenset[str] = frozenset({"infrastructure"})
"""Failures of the machinery (worker or node lost): retried, never counted against the study."""

NOT_LEARNED_KINDS: frozenset[str] = frozenset({"interrupted", "infrastructure"})
"""Failures that say nothing about the trial: told as ``FAIL`` and not counted by the guard."""

SYSTEMATIC_EXC_TYPES: frozenset[str] = frozenset(
    {"ImportError", "ModuleNotFoundError", "SyntaxError", "ConfigError", "AttributeError"}
)
"""Exception types that cannot depend on the sampled parameters: the study aborts at once."""

# Parsl exceptions that mean "the worker or node went away", matched by name so that this
# module does not import Parsl.
_INFRASTRUCTURE_EXC_TYPES = frozenset(
    {"ManagerLost", "WorkerLost", "BadStateException", "ScalingFailed", "ConnectionError"}
)

CONSTRAINT_KEY = "failure"
"""Name of the one constraint lambda_hat sets on every trial (system attr ``constraints:failure``)."""

SUCCESS_CONSTRAINT = -1.0
_MIN_FAILED_CONSTRAINT = 0.05  # a failure on its very last step is still infeasible
_MESSAGE_ATTR_CHARS = 500  # Optuna user attrs are stored in the journal: keep them short


def failed_metrics(kind: str, message: str, **extra: Any) -> dict:
    """The canonical metrics dict of a failed trial: ``{"status": "failed", "failure": {...}}``.

    ``extra`` lands inside ``failure`` (e.g. ``step=12, steps_total=10_000`` for ``diverged``,
    ``fraction_done=0.4`` for ``timeout``, ``exc_type``/``traceback_path`` for ``error``).
    """
    if kind not in FAILURE_KINDS:
        raise ValueError(f"failure kind {kind!r} is not one of {', '.join(FAILURE_KINDS)}")
    return {"status": "failed", "failure": {"kind": kind, "message": str(message), **extra}}


def is_success(metrics: Mapping[str, Any] | None) -> bool:
    """Whether ``metrics`` describes a successful trial (``status == "ok"``)."""
    return isinstance(metrics, Mapping) and metrics.get("status") == "ok"


def failure_of(metrics: Mapping[str, Any] | None) -> dict | None:
    """The ``failure`` dict of a failed trial, ``None`` for a success.

    Malformed metrics (missing, no status, an unknown kind) count as an ``error`` failure, so a
    runner bug can never pass for a success or crash the driver.
    """
    if is_success(metrics):
        return None
    if not isinstance(metrics, Mapping):
        return {"kind": "error", "message": "trial produced no metrics"}
    failure = metrics.get("failure")
    if not isinstance(failure, Mapping):
        status = metrics.get("status")
        return {"kind": "error", "message": f"metrics have status {status!r} and no failure"}
    out = dict(failure)
    # the runner's spellings (lambda_hat.runner): exception_type, traceback = a file path
    if out.get("exc_type") is None and out.get("exception_type") is not None:
        out["exc_type"] = out["exception_type"]
    tb = out.get("traceback")
    if out.get("traceback_path") is None and isinstance(tb, str) and tb and "\n" not in tb:
        out["traceback_path"] = out.pop("traceback")
    if out.get("kind") not in FAILURE_KINDS:
        out["message"] = f"unknown failure kind {out.get('kind')!r}: {out.get('message')}"
        out["kind"] = "error"
    return out


def _as_float(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def progress_of(failure: Mapping[str, Any]) -> float | None:
    """How far a failed trial got, in [0, 1], or ``None`` when it did not say.

    A divergence is graded on a log scale of the step (``log1p(step) / log1p(steps_total)``):
    how early a run blows up grows roughly with the log of how far the step size is past
    stability, so step 10 vs 100 vs 1,000 of 10,000 must stay distinguishable, which a linear
    fraction (0.001, 0.01, 0.1) would not. Other kinds use ``fraction_done`` as given.
    """
    step, total = _as_float(failure.get("step")), _as_float(failure.get("steps_total"))
    frac = _as_float(failure.get("fraction_done"))
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


def is_retryable(
    metrics: Mapping[str, Any] | None, attempts: int = 1, max_retries: int = 2
) -> bool:
    """Whether to resubmit a trial: an ``infrastructure`` failure with retries left.

    ``attempts`` is how many times the trial has run so far (1 after the first failure);
    ``max_retries`` how many resubmissions are allowed (0 disables retrying).
    """
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    failure = failure_of(metrics)
    return failure is not None and failure["kind"] in INFRASTRUCTURE and attempts <= max_retries


def metrics_from_exception(exc: BaseException) -> dict:
    """Failed metrics for an exception raised *outside* the trial (e.g. by a Parsl future).

    Lost workers and managers become ``infrastructure`` (retryable); anything else ``error``.
    """
    name = type(exc).__name__
    kind = "infrastructure" if name in _INFRASTRUCTURE_EXC_TYPES else "error"
    return failed_metrics(kind, f"{name}: {exc}", exc_type=name)


class TellArgs(NamedTuple):
    """How one result is told to Optuna (see :func:`tell_args`)."""

    state: TrialState
    values: list[float] | None  # None for FAIL
    constraint: float | None  # None for FAIL: a FAIL trial is never read by the samplers
    user_attrs: dict[str, Any]


def _objective_values(raw: Any) -> list[float] | None:
    vals = list(raw) if isinstance(raw, Sequence) and not isinstance(raw, str) else [raw]
    out = [_as_float(v) for v in vals]
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
    for key in ("step", "steps_total", "fraction_done", "exc_type", "signal", "exit_code"):
        if failure.get(key) is not None:
            attrs[f"failure_{key}"] = failure[key]
    return attrs


def _failure_from_attrs(attrs: Mapping[str, Any]) -> dict:
    """The failure dict recorded in a trial's user attrs by :func:`tell` (inverse of
    :func:`_failure_attrs`); a trial without them (FAIL by Optuna itself) is an ``error``."""
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
    - ``diverged``/``timeout``/``oom``: ``COMPLETE`` with the finite ``placeholder`` (one value
      per objective; use :func:`placeholder_values`) and the graded :func:`constraint_value`;
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
    if failure["kind"] in PARAMETER_KINDS:
        values = _objective_values(placeholder)
        if values is None:
            raise ValueError(f"placeholder must be finite, got {placeholder!r}")
        constraint = constraint_value({"status": "failed", "failure": failure})
        attrs.update(constraint=constraint, objective_is_placeholder=True)
        return TellArgs(TrialState.COMPLETE, values, constraint, attrs)
    if failure["kind"] == PRUNED:
        return TellArgs(TrialState.PRUNED, None, None, attrs)
    return TellArgs(TrialState.FAIL, None, None, attrs)


def _successful(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
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
    ok = _successful(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
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
    learned = failure is not None and failure["kind"] in PARAMETER_KINDS
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
    ok = _successful(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
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


# ---------------------------------------------------------------------------------------------
# The per-study guard
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What the driver does after a trial: ``continue``, ``abort`` (systematic failure: stop the
    study now, not learned) or ``stop`` (all-fail guard). ``message`` says why."""

    action: str
    message: str = ""

    @property
    def proceed(self) -> bool:
        return self.action == "continue"


CONTINUE = Decision("continue")


@dataclass
class _Record:
    number: int
    failure: dict | None
    path: str | None
    params: dict


def _signature(failure: Mapping[str, Any]) -> tuple:
    """What makes two failures "the same": kind plus exception type / signal / exit code."""
    return (
        failure["kind"],
        failure.get("exc_type") or failure.get("signal") or failure.get("exit_code"),
    )


def _round_sig(x: float, down: bool) -> float:
    """``x`` to one significant figure, rounded toward zero (``down``) or away from it."""
    if x == 0 or not math.isfinite(x):
        return x
    scale = 10.0 ** math.floor(math.log10(abs(x)))
    m = abs(x) / scale
    m = math.floor(m + 1e-9) if down else math.ceil(m - 1e-9)
    return math.copysign(float(f"{m * scale:.1g}"), x)


# (kind, upper side?) -> parameter names that usually cause it, to break ties in a diagnosis.
_CULPRITS: dict[tuple[str, bool], tuple[str, ...]] = {
    ("diverged", True): ("eta0", "eta", "lr", "step_size"),
    ("timeout", True): ("steps", "M", "n_chains"),
    ("oom", True): ("batch", "batch_size", "M", "r"),
}


@dataclass
class FailureGuard:
    """Per-study watchdog deciding, after each finished trial, whether the study goes on.

    Args:
        max_consecutive_failures: stop the study after this many counted failures while it has
            not produced a single success (``None`` disables the all-fail guard). Default 10.
        systematic_after: abort when the study's first this-many counted trials all failed with
            the same ``error``/``crashed`` signature (same exception type, signal or exit code).
            Default 3.

    ``interrupted``, ``infrastructure`` and ``pruned`` trials are recorded for the diagnosis but
    do not count. Import and config errors (:data:`SYSTEMATIC_EXC_TYPES`, or ``phase == "import"``)
    abort at once. Once a study has stopped or aborted, every later call returns that decision.
    """

    max_consecutive_failures: int | None = 10
    systematic_after: int = 3
    records: list[_Record] = field(default_factory=list)
    decision: Decision = CONTINUE

    def __post_init__(self) -> None:
        if self.max_consecutive_failures is not None and self.max_consecutive_failures < 1:
            raise ValueError(
                f"max_consecutive_failures must be >= 1 or None, got {self.max_consecutive_failures}"
            )
        if self.systematic_after < 1:
            raise ValueError(f"systematic_after must be >= 1, got {self.systematic_after}")

    @property
    def n_success(self) -> int:
        return sum(r.failure is None for r in self.records)

    def _counted(self) -> list[_Record]:
        return [
            r
            for r in self.records
            if r.failure is None or r.failure["kind"] not in (*NOT_LEARNED_KINDS, PRUNED)
        ]

    def record(
        self,
        trial_number: int,
        metrics: Mapping[str, Any] | None,
        metrics_path: str | None = None,
        params: Mapping[str, Any] | None = None,
        told: TellArgs | None = None,
    ) -> Decision:
        """Record one finished trial and return what the study should do next.

        Pass ``told`` (what :func:`tell` returned) so that a run whose metrics say ``ok`` but
        whose objective could not be computed is recorded as the ``error`` it was told as.
        """
        failure = failure_of(metrics)
        if failure is None and told is not None and told.user_attrs.get("status") == "failed":
            failure = _failure_from_attrs(told.user_attrs)
        rec = _Record(
            trial_number,
            failure,
            None if metrics_path is None else str(metrics_path),
            dict(params or {}),
        )
        self.records.append(rec)
        if not self.decision.proceed:
            return self.decision
        if failure is None or failure["kind"] in NOT_LEARNED_KINDS or failure["kind"] == PRUNED:
            return self.decision
        if failure["kind"] == "error" and (
            failure.get("exc_type") in SYSTEMATIC_EXC_TYPES or failure.get("phase") == "import"
        ):
            self.decision = Decision(
                "abort", self._systematic_message([rec], "cannot import or configure the trial")
            )
            return self.decision
        counted = self._counted()
        if self.n_success == 0 and len(counted) == self.systematic_after:
            sigs = {_signature(r.failure) for r in counted}  # type: ignore[arg-type]
            if len(sigs) == 1 and failure["kind"] in ("error", "crashed"):
                self.decision = Decision(
                    "abort",
                    self._systematic_message(
                        counted, f"the first {len(counted)} trials all failed the same way"
                    ),
                )
                return self.decision
        if (
            self.max_consecutive_failures is not None
            and self.n_success == 0
            and len(counted) >= self.max_consecutive_failures
        ):
            self.decision = Decision(
                "stop",
                f"{len(counted)} failed trials and no success: study stopped.\n{self.diagnosis()}",
            )
        return self.decision

    def replay(self, study: optuna.Study) -> Decision:
        """Re-record a resumed study's finished trials (in trial order) from their user attrs,
        so that a restarted driver keeps the counts, and a stopped study stays stopped."""
        for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
            if not t.state.is_finished():
                continue
            run_dir = t.user_attrs.get("run_dir")
            path = f"{run_dir}/metrics.json" if run_dir else None
            ok = t.state == TrialState.COMPLETE and t.user_attrs.get("status", "ok") == "ok"
            metrics = (
                {"status": "ok"}
                if ok
                else {"status": "failed", "failure": _failure_from_attrs(t.user_attrs)}
            )
            self.record(t.number, metrics, path, t.params)
        return self.decision

    def _systematic_message(self, recs: list[_Record], why: str) -> str:
        f = recs[-1].failure or {}
        lines = [
            f"systematic failure ({why}); not a property of the parameters, so it is not learned.",
            f"  {f.get('kind')}: {f.get('message', '')}",
        ]
        for key in ("traceback_path", "log_path"):
            if f.get(key):
                lines.append(f"  {key.replace('_', ' ')}: {f[key]}")
        tb = f.get("traceback")
        if tb:
            lines.append("  traceback:\n" + "\n".join("    " + ln for ln in str(tb).splitlines()))
        paths = [r.path for r in recs if r.path]
        if paths:
            lines.append("  failing metrics.json: " + ", ".join(paths))
        return "\n".join(lines)

    # -- diagnosis -------------------------------------------------------------------------

    def diagnosis(self) -> str:
        """Human-readable summary: failure kinds with counts, the most common message, example
        metrics paths, the parameter ranges tried, and a concrete suggestion."""
        failed = [r for r in self.records if r.failure is not None]
        lines = [
            f"{len(self.records)} trials recorded: {self.n_success} succeeded, {len(failed)} failed"
        ]
        if failed:
            kinds = collections.Counter(r.failure["kind"] for r in failed)  # type: ignore[index]
            lines.append("failure kinds: " + ", ".join(f"{k} x{n}" for k, n in kinds.most_common()))
            msgs = collections.Counter(
                str(r.failure.get("message", "")).strip().splitlines()[0][:200]  # type: ignore[union-attr]
                if str(r.failure.get("message", "")).strip()  # type: ignore[union-attr]
                else "(no message)"
                for r in failed
            )
            msg, n = msgs.most_common(1)[0]
            lines.append(f"most common message ({n}x): {msg}")
            paths = [r.path for r in failed if r.path][:3]
            if paths:
                lines.append("example metrics: " + ", ".join(paths))
        ranges = self._param_ranges()
        if ranges:
            lines.append("parameter ranges tried:")
            lines.extend(f"  {line}" for line in ranges)
        lines.append("suggestion: " + self.suggestion())
        return "\n".join(lines)

    def _param_ranges(self) -> list[str]:
        names: dict[str, list[Any]] = {}
        for r in self.records:
            for k, v in r.params.items():
                names.setdefault(k, []).append(v)
        out = []
        for name, vals in names.items():
            nums = [_as_float(v) for v in vals if not isinstance(v, bool)]
            if nums and all(x is not None for x in nums) and len(nums) == len(vals):
                out.append(f"{name}: {min(nums):.3g} .. {max(nums):.3g} ({len(vals)} trials)")
            else:
                cats = sorted({repr(v) for v in vals})
                out.append(f"{name}: {{{', '.join(cats)}}} ({len(vals)} trials)")
        return out

    def _cutoff(self, kind: str) -> str | None:
        """The best one-parameter explanation of ``kind``: a threshold beyond which every trial
        tried failed with that kind, as a suggestion to move that bound.

        Candidates are ranked by how many failures they explain, then by whether the parameter
        is the usual culprit for the kind (:data:`_CULPRITS`, e.g. a step size that is too large
        for ``diverged``), then by how many distinct values were tried.
        """
        best: tuple[tuple, str] | None = None
        names = {k for r in self.records for k in r.params}
        for name in sorted(names):
            pts = []
            for r in self.records:
                v = r.params.get(name)
                x = None if isinstance(v, bool) else _as_float(v)
                if x is not None:
                    pts.append((x, r.failure is not None and r.failure["kind"] == kind))
            distinct = len({x for x, _ in pts})
            if distinct < 2:
                continue
            lo, hi = min(x for x, _ in pts), max(x for x, _ in pts)
            for upper in (True, False):
                ordered = sorted(pts, reverse=upper)  # walk inward from the extreme
                n = 0
                while n < len(ordered) and ordered[n][1]:
                    n += 1
                if n < 2:
                    continue
                edge = ordered[n - 1][0]
                rest = [x for x, _ in ordered[n:]]
                if rest:  # the nearest value tried that did not fail this way
                    bound = _round_sig(max(rest) if upper else min(rest), down=upper)
                elif edge > 0:  # everything tried failed: step a factor 3 (or a span) beyond
                    bound = _round_sig(edge / 3 if upper else edge * 3, down=upper)
                else:
                    bound = edge - (hi - lo) if upper else edge + (hi - lo)
                culprit = any(
                    c == name or (len(c) > 2 and c in name)
                    for c in _CULPRITS.get((kind, upper), ())
                )
                side, bound_name = (">=", "upper") if upper else ("<=", "lower")
                scope = (
                    f"{name} {side} {edge:.3g} {kind} every time ({n} of {len(pts)} trials)"
                    if rest
                    else f"every trial {kind} over {name} in [{lo:.3g}, {hi:.3g}]"
                )
                text = f"{scope}: move {name}'s {bound_name} bound to {bound:.3g}"
                key = (n, culprit, distinct)
                if best is None or key > best[0]:
                    best = (key, text)
        return None if best is None else best[1]

    def suggestion(self) -> str:
        """A concrete next step, derived from the dominant failure kind and the parameters."""
        failed = [r for r in self.records if r.failure is not None]
        if not failed:
            return "nothing to change: no trial failed"
        kinds = collections.Counter(r.failure["kind"] for r in failed)  # type: ignore[index]
        kind = kinds.most_common(1)[0][0]
        last = next(r for r in reversed(failed) if r.failure["kind"] == kind)  # type: ignore[index]
        where = f" (see {last.path})" if last.path else ""
        if kind in PARAMETER_KINDS:
            cut = self._cutoff(kind)
            if cut is not None:
                text = cut
                if kind == "timeout":
                    text += ", or raise method_budget_sec"
                return text
            if kind == "diverged":
                return "every region tried diverged: shrink the step-size range (eta0 / lr / step_size) by 10x"
            if kind == "timeout":
                fracs = [
                    f
                    for r in failed
                    if (f := _as_float(r.failure.get("fraction_done"))) is not None
                ]  # type: ignore[union-attr]
                if fracs:
                    med = sorted(fracs)[len(fracs) // 2]
                    factor = max(1.5, 1.2 / max(med, 1e-3))
                    return (
                        f"trials time out with a median {med:.0%} of the work done: raise "
                        f"method_budget_sec about {factor:.1f}x or lower the steps range"
                    )
                return "raise method_budget_sec or lower the steps range"
            return "trials run out of memory: lower batch sizes / model size or give workers more memory"
        if kind == "error":
            f = last.failure or {}
            tb = f" traceback: {f['traceback_path']}" if f.get("traceback_path") else ""
            return f"fix the error {f.get('exc_type', '')}: {f.get('message', '')}{tb}{where}"
        if kind == "crashed":
            f = last.failure or {}
            how = f.get("signal_name") or f.get("signal") or f"exit code {f.get('exit_code')}"
            return f"the trial process died ({how}); inspect its log{where}"
        return f"the {kind} failures are not caused by the parameters: check the workers/cluster{where}"
