"""A class study: one Optuna study per (problem class, method) whose trial is one setting in
transferable units, run on every train member and told one aggregate objective.

Units. A step size the method bounds by a stability limit (SGLD's ``eta0``, untuned MCLMC's
``step_size``: a ``scale: stability`` range) is searched and recorded as a fraction of ε_max;
on a member it is that fraction × the member's ε_max (from its curvature record). Every other
hyperparameter is absolute. A member's run is content-addressed by its absolute settings
(:mod:`lambda_hat.study.payloads`), so a class trial and a per-problem trial with the same
settings on the same problem are one run.

The objective (``classes[].objective``, plans/transfer.md): ``rel``, the mean over members of
|λ̂ − λ_ref| / λ_ref (with ``optuna.objective: ucb``, plus ``ucb_sigmas`` × the run's SE beyond
the reference's, also relative); ``z``, the mean |z| with the combined SE.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import TrialState

from lambda_hat._io import finite_float
from lambda_hat.config.classes import ClassConfig
from lambda_hat.methods import step_limit
from lambda_hat.methods.stability import StabilityRange
from lambda_hat.problem.spec import ProblemSpec
from lambda_hat.study.guard import FailureGuard
from lambda_hat.study.scoring import excess_se
from lambda_hat.study.tell import counts_as_finished, successful_trials
from lambda_hat.trial.outcome import estimate_error

__all__ = [
    "MEMBERS_ATTR",
    "ClassTask",
    "Member",
    "class_space",
    "class_study_pid",
    "member_value",
    "rungs",
]

MEMBERS_ATTR = "members"
"""A class trial's user attr: ``{pid: {value, llc_hat, se_hat, run_id, status}}``."""


def class_study_pid(name: str) -> str:
    """The pid part of a class study's name (``class:<name>:<method>``)."""
    return f"class:{name}"


@dataclass(frozen=True)
class Member:
    """One member of a class as its runs see it: the problem, its reference, its ε_max."""

    pid: str
    spec: ProblemSpec
    ref: dict
    label: str

    @property
    def d(self) -> int:
        return int((self.ref.get("curvature") or {}).get("d") or 0)

    def eps_max(self, method: str) -> float:
        """The member's step-size limit for ``method`` (ValueError when unknown)."""
        curv = self.ref.get("curvature") or {}
        return step_limit(method, curv.get("a_max", math.nan), int(curv.get("d", 2)))


def class_space(space: dict) -> tuple[dict[str, BaseDistribution], tuple[str, ...]]:
    """A method's search space in transferable units: every :class:`StabilityRange` becomes a
    plain range of fractions of ε_max; returns the space and the scaled names."""
    out, scaled = {}, []
    for name, dist in space.items():
        if isinstance(dist, StabilityRange):
            out[name] = FloatDistribution(dist.low, dist.high, log=dist.log)
            scaled.append(name)
        else:
            out[name] = dist
    return out, tuple(scaled)


def rungs(n_members: int, halving: bool) -> list[int]:
    """Member counts after which a setting is judged: the first third, then all (halving);
    all at once otherwise."""
    if not halving or n_members < 3:
        return [n_members]
    return [math.ceil(n_members / 3), n_members]


def member_value(metrics: dict, ref: dict, kind: str, ucb_sigmas: float) -> float | None:
    """One member's contribution to the class objective (None: not scorable)."""
    if metrics.get("status") != "ok":
        return None
    err = estimate_error(metrics.get("llc_hat"), ref.get("llc_ref"))
    if err is None:
        return None
    se, se_ref = finite_float(metrics.get("se_hat")), finite_float(ref.get("se_ref"))
    if kind == "z":
        combined = math.hypot(se or 0.0, se_ref or 0.0)
        return abs(err) / combined if combined > 0 else None
    scale = abs(finite_float(ref.get("llc_ref")) or 0.0)
    if scale == 0:
        return None
    return (abs(err) + ucb_sigmas * excess_se(se, se_ref)) / scale


