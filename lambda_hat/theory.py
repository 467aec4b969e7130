"""Known answers: learning coefficients and closed-form finite-γ LLCs.

References: Watanabe (2009) for regular models (λ = d/2); Aoyagi (2024), "Consideration on the
learning efficiency of multiple-layered neural networks with linear units", for deep linear
networks; the Gaussian closed forms follow from the localized posterior in
:mod:`lambda_hat.posterior` being exactly Gaussian when L_n is quadratic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def regular_llc(d: int) -> float:
    """λ = d/2 of an identifiable model at a non-degenerate minimum."""
    return d / 2


def dln_llc(widths: Sequence[int], rank: int) -> float:
    """Aoyagi's learning coefficient of a deep linear network.

    ``widths`` = (H_0 input, H_1, ..., H_L output); ``rank`` = r, the rank of the true product.
    With M_j = H_j − r sorted ascending, Σ is the shortest prefix of size ℓ+1 (ℓ ≥ 1, ties kept
    together) with max_Σ M < min_¬Σ M, Σ_Σ M ≥ ℓ·max_Σ M and Σ_Σ M < ℓ·min_¬Σ M. ℓ = 0 is never
    accepted (a published reproduction did, and returned 0 instead of 9.5 for (2, 10, 10)).

    >>> dln_llc((5, 3, 5), 0)
    6.5
    """
    H = [int(h) for h in widths]
    if len(H) < 2:
        raise ValueError(f"widths needs input and output sizes, got {widths!r}")
    if not 0 <= rank <= min(H):
        raise ValueError(f"rank must be between 0 and min(widths) = {min(H)}, got {rank}")
    M = sorted(h - rank for h in H)
    for size in range(2, len(M) + 1):
        sigma, rest = M[:size], M[size:]
        ell, S = size - 1, sum(M[:size])
        if rest and not max(sigma) < min(rest):
            continue
        if not S >= ell * max(sigma):
            continue
        if rest and not S < ell * min(rest):
            continue
        m_bar = math.ceil(S / ell)
        a = S - (m_bar - 1) * ell
        pairs = sum(sigma[i] * sigma[j] for i in range(size) for j in range(i + 1, size))
        return (
            (-(rank**2) + rank * (H[0] + H[-1])) / 2
            + a * (ell - a) / (4 * ell)
            - (ell * (ell - 1) / 4) * (S / ell) ** 2
            + pairs / 2
        )
    raise ValueError(f"no admissible index set for widths {widths!r}, rank {rank}")


def _eigs(hessian) -> np.ndarray:
    h = np.linalg.eigvalsh(np.asarray(hessian, dtype=np.float64))
    return np.clip(h, 0.0, None)


def linear_gaussian_llc(hessian, n: int, beta: float, gamma: float, grad=None) -> float:
    """Exact λ̂ of the localized posterior when L_n(w) − L_n(w*) = gᵀδ + ½ δᵀHδ.

    With g = 0 (w* the exact minimizer) this is ½ Σ_i nβh_i / (nβh_i + γ). A non-zero ``grad``
    (w* only approximately trained) shifts the Gaussian's mean μ = −A⁻¹ nβ g with
    A = nβH + γI, and λ̂ = nβ (gᵀμ + ½ tr(H A⁻¹) + ½ μᵀHμ).
    """
    nb = n * beta
    Hm = np.asarray(hessian, dtype=np.float64)
    if grad is None:
        h = _eigs(Hm)
        return float(0.5 * np.sum(nb * h / (nb * h + gamma)))
    g = np.asarray(grad, dtype=np.float64)
    A = nb * Hm + gamma * np.eye(Hm.shape[0])
    A_inv = np.linalg.inv(A)
    mu = -A_inv @ (nb * g)
    return float(nb * (g @ mu + 0.5 * np.trace(Hm @ A_inv) + 0.5 * mu @ Hm @ mu))


def sgld_ula_llc(hessian, n: int, beta: float, gamma: float, eps: float) -> float:
    """Stationary λ̂ of full-batch SGLD (unadjusted Langevin) with step ε on a quadratic L_n.

    Update Δw = −(ε/2)∇U + √ε ξ with U = nβL_n + (γ/2)‖w − w*‖²; with a_i = nβh_i + γ the
    answer is ½ Σ nβh_i / (a_i (1 − ε a_i / 4)), stable only for ε < 4 / max a_i.
    """
    nb = n * beta
    h = _eigs(hessian)
    a = nb * h + gamma
    if eps >= 4 / a.max():
        raise ValueError(f"step {eps} is unstable: needs eps < 4 / max a_i = {4 / a.max():.3g}")
    return float(0.5 * np.sum(nb * h / (a * (1 - eps * a / 4))))


def numerical_rank(matrix, rtol: float = 1e-6) -> int:
    """Rank of ``matrix`` with singular values below ``rtol``·max treated as zero."""
    s = np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)
    if s.size == 0 or s.max() == 0:
        return 0
    return int(np.sum(s > rtol * s.max()))
