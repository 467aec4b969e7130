"""The grid sampler: every point of a study's search space once (:class:`SpaceGridSampler`).

The grid is a search space's finite choices (:func:`grid_values`): ``{choices: [...]}`` as
listed, a stepped range on its steps, or with ``optuna.grid_points`` every numeric range cut into
that many points. The trials still declare the study's own distributions, so a later stage with
another sampler (TPE) on the same study models them like its own trials (``plans/workflow.md``,
the staged recipe).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.schema import ConfigError
from lambda_hat.study.tell import counts_as_finished

log = logging.getLogger("lambda_hat.workflow")

#: Without ``optuna.grid_points`` a stepped numeric range is enumerated up to this many values.
MAX_STEPPED_POINTS = 100


def grid_values(dist: Any, grid_points: int | None, where: str) -> list:
    """The grid's values of one searched parameter (``where``: its config path, for errors).

    Choices as listed; with ``grid_points`` a numeric range's ``grid_points`` evenly spaced
    points (log-spaced for a log range, snapped to its step and deduplicated), without it a
    stepped range's every step (at most :data:`MAX_STEPPED_POINTS`). A continuous range without
    ``grid_points`` has no grid: :class:`ConfigError`. ``dist`` may be a
    :class:`~lambda_hat.methods.stability.StabilityRange` (multiples of ε_max) at the config check.
    """
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    step = getattr(dist, "step", None)
    if grid_points is not None:
        return _spaced(dist, grid_points)
    if step is not None:
        n = math.floor((dist.high - dist.low) / step + 1e-9) + 1
        if n <= MAX_STEPPED_POINTS:
            return _on_steps(dist, [dist.low + i * step for i in range(n)])
        problem = f"the range {dist.low}..{dist.high} has {n} values on its step {step}"
    else:
        problem = f"the range {dist.low}..{dist.high} is continuous"
    raise ConfigError(
        where,
        f"{problem}; sampler: grid needs a finite, small set of values for every searched "
        "parameter.",
        f"give it {{choices: [...]}} (or a coarser step, at most {MAX_STEPPED_POINTS} values), "
        "fix it to one value, or set optuna.grid_points to cut every numeric range into that "
        "many points.",
    )


def _spaced(dist: Any, n: int) -> list:
    lo, hi = float(dist.low), float(dist.high)
    xs = np.geomspace(lo, hi, n) if dist.log else np.linspace(lo, hi, n)
    xs[0], xs[-1] = lo, hi
    return _on_steps(dist, [float(x) for x in xs])


def _on_steps(dist: Any, xs: list[float]) -> list:
    """``xs`` snapped to ``dist``'s step (integers for an int range), in order, without repeats."""
    step = getattr(dist, "step", None)
    out: list = []
    for x in xs:
        if step is not None:
            x = dist.low + round((x - dist.low) / step) * step
            x = min(max(x, dist.low), dist.high)
        x = int(round(x)) if isinstance(dist, IntDistribution) else float(x)
        if x not in out:
            out.append(x)
    return out


def grid_of(space: dict[str, Any], grid_points: int | None, where: str = "") -> dict[str, list]:
    """Every searched parameter's grid values (:func:`grid_values`), by name."""
    at = f"{where}." if where else ""
    return {name: grid_values(d, grid_points, f"{at}{name}") for name, d in space.items()}


def check_grid(cfg: OptunaConfig, space: dict[str, Any], where: str) -> int:
    """The grid's size for one method's ``space`` when ``sampler: grid`` (0 otherwise); raises
    :class:`ConfigError` naming the first parameter without finite choices."""
    if cfg.sampler != "grid":
        return 0
    size = math.prod(len(v) for v in grid_of(space, cfg.grid_points, where).values())
    if size > cfg.max_trials:
        log.warning(
            "%s: the grid has %d points, optuna.max_trials = %d: only %d of them (drawn at "
            "random) will be tried",
            where,
            size,
            cfg.max_trials,
            cfg.max_trials,
        )
    return size


