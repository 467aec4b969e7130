"""Step-size ranges written relative to the problem's stability limit ε_max.

A search space entry ``{low: 1e-3, high: 1.0, log: true, scale: stability}`` (or a method's
default :class:`StabilityRange`) means ``low·ε_max … high·ε_max``, where ε_max follows from the
top eigenvalue a_max of nβ·∇²L_n(w*) + γI (:mod:`lambda_hat.reference.curvature`, computed in the
reference stage): 4/a_max for SGLD's ``eta0`` (full-batch Langevin is unstable above it),
2.553·√((d−1)/a_max) for MCLMC's ``step_size`` (the isokinetic McLachlan integrator's limit
ωh < 2.553 in BlackJAX's time units). ``plans/curvature.md`` derives both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from optuna.distributions import BaseDistribution, FloatDistribution

__all__ = ["MCLMC_OMEGA_H", "STABILITY_SCALE", "StabilityRange", "resolve_space", "step_limit"]

STABILITY_SCALE = "stability"
"""The one value of a range's ``scale`` key."""

MCLMC_OMEGA_H = 2.553
"""Largest stable ω·h of BlackJAX's ``isokinetic_mclachlan`` on a harmonic mode (plans/curvature.md)."""


@dataclass(frozen=True)
class StabilityRange:
    """``low·ε_max … high·ε_max`` (log-uniform when ``log``): resolved per problem.

    ``fallback`` is the absolute range searched when a problem's ε_max is unknown (its
    curvature could not be computed); None: such a study cannot be resolved.
    """

    low: float
    high: float
    log: bool = True
    fallback: FloatDistribution | None = None

    def __post_init__(self) -> None:
        if not (0 < self.low < self.high and math.isfinite(self.high)):
            raise ValueError(f"need 0 < low < high, got {self.low}, {self.high}")

    def resolve(self, eps_max: float) -> FloatDistribution:
        """The absolute Optuna distribution for a problem whose limit is ``eps_max``."""
        return FloatDistribution(self.low * eps_max, self.high * eps_max, log=self.log)

    def __str__(self) -> str:
        log = ", log" if self.log else ""
        return f"{self.low:g}..{self.high:g} x eps_max{log}"

    def without_fallback(self) -> StabilityRange:
        return StabilityRange(self.low, self.high, self.log)


def step_limit(method: str, a_max: float, d: int) -> float:
    """ε_max of ``method``'s step size on a problem with top eigenvalue ``a_max`` and ``d``
    parameters: SGLD 4/a_max, MCLMC 2.553·√((d−1)/a_max). Raises ValueError otherwise."""
    if not (a_max > 0 and math.isfinite(a_max)):
        raise ValueError(f"a_max must be finite and > 0 for a stability limit, got {a_max}")
    if method == "sgld":
        return 4.0 / a_max
    if method == "mclmc":
        return MCLMC_OMEGA_H * math.sqrt(max(d - 1, 1) / a_max)
    raise ValueError(f"{method} has no stability limit: write an absolute range")


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
