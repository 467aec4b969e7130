"""Samplers: the configured one (:func:`make_sampler`), lambda_hat's TPE that proposes inside
the feasible region (:class:`FeasibleBoxTPESampler`) and the grid (:class:`SpaceGridSampler`).

The grid is a search space's finite choices (:func:`grid_values`): ``{choices: [...]}`` as
listed, a stepped range on its steps, or with ``optuna.grid_points`` every numeric range cut into
that many points. The trials still declare the study's own distributions, so a later stage with
another sampler (TPE) on the same study models them like its own trials (``plans/workflow.md``,
the staged recipe).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from lambda_hat.config.schema import ConfigError
from lambda_hat.config.tuning import OptunaConfig

log = logging.getLogger("lambda_hat.workflow")

#: Samplers and the optional package each one needs.
_SAMPLER_NEEDS = {"gp": "torch", "cmaes": "cmaes", "qmc": "scipy"}


def check_sampler(cfg: OptunaConfig) -> None:
    """Raise :class:`ConfigError`, before any work, when the chosen sampler's package is missing
    or a study-stopping rule cannot apply (``stop_after_stale`` needs a single objective)."""
    need = _SAMPLER_NEEDS.get(cfg.sampler)
    if need and importlib.util.find_spec(need) is None:
        raise ConfigError(
            "optuna.sampler",
            f"{cfg.sampler!r} needs the Python package {need!r}, which is not installed.",
            f"pip install {need}, or use sampler: tpe.",
        )
    if cfg.stop_after_stale is not None and len(cfg.objectives) > 1:
        raise ConfigError(
            "optuna.stop_after_stale",
            f"objectives {cfg.objectives} make a Pareto front, not one best value, so 'no "
            "improvement for K trials' is not defined (a stagnant error may still buy a "
            "faster runtime).",
            "remove stop_after_stale (run max_trials), or tune objectives: [error] alone.",
        )


def make_sampler(cfg: OptunaConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler. ``tpe`` is :class:`FeasibleBoxTPESampler` (scrambled Sobol
    start-up, then TPE in a box around the successes; ``plans/failures.md``), keeping Optuna 5's
    ``multivariate=True`` and ``constant_liar=True``: running trials count as bad, so a batch of
    parallel asks spreads out instead of proposing the same point ``batch_size`` times.
    ``grid`` is a :class:`SpaceGridSampler`, bound to the study's space by its task."""
    s = cfg.sampler
    if s == "tpe":
        return FeasibleBoxTPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
    if s == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s == "qmc":
        with warnings.catch_warnings():  # "experimental" since Optuna 3.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(
                seed=seed, scramble=True, warn_asynchronous_seeding=False
            )
    if s == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
    if s == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
    if s == "grid":
        return SpaceGridSampler(cfg.grid_points, seed=seed)
    raise ValueError(f"unknown sampler {s!r}")


def _feasible(t: FrozenTrial) -> bool:
    """A ``COMPLETE`` trial whose constraints (lambda_hat's ``failure``) are all satisfied; one
    told without constraints counts as feasible."""
    return t.state == TrialState.COMPLETE and all(c <= 0.0 for c in t.constraints.values())


def box_anchors(trials: list[FrozenTrial], min_anchors: int = 3) -> tuple[list[FrozenTrial], bool]:
    """The trials the box is drawn around, and whether any of them succeeded.

    Every feasible trial; while there are fewer than ``min_anchors``, the least infeasible
    failures (smallest constraint sum: a late divergence, a nearly finished timeout) fill up.
    """
    ok = [t for t in trials if _feasible(t)]
    if len(ok) >= min_anchors:
        return ok, True
    bad = [t for t in trials if t.state == TrialState.COMPLETE and not _feasible(t)]
    bad.sort(key=lambda t: sum(t.constraints.values()))
    return ok + bad[: min_anchors - len(ok)], bool(ok)


def _internal(d: FloatDistribution | IntDistribution, v: float) -> float:
    return math.log(v) if d.log else float(v)


def _narrowed(d: FloatDistribution | IntDistribution, lo: float, hi: float) -> BaseDistribution:
    """``d`` restricted to internal (log when ``d.log``) coordinates ``[lo, hi]``, on its grid;
    ``d`` itself when nothing of it would be left."""
    lo, hi = (math.exp(lo), math.exp(hi)) if d.log else (lo, hi)
    if d.step is not None:
        lo = d.low + math.floor((lo - d.low) / d.step) * d.step
        hi = d.low + math.ceil((hi - d.low) / d.step) * d.step
    if isinstance(d, IntDistribution):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(d.low, lo), min(d.high, hi)
    if not lo < hi:
        return d
    return type(d)(lo, hi, log=d.log, step=d.step)


