"""Step-size ranges written relative to the problem's stability limit ε_max.

A search space entry ``{low: 1e-3, high: 1.0, log: true, scale: stability}`` (or a method's
default :class:`StabilityRange`) means ``low·ε_max … high·ε_max``, where ε_max follows from the
top eigenvalue a_max of nβ·∇²L_n(w*) + γI (:mod:`lambda_hat.reference.curvature`, computed in the
reference stage). Which limit a method's step size has is the method's own knowledge
(:attr:`lambda_hat.methods.Method.step_limit`, :func:`lambda_hat.methods.step_limit`); this
module holds the ranges and the full-batch Langevin limit 4/a_max (:func:`langevin_step_limit`),
which the curvature record stores. ``plans/curvature.md`` derives the limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from optuna.distributions import FloatDistribution

__all__ = ["STABILITY_SCALE", "StabilityRange", "check_a_max", "langevin_step_limit"]

STABILITY_SCALE = "stability"
"""The one value of a range's ``scale`` key."""


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


def check_a_max(a_max: float) -> float:
    """``a_max`` when a stability limit follows from it (finite and > 0), else ValueError."""
    if not (a_max > 0 and math.isfinite(a_max)):
        raise ValueError(f"a_max must be finite and > 0 for a stability limit, got {a_max}")
    return a_max


def langevin_step_limit(a_max: float) -> float:
    """ε_max = 4/a_max: full-batch Langevin (Δw = −(ε/2)∇U + √ε ξ, P = I) is stable only below it.

    Near w* the error obeys e ← (I − εA/2)e + noise, whose stiffest factor |1 − ε·a_max/2| is
    below 1 exactly when ε < 4/a_max. For a frozen diagonal P pass the top eigenvalue of
    P^{1/2}AP^{1/2} instead (:func:`lambda_hat.reference.curvature.top_eigenvalue` with
    ``precond``). Raises ValueError unless ``a_max`` is finite and > 0.
    """
    return 4.0 / check_a_max(a_max)
