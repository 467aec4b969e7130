"""VI's drift check: does MALA from the fitted q's draws move the estimate?

The adapter :mod:`lambda_hat.methods.vi` runs it after the evaluation draws; the sampler is
:mod:`lambda_hat.samplers.drift`. A fit whose estimate the posterior's own dynamics move by more
than ``drift_tol`` fails as ``diverged`` with ``check: drift`` (deterministic in the manifest:
learned and reusable), the estimate kept. plans/vi.md, "VI that says when it cannot".
"""

from __future__ import annotations

import math

import jax
import numpy as np

from lambda_hat.llc.engine import Timer
from lambda_hat.methods._base import Target, traced_posterior
from lambda_hat.samplers import drift as drift_kernel

__all__ = [
    "DEFAULT_DRIFT_TOL",
    "DRIFT_DRAWS",
    "DRIFT_SE",
    "drift_check",
    "drift_failure",
    "drift_summary",
]

DEFAULT_DRIFT_TOL = 0.15
"""``drift_tol``'s default (plans/vi.md, "VI that says when it cannot")."""
DRIFT_DRAWS = 32  # draws per fit that the drift check's MALA starts from
DRIFT_SE = 3.0  # ... and a drift must exceed this many SEs (not Monte Carlo noise)


def drift_check(target: Target, hp: dict, whitening, keys, params, timer: Timer, out: dict):
    """MALA from :data:`DRIFT_DRAWS` draws of each fitted q (:mod:`lambda_hat.samplers.drift`):
    the estimate they relax to (``llc_relaxed``) and the relative drift in the diagnostics; the
    run fails (``check: drift``) when the drift exceeds ``drift_tol`` and :data:`DRIFT_SE` SEs.
    ``drift_steps: 0`` skips it."""
    C, M, r, K = hp["chains"], hp["M"], hp["r"], hp["drift_steps"]
    if K == 0:
        return

    def drift(args, whitening, keys, params):
        post = traced_posterior(target, args)
        keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        return jax.vmap(drift_kernel.build_drift(post, whitening, DRIFT_DRAWS, K))(keys, params)

    start, end, accept = (
        np.asarray(x, np.float64)
        for x in timer.once(
            ("vi", "drift", target.key, C, M, r, K), drift, target.args, whitening, keys, params
        )
    )
    grads = C * DRIFT_DRAWS * (K + 1)
    out["work"]["grad_evals"] += grads
    out["work"]["fge"] += grads
    out["diagnostics"].update(drift_summary(start, end, accept))
    if "failure" not in out:
        failure = drift_failure(out["diagnostics"], hp)
        if failure is not None:
            out["failure"] = {**failure, "step": hp["steps"], "steps_planned": hp["steps"]}


def drift_summary(start: np.ndarray, end: np.ndarray, accept: np.ndarray) -> dict:
    """The relaxed estimate, the drift relative to the draws' own estimate and its SE (paired
    over the independent draws), and MALA's acceptance (chains × steps in, mean out)."""
    diff = (end - start).ravel()
    base = float(start.mean())
    ok = bool(np.isfinite(diff).all()) and base > 0
    se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if ok else None
    return {
        "llc_relaxed": float(end.mean()) if ok else None,
        "llc_relaxed_per_chain": end.mean(axis=1).tolist() if ok else None,
        "drift": float(diff.mean()) / base if ok else None,
        "drift_se": se / base if ok else None,
        "drift_accept": float(np.mean(accept)),
    }


def drift_failure(diagnostics: dict, hp: dict) -> dict | None:
    """The failure of a fit whose estimate the posterior's dynamics moved by more than
    ``drift_tol`` (and :data:`DRIFT_SE` SEs): q is not the posterior where λ̂ looks."""
    drift, se, tol = diagnostics["drift"], diagnostics["drift_se"], hp["drift_tol"]
    if drift is None or abs(drift) <= max(tol, DRIFT_SE * se):
        return None
    return {
        "kind": "diverged",
        "check": "drift",
        "message": (
            f"VI's q is not the posterior its estimate needs: {hp['drift_steps']} MALA steps "
            f"from its draws moved λ̂ by {100 * drift:+.0f} % (± {100 * se:.0f} %, drift_tol "
            f"{tol:g}) to {diagnostics['llc_relaxed']:.4g}. Fix: if the fit is short, more "
            "steps or a larger lr; where converged fits drift too (zero-teacher deep linear "
            "networks: plans/vi.md), VI cannot fit this posterior: estimate it with mclmc or "
            f"sgld; or accept this fit with drift_tol: {math.ceil(120 * abs(drift)) / 100:g}."
        ),
    }
