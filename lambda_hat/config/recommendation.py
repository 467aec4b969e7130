"""A class study's recommendation: one setting of a method in transferable units, for any
problem of the class (``<results>/classes/<class>/<method>/recommendation.json``,
:func:`lambda_hat.layout.class_recommendation`).

The class stage writes it (:func:`write_class_recommendation`); ``lambda-hat run`` reads it
for a ``from_study: {class: NAME, pick: ...}`` set (:func:`read_class_recommendation`) and
converts it per problem with that problem's ε_max. The file is JSON of this shape::

    {"class": "dln", "method": "sgld", "pick": "validated",
     "units": {"eta0": 0.05, "steps": 2000, "batch": 64, ...},
     "scaled": ["eta0"], "trial": 7, "objective": 0.12,
     "validated": {"units": {...}, "scaled": [...], "trial": 9, ...} | null}

- ``units``: every hyperparameter of the class study's best trial; a name listed in ``scaled``
  is a fraction of the problem's stability limit ε_max (:func:`lambda_hat.methods.step_limit`),
  every other value is absolute. ``trial`` is that trial's number, ``objective`` its aggregate
  objective over the class's train members.
- ``validated``: null when the class study was not validated; else the validation's winner:
  its own ``units``/``scaled`` (absent: the best trial's) and ``trial``, any other keys (its
  mean error, reliability) kept as written.
- ``pick``: what the class stage recommends, ``validated`` (needs ``validated``) or ``best``.

A run's ``pick: best`` takes the top-level setting, ``pick: validated`` the validated one (a
:class:`ConfigError` naming the fix when the file has none).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from lambda_hat import layout
from lambda_hat._io import atomic_write_json, read_json
from lambda_hat.schema import ConfigError, as_dict, config_dataclass, field, validate

__all__ = [
    "ClassRecommendation",
    "ClassSetting",
    "read_class_recommendation",
    "write_class_recommendation",
]


@config_dataclass
class ClassRecommendation:
    """The contents of a class study's ``recommendation.json`` (module docstring)."""

    class_: str = field(help="the class's name", alias="class")
    method: str = field(help="the method the class study tuned")
    pick: Literal["best", "validated"] = field(help="what the class stage recommends")
    units: dict = field(help="every hyperparameter of the best trial; scaled ones in ε_max units")
    scaled: list[str] = field([], "names in units that are fractions of ε_max")
    trial: int | None = field(None, "the best trial's number")
    objective: float | None = field(None, "the best trial's aggregate objective")
    validated: dict | None = field(None, "the validation's winner; null: not validated")


@dataclasses.dataclass(frozen=True)
class ClassSetting:
    """One picked setting of a recommendation: ``units`` (every hyperparameter), ``scaled``
    (the names in ε_max units), its trial, and the class and pick it came from."""

    name: str
    method: str
    pick: str
    units: dict
    scaled: tuple[str, ...]
    trial: int | None


def _check(rec: ClassRecommendation, where: str) -> ClassRecommendation:
    """Checks across fields: scaled names are in units, as positive numbers; pick: validated
    comes with a validated entry."""
    entries = [("", rec.units, rec.scaled)]
    if rec.validated is not None:
        v = rec.validated
        entries.append(("validated.", v.get("units", rec.units), v.get("scaled", rec.scaled)))
    for at, units, scaled in entries:
        if not isinstance(units, dict) or not isinstance(scaled, list):
            raise ConfigError(f"{where}.{at}units", "expected a mapping and a scaled list.")
        for name in scaled:
            value = units.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(
                    f"{where}.{at}scaled",
                    f"{name!r} is scaled but units.{name} is {value!r}, not a number > 0.",
                    "write the fraction of ε_max in units for every scaled name.",
                )
    if rec.pick == "validated" and rec.validated is None:
        raise ConfigError(
            f"{where}.pick",
            "is validated but validated is null.",
            "write the validated setting, or pick: best.",
        )
    return rec


def read_class_recommendation(
    results: str | Path, name: str, method: str, pick: str, where: str
) -> ClassSetting:
    """The ``pick`` (best | validated) setting of class ``name``'s ``method`` study under
    ``results``; a :class:`ConfigError` at ``where`` (the run YAML's ``from_study``) saying
    what to run when the file is missing, unreadable, of another shape, or has no
    validated setting for ``pick: validated``."""
    path = layout.class_recommendation(results, name, method)
    run = f"run the class study of {name!r} with {method} first, or point results at its folder"
    if not path.is_file():
        raise ConfigError(f"{where}.class", f"there is no recommendation {path}.", run + ".")
    data = read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}.class", f"{path} is not a JSON object.", run + " again.")
    try:
        rec = _check(validate(data, ClassRecommendation, str(path)), str(path))
    except ConfigError as exc:
        raise ConfigError(where, f"{exc.where}: {exc.problem}", run + " again.") from None
    if (rec.class_, rec.method) != (name, method):
        found = f"class {rec.class_!r}, method {rec.method!r}"
        raise ConfigError(f"{where}.class", f"{path} holds {found}.", run + " again.")
    if pick == "best":
        return ClassSetting(name, method, pick, dict(rec.units), tuple(rec.scaled), rec.trial)
    if rec.validated is None:
        raise ConfigError(
            f"{where}.pick",
            f"the class study {name!r} ({method}) has no validated setting ({path}).",
            "use pick: best, or run the class study's validation first.",
        )
    v = rec.validated
    units, scaled = dict(v.get("units", rec.units)), tuple(v.get("scaled", rec.scaled))
    return ClassSetting(name, method, pick, units, scaled, v.get("trial", rec.trial))


def write_class_recommendation(results: str | Path, rec: ClassRecommendation) -> Path:
    """Write ``rec`` (checked as :func:`read_class_recommendation` reads it) atomically to
    :func:`lambda_hat.layout.class_recommendation`; returns the path."""
    path = layout.class_recommendation(results, rec.class_, rec.method)
    _check(rec, str(path))
    data = as_dict(rec)
    data["class"] = data.pop("class_")
    return atomic_write_json(path, data)