class _Grid(optuna.samplers.GridSampler):
    """Optuna's GridSampler for an ask-and-tell driver that requeues and shares trials.

    A point is taken by the trials whose *parameters* are that point (not by a ``grid_id``
    attr): finished ones (:func:`~lambda_hat.study.tell.counts_as_finished`: an
    interrupted trial does not take its point, its requeued copy does), running ones and queued
    ones (``fixed_params``). Points are drawn at random among the free ones (Optuna's takes the
    first ``n`` trials in grid order, which a grid larger than ``max_trials`` would cut to the
    first values of the first parameters). Stopping is left to the driver (Optuna's
    ``study.stop()`` works only inside ``optimize``).
    """

    def after_trial(self, study, trial, state, values) -> None:
        return None

    @property
    def index(self) -> dict[tuple, int]:
        if not hasattr(self, "_index"):
            self._index = {tuple(p): i for i, p in enumerate(self._all_grids)}
        return self._index

    def point_of(self, params: dict) -> int | None:
        return self.index.get(tuple(params.get(n) for n in self._param_names))

    def taken(self, trials: list[FrozenTrial]) -> tuple[set[int], set[int]]:
        """Points with a finished trial, and points with a running or queued one."""
        done, pending = set(), set()
        for t in trials:
            if t.state == TrialState.WAITING:
                pending.add(self.point_of(t.system_attrs.get("fixed_params") or {}))
            elif t.state == TrialState.RUNNING:
                pending.add(self.point_of(t.params))
            elif counts_as_finished(t.state, t.user_attrs.get("failure_kind")):
                done.add(self.point_of(t.params))
        return done - {None}, pending - {None}

    def _get_unvisited_grid_ids(self, study: optuna.Study) -> list[int]:
        done, pending = self.taken(study._storage.get_all_trials(study._study_id, deepcopy=False))
        every = set(range(len(self._all_grids)))
        return sorted(every - done - pending) or sorted(every - done)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if "grid_id" in trial.system_attrs:
            return
        fixed = trial.system_attrs.get("fixed_params") or {}
        if all(n in fixed for n in self._param_names):  # requeued or fully enqueued
            grid_id = self.point_of(fixed)
            if grid_id is None:
                return  # off the grid: every value is fixed, nothing to sample
        else:
            free = self._get_unvisited_grid_ids(study) or list(range(len(self._all_grids)))
            fits = [i for i in free if self._fits(i, fixed)]
            grid_id = int(self._rng.rng.choice(fits or free))
        study._storage.set_trial_system_attr(trial._trial_id, "search_space", self._search_space)
        study._storage.set_trial_system_attr(trial._trial_id, "grid_id", grid_id)

    def _fits(self, grid_id: int, fixed: dict) -> bool:
        point = self._all_grids[grid_id]
        return all(point[self._param_names.index(n)] == v for n, v in fixed.items())


class SpaceGridSampler(optuna.samplers.BaseSampler):
    """Every point of the grid of a study's search space (:func:`grid_of`) once, in random
    order (Optuna's GridSampler). The space is known only when the study's task is built:
    :meth:`bind` it before the first ask (:class:`lambda_hat.study.task.StudyTask` does)."""

    def __init__(self, grid_points: int | None = None, seed: int | None = None) -> None:
        self.grid_points, self._seed = grid_points, seed
        self._grid: _Grid | None = None

    def bind(self, space: dict[str, BaseDistribution]) -> None:
        """Build the grid of ``space`` (raises :class:`ConfigError` as :func:`grid_values`)."""
        self._grid = _Grid(grid_of(space, self.grid_points), seed=self._seed)

    @property
    def grid(self) -> _Grid:
        if self._grid is None:
            raise RuntimeError("SpaceGridSampler.bind(space) must be called before the first ask")
        return self._grid

    @property
    def size(self) -> int:
        return len(self.grid._all_grids)

    def point_of(self, params: dict) -> int | None:
        """The grid index of a trial's ``params``; None when they are not a grid point."""
        return self.grid.point_of(params)

    def taken(self, trials: list[FrozenTrial]) -> tuple[set[int], set[int]]:
        """Grid points with a finished trial, and those with a running or queued one."""
        return self.grid.taken(trials)

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.grid.before_trial(study, trial)

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self.grid.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state: TrialState, values) -> None:
        return None

    def reseed_rng(self) -> None:
        if self._grid is not None:
            self._grid.reseed_rng()
