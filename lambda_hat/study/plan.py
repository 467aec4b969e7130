"""The checked plan of a ``parsl-optuna`` run: stage 0, before anything is written.

The experiment YAML with the CLI overrides, every problem's presets, the methods'
search-space overrides (:func:`method_space`) and warm-start trials, the sampler's package and
the Parsl config file are checked; any error is a :class:`ConfigError` naming the field and
the fix.

Posterior settings. ``gamma`` (:data:`lambda_hat.trial.identity.POSTERIOR_HYPERPARAMS`) may appear in the
search space of every method, but only as a fixed value or ``{choices: [...]}``: each γ is a
different posterior with its own HMC reference (:attr:`Plan.gammas` lists them), so a
continuous range, which would need a reference per trial, is rejected here.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from lambda_hat import layout, methods
from lambda_hat._io import read_json
from lambda_hat.config.schema import ConfigError
from lambda_hat.config.tuning import Tuning, TuningConfig
from lambda_hat.llc.posterior import default_beta
from lambda_hat.methods import step_limit
from lambda_hat.parallel import apps as execution
from lambda_hat.problem.build import problem_dir, problem_id
from lambda_hat.reference.stability import STABILITY_SCALE, StabilityRange
from lambda_hat.study import samplers
from lambda_hat.study import storage as studies
from lambda_hat.trial import identity as runs

log = logging.getLogger("lambda_hat.workflow")
#: Trials in flight when neither optuna.batch_size nor the executors say how many.
DEFAULT_BATCH = 16

#: Keys of a search-space override mapping.
_RANGE_KEYS = {"low", "high", "log", "step", "scale"}

#: A searched parameter: an Optuna distribution, or a range relative to ε_max (per problem).
Searched = BaseDistribution | StabilityRange


@dataclass
class Plan:
    """Everything the run needs, checked before anything is written."""

    exp: Tuning
    pids: list[str]
    spaces: dict[str, dict[str, Searched]]
    fixed: dict[str, dict[str, Any]]
    enqueue: dict[str, list[dict]]
    parsl_config: Any
    artifacts: Path
    results: Path
    trial_target: str

    @property
    def cfg(self) -> TuningConfig:
        return self.exp.config

    @property
    def batch_size(self) -> int:
        """Trials in flight: ``optuna.batch_size``, or (None) the executors' capacity."""
        given = self.cfg.optuna.batch_size
        return given or execution.capacity(self.parsl_config) or DEFAULT_BATCH

    @property
    def gammas(self) -> list[float]:
        """γ of every posterior a trial may sample: the reference's, then each fixed γ and γ
        choice of a method's search space (sorted, each once). One HMC reference each."""
        out = {float(self.cfg.reference.gamma)}
        for m in self.cfg.methods:
            if self.fixed[m].get("gamma") is not None:
                out.add(float(self.fixed[m]["gamma"]))
            dist = self.spaces[m].get("gamma")
            if isinstance(dist, CategoricalDistribution):
                out.update(float(c) for c in dist.choices)
        rest = sorted(out - {float(self.cfg.reference.gamma)})
        return [float(self.cfg.reference.gamma), *rest]


# ---------------------------------------------------------------------------------- checks


def method_space(
    method: str, overrides: Any, where: str
) -> tuple[dict[str, Searched], dict[str, Any]]:
    """The method's search space with the user's overrides, and the fixed (untuned) values.

    An override is a fixed value, ``{low, high[, log][, step]}``, ``{low, high[, log], scale:
    stability}`` (``low·ε_max … high·ε_max``, resolved per problem: :func:`study_space`) or
    ``{choices: [...]}``.
    """
    space = dict(methods.search_space(method))
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise ConfigError(where, f"got {overrides!r}, expected a mapping of parameter overrides.")
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
            space[name] = _scaled(method, name, spec, sub)
        else:
            space[name] = _distribution(spec, space.get(name), sub)
    if fixed:
        runs.resolve_hyperparams(method, fixed, where)
    return space, fixed


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


def _scaled(method: str, name: str, spec: dict, where: str) -> StabilityRange:
    """A ``scale: stability`` range: only for the step size that has a limit."""
    if spec["scale"] != STABILITY_SCALE:
        raise ConfigError(
            f"{where}.scale",
            f"got {spec['scale']!r}.",
            f"use scale: {STABILITY_SCALE} (relative to ε_max) or drop scale (absolute).",
        )
    default = methods.search_space(method).get(name)
    try:
        step_limit(method, 1.0, 2)
        if not isinstance(default, StabilityRange) or set(spec) - {"low", "high", "log", "scale"}:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"{where}.scale",
            f"{method}'s {name} has no stability limit (only SGLD's eta0 and MCLMC's step_size).",
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


