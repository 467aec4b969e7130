"""The checks a ``source:`` problem passes before any work (issue 21, section 6).

:func:`prepare_source` takes what the source returned (:class:`~lambda_hat.problem.source.
SourceProblem`) to the arrays and the flat-vector loss a problem stores, raising a
:class:`~lambda_hat.schema.ConfigError` at ``<where>.source`` for data that are not two arrays
with one leading n, parameters the function cannot apply to the data (the exception named), an
output of the wrong shape, a non-finite L_n at the parameters, and a gradient far from zero.

How far is too far: the LLC is defined at a local minimum w*. With a gradient g = ∇L_n(w*),
the localized posterior exp(−nβ L_n(w) − γ/2 |w − w*|²) has its mode moved along g; in the
quadratic model it moves s = nβ|g| / √a posterior standard deviations, a = nβ·ĝᵀ∇²L_nĝ + γ
the curvature along ĝ = g/|g|, and E[nβ L_n] drops by s²/2 — a bias of about −s²/2 in λ̂
from this direction alone. :data:`MAX_SHIFT` = 0.5 (a bias near −0.125, about the SE of a
good reference) is the most allowed; ``allow_nonminimum: true`` on the problem estimates
anyway. β = 1/log n and γ = 1 here (the defaults of the reference).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from lambda_hat.llc.posterior import default_beta
from lambda_hat.problem.source import (
    PER_EXAMPLE,
    SourceProblem,
    array_digest,
    flatten_params,
    mean_loss,
)
from lambda_hat.schema import ConfigError

__all__ = ["MAX_SHIFT", "PreparedSource", "prepare_source"]

#: The largest allowed move of the posterior's mode along the gradient, in its standard
#: deviations (the module docstring says why).
MAX_SHIFT = 0.5


@dataclass(frozen=True)
class PreparedSource:
    """A checked source problem: its arrays (numpy), flat w*, ``unravel`` and L(w, X, y)."""

    X: np.ndarray
    y: np.ndarray
    w_star: np.ndarray
    unravel: Callable
    loss: Callable
    kind: str
    noise: float
    input_dim: int
    output_dim: int
    digest: str
    info: dict  # loss_star, grad_norm_star, shift_sd

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def d(self) -> int:
        return int(self.w_star.size)


_PREPARED: dict[tuple[int, bool], tuple[SourceProblem, PreparedSource]] = {}


def prepare_source(sp: SourceProblem, where: str, allow_nonminimum: bool) -> PreparedSource:
    """Check ``sp`` (the module docstring's list) and return it as a :class:`PreparedSource`
    (once per return value: a config loaded twice checks it once)."""
    key = (id(sp), bool(allow_nonminimum))
    if key not in _PREPARED or _PREPARED[key][0] is not sp:
        _PREPARED[key] = (sp, _prepare(sp, where, allow_nonminimum))
    return _PREPARED[key][1]


def _prepare(sp: SourceProblem, where: str, allow_nonminimum: bool) -> PreparedSource:
    at = f"{where}.source"
    X, y = _check_data(sp.data, at)
    w, unravel = flatten_params(sp.params, at)
    out_dim = _check_apply(sp, unravel, w, X, y, at)
    loss = mean_loss(sp, unravel)
    info = _check_minimum(loss, w, X, y, at, allow_nonminimum)
    kind = sp.loss_kind if sp.predict is not None else PER_EXAMPLE
    noise = float(sp.noise) if kind == "gaussian" else 1.0
    in_dim = int(np.prod(X.shape[1:])) if X.ndim > 1 else 1
    digest = array_digest(X, y, w)
    return PreparedSource(X, y, w, unravel, loss, kind, noise, in_dim, out_dim, digest, info)


def _check_data(data, at: str) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)``: two arrays with the same leading n >= 2."""
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise ConfigError(
            at, f"data is a {type(data).__name__}, not a pair (X, y).", "return data=(X, y)."
        )
    X, y = (np.asarray(a) for a in data)
    if X.ndim < 1 or y.ndim < 1 or X.shape[0] != y.shape[0] or X.shape[0] < 2:
        raise ConfigError(
            at,
            f"data X has shape {X.shape}, y {y.shape}.",
            "return arrays whose first axis is the same number n >= 2 of examples.",
        )
    return X, y


def _check_apply(sp: SourceProblem, unravel: Callable, w, X, y, at: str) -> int:
    """The function applies to the parameters and two rows, with the output its kind needs:
    one NLL a row (``loss``), y's shape (``predict``, gaussian: y is (n, outputs)), or
    (rows, classes) logits for integer labels (cross_entropy). Returns the output width."""
    kind = sp.loss_kind if sp.predict is not None else None
    name = "loss" if kind is None else f"predict (loss_kind {kind})"
    X2, y2 = X[:2], y[:2]
    try:
        if kind is None:
            out = jax.eval_shape(lambda w: sp.loss(unravel(w), X2, y2), w)
        else:
            out = jax.eval_shape(lambda w: sp.predict(unravel(w), X2), w)
    except Exception as exc:
        raise ConfigError(
            at,
            f"{name} cannot be applied to the parameters and the data: "
            f"{type(exc).__name__}: {_first_line(exc)}",
            "return parameters that the function takes (the same pytree it was trained with) "
            "and data it can read; call it on two rows yourself to see the traceback.",
        ) from exc
    if kind is None:
        ok, want = out.shape == (2,), "(2,): one NLL per row"
    elif kind == "gaussian":
        ok, want = y.ndim == 2 and out.shape == y2.shape, f"{y2.shape} with y of shape (n, outputs)"
    else:
        ok = len(out.shape) == 2 and out.shape[1] >= 2 and np.issubdtype(y.dtype, np.integer)
        ok, want = (
            ok and y.ndim == 1,
            "(2, classes >= 2) logits, with integer labels y of shape (n,)",
        )
    if not ok:
        raise ConfigError(
            at,
            f"{name} returned shape {tuple(out.shape)} for 2 rows (y {y.shape} {y.dtype}); "
            f"expected {want}.",
            "return the per-example NLL vector (lambda_hat takes its mean)"
            if kind is None
            else "return one prediction per row shaped like y (y[:, None] for one output), "
            "or logits per class for integer labels.",
        )
    return int(out.shape[-1]) if kind is not None else (int(y.shape[-1]) if y.ndim == 2 else 1)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _check_minimum(loss: Callable, w, X, y, at: str, allow: bool) -> dict:
    """A finite L_n at w* and a gradient whose move of the posterior's mode is at most
    :data:`MAX_SHIFT` standard deviations (unless ``allow``); returns the numbers."""
    n = int(X.shape[0])
    nbeta, gamma = n * default_beta(n), 1.0
    Xj, yj, wj = jnp.asarray(X), jnp.asarray(y), jnp.asarray(w)
    try:
        value, grad = jax.jit(jax.value_and_grad(loss))(wj, Xj, yj)
    except Exception as exc:
        raise ConfigError(
            at,
            f"evaluating L_n on all {n} rows failed: {type(exc).__name__}: {_first_line(exc)}",
            "check that the function takes the whole data set at once.",
        ) from exc
    value, g = float(value), float(jnp.linalg.norm(grad))
    if not (math.isfinite(value) and math.isfinite(g)):
        raise ConfigError(
            at,
            f"L_n at the given parameters is {value} (gradient norm {g}).",
            "return trained parameters at which the loss is finite (check for log(0), "
            "overflow, NaN weights).",
        )
    info = {"loss_star": value, "grad_norm_star": g, "shift_sd": 0.0}
    if g == 0.0:
        return info
    u = grad / g
    hvp = jax.jvp(lambda v: jax.grad(loss)(v, Xj, yj), (wj,), (u,))[1]
    a = nbeta * float(jnp.vdot(u, hvp)) + gamma
    shift = nbeta * g / math.sqrt(a) if a > 0 else math.inf
    info.update(shift_sd=shift, curvature_along_grad=a)
    if shift > MAX_SHIFT and not allow:
        g_max = MAX_SHIFT * math.sqrt(a) / nbeta if a > 0 else 0.0
        raise ConfigError(
            at,
            f"the parameters are not at a local minimum: |∇L_n| = {g:.3g}, which moves the "
            f"localized posterior's mode {shift:.3g} posterior standard deviations along the "
            f"gradient (nβ = {nbeta:.4g}, curvature there {a:.4g}; at most {MAX_SHIFT} "
            f"allowed), biasing λ̂ by about {-(shift**2) / 2:.3g}.",
            f"train longer (to |∇L_n| below about {g_max:.2g}), or set allow_nonminimum: true "
            "on this problem to estimate at these parameters anyway.",
        )
    return info
