"""One study's absolute search space: every ``scale: stability`` range resolved with the
problem's ε_max and pinned in the study for its life (:func:`study_space`), and the dry run's
account of it (:func:`describe_space`, :func:`stored_curvatures`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution

from lambda_hat import layout
from lambda_hat._io import read_json
from lambda_hat.layout import problem_dir
from lambda_hat.llc.posterior import default_beta
from lambda_hat.methods import step_limit
from lambda_hat.methods.stability import StabilityRange
from lambda_hat.problem.build import problem_id
from lambda_hat.problem.spec import ProblemSpec
from lambda_hat.reference.settings import ReferenceConfig
from lambda_hat.study.space import Searched, fmt_range

log = logging.getLogger("lambda_hat.workflow")


class StudySpace(NamedTuple):
    """One study's absolute search space, and ε_max of each parameter that was scaled."""

    space: dict[str, BaseDistribution]
    limits: dict[str, float]


RESOLVED_SPACE_ATTR = "resolved_space"
"""The study user attr holding the resolved ranges, fixed for the study's life:
``{name: {low, high, log, eps_max}}`` (the report reads ε_max from it)."""
_PINNED_ATTR = RESOLVED_SPACE_ATTR


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
            log.warning(
                "%s.%s: ε_max unknown (%s); searching %s",
                method,
                name,
                why,
                fmt_range(dist.fallback),
            )
            out[name] = dist.fallback
        pinned[name] = _as_record(out[name], limits.get(name, 0.0))  # type: ignore[arg-type]
        log.info(
            "%s: %s searched %s (%s, ε_max %s)",
            study.study_name if study is not None else method,
            name,
            fmt_range(out[name]),
            dist,
            f"{limits[name]:.3g}" if name in limits else "unknown",
        )
    if study is not None and pinned and study.user_attrs.get(_PINNED_ATTR) != pinned:
        study.set_user_attr(_PINNED_ATTR, pinned)
    return StudySpace(out, limits)


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
            parts.append(f"{name}={fmt_range(dist)}")
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


def stored_curvatures(
    problems: Sequence[ProblemSpec], reference: ReferenceConfig, artifacts: Path
) -> dict[str, dict]:
    """pid -> the curvature record already stored with each of ``problems`` at the
    ``reference``'s β, γ (read from ``<artifacts>/problems/<pid>/curvature/``, no problem is
    built; missing pids have none yet)."""
    out = {}
    for spec in problems:
        pid = problem_id(spec)
        beta = reference.beta if reference.beta is not None else default_beta(spec.data.n)
        for path in sorted(
            (problem_dir(artifacts, pid) / layout.CURVATURE).glob(layout.CURVATURE_GLOB)
        ):
            info = read_json(path) or {}
            settings = info.get("settings") or {}
            if math.isclose(settings.get("beta", -1.0), beta) and math.isclose(
                settings.get("gamma", -1.0), reference.gamma
            ):
                out[pid] = info
                break
    return out
