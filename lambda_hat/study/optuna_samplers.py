"""Optuna samplers (what proposes a study's next hyperparameters; the JAX kernels that draw
posterior samples are :mod:`lambda_hat.samplers`): the configured one (:func:`make_sampler`)
and lambda_hat's TPE that proposes inside the feasible region (:class:`FeasibleBoxTPESampler`).
The grid is :mod:`lambda_hat.study.grid_sampler`.
"""

from __future__ import annotations

import importlib.util
import math
import warnings

import optuna
from optuna.distributions import (
    BaseDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from lambda_hat.config.tuning import OptunaConfig
from lambda_hat.schema import ConfigError
from lambda_hat.study.grid_sampler import SpaceGridSampler

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
