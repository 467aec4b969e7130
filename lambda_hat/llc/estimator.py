"""The one LLC estimator, used by every method (HMC, SGLD, MCLMC, VI).

    λ̂ = nβ · ( E_p[L_n(w)] − L_n(w*) ),     SE(λ̂) = nβ · sd(L_n draws) / √ESS.

E_p is the mean of the kept loss draws (MCMC, after burn-in) or of independent draws from the
fitted q (VI, ``independent=True``: ESS is then the number of draws).
"""

from __future__ import annotations

import math

import numpy as np

from lambda_hat.llc import diagnostics


def estimate_llc(loss_draws, loss_star: float, nbeta: float, *, independent: bool = False) -> dict:
    """λ̂ and its standard error from a (chains, draws) array of L_n values.

    Returns ``llc_hat``, ``se_hat``, ``llc_per_chain``, ``ess_bulk``, ``ess_tail``, ``rhat``
    (``None`` where undefined: one chain, too few draws, or non-finite draws).
    """
    L = np.asarray(loss_draws, dtype=np.float64)
    if L.ndim == 1:
        L = L[None, :]
    llc_per_chain = nbeta * (L.mean(axis=1) - loss_star)
    llc = float(nbeta * (L.mean() - loss_star))
    conv = diagnostics.convergence(L)
    if independent:
        conv["ess_bulk"] = conv["ess_tail"] = float(L.size)
    ess = conv["ess_bulk"]
    sd = float(L.std(ddof=1)) if L.size > 1 else float("nan")
    se = nbeta * sd / math.sqrt(ess) if ess and ess > 0 and math.isfinite(sd) else float("nan")
    return {
        "llc_hat": llc,
        "se_hat": se,
        "llc_per_chain": llc_per_chain.tolist(),
        **conv,
    }
