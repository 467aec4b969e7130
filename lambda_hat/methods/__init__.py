"""The cheap LLC methods: one registry, one module per method.

Each module (``sgld``, ``vi``, ``mclmc``) holds its hyperparameter schema, its default search
space and its adapter, bundled as a :class:`Method`; :data:`REGISTRY` lists them, and every
method list in lambda_hat (the config schema, CLI choices, the failure diagnosis) comes from
here. Adding a method is one new module plus one line below.

An adapter ``run(target, hp, key, deadline, timer)`` returns a plain dict, ``RunOutput``:
``loss`` (C, T) every L_n draw, ``kept`` (C, K) the draws the estimator uses, ``burnin``,
``units_done``/``units_total`` (the drive loop's units), ``stopped_early``, ``steps_done``/
``steps_planned``, ``independent`` (fits rather than chains), ``work`` (grad_evals, fge,
loss_evals, ...), ``diagnostics`` and ``trace`` (arrays for ``trace.npz``), and optionally
``failure`` (a failure record of the adapter's own check: the estimate is kept, the trial
fails). It raises :class:`lambda_hat.llc.engine.Diverged` or :class:`lambda_hat.llc.engine.Pruned` to stop.

The runner reads exactly the fields of each schema, so a hyperparameter that does nothing
cannot exist unnoticed (``tests/trial/test_runner.py`` checks that every searched one changes the run).
Search spaces and their defaults are measured in ``plans/methods.md``; a step size's range is
relative to the method's own stability limit (:func:`step_limit`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from optuna.distributions import BaseDistribution

from lambda_hat.methods import mclmc, sgld, vi
from lambda_hat.methods._base import MIN_DRAWS, Method, Target, make_target
from lambda_hat.methods.stability import (
    STABILITY_SCALE,
    StabilityRange,
    check_a_max,
    langevin_step_limit,
)
from lambda_hat.schema import ConfigError, validate

__all__ = [
    "METHODS",
    "MIN_DRAWS",
    "STABILITY_SCALE",
    "StabilityRange",
    "langevin_step_limit",
    "make_target",
    "Target",
    "REGISTRY",
    "Method",
    "culprits",
    "default_hyperparams",
    "get",
    "resolve_space",
    "search_space",
    "step_limit",
    "validate_hyperparams",
]

REGISTRY: dict[str, Method] = {m.name: m for m in (sgld.METHOD, vi.METHOD, mclmc.METHOD)}
METHODS: tuple[str, ...] = tuple(REGISTRY)


def get(method: str) -> Method:
    """The registered method ``method`` (a ConfigError naming the known ones otherwise)."""
    try:
        return REGISTRY[method]
    except KeyError:
        raise ConfigError(
            "method", f"got {method!r}; known methods: {', '.join(METHODS)}.", "use one of them."
        ) from None


def default_hyperparams(method: str) -> dict:
    """Every hyperparameter of ``method`` at its default."""
    return dataclasses.asdict(validate({}, get(method).hyper, method))


def validate_hyperparams(method: str, hp: dict | None, where: str = "hyperparams") -> dict:
    """The full resolved hyperparameter dict (defaults filled, types coerced, ranges checked).

    Raises :class:`ConfigError` naming the field for unknown names (listing the valid ones),
    wrong types and out-of-range values, before any work.
    """
    m = get(method)
    resolved = validate(dict(hp or {}), m.hyper, where)
    if m.check is not None:
        m.check(resolved, where)
    return dataclasses.asdict(resolved)


def search_space(method: str, fixed: Mapping | None = None) -> dict[str, BaseDistribution]:
    """The default Optuna search space of ``method`` (its record's ``space()``), or, given the
    values a config fixes, its record's ``space_for(fixed)`` where it has one (MCLMC: another
    space for ``tune: false``)."""
    m = get(method)
    if fixed and m.space_for is not None:
        return m.space_for(fixed)
    return m.space()


def culprits(method: str) -> dict[str, tuple[str, ...]]:
    """Failure kind -> the hyperparameters of ``method`` that usually cause it."""
    return dict(get(method).culprits)


def step_limit(method: str, a_max: float, d: int) -> float:
    """ε_max of ``method``'s step size on a problem with top eigenvalue ``a_max`` and ``d``
    parameters (:attr:`Method.step_limit`: SGLD 4/a_max, MCLMC 2.553·√((d−1)/a_max)). Raises
    ValueError for an ``a_max`` that is not finite and > 0, or a method without a limit."""
    a_max = check_a_max(a_max)
    limit = get(method).step_limit
    if limit is None:
        raise ValueError(f"{method} has no stability limit: write an absolute range")
    return limit(a_max, d)


def resolve_space(
    space: Mapping[str, BaseDistribution | StabilityRange],
    method: str,
    a_max: float,
    d: int,
) -> tuple[dict[str, BaseDistribution], dict[str, float]]:
    """``space`` with every :class:`StabilityRange` made absolute, and ``{name: ε_max}`` for the
    names that were scaled (empty when none was)."""
    out: dict[str, BaseDistribution] = {}
    limits: dict[str, float] = {}
    for name, dist in space.items():
        if isinstance(dist, StabilityRange):
            limits[name] = step_limit(method, a_max, d)
            out[name] = dist.resolve(limits[name])
        else:
            out[name] = dist
    return out, limits
