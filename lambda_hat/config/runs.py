"""The run YAML's schema (``lambda-hat run``): problems x methods x hyperparameter sets x seeds.

Read by the one loader (:func:`lambda_hat.config.load.load_runs`), so an unknown key, a wrong
type or a missing preset is the same :class:`ConfigError` (YAML path, value, fix) as for a
tuning YAML. The problems and the ``reference`` and ``paths`` sections are the tuning YAML's
(:mod:`lambda_hat.problem.spec`, :mod:`lambda_hat.config.paths`): copy them from the
tuning config and the references (and, at the tuning seed and budget, the runs) are the stored
ones. Hyperparameter sets are checked here against the method's schema (:func:`check_runs`);
``from_study`` sets are resolved against the stored studies by :mod:`lambda_hat.runs.stage`
before any work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from lambda_hat import layout, methods
from lambda_hat.config.paths import PathsConfig
from lambda_hat.config.tuning import MethodName
from lambda_hat.methods import STABILITY_SCALE, StabilityRange
from lambda_hat.problem.spec import ProblemEntry, ProblemSpec
from lambda_hat.reference.settings import ReferenceConfig
from lambda_hat.schema import ConfigError, config_dataclass, field
from lambda_hat.trial import identity as runs

__all__ = [
    "FromStudy",
    "HyperSet",
    "Runs",
    "RunsConfig",
    "check_runs",
    "has_stability_limit",
    "split_units",
]


@config_dataclass
class FromStudy:
    """Where a set's hyperparameters come from: the tuning study of the same (problem, method)
    (study ``<pid>:<method>``) in a finished ``parsl-optuna`` run, or, with ``class``, a class
    study's recommendation in transferable units (:mod:`lambda_hat.config.recommendation`),
    converted per problem with its ε_max."""

    class_: str | None = field(
        None,
        "a class study's name: take its recommendation (<results>/classes/<class>/<method>/"
        "recommendation.json) for every problem; null: the same problem's study",
        alias="class",
    )
    results: str = field(
        layout.RESULTS, "the tuning run's results folder (its paths.results; relative: to the cwd)"
    )
    pick: Literal["best", "validated"] = field(
        "best",
        "best: the study's best successful trial; validated: the validation stage's "
        "recommendation (optuna.validate)",
    )
    storage: str | None = field(
        None, "the tuning run's optuna.storage; None: <results>/studies/journal.log"
    )


@config_dataclass
class HyperSet:
    """One hyperparameter set of a method: fixed values, or a tuning study's pick (the fixed
    values then replace single tuned ones). Neither: the method's defaults."""

    from_study: FromStudy | None = field(None, "take the hyperparameters from a tuning study")
    fixed: dict = field(
        {},
        "hyperparameter values; with from_study, they replace tuned ones; a step size with a "
        "stability limit also as {value: fraction, scale: stability} (x the problem's ε_max)",
    )


@config_dataclass
class RunsConfig:
    """A whole run YAML (``lambda-hat run``)."""

    problems: list[ProblemEntry] = field([], "problems, as in a tuning config")
    methods: dict[MethodName, list[HyperSet]] = field(
        {}, "per method: its hyperparameter sets; each runs on every problem and seed"
    )
    seeds: list[int] = field([0, 1, 2], "run seeds: every set runs once per seed")
    budget_sec: float = field(600.0, "wall-clock budget per run (s)", gt=0)
    reference: ReferenceConfig = field(ReferenceConfig(), "HMC reference settings")
    allow_failed_reference: bool = field(
        False, "also run problems whose reference failed its quality gate"
    )
    isolate: bool = field(True, "each run in a killable child process")
    timeout_grace: float = field(1.5, "a run is killed after budget_sec x timeout_grace (s)", ge=1)
    infrastructure_retries: int = field(
        2, "resubmissions of a run whose worker or node was lost", ge=0
    )
    paths: PathsConfig = field(PathsConfig(), "output locations")


@dataclass(frozen=True)
class Runs:
    """A loaded run YAML, its resolved problems in order, and each problem's reference kind
    (``kinds``: pid -> hmc | theory | none)."""

    config: RunsConfig
    problems: list[ProblemSpec]
    source: str
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)

    def reference_kind(self, pid: str) -> str:
        """What problem ``pid``'s runs are scored against: hmc | theory | none."""
        return self.kinds.get(pid, "hmc")


