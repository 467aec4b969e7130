"""What every method adapter shares: the :class:`Method` record, the traced posterior target,
and the small helpers that turn chunk outputs into the adapter's result."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, Literal, NamedTuple

import jax.numpy as jnp
import numpy as np

from lambda_hat.llc.engine import Timer
from lambda_hat.llc.estimator import estimate_llc
from lambda_hat.llc.posterior import LLCPosterior, loss_posterior
from lambda_hat.schema import field

MIN_DRAWS = 4  # kept draws per chain below which no estimate is made

Dtype = Literal["float32", "float64"]


def dtype_field() -> Any:
    """The ``dtype`` hyperparameter of a cheap method: the float type its programs compute in.

    :func:`make_target` casts the data, w*, β, γ and L_n(w*) to it, so every array derived from
    them (chain starts, states, draws) follows; references always compute in float64.
    """
    return field("float64", "float type of the data, w* and the chains (references: float64)")


class Method(NamedTuple):
    """One cheap LLC method, in the spirit of Optax's ``GradientTransformation``.

    ``hyper`` is the hyperparameter schema (a frozen dataclass checked by
    :func:`lambda_hat.schema.validate`); ``space()`` the default Optuna search space;
    ``run(target, hp, key, deadline, timer)`` the adapter that runs the sampler and returns a
    :data:`RunOutput` dict; ``culprits`` maps a failure kind to the hyperparameters that
    usually cause it, most likely first (the all-fail guard's diagnosis); ``check(hp, where)``
    cross-field checks beyond the schema (raise ConfigError) or None; ``revision(hp)`` names
    a change of what the adapter computes for these hyperparameters (it enters the run's
    manifest, so runs stored before the change are not reused) or returns None;
    ``step_limit(a_max, d)`` is the stability limit ε_max of the step size that the space's
    :class:`lambda_hat.methods.stability.StabilityRange` scales, on a problem whose
    posterior precision at w* has top eigenvalue ``a_max`` (checked finite and > 0) and ``d``
    parameters, or None for a method without one; ``space_for(fixed)`` the default space
    when a config fixes the hyperparameters ``fixed``, for a method whose modes search different
    parameters (MCLMC tuned or not), or None (``space()`` whatever is fixed).
    """

    name: str
    hyper: type
    space: Callable[[], dict]
    run: Callable[..., dict]
    culprits: Mapping[str, tuple[str, ...]]
    check: Callable[[Any, str], None] | None = None
    revision: Callable[[dict], str | None] = lambda hp: None
    step_limit: Callable[[float, int], float] | None = None
    space_for: Callable[[Mapping[str, Any]], dict] | None = None


class Target(NamedTuple):
    """A trial's posterior: host numbers, and the same as arguments of compiled programs."""

    post: LLCPosterior  # floats, for the estimator and host arithmetic
    args: tuple  # (X, y, w*, β, γ, L_n(w*)): traced by every program
    loss: Callable  # L(w, X, y), the mean per-example NLL (llc.posterior.model_loss)
    key: tuple  # (pid, n, d, dtype): what the closure over ``loss`` depends on
    dtype: str = "float64"  # of X, y, w* and the traced scalars: what the programs compute in

    def real(self, x) -> np.ndarray:
        """``x`` as a host array of the target's float type (a traced argument of a program)."""
        return np.asarray(x, self.dtype)


def traced_posterior(target: Target, args: tuple) -> LLCPosterior:
    """The posterior inside a compiled program, from its traced ``args``."""
    X, y, w_star, beta, gamma, loss_star = args
    return loss_posterior(target.loss, X, y, w_star, beta, gamma, loss_star)


def _cast(a, dtype: str):
    """A float array in ``dtype``; integer arrays (class labels) as they are."""
    a = jnp.asarray(a)
    return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a


def make_target(
    pid: Hashable,
    loss: Callable,
    X,
    y,
    w_star,
    beta: float,
    gamma: float,
    timer: Timer,
    dtype: str = "float64",
) -> Target:
    """The posterior of the mean loss ``loss(w, X, y)`` at (β, γ) in ``dtype``, L_n(w*) computed
    by a cached program (no per-trial trace). ``pid`` (hashable) names ``loss`` in the program
    cache: two targets with the same pid, shapes and dtype must have the same ``loss``. Float
    X, y and w* are cast to ``dtype`` (integer labels stay integers)."""
    X, y, w_star = (_cast(a, dtype) for a in (X, y, w_star))
    key = (pid, int(X.shape[0]), int(w_star.shape[0]), dtype)
    loss_star = float(timer.once(("loss", key), lambda X, y, w: loss(w, X, y), X, y, w_star))
    post = loss_posterior(loss, X, y, w_star, float(beta), float(gamma), loss_star)
    args = (X, y, w_star, *(np.asarray(v, dtype) for v in (beta, gamma, loss_star)))
    return Target(post, args, loss, key, dtype)


def kept(loss: np.ndarray, burnin_frac: float) -> tuple[np.ndarray, int]:
    """The draws after burn-in and the number of burn-in draws per chain."""
    burn = int(burnin_frac * loss.shape[1])
    return loss[:, burn:], burn


def partial_llc(loss: np.ndarray, post: LLCPosterior, burnin_frac: float) -> float | None:
    """λ̂ from the L_n draws so far (burn-in dropped), for progress reports; None if too few."""
    draws, _ = kept(loss, burnin_frac)
    if draws.shape[1] < MIN_DRAWS:
        return None
    return float(estimate_llc(draws, post.loss_star, post.nbeta)["llc_hat"])


def mean_or_none(x) -> float | None:
    """The mean of the finite entries of ``x`` (None when there are none)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else None


def run_output(loss, draws, burn: int, done: int, total: int, early: bool, steps: tuple) -> dict:
    """The fields every adapter's RunOutput has: the L_n draws, the kept ones, the burn-in, the
    drive loop's units done of ``total``, ``stopped_early`` and ``steps = (done, planned)``."""
    return {
        "loss": loss,
        "kept": draws,
        "burnin": burn,
        "units_done": done,
        "units_total": total,
        "stopped_early": early,
        "steps_done": steps[0],
        "steps_planned": steps[1],
    }