@dataclass
class ClassTask:
    """One (class, method) study: its space in units, its train members (smallest d first,
    the order halving visits them) and what each member's runs carry."""

    name: str
    method: str
    study: optuna.Study
    space: dict[str, BaseDistribution]
    scaled: tuple[str, ...]
    fixed: dict
    members: list[Member]
    config: ClassConfig
    payload_of: Callable[[Member], dict]
    locate_of: Callable[[Member], Callable[[dict], tuple[str, Path]]]
    resolve: Callable[[dict], dict]
    ucb_sigmas: float = 0.0
    objectives: tuple[str, ...] = ("error",)
    max_trials: int = 20
    max_retries: int = 2
    finished: int = 0
    running: int = 0
    stop_reason: str | None = None
    holdout: list[Member] = field(default_factory=list)
    guard: FailureGuard | None = None

    @property
    def label(self) -> str:
        return f"{class_study_pid(self.name)}:{self.method}"

    @property
    def done(self) -> bool:
        return self.stop_reason is not None or self.finished + self.running >= self.max_trials

    def absolute(self, units: dict, member: Member, steps_unit: str = "count") -> dict:
        """A setting in units made absolute for ``member`` and resolved (defaults filled).

        ``steps_unit``: ``count`` keeps ``steps`` as tuned; ``relaxation`` holds steps × ε
        (the chain's length in units of its slowest relaxation time 1/(εγ), γ shared)
        fixed: steps × ε_max(train, geometric mean) / ε_max(member)."""
        hp = {**self.fixed, **units}
        for name in self.scaled:
            if name in hp and hp[name] is not None:
                hp[name] = float(hp[name]) * member.eps_max(self.method)
        if steps_unit == "relaxation" and self.scaled and hp.get("steps"):
            ratio = self.train_eps_max() / member.eps_max(self.method)
            hp["steps"] = max(1, round(hp["steps"] * ratio))
        return self.resolve(hp)

    def train_eps_max(self) -> float:
        """The geometric mean ε_max of the train members (the scale tuned ``steps`` are at)."""
        logs = [math.log(m.eps_max(self.method)) for m in self.members]
        return math.exp(sum(logs) / len(logs))

    def payload(
        self, units: dict, member: Member, seed: int | None = None, steps_unit: str = "count"
    ) -> dict:
        """The run of ``units`` on ``member`` (at ``seed``; None: the tuning seed), addressed."""
        hp = self.absolute(units, member, steps_unit)
        payload = dict(self.payload_of(member), hyperparams=hp)
        if seed is not None:
            payload["seed"] = seed
        run_id, run_dir = self.locate_of(member)(payload)
        payload.update(run_id=run_id, run_dir=str(run_dir))
        return payload

    def value(self, metrics: dict, member: Member) -> float | None:
        return member_value(metrics, member.ref, self.config.objective, self.ucb_sigmas)

    def median_at(self, count: int) -> tuple[float | None, int]:
        """The median objective of earlier successful settings over the first ``count``
        members, and how many settings it is taken over."""
        pids = [m.pid for m in self.members[:count]]
        partials = []
        for t in successful_trials(self.study.get_trials(deepcopy=False)):
            values = t.user_attrs.get(MEMBERS_ATTR) or {}
            got = [finite_float((values.get(p) or {}).get("value")) for p in pids]
            if all(v is not None for v in got):
                partials.append(sum(got) / len(got))
        return (statistics.median(partials) if partials else None), len(partials)

    def counted(self) -> None:
        """Recount finished trials from the storage (a resumed study keeps its count)."""
        self.finished = sum(
            counts_as_finished(t.state, t.user_attrs.get("failure_kind"))
            for t in self.study.get_trials(deepcopy=False)
            if t.state != TrialState.RUNNING and t.state != TrialState.WAITING
        )
