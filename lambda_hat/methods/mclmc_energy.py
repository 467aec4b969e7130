"""MCLMC's energy check: the achieved energy error against the target, and the fixes.

Unadjusted MCLMC's bias grows with its energy error, which the tuning holds at the target of
``target_accept`` (:func:`lambda_hat.samplers.mclmc.desired_energy_var`). The achieved energy
error per dimension of the kept steps is recorded against it (``diagnostics.energy_var_ratio``)
with the step sizes' spread across chains; a run over ``miss_factor`` × the target (tuned or
not) is a ``diverged`` failure with ``check: energy_error`` — learned, deterministic in the
manifest, estimate kept — whose message names the settings that fix it (:func:`energy_fixes`).
plans/methods.md, "The energy check, miss_factor, and fixes that can be applied".
"""

from __future__ import annotations

import math

import numpy as np

from lambda_hat.samplers import mclmc as mclmc_kernel

__all__ = [
    "DEFAULT_ENERGY_FRAC",
    "DEFAULT_MISS_FACTOR",
    "ENERGY_MARGIN",
    "ENERGY_ROUNDS",
    "MIN_WINDOW",
    "energy_fixes",
    "energy_miss",
    "tuning_diagnostics",
]

DEFAULT_MISS_FACTOR = 10.0
"""``miss_factor``'s default: a run whose achieved energy error per dimension exceeds this many
times its target fails (``diverged``, ``check: energy_error``). Beyond 10× the studies' median
error was 2–4× that of the runs under 3×; between 3× and 10× estimates were not consistently
worse (plans/methods.md, "Why 10")."""
DEFAULT_ENERGY_FRAC = 0.2
"""``energy_frac``'s default: steps of the energy-variance rounds, as a fraction of ``steps``."""
ENERGY_ROUNDS = 4  # windows of the energy-variance adaptation, each followed by a new step size
MIN_WINDOW = 10  # steps per window below which the rounds are skipped
ENERGY_MARGIN = 0.8
"""The energy rounds sample at this times the largest step size that met the target: without
it, 3 of 6 seeds on the deep linear network read 8.7–18× the target in sampling; with it, all 6
read at most 0.8× (plans/methods.md)."""


def energy_miss(diagnostics: dict, hp: dict, done: int) -> dict | None:
    """The failure of a run whose achieved energy error is over ``miss_factor`` × the target of
    its ``target_accept``, with the settings that would fix it."""
    miss, limit = diagnostics["energy_var_ratio"], hp["miss_factor"]
    if miss is None or miss <= limit:
        return None
    why = (
        "the tuned step size is too large where the chains went"
        if hp["tune"]
        else ("the step size is too large for this posterior")
    )
    return {
        "kind": "diverged",
        "check": "energy_error",
        "message": (
            f"MCLMC's energy error missed its target: {diagnostics['energy_var_per_dim']:.3g}"
            f" per dimension against {diagnostics['desired_energy_var']:.3g} ({miss:.3g}x, "
            f"miss_factor {limit:g}): {why}. Fix: {energy_fixes(hp, miss)}"
        ),
        "step": done,
        "steps_planned": hp["steps"],
    }


def energy_fixes(hp: dict, miss: float) -> str:
    """The settings that would bring an energy error ``miss`` × the target under the limit.

    Tuned: a smaller target (``target_accept``), longer energy-variance rounds
    (``energy_frac``); untuned: a smaller ``step_size`` (the power-law guess with the tuner's
    margin) or ``tune: true``; either: a ``miss_factor`` that accepts it.
    """
    if hp["tune"]:
        desired = mclmc_kernel.desired_energy_var(hp["target_accept"])
        accept = min(0.99, mclmc_kernel.target_accept_for(desired / miss))
        fixes = [
            f"set target_accept: {math.ceil(accept * 100) / 100:g} (an energy target "
            f"{miss:.2g}x smaller, so smaller steps)"
        ]
        if hp["energy_frac"] * hp["steps"] < ENERGY_ROUNDS * MIN_WINDOW:
            fixes.append(
                f"energy_frac: {DEFAULT_ENERGY_FRAC:g} (hold the energy error at the "
                "target over all chains before sampling)"
            )
        elif hp["energy_frac"] < 0.5:
            fixes.append(
                f"energy_frac: {min(0.5, 2 * hp['energy_frac']):g} (longer energy-variance rounds)"
            )
    else:
        step = hp["step_size"] * ENERGY_MARGIN * miss ** (-1 / mclmc_kernel.ENERGY_EXPONENT)
        fixes = [
            f"set step_size: {step:.2g}",
            "or tune: true (the step size that holds the energy target)",
        ]
    fixes.append(f"or accept this energy error with miss_factor: {math.ceil(1.2 * miss):g}")
    return "; ".join(fixes) + "."


def tuning_diagnostics(chains, energy: np.ndarray, d: int, hp: dict) -> dict:
    """Tuned L and step size per chain, their spread, and the achieved energy error per
    dimension (mean squared energy change of the kept steps / d) against the tuner's target."""
    step_size = np.asarray(chains.step_size, dtype=np.float64)
    target = mclmc_kernel.desired_energy_var(hp["target_accept"])
    per_chain = np.mean(energy**2, axis=1) / d if energy.shape[1] else np.full(len(energy), np.nan)
    achieved = float(np.mean(per_chain)) if np.isfinite(per_chain).all() else None
    positive = step_size.min() > 0 and np.isfinite(step_size).all()
    return {
        "L": np.asarray(chains.L).tolist(),
        "step_size": step_size.tolist(),
        "step_size_spread": float(step_size.max() / step_size.min()) if positive else None,
        "desired_energy_var": target,
        "energy_var_per_dim": achieved,
        "energy_var_per_dim_per_chain": per_chain.tolist(),
        "energy_var_ratio": None if achieved is None else achieved / target,
    }
