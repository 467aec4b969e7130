"""Known answers of lambda_hat.problem.theory (regular and deep linear learning coefficients,
the Gaussian and monomial closed forms)."""

import itertools

import numpy as np
import pytest

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
