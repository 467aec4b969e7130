"""Known answers: learning coefficients and closed-form finite-γ LLCs.

References: Watanabe (2009) for regular models (λ = d/2); Aoyagi (2024), "Consideration on the
learning efficiency of multiple-layered neural networks with linear units", for deep linear
networks; the Gaussian closed forms follow from the localized posterior in
:mod:`lambda_hat.llc.posterior` being exactly Gaussian when L_n is quadratic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import integrate, linalg, optimize, sparse
from scipy.sparse import linalg as splinalg


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


def precond_ula_llc(
    hessian,
    n: int,
    beta: float,
    gamma: float,
    eps: float,
    precond=None,
    grad=None,
    grad_cov=None,
) -> float:
    """Stationary λ̂ of Langevin with a fixed diagonal preconditioner P on a quadratic L_n.

    Update Δw = −(ε/2)·P·∇U_B(w) + √(εP)·ξ with U = nβL_n + (γ/2)‖w − w*‖² and
    L_n − L_n(w*) = gᵀδ + ½δᵀHδ (δ = w − w*). With A = nβH + γI the chain is a Gaussian AR(1)
    process δ' − μ = M(δ − μ) + noise, M = I − (ε/2)PA, mean μ = −A⁻¹nβg (the posterior's: P
    and ε do not move it), and covariance Σ solving the discrete Lyapunov equation

        Σ = MΣMᵀ + εP + (ε/2)²(nβ)²·P C P,

    where C = ``grad_cov`` is the covariance of the minibatch loss gradient ∇L_B − ∇L_n (None:
    full batch, C = 0; taken position-independent). Then λ̂ = nβ(gᵀμ + ½μᵀHμ + ½tr(HΣ)).
    P = 1 and C = 0 give :func:`sgld_ula_llc`; ε → 0 gives :func:`linear_gaussian_llc`.
    """
    nb = n * beta
    Hm = np.asarray(hessian, dtype=np.float64)
    d = Hm.shape[0]
    P = np.ones(d) if precond is None else np.asarray(precond, dtype=np.float64)
    if P.shape != (d,) or not np.all(P > 0):
        raise ValueError(f"precond must be {d} positive numbers, got {precond!r}")
    A = nb * Hm + gamma * np.eye(d)
    M = np.eye(d) - 0.5 * eps * P[:, None] * A
    rho = np.abs(np.linalg.eigvals(M)).max()
    if rho >= 1:
        raise ValueError(f"step {eps} is unstable with this preconditioner (|eig M| = {rho:.4g})")
    Q = eps * np.diag(P)
    if grad_cov is not None:
        Q = Q + (0.5 * eps * nb) ** 2 * (P[:, None] * np.asarray(grad_cov) * P[None, :])
    sigma = linalg.solve_discrete_lyapunov(M, Q)
    g = np.zeros(d) if grad is None else np.asarray(grad, dtype=np.float64)
    mu = -np.linalg.solve(A, nb * g)
    return float(nb * (g @ mu + 0.5 * mu @ Hm @ mu + 0.5 * np.trace(Hm @ sigma)))


# ------------------------------------------------------------------ singular test targets
# With w* = 0, L_n = K and L_n(w*) = 0, the localized posterior is exp(−nβK − (γ/2)‖w‖²) and
# λ̂ = E[nβK]. Both targets below reduce to 1-D integrals, computed by adaptive quadrature.


def _check_powers(powers: Sequence[int]) -> list[int]:
    ps = [int(p) for p in powers]
    if not ps or any(p < 2 or p % 2 for p in ps):
        raise ValueError(f"powers must be even integers >= 2, got {powers!r}")
    return ps


def _moment_ratio(f, g, scales: Sequence[float]) -> float:
    """∫₀^∞ f / ∫₀^∞ g (integrands even in w), the half-line split at ``scales``."""
    cuts = sorted({0.0, *(float(c) for c in scales if c > 0)})

    bounds = [*zip(cuts, cuts[1:], strict=False), (cuts[-1], np.inf)]

    def half_line(h):
        return sum(integrate.quad(h, a, b, epsabs=0, epsrel=1e-12, limit=200)[0] for a, b in bounds)

    return half_line(f) / half_line(g)


def monomial_llc(powers: Sequence[int], nbeta: float, gamma: float) -> float:
    """Exact λ̂ = E[nβK] for K(w) = ½ Σ_i w_i^{p_i} (p_i even) at finite nβ and γ.

    The density factorizes over coordinates, so this is a sum of 1-D integrals. Each term is
    exactly 1/p_i when γ = 0 (K is homogeneous), the learning coefficient λ = Σ 1/p_i
    (Watanabe 2009); γ > 0 pulls it below.
    """
    total = 0.0
    for p in _check_powers(powers):
        scale = (2 / nbeta) ** (1 / p)  # where nβ w^p / 2 = 1

        def weight(w, p=p):
            return math.exp(-0.5 * nbeta * w**p - 0.5 * gamma * w * w)

        def energy(w, p=p):
            return 0.5 * nbeta * w**p * weight(w)

        total += _moment_ratio(energy, weight, (scale, 4 * scale))
    return total


def product_llc(nbeta: float, gamma: float) -> float:
    """Exact λ̂ = E[nβK] for K(w) = ½ w₁² w₂² (λ = 1/2 as nβ → ∞), needs γ > 0.

    Given w₂ = t the density in w₁ is Gaussian with precision a(t) = nβt² + γ, so
    Z = ∫ e^{−γt²/2} a^{−1/2} dt and E[nβK] = ∫ e^{−γt²/2} a^{−1/2} (nβt²/2)/a dt / Z.
    """
    if gamma <= 0:
        raise ValueError(f"the product target is improper without localization: gamma={gamma}")

    def weight(t):
        return math.exp(-0.5 * gamma * t * t) / math.sqrt(nbeta * t * t + gamma)

    def energy(t):
        return weight(t) * 0.5 * nbeta * t * t / (nbeta * t * t + gamma)

    knee = math.sqrt(gamma / nbeta)  # where a(t) turns from γ to nβt²
    return _moment_ratio(energy, weight, (knee, 1 / math.sqrt(gamma)))


def monomial_ula_llc(
    powers: Sequence[int], nbeta: float, gamma: float, eps: float, precond=None
) -> float:
    """Stationary λ̂ of full-batch SGLD with a fixed diagonal P on K(w) = ½ Σ w_i^{p_i}.

    U is separable, so the chain Δw_i = −(εP_i/2)∂_iU + √(εP_i)ξ_i is d independent 1-D
    chains, each solved by :func:`_ula_energy_1d`. p_i = 2 reproduces :func:`sgld_ula_llc`.
    """
    ps = _check_powers(powers)
    P = np.ones(len(ps)) if precond is None else np.asarray(precond, dtype=np.float64)
    return sum(
        _ula_energy_1d(p, nbeta, gamma, eps * float(Pi)) for p, Pi in zip(ps, P, strict=True)
    )


def _ula_energy_1d(p: int, nbeta: float, gamma: float, h: float) -> float:
    """E[nβx^p/2] under the stationary law of x' = x − (h/2)U'(x) + √h ξ, U = nβx^p/2 + γx²/2.

    The law solves π(y) = ∫ π(x) N(y; x − (h/2)U'(x), h) dx. On a grid of spacing √h/8 over
    ±10 posterior standard deviations, with each row of the transition matrix cut at ±9√h
    and renormalized, π is the null vector of Tᵀ − I: a sparse solve with π pinned at 0.
    """
    half = 10 * math.sqrt(_second_moment(p, nbeta, gamma))
    num = int(2 * half / (math.sqrt(h) / 8)) | 1
    if num > 200_001:
        raise ValueError(f"step {h:g} is too small for the grid ({num} points)")
    x = np.linspace(-half, half, num)
    dx = x[1] - x[0]
    mean = x - 0.5 * h * (0.5 * p * nbeta * x ** (p - 1) + gamma * x)
    width = math.ceil(9 * math.sqrt(h) / dx)
    centre = np.rint((mean - x[0]) / dx).astype(np.int64)
    cols = centre[:, None] + np.arange(-width, width + 1)[None, :]
    inside = (cols >= 0) & (cols < num)
    cols = np.clip(cols, 0, num - 1)
    vals = np.exp(-0.5 * (x[cols] - mean[:, None]) ** 2 / h) * inside
    mass = vals.sum(axis=1, keepdims=True)
    if not np.all(mass > 0):
        raise ValueError(f"step {h:g} is too large: the chain leaves the grid")
    rows = np.broadcast_to(np.arange(num)[:, None], cols.shape)
    T = sparse.csr_matrix(((vals / mass).ravel(), (rows.ravel(), cols.ravel())), (num, num))
    system = (T.T - sparse.identity(num)).tocsc()
    c = num // 2
    keep = np.r_[0:c, c + 1 : num]
    rest = splinalg.spsolve(system[keep][:, keep], -system[keep][:, [c]].toarray().ravel())
    pi = np.insert(rest, c, 1.0)
    pi /= pi.sum()
    return float(np.sum(pi * 0.5 * nbeta * x**p))


def _second_moment(p: int, nbeta: float, gamma: float) -> float:
    """E[w²] under exp(−nβw^p/2 − γw²/2)."""
    scale = (2 / nbeta) ** (1 / p)

    def weight(w):
        return math.exp(-0.5 * nbeta * w**p - 0.5 * gamma * w * w)

    return _moment_ratio(lambda w: w * w * weight(w), weight, (scale, 4 * scale))


def gaussian_vi_monomial_llc(powers: Sequence[int], nbeta: float, gamma: float) -> float:
    """λ̂ of the ELBO-optimal Gaussian q for K(w) = ½ Σ w_i^{p_i}: Gaussian VI's exact answer.

    The optimum is N(0, diag σ²) (E_q[K] grows with any mean and only the marginal variances
    enter it, while the entropy prefers independence). Per coordinate, with
    E_q[w^p] = (p−1)!!σ^p, stationarity of the ELBO in σ reads
    nβ·p·(p−1)!!·σ^p/2 + γσ² = 1, and λ̂ = Σ nβ(p−1)!!σ^p/2.
    """
    total = 0.0
    for p in _check_powers(powers):
        dfact = math.prod(range(p - 1, 0, -2))

        def stationarity(s2, p=p, dfact=dfact):
            return nbeta * p * dfact * s2 ** (p / 2) / 2 + gamma * s2 - 1

        hi = 1.0
        while stationarity(hi) < 0:
            hi *= 2
        s2 = optimize.brentq(stationarity, 0.0, hi, xtol=1e-15, rtol=1e-14)
        total += nbeta * dfact * s2 ** (p / 2) / 2
    return total


def gaussian_vi_product_llc(nbeta: float, gamma: float) -> float:
    """λ̂ of the ELBO-optimal Gaussian q for K(w) = ½ w₁² w₂² (γ > 0): N(0, s·I) with
    nβs + γ = 1/s, so λ̂ = nβs²/2 (convex in log-variances, so the optimum is unique)."""
    if gamma <= 0:
        raise ValueError(f"the product target is improper without localization: gamma={gamma}")
    s = (-gamma + math.sqrt(gamma**2 + 4 * nbeta)) / (2 * nbeta)
    return nbeta * s * s / 2


def numerical_rank(matrix, rtol: float = 1e-6) -> int:
    """Rank of ``matrix`` with singular values below ``rtol``·max treated as zero."""
    s = np.linalg.svd(np.asarray(matrix, dtype=np.float64), compute_uv=False)
    if s.size == 0 or s.max() == 0:
        return 0
    return int(np.sum(s > rtol * s.max()))
