"""What the report flags about a cheap run and a recommendation, in words.

A cheap run (a tuning trial, a validation run, a ``lambda-hat run`` set) is flagged when its
chains miss a convergence check (:func:`chain_flags`): rank-normalized R-hat above
:data:`RHAT_MAX`, bulk ESS below :data:`ESS_MIN`, or SGLD's MALA acceptance below
:data:`MALA_MIN`. These are the report's own thresholds for cheap runs, not the HMC
reference's gate (which asks ESS ≥ 400 of a 4 × 2000-draw run). A recommendation is flagged
when validation.json says it is not reliable (:func:`reliability`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from lambda_hat._io import finite_float
from lambda_hat.log import fmt_value
from lambda_hat.trial.outcome import KINDS

RHAT_MAX = 1.01
"""Largest rank-normalized R-hat of chains that agree (Vehtari et al. 2021)."""
ESS_MIN = 100.0
"""Smallest bulk ESS whose mean and SE are worth reading (Vehtari et al. 2021 ask 100 per
chain for a final result; a tuning trial with two short chains gets this much slack)."""
MALA_MIN = 0.9
"""Smallest healthy MALA acceptance of SGLD's proposals (devinterp's guidance: 0.9–0.95); lower
means the step is too large for the posterior's curvature."""


def is_interrupted(kind: Any) -> bool:
    """True for a failure kind that is not a result of the run's settings (``interrupted``,
    ``infrastructure``: the trial's slot is asked again), so it is drawn apart from failures."""
    k = KINDS.get(kind) if isinstance(kind, str) else None
    return k is not None and not k.finished


def diagnostic(diag: Any, key: str) -> Any:
    """``diag[key]`` from a diagnostics dict or its JSON text; None when absent."""
    if isinstance(diag, str):
        try:
            diag = json.loads(diag)
        except ValueError:
            return None
    return diag.get(key) if isinstance(diag, dict) else None


def mala_of(diag: Any) -> float | None:
    """SGLD's mean MALA acceptance over the kept draws from a run's diagnostics."""
    return finite_float(diagnostic(diag, "mala_acceptance"))


def chain_flags(rhat: Any, ess: Any, mala: Any = None) -> list[str]:
    """The checks a run's chains missed, one phrase each (empty: none missed)."""
    out = []
    r, e, m = finite_float(rhat), finite_float(ess), finite_float(mala)
    if r is not None and r > RHAT_MAX:
        out.append(f"R-hat {r:.4f} > {RHAT_MAX}")
    if e is not None and e < ESS_MIN:
        out.append(f"ESS {e:.0f} < {ESS_MIN:.0f}")
    if m is not None and m < MALA_MIN:
        out.append(f"MALA acceptance {m:.3g} < {MALA_MIN}")
    return out


def z_score(metrics: dict) -> float | None:
    """A run's signed error over its combined SE, (λ̂ − λ̂_ref) / √(SE² + SE_ref²), from its
    metrics.json numbers (None without them)."""
    err = finite_float(metrics.get("error"))
    se_hat = finite_float(metrics.get("se_hat")) or 0.0
    se = math.hypot(se_hat, finite_float(metrics.get("se_ref")) or 0.0)
    return None if err is None or se == 0 else err / se


def run_verdict(metrics: dict) -> str:
    """One line on a run's metrics: error and z against the reference, R-hat, ESS, MALA
    acceptance and the checks missed (what ``lambda-hat trial`` prints)."""
    diag = metrics.get("diagnostics") or {}
    parts = []
    z = z_score(metrics)
    if finite_float(metrics.get("error")) is not None:
        parts.append(f"error {metrics['error']:+.4g}")
    if z is not None:
        parts.append(f"z {z:+.2f} ({'agrees' if abs(z) <= 2 else 'does NOT agree'}, |z| ≤ 2)")
    parts.append(f"R-hat {fmt_value(finite_float(diag.get('rhat')), '.4f')}")
    parts.append(f"ESS {fmt_value(finite_float(diag.get('ess_bulk')), '.0f')}")
    mala = mala_of(diag)
    if mala is not None:
        parts.append(f"MALA acceptance {mala:.3f} (healthy 0.9–0.95)")
    flags = chain_flags(diag.get("rhat"), diag.get("ess_bulk"), mala)
    return ", ".join(parts) + ("; checks missed: " + "; ".join(flags) if flags else "")


def flags_text(flags: list[str]) -> str:
    """``'MISSED: R-hat 1.185 > 1.01; ESS 8 < 100'``, or ``'ok'``."""
    return "MISSED: " + "; ".join(flags) if flags else "ok"


def reliability(entry: dict | None) -> tuple[bool | None, str]:
    """Whether a study's recommendation is reliable, from its validation.json entry
    (``reliable`` and ``reliability: {z, reason, fix}``, on the study or its ``recommended``),
    and the text to show; ``(None, "")`` when validation did not say."""
    entry = entry or {}
    rec = entry.get("recommended") or {}
    reliable = entry.get("reliable", rec.get("reliable"))
    if not isinstance(reliable, bool):
        return None, ""
    info = entry.get("reliability") or rec.get("reliability") or {}
    z = finite_float(info.get("z"))
    zs = f"z = {z:+.2f}" if z is not None else ""
    if reliable:
        return True, "reliable" + (f" ({zs})" if zs else "")
    parts = [p for p in (zs, info.get("reason")) if p]
    text = "NOT RELIABLE YET" + (": " + ", ".join(str(p) for p in parts) if parts else "")
    if info.get("fix"):
        text += f". Fix: {info['fix']}"
    return False, text