def feasible_box(
    space: dict[str, BaseDistribution],
    anchors: list[FrozenTrial],
    margin: float,
    min_width: float = 0.05,
) -> dict[str, BaseDistribution]:
    """``space`` with every numeric range cut to the anchors' span, widened on each side by
    ``margin`` x max(span, ``min_width`` x the full range), in log coordinates for log ranges.

    Categorical parameters keep their choices. The result only restricts what is *proposed*:
    a trial still declares the full distributions, so the stored search space never changes.
    """
    out: dict[str, BaseDistribution] = {}
    for name, d in space.items():
        numeric = isinstance(d, (FloatDistribution, IntDistribution))
        xs = [_internal(d, t.params[name]) for t in anchors if numeric and name in t.params]
        if not xs:
            out[name] = d
            continue
        full = _internal(d, d.high) - _internal(d, d.low)
        pad = margin * max(max(xs) - min(xs), min_width * full)
        out[name] = _narrowed(d, min(xs) - pad, max(xs) + pad)
    return out


class FeasibleBoxTPESampler(optuna.samplers.TPESampler):
    """Multivariate TPE that proposes only inside a box around where trials succeed.

    The first ``n_startup_trials`` finished trials are scrambled Sobol points (even coverage to
    find the feasible region). After that each proposal is TPE's (with the failure constraint,
    ``lambda_hat.study.tell``), restricted to :func:`feasible_box` around
    :func:`box_anchors`: widened by ``margin`` when some anchor succeeded, by
    ``margin_searching`` while none has (the feasible region is still to be found). The box is
    recomputed at every ask, so it follows the successes. ``bench/bench_failures.py`` chose
    the constants (``plans/failures.md``).
    """

    def __init__(
        self,
        seed: int | None = None,
        n_startup_trials: int = 10,
        min_anchors: int = 3,
        margin: float = 0.5,
        margin_searching: float = 1.0,
        min_width: float = 0.05,
    ) -> None:
        super().__init__(
            seed=seed,
            n_startup_trials=0,
            multivariate=True,
            constant_liar=True,
        )
        with warnings.catch_warnings():  # QMCSampler is "experimental" since Optuna 3.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._startup = optuna.samplers.QMCSampler(
                seed=seed,
                scramble=True,
                warn_asynchronous_seeding=False,
                warn_independent_sampling=False,
            )
        self._box_startup = n_startup_trials
        self._box = (min_anchors, margin, margin_searching, min_width)

    def _finished(self, study: optuna.Study) -> list[FrozenTrial]:
        states = (TrialState.COMPLETE, TrialState.PRUNED)
        return study._get_trials(deepcopy=False, states=states, use_cache=False)

    def _starting(self, study: optuna.Study) -> bool:
        return len(self._finished(study)) < self._box_startup

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if self._starting(study):
            return self._startup.infer_relative_search_space(study, trial)
        return super().infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict:
        finished = self._finished(study)
        if len(finished) < self._box_startup:
            return self._startup.sample_relative(study, trial, search_space)
        if not search_space:
            return {}
        min_anchors, margin, searching, min_width = self._box
        anchors, found = box_anchors(finished, min_anchors)
        box = feasible_box(search_space, anchors, margin if found else searching, min_width)
        return super().sample_relative(study, trial, box)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution
    ):
        if self._starting(study):
            return self._startup.sample_independent(study, trial, param_name, param_distribution)
        return super().sample_independent(study, trial, param_name, param_distribution)


# ------------------------------------------------------------------------------ the grid

#: Without ``optuna.grid_points`` a stepped numeric range is enumerated up to this many values.
MAX_STEPPED_POINTS = 100


def grid_values(dist: Any, grid_points: int | None, where: str) -> list:
    """The grid's values of one searched parameter (``where``: its config path, for errors).

    Choices as listed; with ``grid_points`` a numeric range's ``grid_points`` evenly spaced
    points (log-spaced for a log range, snapped to its step and deduplicated), without it a
    stepped range's every step (at most :data:`MAX_STEPPED_POINTS`). A continuous range without
    ``grid_points`` has no grid: :class:`ConfigError`. ``dist`` may be a
    :class:`~lambda_hat.study.plan.StabilityRange` (multiples of ε_max) at the config check.
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
    attr): finished ones (:func:`~lambda_hat.study.storage.counts_as_finished`: an
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
        from lambda_hat.study.storage import counts_as_finished  # studies imports us

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
