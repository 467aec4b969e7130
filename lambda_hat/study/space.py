"""A method's search space from the config: the checked overrides of
``optuna.search_space.<method>`` (:func:`method_space`) and of ``optuna.enqueue.<method>``
(:func:`check_enqueue`). Any error is a :class:`ConfigError` naming the field and the fix.

Posterior settings. ``gamma`` (:data:`lambda_hat.trial.identity.POSTERIOR_HYPERPARAMS`) may
appear in the search space of every method, but only as a fixed value or ``{choices: [...]}``:
each γ is a different posterior with its own HMC reference
(:attr:`lambda_hat.study.plan.Plan.gammas` lists them), so a continuous range, which would need
a reference per trial, is rejected here.
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from lambda_hat import methods
from lambda_hat.methods import step_limit
from lambda_hat.methods.stability import STABILITY_SCALE, StabilityRange
from lambda_hat.schema import ConfigError
from lambda_hat.trial import identity as runs

#: Keys of a search-space override mapping.
_RANGE_KEYS = {"low", "high", "log", "step", "scale"}

#: A searched parameter: an Optuna distribution, or a range relative to ε_max (per problem).
Searched = BaseDistribution | StabilityRange


def method_space(
    method: str, overrides: Any, where: str
) -> tuple[dict[str, Searched], dict[str, Any]]:
    """The method's search space with the user's overrides, and the fixed (untuned) values.

    An override is a fixed value, ``{low, high[, log][, step]}``, ``{low, high[, log], scale:
    stability}`` (``low·ε_max … high·ε_max``, resolved per problem:
    :func:`lambda_hat.study.resolved_space.study_space`) or ``{choices: [...]}``.
    """
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise ConfigError(where, f"got {overrides!r}, expected a mapping of parameter overrides.")
    given = {k: v for k, v in overrides.items() if not isinstance(v, dict)}
    space = dict(methods.search_space(method, given))  # MCLMC: tune: false searches others
    known = set(methods.default_hyperparams(method)) | set(runs.POSTERIOR_HYPERPARAMS)
    fixed: dict[str, Any] = {}
    for name, spec in overrides.items():
        sub = f"{where}.{name}"
        if name not in known:
            raise ConfigError(
                sub,
                f"{method} has no hyperparameter {name!r}. Valid: {', '.join(sorted(known))}.",
                "correct the name.",
            )
        if not isinstance(spec, dict):
            fixed[name] = spec
            space.pop(name, None)
            continue
        if name == "gamma":
            space[name] = _gamma_choices(spec, sub)
            continue
        if "scale" in spec:
            space[name] = _scaled(method, name, spec, sub, given)
        else:
            space[name] = _distribution(spec, space.get(name), sub)
    if fixed:  # with a value for each searched one (cross-field checks: MCLMC's step_size)
        runs.resolve_hyperparams(method, {**_probe(space), **fixed}, where)
    return space, fixed


def _probe(space: dict[str, Searched]) -> dict[str, Any]:
    """A value of each searched hyperparameter: its range's low end, first choice, or 1.0 for
    a range relative to ε_max (its absolute value is known only per problem)."""
    out: dict[str, Any] = {}
    for name, dist in space.items():
        if isinstance(dist, StabilityRange):
            out[name] = dist.fallback.low if dist.fallback is not None else 1.0
        elif isinstance(dist, CategoricalDistribution):
            out[name] = dist.choices[0]
        elif isinstance(dist, (FloatDistribution, IntDistribution)):
            out[name] = dist.low
    return out


def _gamma_choices(spec: dict, where: str) -> CategoricalDistribution:
    """γ searched over listed values (each gets its own reference); a range is an error."""
    if set(spec) != {"choices"}:
        raise ConfigError(
            where,
            f"got {spec!r}: γ sets the posterior, and every posterior needs its own HMC "
            "reference to score its trials against, so γ cannot be searched over a continuous "
            "range (each trial would need a reference of its own).",
            "list the values to try, each computed once: {choices: [0.3, 1.0, 3.0]}, or fix "
            "one value (gamma: 1.0), or leave gamma out to use reference.gamma.",
        )
    choices = spec["choices"]
    if not isinstance(choices, list) or not choices:
        raise ConfigError(where, f"got {spec!r}.", "list the values: {choices: [0.3, 1.0]}.")
    values = []
    for i, c in enumerate(choices):
        g = runs.check_gamma(c, f"{where}.choices[{i}]")
        if g is None:
            raise ConfigError(
                f"{where}.choices[{i}]", "got null.", "list numbers >= 0 (reference.gamma too)."
            )
        values.append(g)
    if len(set(values)) != len(values):
        raise ConfigError(where, f"lists a value twice: {choices}.", "list each γ once.")
    return CategoricalDistribution(values)


def _scaled(method: str, name: str, spec: dict, where: str, given: dict) -> StabilityRange:
    """A ``scale: stability`` range: only for the step size that has a limit (in the space of
    the mode the fixed values ``given`` select)."""
    if spec["scale"] != STABILITY_SCALE:
        raise ConfigError(
            f"{where}.scale",
            f"got {spec['scale']!r}.",
            f"use scale: {STABILITY_SCALE} (relative to ε_max) or drop scale (absolute).",
        )
    default = methods.search_space(method, given).get(name)
    try:
        step_limit(method, 1.0, 2)
        if not isinstance(default, StabilityRange) or set(spec) - {"low", "high", "log", "scale"}:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"{where}.scale",
            f"{method}'s {name} has no stability limit here (SGLD's eta0 has one, and MCLMC's "
            "step_size with tune: false).",
            "write an absolute range {low: .., high: .., log: ..} without scale.",
        ) from None
    try:
        low, high, log = float(spec["low"]), float(spec["high"]), bool(spec.get("log", True))
        return StabilityRange(low, high, log, default.fallback)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            where, f"invalid range {spec!r}: {exc}.", "use 0 < low < high (multiples of ε_max)."
        ) from None


def _distribution(spec: dict, base: Searched | None, where: str) -> BaseDistribution:
    keys = set(spec)
    try:
        if keys == {"choices"}:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ValueError("choices must be a non-empty list")
            return CategoricalDistribution(spec["choices"])
        if keys <= _RANGE_KEYS and {"low", "high"} <= keys:
            low, high = spec["low"], spec["high"]
            as_int = isinstance(base, IntDistribution) or (
                base is None and all(isinstance(v, int) for v in (low, high))
            )
            if as_int:
                return IntDistribution(
                    int(low),
                    int(high),
                    log=bool(spec.get("log", False)),
                    step=int(spec.get("step", 1)),
                )
            return FloatDistribution(
                float(low), float(high), log=bool(spec.get("log", False)), step=spec.get("step")
            )
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            where, f"invalid range {spec!r}: {exc}.", "use low < high (low > 0 with log: true)."
        ) from None
    raise ConfigError(
        where,
        f"got {spec!r}.",
        "write a fixed value, {low: .., high: .., log: true|false} or {choices: [...]}.",
    )


def check_enqueue(method: str, entries: Any, space: dict, fixed: dict) -> list[dict]:
    """The warm-start trials of ``optuna.enqueue.<method>``: each a mapping of searched
    hyperparameters (``space``) that, with the ``fixed`` ones, the method accepts."""
    where = f"optuna.enqueue.{method}"
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ConfigError(where, f"got {entries!r}, expected a list of hyperparameter mappings.")
    out = []
    for i, entry in enumerate(entries):
        sub = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(sub, f"got {entry!r}, expected a mapping.")
        extra = sorted(set(entry) - set(space))
        if extra:
            raise ConfigError(
                f"{sub}.{extra[0]}",
                "is not a searched hyperparameter.",
                f"searched: {', '.join(space)}; fix others under optuna.search_space.{method}.",
            )
        runs.resolve_hyperparams(method, {**fixed, **entry}, sub)
        gamma = space.get("gamma")
        if "gamma" in entry and entry["gamma"] not in getattr(gamma, "choices", ()):
            raise ConfigError(
                f"{sub}.gamma",
                f"got {entry['gamma']!r}, not one of the γ choices {list(gamma.choices)}.",
                "enqueue one of the listed values (each has its own reference).",
            )
        out.append(dict(entry))
    return out
