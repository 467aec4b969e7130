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

import math
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from lambda_hat import methods
from lambda_hat.log import fmt_value
from lambda_hat.methods import step_limit
from lambda_hat.methods.stability import STABILITY_SCALE, StabilityRange
from lambda_hat.schema import ConfigError, allowed, field_type, validate
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
            space[name] = _distribution(method, name, spec, space.get(name), sub)
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


def _distribution(
    method: str, name: str, spec: dict, base: Searched | None, where: str
) -> BaseDistribution:
    """``{choices}`` or ``{low, high[, log][, step]}`` of hyperparameter ``name``: every choice
    and both ends checked against the method's schema (type and bounds), an integer
    hyperparameter searched over integers, a real one over reals."""
    hyper = methods.get(method).hyper
    keys = set(spec)
    if keys == {"choices"}:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(where, f"got {spec!r}.", "list the values: {choices: [a, b]}.")
        for i, c in enumerate(choices):
            _schema_value(hyper, name, c, f"{where}.choices[{i}]", base)
        try:
            return CategoricalDistribution(choices)
        except (TypeError, ValueError) as exc:
            raise ConfigError(where, f"invalid choices {choices!r}: {exc}.") from None
    if keys <= _RANGE_KEYS and {"low", "high"} <= keys:
        return _range(hyper, name, spec, base, where)
    raise ConfigError(
        where,
        f"got {spec!r}.",
        "write a fixed value, {low: .., high: .., log: true|false} or {choices: [...]}.",
    )


def _range(hyper: type, name: str, spec: dict, base: Searched | None, where: str):
    """A numeric range of ``name``, each end a valid value of it (integers for an integer)."""
    kind = field_type(hyper, name)
    if kind not in (int, float):
        raise ConfigError(
            where,
            f"got the range {spec!r}, but {name} is {allowed(hyper, name)}.",
            "list the values to try, {choices: [...]}, or fix one value.",
        )
    low, high = (
        _range_end(hyper, name, spec[end], f"{where}.{end}", base) for end in ("low", "high")
    )
    log, step = spec.get("log", False), spec.get("step", 1 if kind is int else None)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log", f"got {log!r}.", "write log: true or log: false.")
    if kind is int and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
        raise ConfigError(
            f"{where}.step", f"got {step!r}.", f"{name} is an integer: use a step >= 1."
        )
    try:
        if kind is int:
            return IntDistribution(low, high, log=log, step=step)
        return FloatDistribution(float(low), float(high), log=log, step=step)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            where,
            f"invalid range {spec!r}: {str(exc).rstrip('.')}.",
            "use low < high (low > 0 with log: true).",
        ) from None


def _range_end(hyper: type, name: str, value: Any, where: str, base: Searched | None) -> Any:
    out = _schema_value(hyper, name, value, where, base)
    if out is None:
        raise ConfigError(where, "is null.", "give both ends of the range as numbers.")
    return out


def _schema_value(hyper: type, name: str, value: Any, where: str, base: Searched | None) -> Any:
    """``value`` as the method's schema reads it for ``name``; a ConfigError at ``where`` (a
    range's end, a choice) naming what ``name`` allows when it is not one."""
    try:
        return getattr(validate({name: value}, hyper, name), name)
    except ConfigError:
        pass
    example = f" (default search: {fmt_range(base)})" if isinstance(base, BaseDistribution) else ""
    raise ConfigError(
        where,
        f"got {value!r}; {name} must be {allowed(hyper, name)}.",
        f"give {name} only values that are {allowed(hyper, name)}{example}.",
    )


def fmt_range(dist: Searched) -> str:
    """A searched range as people write it: ``1e-05..0.01 log``, ``500..2000``,
    ``{32, 64, 128}``, ``0.001..1 x eps_max, log`` (numbers to 4 significant digits)."""
    if isinstance(dist, CategoricalDistribution):
        return "{" + ", ".join(fmt_value(c, ".4g", "null", floats=True) for c in dist.choices) + "}"
    if isinstance(dist, FloatDistribution | IntDistribution):
        out = (
            f"{fmt_value(dist.low, '.4g', floats=True)}..{fmt_value(dist.high, '.4g', floats=True)}"
        )
        if dist.log:
            out += " log"
        if dist.step is not None and not (isinstance(dist, IntDistribution) and dist.step == 1):
            out += f" step {fmt_value(dist.step, '.4g', floats=True)}"
        return out
    return str(dist)


def fmt_values(values: dict) -> str:
    """Hyperparameter values as ``eta0=1.235e-05, steps=2000`` (floats to 4 significant
    digits)."""
    return ", ".join(f"{k}={fmt_value(v, '.4g', 'null', floats=True)}" for k, v in values.items())


def _inside(dist: Searched, value: Any) -> bool:
    """Whether ``value`` is a point of ``dist`` (a scaled range is unknown before the problem's
    ε_max: yes)."""
    if isinstance(dist, CategoricalDistribution):
        return any(v == value and type(v) is type(value) for v in dist.choices) or any(
            v == value and {type(v), type(value)} <= {int, float} for v in dist.choices
        )
    if isinstance(dist, FloatDistribution | IntDistribution):
        if not dist.low <= value <= dist.high:
            return False
        k = (value - dist.low) / dist.step if dist.step else 0.0
        return math.isclose(k, round(k), abs_tol=1e-9)
    return True


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
        hp = runs.resolve_hyperparams(method, {**fixed, **entry}, sub)
        gamma = space.get("gamma")
        if "gamma" in entry and entry["gamma"] not in getattr(gamma, "choices", ()):
            raise ConfigError(
                f"{sub}.gamma",
                f"got {entry['gamma']!r}, not one of the γ choices {list(gamma.choices)}.",
                "enqueue one of the listed values (each has its own reference).",
            )
        for k, v in entry.items():
            if k != "gamma" and not _inside(space[k], hp[k]):
                raise ConfigError(
                    f"{sub}.{k}",
                    f"got {v!r}, outside the searched range {fmt_range(space[k])}.",
                    f"enqueue a value inside it, or widen optuna.search_space.{method}.{k}.",
                )
        out.append(dict(entry))
    return out