class StudySpace(NamedTuple):
    """One study's absolute search space, and ε_max of each parameter that was scaled."""

    space: dict[str, BaseDistribution]
    limits: dict[str, float]


_PINNED_ATTR = "resolved_space"  # study user attr: the resolved ranges, fixed for the study's life


def _as_record(d: FloatDistribution, eps_max: float) -> dict:
    return {"low": d.low, "high": d.high, "log": d.log, "eps_max": eps_max}


def study_space(
    space: dict[str, Searched], method: str, ref: dict, study: optuna.Study | None = None
) -> StudySpace:
    """``space`` made absolute for one problem: every :class:`StabilityRange` becomes
    ``low·ε_max … high·ε_max`` with ε_max from ``ref["curvature"]`` (the reference stage's
    a_max and d, plain numbers).

    The Optuna search space of a study must not change while it lives (TPE drops a parameter
    whose distribution differs between trials from its joint model), so the first resolution
    is stored in the study's user attrs and reused on every resume, even where a recomputed
    a_max differs in its last digits; a study whose trials predate scaled ranges keeps their
    absolute range. Without a usable a_max the range's absolute
    ``fallback`` is searched (with a warning); without one either, ValueError.
    """
    pinned = {} if study is None else dict(study.user_attrs.get(_PINNED_ATTR) or {})
    if study is not None:
        pinned = {**_stored_ranges(study, space), **pinned}
    curv = ref.get("curvature") or {}
    out: dict[str, BaseDistribution] = {}
    limits: dict[str, float] = {}
    for name, dist in space.items():
        if not isinstance(dist, StabilityRange):
            out[name] = dist
            continue
        if name in pinned:
            rec = pinned[name]
            out[name] = FloatDistribution(rec["low"], rec["high"], log=rec["log"])
            eps = rec.get("eps_max") or _limit_or_none(method, curv)
            if eps:
                limits[name] = eps
            continue
        try:
            limits[name] = step_limit(method, curv.get("a_max", math.nan), int(curv.get("d", 2)))
            out[name] = dist.resolve(limits[name])
        except (TypeError, ValueError) as exc:
            if dist.fallback is None:
                raise ValueError(
                    f"{method}.{name}: no ε_max for the scaled range ({exc})"
                ) from None
            why = curv.get("error") or exc
            log.warning("%s.%s: ε_max unknown (%s); searching %s", method, name, why, dist.fallback)
            out[name] = dist.fallback
        pinned[name] = _as_record(out[name], limits.get(name, 0.0))  # type: ignore[arg-type]
        log.info(
            "%s: %s searched %s (%s, ε_max %s)",
            study.study_name if study is not None else method,
            name,
            out[name],
            dist,
            f"{limits[name]:.3g}" if name in limits else "unknown",
        )
    if study is not None and pinned and study.user_attrs.get(_PINNED_ATTR) != pinned:
        study.set_user_attr(_PINNED_ATTR, pinned)
    return StudySpace(out, limits)


def stored_curvatures(plan: Plan) -> dict[str, dict]:
    """pid -> the curvature record already stored with each problem at the reference's β, γ
    (read from ``<artifacts>/problems/<pid>/curvature/``, no problem is built; missing pids
    have none yet)."""
    rc = plan.cfg.reference
    out = {}
    for spec in plan.exp.problems:
        pid = problem_id(spec)
        beta = rc.beta if rc.beta is not None else default_beta(spec.data.n)
        for path in sorted(
            (problem_dir(plan.artifacts, pid) / layout.CURVATURE).glob(layout.CURVATURE_GLOB)
        ):
            info = read_json(path) or {}
            settings = info.get("settings") or {}
            if math.isclose(settings.get("beta", -1.0), beta) and math.isclose(
                settings.get("gamma", -1.0), rc.gamma
            ):
                out[pid] = info
                break
    return out


def _limit_or_none(method: str, curv: dict) -> float | None:
    try:
        return step_limit(method, curv.get("a_max", math.nan), int(curv.get("d", 2)))
    except (TypeError, ValueError):
        return None


