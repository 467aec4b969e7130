"""Two singular test targets with w* = 0 and L_n = K, so λ̂ = E[nβK] under exp(−nβK − (γ/2)‖w‖²):

- quartic  K(w) = ½(w₁⁴ + w₂⁴)   (λ = 1/4 + 1/4 in the limit; separable),
- product  K(w) = ½ w₁² w₂²       (λ = 1/2; the posterior is a cross along the axes),

at n = 200, β = 1/log n (nβ = 37.7), γ = 1, with the exact finite-nβ, finite-γ answers from
quadrature (:mod:`lambda_hat.problem.theory`).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from lambda_hat.llc.posterior import LLCPosterior
from lambda_hat.problem import theory

N = 200
BETA = 1 / math.log(N)
NBETA = N * BETA
GAMMA = 1.0


def quartic(w):
    return 0.5 * jnp.sum(w**4)


def product(w):
    return 0.5 * (w[0] * w[1]) ** 2


EXACT = {
    "quartic": lambda: theory.monomial_llc([4, 4], NBETA, GAMMA),
    "product": lambda: theory.product_llc(NBETA, GAMMA),
}


def singular_posterior(name: str) -> LLCPosterior:
    """The test target as an LLCPosterior (no data: a "minibatch" loss is the loss)."""
    K = {"quartic": quartic, "product": product}[name]
    return LLCPosterior(N, BETA, GAMMA, jnp.zeros(2), 0.0, K, lambda w, idx: K(w))