def check_runs(cfg: RunsConfig) -> RunsConfig:
    """``cfg`` after the checks across fields (raises :class:`ConfigError` naming the field):
    problems, sets and seeds listed, seeds once each, fixed hyperparameters valid for their
    method (with ``from_study``: their names; the values are checked once merged)."""
    if not cfg.problems:
        raise ConfigError("problems", "is empty.", "list at least one problem.")
    if not cfg.methods or not any(cfg.methods.values()):
        raise ConfigError(
            "methods",
            "lists no hyperparameter set.",
            "give a method a list of sets, e.g. sgld: [{from_study: {results: results}}].",
        )
    if not cfg.seeds:
        raise ConfigError("seeds", "is empty.", "list at least one seed, e.g. [0, 1, 2].")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError("seeds", f"lists a seed twice: {cfg.seeds}.", "list each seed once.")
    for method, sets in cfg.methods.items():
        for i, hs in enumerate(sets):
            where = f"methods.{method}[{i}].fixed"
            fs = hs.from_study
            if fs is not None and fs.class_ is not None and fs.storage is not None:
                raise ConfigError(
                    f"methods.{method}[{i}].from_study.storage",
                    "a class recommendation is a file under results, not in a study storage.",
                    "drop storage (or drop class to take the same problem's study).",
                )
            plain, units = split_units(method, hs.fixed, where)
            if fs is None:  # a fraction stands in for its value: checked once converted
                runs.resolve_hyperparams(method, {**plain, **units}, where)
            else:  # only names here: the values are checked once merged with the tuned ones
                known = set(runs.resolve_hyperparams(method, {})) | set(runs.POSTERIOR_HYPERPARAMS)
                for name in hs.fixed:
                    if name not in known:
                        raise ConfigError(
                            f"{where}.{name}",
                            f"{method} has no hyperparameter {name!r}. "
                            f"Valid: {', '.join(sorted(known))}.",
                            "correct the name.",
                        )
    return cfg


def has_stability_limit(method: str, name: str, given: dict) -> bool:
    """Whether ``method``'s hyperparameter ``name`` is a step size with a stability limit in
    the mode the values ``given`` select (SGLD's eta0; MCLMC's step_size with tune: false)."""
    default = methods.search_space(method, given).get(name)
    return isinstance(default, StabilityRange) and methods.get(method).step_limit is not None


def split_units(method: str, fixed: dict, where: str) -> tuple[dict, dict[str, float]]:
    """``fixed`` -> (its absolute values, ``{name: fraction}`` of the values written in ε_max
    units, ``{value: 0.02, scale: stability}``); a ConfigError at ``where.<name>`` for another
    shape or scale, a fraction that is not > 0, or a name without a stability limit."""
    plain = {k: v for k, v in fixed.items() if not isinstance(v, dict)}
    units: dict[str, float] = {}
    for name, spec in fixed.items():
        if not isinstance(spec, dict):
            continue
        at = f"{where}.{name}"
        if set(spec) != {"value", "scale"}:
            raise ConfigError(
                at,
                f"got {spec!r}: a fixed value is a number, or {{value, scale}} in ε_max units.",
                f"write {name}: {{value: 0.02, scale: {STABILITY_SCALE}}} or a plain number.",
            )
        if spec["scale"] != STABILITY_SCALE:
            raise ConfigError(
                f"{at}.scale",
                f"got {spec['scale']!r}; the only scale is {STABILITY_SCALE!r} (x ε_max).",
                f"use scale: {STABILITY_SCALE}, or write an absolute number.",
            )
        value = spec["value"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{at}.value", f"got {value!r}.", "write a fraction of ε_max > 0.")
        if not has_stability_limit(method, name, plain):
            raise ConfigError(
                f"{at}.scale",
                f"{method}'s {name} has no stability limit here (SGLD's eta0 has one, and "
                "MCLMC's step_size with tune: false).",
                "write an absolute value without scale.",
            )
        units[name] = float(value)
    return plain, units