def _stored_ranges(study: optuna.Study, space: dict[str, Searched]) -> dict[str, dict]:
    """The ranges a study made before scaled ranges existed (its trials' float distribution
    of a now scaled name): kept, so the stored search space stays one."""
    out = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            if isinstance(space.get(name), StabilityRange) and isinstance(dist, FloatDistribution):
                out.setdefault(name, _as_record(dist, 0.0))
    for name, rec in out.items():
        log.warning(
            "%s: %s keeps the absolute range %g..%g of its stored trials (not %s)",
            study.study_name,
            name,
            rec["low"],
            rec["high"],
            space[name],
        )
    return out


def describe_space(space: dict[str, Searched], method: str, curvatures: dict[str, dict]) -> str:
    """The searched ranges for ``--dry-run``: a scaled range resolved with each problem's stored
    a_max (``curvatures``: pid -> curvature record), or said to be resolved later."""
    parts = []
    for name, dist in space.items():
        if not isinstance(dist, StabilityRange):
            parts.append(f"{name}={dist}")
            continue
        known = []
        for pid, curv in curvatures.items():
            try:
                eps = step_limit(method, curv["a_max"], int(curv["d"]))
            except (KeyError, TypeError, ValueError):
                continue
            d = dist.resolve(eps)
            known.append(f"{pid}: {d.low:.3g}..{d.high:.3g} (eps_max {eps:.3g})")
        if known:
            parts.append(f"{name}={dist} [{'; '.join(known)}]")
        else:
            parts.append(f"{name}={dist} (scaled by ε_max (computed in the reference stage))")
    return ", ".join(parts)


def check_plan(exp: Tuning, parsl_config_path: str | None, trial_target: str | None) -> Plan:
    """Check everything that can be checked without writing a byte; raises ConfigError.

    ``parsl_config_path`` None means the local default (``--local``)."""
    cfg = exp.config
    if not cfg.methods:
        raise ConfigError(
            "methods", "is empty.", "list methods to tune, e.g. [sgld, vi].", source=exp.source
        )
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ConfigError(
            "methods",
            f"lists a method twice: {cfg.methods}.",
            "list each method once.",
            source=exp.source,
        )
    oc = cfg.optuna
    if len(set(oc.objectives)) != len(oc.objectives) or oc.objectives[0] != "error":
        raise ConfigError(
            "optuna.objectives",
            f"got {oc.objectives}.",
            "use [error] or [error, runtime].",
            source=exp.source,
        )
    for key in ("search_space", "enqueue"):
        for m in getattr(oc, key):
            if m not in cfg.methods:
                raise ConfigError(
                    f"optuna.{key}.{m}",
                    f"{m!r} is not in methods {cfg.methods}.",
                    "add the method to methods or remove this entry.",
                    source=exp.source,
                )
    try:
        studies.check_sampler(oc)
        spaces, fixed, enqueue = {}, {}, {}
        for m in cfg.methods:
            spaces[m], fixed[m] = method_space(
                m, oc.search_space.get(m), f"optuna.search_space.{m}"
            )
            enqueue[m] = _check_enqueue(m, oc.enqueue.get(m), spaces[m], fixed[m])
            samplers.check_grid(oc, spaces[m], f"optuna.search_space.{m}")
    except ConfigError as exc:
        raise ConfigError(exc.where, exc.problem, exc.fix, source=exp.source) from None
    paths = cfg.paths
    artifacts, res = Path(paths.artifacts).resolve(), Path(paths.results).resolve()
    parsl_config = (
        execution.load_parsl_config(parsl_config_path)
        if parsl_config_path
        else execution.local_config(run_dir=res / layout.RUNINFO)
    )
    pids = list(dict.fromkeys(problem_id(s) for s in exp.problems))
    capacity, given = execution.capacity(parsl_config), oc.batch_size
    if given is not None and capacity is not None and given != capacity:
        log.warning(
            "optuna.batch_size = %d trials in flight, but the executors run %d at once: %s",
            given,
            capacity,
            "workers will idle (set batch_size: null to fill them)"
            if given < capacity
            else "trials will queue",
        )
    return Plan(
        exp,
        pids,
        spaces,
        fixed,
        enqueue,
        parsl_config,
        artifacts,
        res,
        trial_target or execution.DEFAULT_TRIAL_TARGET,
    )


def _check_enqueue(method: str, entries: Any, space: dict, fixed: dict) -> list[dict]:
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
