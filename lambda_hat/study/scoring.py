"""A trial's objective values from its metrics: what the driver tells Optuna and the pruner.

Plain values in, plain values out: the study's objective (``ucb``, ``abs`` or ``huber``), the
names of the told values (``error``, then optionally ``runtime``), Huber's δ, the UCB's number of
SEs and the trial's reference. Why ``ucb`` is the default: plans/objective.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lambda_hat._io import finite_float
from lambda_hat.config.tuning import UCB_SIGMAS
from lambda_hat.trial.outcome import estimate_error

__all__ = ["UCB_SIGMAS", "error_of_objective", "excess_se", "objective_values", "ucb"]


def excess_se(se: float | None, se_ref: float | None) -> float:
    """√(se² + se_ref²) − se_ref: the SE of λ̂ − λ̂_ref beyond the part the reference adds to
    every trial alike (an unknown SE counts as 0)."""
    se = finite_float(se) or 0.0
    se_ref = finite_float(se_ref) or 0.0
    return math.hypot(se, se_ref) - se_ref


def ucb(error: float, se: float | None, se_ref: float | None, sigmas: float) -> float:
    """The ``ucb`` objective of an |error| with its own SE: |error| + ``sigmas`` × the combined
    SE √(se² + se_ref²), less ``sigmas`` × se_ref (the same for every trial of a study, so the
    ranking is the upper bound's while an exact trial scores its plain |error|)."""
    return abs(error) + sigmas * excess_se(se, se_ref)


def _huber_delta(ref: dict, huber_delta: float | None) -> float:
    """δ of the ``huber`` objective: ``huber_delta``, or 2 × the reference's SE."""
    return huber_delta or 2.0 * float(ref.get("se_ref") or 0.0)


def objective_values(
    metrics: dict,
    ref: dict,
    objective: str = "abs",
    objectives: Sequence[str] = ("error",),
    huber_delta: float | None = None,
    ucb_sigmas: float = UCB_SIGMAS,
) -> list[float] | None:
    """The objective(s) of a successful trial, or None when it has none (failed / non-finite).

    ``abs`` is |λ̂ − λ̂_ref| (:func:`lambda_hat.trial.outcome.estimate_error`, against ``ref``,
    the trial's reference: a reused run may have been scored against an older one). ``ucb``
    adds ``ucb_sigmas`` × the trial's uncertainty (:func:`ucb`, with the trial's ``se_hat`` and
    the reference's ``se_ref``), so a noisy trial that landed near the reference by chance does
    not win. ``huber`` is the Huber loss scaled by 1/δ, so it keeps the units of λ: e²/(2δ) for
    |e| ≤ δ and |e| − δ/2 beyond, with δ = ``huber_delta`` or 2 × the reference's SE.
    ``runtime`` (second objective) is the trial's wall-clock seconds.
    """
    if metrics.get("status") != "ok":
        return None
    err = estimate_error(metrics.get("llc_hat"), ref.get("llc_ref"))
    if err is None:
        return None
    err = abs(err)
    if objective == "ucb":
        err = ucb(err, metrics.get("se_hat"), ref.get("se_ref"), ucb_sigmas)
    elif objective == "huber":
        delta = _huber_delta(ref, huber_delta)
        if delta > 0:
            err = err * err / (2 * delta) if err <= delta else err - delta / 2
    values = []
    for name in objectives:
        if name == "error":
            values.append(err)
        else:
            seconds = _seconds(metrics)
            if seconds is None:
                return None
            values.append(seconds)
    return values


def _seconds(metrics: dict) -> float | None:
    """The trial's wall-clock seconds (``seconds`` may be a number or ``{"total": ...}``)."""
    seconds = metrics.get("seconds")
    return finite_float(seconds.get("total") if isinstance(seconds, dict) else seconds)


def error_of_objective(
    value: float, ref: dict, objective: str = "abs", huber_delta: float | None = None
) -> float:
    """|λ̂ − λ̂_ref| back from a told error objective ``value`` (the inverse of
    :func:`objective_values` for ``error``), so that improvements compare with the reference's SE:
    ``abs`` is the error itself; ``huber`` is √(2δh) for h ≤ δ/2 and h + δ/2 beyond; ``ucb``
    (not invertible without the trial's SE) is its value, already in λ's units: the stopping
    rule then watches the best penalized error."""
    if objective != "huber":
        return value
    delta = _huber_delta(ref, huber_delta)
    if delta <= 0:
        return value
    return (2 * delta * value) ** 0.5 if value <= delta / 2 else value + delta / 2
