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
cannot exist unnoticed (``tests/test_runner.py`` checks that every searched one changes the run).
Search spaces follow ``docs/prior-art.md``.
"""

from __future__ import annotations

import dataclasses

from optuna.distributions import BaseDistribution

from lambda_hat.config.schema import ConfigError, validate
from lambda_hat.methods import mclmc, sgld, vi
from lambda_hat.methods._base import Method

__all__ = [
    "METHODS",
    "REGISTRY",
    "Method",
    "culprits",
    "default_hyperparams",
    "get",
    "search_space",
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


def search_space(method: str) -> dict[str, BaseDistribution]:
    """The default Optuna search space of ``method`` (docs/prior-art.md)."""
    return get(method).space()


def culprits(method: str) -> dict[str, tuple[str, ...]]:
    """Failure kind -> the hyperparameters of ``method`` that usually cause it."""
    return dict(get(method).culprits)
