"""Convergence and chain-health diagnostics of loss traces.

R-hat is the rank-normalized split-R̂ of Vehtari et al. (2021) (threshold 1.01) and ESS is bulk
and tail ESS, computed by ``arviz_stats``' NumPy array interface. BlackJAX 1.7 has the same
definitions (same numbers to 1e-6) but runs them as un-jitted JAX ops: ~14 s on first call per
shape and ~1.5 s after, an overhead every trial would pay; ArviZ takes ~5 ms.
"""

from __future__ import annotations

import numpy as np
from arviz_stats.base import array_stats

from lambda_hat._io import finite_float


def _finite_or_none(x) -> float | None:
    return finite_float(float(x))


def convergence(loss_draws) -> dict:
    """``rhat``, ``ess_bulk``, ``ess_tail`` of a (chains, draws) trace (``None`` if undefined)."""
    L = np.asarray(loss_draws, dtype=np.float64)
    out = {"rhat": None, "ess_bulk": None, "ess_tail": None}
    if L.ndim != 2 or L.shape[1] < 4 or not np.all(np.isfinite(L)):
        return out
    axes = {"chain_axis": 0, "draw_axis": 1}
    if L.shape[0] >= 2:
        out["rhat"] = _finite_or_none(array_stats.rhat(L, method="rank", **axes))
    out["ess_bulk"] = _finite_or_none(array_stats.ess(L, method="bulk", **axes))
    out["ess_tail"] = _finite_or_none(array_stats.ess(L, method="tail", prob=0.05, **axes))
    return out


def chain_health(loss_draws, loss_star: float) -> dict:
    """Signals that a chain is unhealthy, per the LLC literature.

    - ``frac_below_star``: draws with L_n < L_n(w*); large means w* is not a local minimum.
    - ``last_third_trend``: change of the mean loss across the last third, in pooled sd units;
      far from 0 means the chain is still drifting.
    - ``spike_frac``: draws more than 10 MADs above the median.
    - ``nonfinite``: count of NaN/inf draws.
    """
    L = np.asarray(loss_draws, dtype=np.float64)
    if L.ndim == 1:
        L = L[None, :]
    finite = np.isfinite(L)
    out = {
        "nonfinite": int((~finite).sum()),
        "frac_below_star": None,
        "last_third_trend": None,
        "spike_frac": None,
    }
    if not finite.any():
        return out
    Lf = L[finite]
    out["frac_below_star"] = float(np.mean(Lf < loss_star))
    med = np.median(Lf)
    mad = np.median(np.abs(Lf - med)) or np.std(Lf) or 1.0
    out["spike_frac"] = float(np.mean(Lf > med + 10 * mad))
    tail = L[:, -(L.shape[1] // 3) :] if L.shape[1] >= 6 else None
    if tail is not None and np.all(np.isfinite(tail)):
        half = tail.shape[1] // 2
        sd = float(np.std(tail)) or 1.0
        out["last_third_trend"] = float((tail[:, half:].mean() - tail[:, :half].mean()) / sd)
    return out
