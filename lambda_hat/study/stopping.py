"""When a study is done before ``max_trials``: it converged, or its grid is exhausted.

Converged (``optuna.stop_after_stale: K``): the last K finished trials improved the study's best
|λ̂ − λ̂_ref| by no more than ``stop_min_improvement`` in total (default: the reference's SE, the
resolution the reference itself has; for the ``huber`` objective the told values are turned
back into errors first, :func:`lambda_hat.study.scoring.error_of_objective`). Failed and
pruned trials count as trials that did not improve. Defined for one objective only: a Pareto
front has no single best value (the config check refuses ``stop_after_stale`` with two).

Grid exhausted (``sampler: grid``): every grid point has a finished trial.

Both are functions of the stored trials and the config, evaluated after every told trial and
when a driver starts. So a converged study asks nothing more (the trials already in flight still
finish and are told, and one of them improving by more than the tolerance reopens it); a rerun of
a converged study asks nothing; a rerun whose rule no longer holds (a larger or no
``stop_after_stale``, a smaller ``stop_min_improvement``, another sampler after a grid) goes on
to ``max_trials``. Raising ``max_trials`` alone does not reopen a converged study: by its own
rule more trials would not improve it. The verdict is the study user attr :data:`ATTR`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.study.grid_sampler import SpaceGridSampler
from lambda_hat.study.scoring import error_of_objective
from lambda_hat.study.tell import counts_as_finished, successful_trials

__all__ = ["ATTR", "StopRule", "applies", "early_stop", "stagnation", "unclaimed_points"]

#: Study user attr: why the study is done before max_trials (a dict, see :func:`early_stop`),
#: or None while it is not.
ATTR = "early_stop"


@dataclass(frozen=True)
class StopRule:
    """The convergence rule of one study: ``stale`` = K (None: off) and the improvement that
    counts (None: the study's reference SE)."""

    stale: int | None = None
    min_improvement: float | None = None

    @classmethod
    def from_config(cls, cfg: OptunaConfig) -> StopRule:
        return cls(cfg.stop_after_stale, cfg.stop_min_improvement)


def stagnation(errors: Sequence[float | None], k: int, tol: float) -> float | None:
    """How much the last ``k`` of ``errors`` (finished order; None: no score) improved the best
    error before them, when that is at most ``tol`` (converged); None when they improved it by
    more, or when no trial before them succeeded (nothing to improve on yet)."""
    if len(errors) <= k:
        return None
    before = [e for e in errors[:-k] if e is not None]
    if not before:
        return None
    best_before = min(before)
    best = min([best_before, *(e for e in errors[-k:] if e is not None)])
    gain = best_before - best
    return gain if gain <= tol else None


def _finished(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count towards ``max_trials``, in the order they finished."""
    done = [
        t
        for t in trials
        if t.state.is_finished() and counts_as_finished(t.state, t.user_attrs.get("failure_kind"))
    ]
    return sorted(done, key=lambda t: (t.datetime_complete or datetime.min, t.number))


def _converged(
    trials: Sequence[FrozenTrial],
    rule: StopRule | None,
    ref: dict,
    ref_of: Callable[[dict], dict] | None,
    objective: str,
    huber_delta: float | None,
) -> dict[str, Any] | None:
    if rule is None or rule.stale is None:
        return None
    done = _finished(trials)
    ok = {t.number for t in successful_trials(done)}
    errors = [
        error_of_objective(
            t.values[0], ref if ref_of is None else ref_of(t.params), objective, huber_delta
        )
        if t.number in ok
        else None
        for t in done
    ]
    own = rule.min_improvement is not None
    tol = rule.min_improvement if own else float(ref.get("se_ref") or 0.0)
    gain = stagnation(errors, rule.stale, tol)
    if gain is None:
        return None
    best, number = min((e, t.number) for e, t in zip(errors, done, strict=True) if e is not None)
    source = "optuna.stop_min_improvement" if own else "the reference's SE"
    return {
        "rule": "stale",
        "reason": (
            f"converged: the last {rule.stale} finished trials improved the best |error| by "
            f"{gain:.3g} <= {tol:.3g} ({source}); best |error| {best:.4g} (trial #{number}) "
            f"after {len(done)} finished trials"
        ),
        "finished": len(done),
        "stale": rule.stale,
        "tolerance": tol,
        "best_error": best,
        "best_number": number,
    }


def _grid_exhausted(
    sampler: optuna.samplers.BaseSampler, trials: Sequence[FrozenTrial]
) -> dict[str, Any] | None:
    if not isinstance(sampler, SpaceGridSampler):
        return None
    done, _ = sampler.taken(list(trials))
    if len(done) < sampler.size:
        return None
    return {
        "rule": "grid",
        "reason": f"the grid is exhausted: all {sampler.size} points have a finished trial",
        "finished": len(_finished(trials)),
        "grid_size": sampler.size,
    }


def applies(sampler: optuna.samplers.BaseSampler, rule: StopRule | None) -> bool:
    """Whether a study with this sampler and convergence rule can be done early at all."""
    stale = rule is not None and rule.stale is not None
    return stale or isinstance(sampler, SpaceGridSampler)


def early_stop(
    trials: Sequence[FrozenTrial],
    sampler: optuna.samplers.BaseSampler,
    rule: StopRule | None,
    *,
    ref: dict,
    ref_of: Callable[[dict], dict] | None = None,
    objective: str = "abs",
    huber_delta: float | None = None,
    n_objectives: int = 1,
) -> dict[str, Any] | None:
    """Why the study is done before ``max_trials`` (``rule``: ``grid`` or ``stale``, ``reason``:
    one line for people, and the numbers behind it), or None while it is not.

    ``trials``: the study's stored trials; ``sampler``: its sampler (the grid is exhausted or
    not); ``rule``: its convergence rule. The told values are scored as
    :func:`lambda_hat.study.scoring.error_of_objective` says, against ``ref_of(params)`` (the
    reference of a trial's own posterior; None: ``ref``, whose SE is the default tolerance).
    Convergence needs one objective (``n_objectives``)."""
    grid = _grid_exhausted(sampler, trials)
    if grid is not None or n_objectives != 1:
        return grid
    return _converged(trials, rule, ref, ref_of, objective, huber_delta)


def unclaimed_points(study: optuna.Study) -> int | None:
    """Grid points no trial has taken (finished, running or waiting in the queue); None when
    the study's sampler is not the grid."""
    sampler = study.sampler
    if not isinstance(sampler, SpaceGridSampler):
        return None
    done, pending = sampler.taken(study.get_trials(deepcopy=False))
    return sampler.size - len(done | pending)
