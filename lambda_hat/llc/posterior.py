"""The tempered, localized LLC posterior — built here and nowhere else.

    p(w) ∝ exp( −nβ · L_n(w) − (γ/2) · ‖w − w*‖² ),   β = 1/log n by default,

with L_n the **mean per-example negative log-likelihood** of a loss kind (:data:`LOSSES`):
``gaussian`` (regression at the data's noise σ, up to the additive constant ½·log(2πσ²)·out_dim,
which cancels in every LLC) or ``cross_entropy`` (classification: the softmax NLL of integer
labels), or any per-example NLL a caller supplies (:func:`loss_posterior`). Every sampler reads
nβ, γ and w* from one :class:`LLCPosterior`, so the estimator and the sampler can never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

LossKind = Literal["gaussian", "cross_entropy"]
#: The loss kinds a problem or a notebook call may name.
LOSSES: tuple[str, ...] = ("gaussian", "cross_entropy")


def default_beta(n: int) -> float:
    """β = 1 / log n (Watanabe's WBIC temperature)."""
    return 1.0 / math.log(n)


def gaussian_nll(pred: jax.Array, y: jax.Array, noise: float) -> jax.Array:
    """Mean over samples of ‖y − pred‖² / (2σ²)."""
    return 0.5 * jnp.mean(jnp.sum((y - pred) ** 2, axis=-1)) / noise**2


def cross_entropy_rows(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Each row's softmax NLL −log softmax(logits)[y] (``y`` integer labels, one per row)."""
    labels = jnp.reshape(y, logits.shape[:-1]).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def gaussian_rows(pred: jax.Array, y: jax.Array, noise: float) -> jax.Array:
    """Each row's ‖y − pred‖² / (2σ²) (their mean is :func:`gaussian_nll`)."""
    return 0.5 * jnp.sum((y - pred) ** 2, axis=-1) / noise**2


def row_nll(kind: str, noise: float = 1.0) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``(pred, y) -> (rows,)`` per-example NLL of the loss ``kind`` (σ = ``noise`` for gaussian)."""
    if kind == "gaussian":
        return lambda pred, y: gaussian_rows(pred, y, noise)
    if kind == "cross_entropy":
        return cross_entropy_rows
    raise ValueError(f"unknown loss kind {kind!r}; known: {', '.join(LOSSES)}")


def model_loss(apply: Callable, kind: str = "gaussian", noise: float = 1.0) -> Callable:
    """L(w, X, y): the mean NLL of the loss ``kind`` of the network ``apply(w, X)`` on (X, y).

    The one definition of a problem's L_n: the posterior, the training of w* and every compiled
    program that takes the data as arguments use it. Gaussian is :func:`gaussian_nll` itself.
    """
    if kind == "gaussian":
        return regression_loss(apply, noise)
    rows = row_nll(kind, noise)

    def loss(w, X, y):
        return jnp.mean(rows(apply(w, X), y))

    return loss


def regression_loss(apply: Callable, noise: float) -> Callable:
    """L(w, X, y): the mean Gaussian NLL of the network ``apply(w, X)`` on the rows (X, y)."""

    def loss(w, X, y):
        return gaussian_nll(apply(w, X), y, noise)

    return loss


def draw_rows(key: jax.Array, n: int, batch: int) -> jax.Array:
    """``batch`` row indices in [0, n) drawn with replacement: the one minibatch draw."""
    return jax.random.randint(key, (batch,), 0, n)


def minibatch_indices(key: jax.Array, n: int, batch: int | None) -> jax.Array | None:
    """:func:`draw_rows`, or ``None`` (the full data) when ``batch`` is None or ``>= n``."""
    return None if batch is None or batch >= n else draw_rows(key, n, batch)


class LLCPosterior(NamedTuple):
    """The sampling target of every method, and the numbers the estimator needs."""

    n: int
    beta: float
    gamma: float
    w_star: jax.Array  # (d,) the trained parameter
    loss_star: float  # L_n(w*)
    loss: Callable[[jax.Array], jax.Array]  # full-data L_n(w)
    batch_loss: Callable[[jax.Array, jax.Array], jax.Array]  # L over the rows ``idx``

    @property
    def nbeta(self) -> float:
        return self.n * self.beta

    @property
    def d(self) -> int:
        return int(self.w_star.shape[0])

    def localization(self, w: jax.Array) -> jax.Array:
        """(γ/2)·‖w − w*‖²."""
        return 0.5 * self.gamma * jnp.sum((w - self.w_star) ** 2)

    def logdensity(self, w: jax.Array) -> jax.Array:
        """Unnormalized log p(w)."""
        return -self.nbeta * self.loss(w) - self.localization(w)

    def loss_from_logdensity(self, w: jax.Array, logdensity: jax.Array) -> jax.Array:
        """Recover L_n(w) from a cached log-density without another forward pass."""
        return -(logdensity + self.localization(w)) / self.nbeta


def make_posterior(
    apply: Callable,
    X: jax.Array,
    y: jax.Array,
    noise: float,
    w_star: jax.Array,
    beta: float | None = None,
    gamma: float = 1.0,
    kind: str = "gaussian",
) -> LLCPosterior:
    """Build the posterior of a network ``apply(w, X)`` under the loss ``kind``."""
    return posterior_at(model_loss(apply, kind, noise), X, y, w_star, beta, gamma)


def posterior_at(
    loss: Callable, X, y, w_star: jax.Array, beta: float | None = None, gamma: float = 1.0
) -> LLCPosterior:
    """The posterior of the mean loss ``loss(w, X, y)`` at w*, L_n(w*) computed (β = 1/log n
    when None)."""
    n = int(X.shape[0])
    beta = default_beta(n) if beta is None else float(beta)
    post = loss_posterior(loss, X, y, w_star, beta, float(gamma), math.nan)
    return post._replace(loss_star=float(jax.jit(post.loss)(w_star)))


def regression_posterior(
    apply: Callable, X, y, noise: float, w_star, beta, gamma, loss_star
) -> LLCPosterior:
    """:func:`loss_posterior` of the Gaussian NLL of ``apply`` (see there)."""
    return loss_posterior(regression_loss(apply, noise), X, y, w_star, beta, gamma, loss_star)


def loss_posterior(loss: Callable, X, y, w_star: jax.Array, beta, gamma, loss_star) -> LLCPosterior:
    """The posterior of the mean per-example NLL ``loss(w, X, y)``, every number given;
    computes nothing.

    Every argument but ``loss`` may be a traced array, so a compiled program can take the data,
    w*, β, γ and L_n(w*) as *arguments* (one executable serves every posterior of the same
    shapes) while still using this one definition of L_n and of the density.
    """
    n = int(X.shape[0])

    def full(w):
        return loss(w, X, y)

    def batch_loss(w, idx):
        return loss(w, X[idx], y[idx])

    return LLCPosterior(n, beta, gamma, w_star, loss_star, full, batch_loss)


def chain_starts(posterior: LLCPosterior, key: jax.Array, num_chains: int) -> jax.Array:
    """Chain starts for every sampler: w* plus a small jitter (scale 0.1/√(nβ + γ)), so that
    chains differ and R-hat has something to compare, while all start in w*'s basin."""
    scale = 0.1 / jnp.sqrt(posterior.nbeta + posterior.gamma)
    w_star = posterior.w_star
    noise = jax.random.normal(key, (num_chains, w_star.shape[0]), w_star.dtype) * scale
    return w_star[None, :] + noise
