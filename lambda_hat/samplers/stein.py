"""Stein's identity with the test function ∇f, f = nβ(L_n − L_n(w*)): does q read the LLC of
the posterior it was fitted to?

For the localized posterior p(w) ∝ exp(−U(w)), U = f + (γ/2)‖w − w*‖², integration by parts
gives E_p[Δf] = E_p[∇f·∇U] for any smooth f whose tails vanish. VI's own stationarity makes
q satisfy Stein's identity for *linear* test functions (E_q[∇U] = 0, and along q's overall
scale the virial identity), so those say nothing; ∇f is the test function of the estimate
itself. The ratio

    ρ = E_q[∇f·∇U] / E_q[Δf]

is 1 under the posterior. Where q is the posterior's shape at a wrong scale it reads the
estimate's own error: for a quadratic f and q = N(w*, c·(nβH + γI)⁻¹), ρ = c and
λ̂_q = c·λ; for f homogeneous of degree k around w* (a deep linear network's quartic
directions) both scale as c^k. Δf is estimated with one Rademacher probe per draw
(Hutchinson: vᵀ∇²f v, one Hessian-vector product); every draw costs about three gradients.
plans/vi.md, "VI that says when it cannot".
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lambda_hat.llc.posterior import LLCPosterior
from lambda_hat.samplers.vi import MFAParams, Whitening, sample, to_weights

__all__ = ["GRADS_PER_DRAW", "build_stein", "stein_ratio"]

GRADS_PER_DRAW = 3  # ∇f, and a Hessian-vector product (a forward-over-reverse pass, ~2)


def build_stein(posterior: LLCPosterior, whitening: Whitening, num: int, map_batch: int = 8):
    """``stein(key, params) -> (lap, cross)``, both (num,): at ``num`` independent draws from q,
    the Hutchinson estimate vᵀ∇²f v of Δf and ∇f·∇U (see the module docstring)."""

    def f(w):
        return posterior.nbeta * (posterior.loss(w) - posterior.loss_star)

    grad_f = jax.grad(f)

    def one(args):
        dw, v = args
        w = posterior.w_star + dw
        g, hv = jax.jvp(grad_f, (w,), (v,))
        return jnp.vdot(v, hv), jnp.vdot(g, g + posterior.gamma * dw)

    def stein(key, params: MFAParams):
        k_q, k_v = jax.random.split(key)
        dw = jax.vmap(lambda z: to_weights(whitening, z))(sample(params, k_q, num))
        v = jax.random.rademacher(k_v, dw.shape, dw.dtype)
        return jax.lax.map(one, (dw, v), batch_size=map_batch)

    return stein


def stein_ratio(lap: np.ndarray, cross: np.ndarray) -> tuple[float | None, float | None]:
    """ρ = mean(cross) / mean(lap) over all draws (any shape), and its delta-method SE (the
    draws are independent); (None, None) when E_q[Δf] is not clearly positive."""
    lap, cross = np.ravel(lap).astype(np.float64), np.ravel(cross).astype(np.float64)
    if not (np.isfinite(lap).all() and np.isfinite(cross).all()) or lap.size < 2:
        return None, None
    m_lap, m_cross = lap.mean(), cross.mean()
    if m_lap <= 0:
        return None, None
    ratio = m_cross / m_lap
    resid = (cross - ratio * lap) / m_lap  # influence of each draw on the ratio
    return float(ratio), float(resid.std(ddof=1) / math.sqrt(lap.size))
