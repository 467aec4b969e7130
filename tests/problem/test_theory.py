"""Known answers of lambda_hat.problem.theory (regular and deep linear learning coefficients,
the Gaussian and monomial closed forms, preconditioned Langevin's Lyapunov closed form, and
the quadratures of the singular test targets of ``helpers/singular.py``).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from helpers.singular import BETA, EXACT, GAMMA, NBETA, N
from scipy import optimize

from lambda_hat.problem import theory


@pytest.mark.parametrize("h0,h1,r", [(1, 1, 0), (3, 1, 1), (5, 4, 2), (7, 3, 3), (2, 6, 0)])
def test_one_layer_dln_is_regular(h0, h1, r):
    assert theory.dln_llc((h0, h1), r) == pytest.approx(h0 * h1 / 2)


def test_dln_sanity_values():
    assert theory.dln_llc((5, 3, 5), 0) == pytest.approx(6.5)
    # A reproduction that accepted ell = 0 returned 0 here.
    assert theory.dln_llc((2, 10, 10), 0) == pytest.approx(9.5)


def test_dln_never_exceeds_half_d():
    for widths in itertools.product([1, 2, 3, 5], repeat=3):
        d = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))
        for r in range(min(widths) + 1):
            lam = theory.dln_llc(widths, r)
            assert 0 < lam <= d / 2 + 1e-12, (widths, r, lam)


def test_dln_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        theory.dln_llc((3, 2, 3), 3)


def test_linear_gaussian_limits():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 6))
    H = A @ A.T + 0.1 * np.eye(6)
    # gamma -> 0: d/2; gamma -> inf: 0.
    assert theory.linear_gaussian_llc(H, 1000, 0.2, 1e-9) == pytest.approx(3.0, rel=1e-6)
    assert theory.linear_gaussian_llc(H, 1000, 0.2, 1e12) == pytest.approx(0.0, abs=1e-6)
    # A zero gradient gives the same answer through the general formula.
    assert theory.linear_gaussian_llc(H, 50, 0.3, 2.0, grad=np.zeros(6)) == pytest.approx(
        theory.linear_gaussian_llc(H, 50, 0.3, 2.0)
    )


def test_sgld_ula_tends_to_exact_and_rejects_unstable_steps():
    H = np.diag([1.0, 4.0, 9.0])
    exact = theory.linear_gaussian_llc(H, 100, 0.5, 1.0)
    assert theory.sgld_ula_llc(H, 100, 0.5, 1.0, 1e-9) == pytest.approx(exact, rel=1e-6)
    assert theory.sgld_ula_llc(H, 100, 0.5, 1.0, 1e-3) > exact  # ULA bias is upward
    with pytest.raises(ValueError, match="unstable"):
        theory.sgld_ula_llc(H, 100, 0.5, 1.0, 1.0)


# ----------------------------------------------------------------------------- closed form


def test_closed_form_reduces_to_the_known_cases():
    H = np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]])
    n, beta, gamma, eps = 100, 0.5, 1.0, 1e-3
    assert theory.precond_ula_llc(H, n, beta, gamma, eps) == pytest.approx(
        theory.sgld_ula_llc(H, n, beta, gamma, eps), rel=1e-12
    )
    g = np.array([0.01, -0.02, 0.005])
    for P in (None, np.array([2.0, 0.5, 0.5])):
        assert theory.precond_ula_llc(H, n, beta, gamma, 1e-9, P, g) == pytest.approx(
            theory.linear_gaussian_llc(H, n, beta, gamma, g), rel=1e-6
        )
    # Diagonal H and P: coordinate i is a scalar AR(1) chain with variance 1/(a(1 − εPa/4)).
    h, P = np.array([2.0, 1.0, 0.5]), np.array([0.4, 1.0, 1.6])
    a = n * beta * h + gamma
    by_hand = 0.5 * np.sum(n * beta * h / (a * (1 - eps * P * a / 4)))
    assert theory.precond_ula_llc(np.diag(h), n, beta, gamma, eps, P) == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="unstable"):
        theory.precond_ula_llc(H, n, beta, gamma, 0.5, P)


# --------------------------------------------------------------- the singular targets' answers


def test_quadrature_reproduces_exact_limits():
    for nbeta in (3.0, 37.7, 1e6):  # homogeneous K, γ = 0: E[nβK] = Σ 1/p_i exactly
        assert theory.monomial_llc([4], nbeta, 0.0) == pytest.approx(0.25, rel=1e-10)
        assert theory.monomial_llc([2, 6], nbeta, 0.0) == pytest.approx(0.5 + 1 / 6, rel=1e-10)
    H = np.eye(1)  # p = 2 is the Gaussian closed form
    assert theory.monomial_llc([2], NBETA, GAMMA) == pytest.approx(
        theory.linear_gaussian_llc(H, N, BETA, GAMMA), rel=1e-10
    )
    values = [theory.product_llc(nb, GAMMA) for nb in (10.0, 1e2, 1e4, 1e8)]
    assert all(a < b < 0.5 for a, b in zip(values, values[1:], strict=False))


def test_product_quadrature_matches_a_two_dimensional_grid():
    x = np.linspace(-8, 8, 3201)
    w1, w2 = np.meshgrid(x, x, indexing="ij")
    u = NBETA * 0.5 * (w1 * w2) ** 2 + 0.5 * GAMMA * (w1**2 + w2**2)
    weight = np.exp(-u)
    grid = float(np.sum(weight * NBETA * 0.5 * (w1 * w2) ** 2) / np.sum(weight))
    assert theory.product_llc(NBETA, GAMMA) == pytest.approx(grid, rel=1e-6)


def test_ula_and_gaussian_vi_answers():
    # Full-batch ULA on a separable target: the p = 2 case is the Gaussian closed form ...
    H = np.eye(1)
    for eps in (1e-3, 5e-3):
        assert theory.monomial_ula_llc([2], NBETA, GAMMA, eps) == pytest.approx(
            theory.sgld_ula_llc(H, N, BETA, GAMMA, eps), rel=1e-9
        )
    # ... and the quartic's ULA bias shrinks linearly with the step.
    exact = EXACT["quartic"]()
    biases = [theory.monomial_ula_llc([4, 4], NBETA, GAMMA, e) - exact for e in (4e-3, 2e-3)]
    assert biases[0] > biases[1] > 0 and biases[0] / biases[1] == pytest.approx(2, rel=0.1)
    # The ELBO-optimal Gaussian, against a numerical maximization of the ELBO over σ.
    for p in (2, 4, 6):
        dfact = math.prod(range(p - 1, 0, -2))

        def neg_elbo(log_s, p=p, dfact=dfact):
            s = math.exp(log_s)
            return NBETA * dfact * s**p / 2 + GAMMA * s * s / 2 - log_s

        s = math.exp(optimize.minimize_scalar(neg_elbo, tol=1e-12).x)
        assert theory.gaussian_vi_monomial_llc([p], NBETA, GAMMA) == pytest.approx(
            NBETA * dfact * s**p / 2, rel=1e-6
        )

    def neg_elbo2(x):  # product target, q = N(0, diag(e^x0, e^x1))
        s1, s2 = np.exp(x)
        return NBETA * s1 * s2 / 2 + GAMMA * (s1 + s2) / 2 - (x[0] + x[1]) / 2

    s1, s2 = np.exp(optimize.minimize(neg_elbo2, [0.3, -1.0], tol=1e-14).x)
    assert theory.gaussian_vi_product_llc(NBETA, GAMMA) == pytest.approx(
        NBETA * s1 * s2 / 2, rel=1e-6
    )
