"""The notebook call: λ̂ of your own parameters, loss and data, in one function, no files.

:func:`estimate` (``lambda_hat.estimate``) takes parameters as any pytree (flattened with
``jax.flatten_util.ravel_pytree``: the samplers move one flat vector), a per-example loss
``loss_fn(params, X, y) -> (rows,)`` (or a prediction function ``predict(params, X)`` with
``loss="gaussian" | "cross_entropy"``), the data ``(X, y)`` with a leading n, and a method with
its settings. It runs the method exactly as a trial does (:func:`lambda_hat.trial.runner.
run_on_target`: the same target, adapter, estimator and diagnostics), without Parsl and without
writing anything, and computes inside ``jax.enable_x64(True)``, leaving the caller's setting as
it found it. L_n is the mean of the per-example NLL and β = 1/log n unless given.

A step size may be written in units of its stability limit, ``{"value": 0.1, "scale":
"stability"}``: ε = value · ε_max, with ε_max the method's limit
(:func:`lambda_hat.methods.step_limit`) at the top eigenvalue of nβ∇²L_n(w*) + γI found by
Lanczos (:func:`lambda_hat.reference.curvature.top_eigenvalue`).

Settings may come from a study: :func:`recommended` reads a class study's recommendation
(``<results>/classes/<class>/<method>/recommendation.json``, its scaled names returned as
``{value, scale: "stability"}``, so :func:`estimate` converts them with ε_max at your
parameters) or a per-problem study's validated recommendation (absolute values).

Compiled programs are cached per ``loss_fn`` object (as ``jax.jit`` caches per function): a
second call with the same function and shapes compiles nothing; a function that reads mutable
Python state at trace time must be a new object when that state changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from lambda_hat import methods
from lambda_hat.config import read_class_recommendation
from lambda_hat.llc import engine
from lambda_hat.llc.posterior import LOSSES, model_loss
from lambda_hat.methods.stability import STABILITY_SCALE, StabilityRange
from lambda_hat.reference import curvature
from lambda_hat.schema import ConfigError
from lambda_hat.trial import identity, runner

__all__ = ["LLCResult", "estimate", "recommended"]


@dataclass(frozen=True)
class LLCResult:
    """What :func:`estimate` returns.

    ``trace`` holds the per-step arrays of the method (``loss``: L_n per chain and draw, (C, T);
    SGLD's ``mala_accept``, VI's ``elbo``, MCLMC's ``energy_change``); ``diagnostics`` R-hat,
    ESS, chain health and the method's own checks; ``metrics`` the whole record, with the keys
    a trial's metrics.json has. ``status`` is ``"failed"`` with a ``failure`` record when the run
    diverged or a method's own check failed (the estimate, if any, is kept).
    """

    llc_hat: float | None
    se_hat: float | None
    status: str
    failure: dict | None
    trace: dict[str, np.ndarray] = field(repr=False)
    diagnostics: dict = field(repr=False)
    metrics: dict = field(repr=False)

    @property
    def loss(self) -> np.ndarray:
        """L_n per chain and draw, (C, T), burn-in included."""
        return self.trace["loss"]


def estimate(
    params: Any,
    loss_fn: Callable,
    data: tuple,
    method: str = "sgld",
    hyperparams: Mapping[str, Any] | None = None,
    seed: int = 0,
    beta: float | None = None,
    gamma: float = 1.0,
    *,
    loss: str | None = None,
    noise: float = 1.0,
    budget_sec: float | None = None,
) -> LLCResult:
    """λ̂ at ``params`` by ``method`` (``sgld``, ``vi``, ``mclmc``) with its ``hyperparams``.

    ``loss_fn(params, X, y)`` returns the per-example NLL, shape (rows,); with ``loss`` set it
    is instead ``predict(params, X)`` and L is that kind's NLL (σ = ``noise`` for gaussian;
    integer labels for cross_entropy). ``data`` is ``(X, y)``, arrays with a leading n. β =
    1/log n when None; γ the localization (SGLD's ``gamma`` hyperparameter, when set, wins,
    as in a trial). ``budget_sec`` stops the run early, its draws kept. Raises
    :class:`ConfigError` for bad input before any work; a divergence is a failed result.
    """
    hp, scaled = _check_hyperparams(method, hyperparams)
    X, y = _check_data(data)
    if loss is not None and loss not in LOSSES:
        raise ConfigError("loss", f"got {loss!r}; known: {', '.join(LOSSES)}.", "use one of them.")
    with jax.enable_x64(True):
        args = (method, hp, scaled, seed, beta, gamma, loss, noise, budget_sec)
        return _estimate(params, loss_fn, X, y, *args)


def recommended(
    results: str | Path = "results",
    class_: str | None = None,
    method: str = "sgld",
    pick: str = "validated",
    *,
    study: Any = None,
) -> dict[str, Any]:
    """Hyperparameters for :func:`estimate` from a study: the ``pick`` (validated | best)
    setting of class ``class_``'s ``method`` study under ``results``, its ε_max-scaled names
    as ``{"value": f, "scale": "stability"}`` (f × ε_max at the parameters you estimate at);
    or, with ``study`` (an ``optuna.Study`` of one problem), its validated recommendation's
    absolute values. A :class:`ConfigError` when there is no such recommendation."""
    if (class_ is None) == (study is None):
        raise ConfigError(
            "recommended", "give exactly one of class_ and study.", "e.g. class_='dln'."
        )
    if study is not None:
        from lambda_hat.study import recommendation  # optuna: loaded only here

        rec = recommendation(study)
        if rec is None:
            raise ConfigError(
                "recommended.study",
                f"study {study.study_name} has no validated recommendation.",
                "run parsl-optuna with optuna.validate set on its config first.",
            )
        return dict(rec["hyperparams"])
    if pick not in ("best", "validated"):
        raise ConfigError("recommended.pick", f"got {pick!r}.", "use 'validated' or 'best'.")
    rec = read_class_recommendation(results, class_, method, pick, "recommended")
    scaled = {k: {"value": float(rec.units[k]), "scale": STABILITY_SCALE} for k in rec.scaled}
    return {**rec.units, **scaled}


def _estimate(params, fn, X, y, method, hp, scaled, seed, beta, gamma, kind, noise, budget):
    dtype = hp.get("dtype", "float64")
    w_star, unravel = ravel_pytree(_cast_tree(params, dtype))
    _check_loss(fn, unravel, w_star, X, y, kind)
    rows = _mean_loss(fn, unravel, kind, noise)
    ps = identity.posterior_settings(int(X.shape[0]), hp, {"beta": beta, "gamma": gamma})
    timer = engine.Timer()
    key = ("estimate", fn, kind, noise, *_tree_signature(params))
    target = methods.make_target(key, rows, X, y, w_star, ps["beta"], ps["gamma"], timer, dtype)
    if not math.isfinite(target.post.loss_star):
        raise ConfigError(
            "params",
            f"L_n at the given parameters is {target.post.loss_star}.",
            "check that loss_fn returns a finite NLL at the trained parameters.",
        )
    limit = _resolve_scaled(target, method, hp, scaled) if scaled else None
    if limit is not None:
        hp = identity.resolve_hyperparams(method, {**hp, **limit.pop("values")})
    metrics = {
        **dict.fromkeys(("failure", "llc_hat", "se_hat", "llc_per_chain")),
        **{"method": method, "seed": int(seed), "hyperparams": hp, "status": "failed"},
        **({"step_limit": limit} if limit else {}),
        "posterior": dict(ps),
    }
    deadline = engine.clock() + budget if budget is not None else math.inf
    trace: dict = {}
    try:
        trace = runner.run_on_target(target, method, hp, seed, deadline, timer, metrics)["trace"]
    except engine.Diverged as exc:
        metrics["failure"] = {"kind": "diverged", "message": str(exc), "step": exc.step}
    metrics["seconds"] = {"compile": timer.compile, "run": timer.run}
    arrays = {k: np.asarray(v) for k, v in trace.items()}
    diagnostics = metrics.get("diagnostics", {})
    return LLCResult(
        metrics["llc_hat"],
        metrics["se_hat"],
        metrics["status"],
        metrics["failure"],
        arrays,
        diagnostics,
        metrics,
    )


def _cast_tree(params, dtype: str):
    """Float leaves in ``dtype`` (so the loss computes in it; ravel_pytree's unravel restores
    each leaf's own dtype), other leaves as they are."""

    def cast(a):
        a = jnp.asarray(a)
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree_util.tree_map(cast, params)


def _tree_signature(params) -> tuple:
    """What ``unravel`` depends on: the tree structure and each leaf's shape and dtype."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    return tree, tuple((np.shape(a), str(jnp.asarray(a).dtype)) for a in leaves)


def _mean_loss(fn: Callable, unravel: Callable, kind: str | None, noise: float) -> Callable:
    """L(w, X, y) on the flat vector w: the mean per-example NLL."""
    if kind is not None:
        return model_loss(lambda w, X: fn(unravel(w), X), kind, noise)
    return lambda w, X, y: jnp.mean(fn(unravel(w), X, y))


def _check_data(data) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)``: two arrays with the same leading n >= 2."""
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise ConfigError("data", f"got {type(data).__name__}.", "pass data=(X, y).")
    X, y = (np.asarray(a) for a in data)
    if X.ndim < 1 or y.ndim < 1 or X.shape[0] != y.shape[0] or X.shape[0] < 2:
        raise ConfigError(
            "data",
            f"X has shape {X.shape}, y {y.shape}.",
            "pass arrays whose first axis is the same number n >= 2 of examples.",
        )
    return X, y


def _check_loss(fn: Callable, unravel: Callable, w, X, y, kind: str | None) -> None:
    """``fn`` applies to the parameters and two rows, with one NLL a row (``loss_fn``) or
    outputs that fit the labels (``predict``: y's shape for gaussian, (rows, classes) logits for
    cross_entropy with integer labels)."""
    name = "loss_fn" if kind is None else f"loss_fn (a prediction function, loss={kind!r})"
    X2, y2 = X[:2], y[:2]
    try:
        args = (X2, y2) if kind is None else (X2,)
        out = jax.eval_shape(lambda w: fn(unravel(w), *args), w)
    except Exception as exc:
        raise ConfigError(
            name,
            f"cannot be applied to the parameters and data: {type(exc).__name__}: {exc}",
            "call it on the parameters and a few rows of (X, y) to check it.",
        ) from exc
    expected = {None: (2,), "gaussian": y2.shape}.get(kind)
    if kind == "cross_entropy":
        ok = len(out.shape) == 2 and out.shape[0] == 2 and np.issubdtype(y.dtype, np.integer)
        ok = ok and y2.size == 2
        expected = "(2, classes) logits with integer labels y"
    else:
        ok = out.shape == expected
    if not ok:
        raise ConfigError(
            name,
            f"returned shape {out.shape} for 2 rows (labels {y2.shape} {y.dtype}); expected "
            f"{expected}.",
            "return the per-example NLL vector (lambda_hat takes its mean)"
            if kind is None
            else "return one prediction per row, shaped like the targets (logits for classes).",
        )


def _check_hyperparams(method: str, hyperparams) -> tuple[dict, dict[str, float]]:
    """Resolved hyperparameters, and ``{name: value}`` of those written ``{value, scale}``
    (checked, and validated at ``value`` until :func:`_resolve_scaled` sets them)."""
    methods.get(method)
    space = methods.search_space(method)
    scaled_names = [k for k, v in space.items() if isinstance(v, StabilityRange)]
    hp, scaled = dict(hyperparams or {}), {}
    for name, value in list(hp.items()):
        if not isinstance(value, Mapping):
            continue
        where = f"hyperparams.{name}"
        if name not in scaled_names:
            raise ConfigError(
                where,
                f"only {', '.join(scaled_names) or 'no setting'} of {method} has a limit.",
                "write an absolute value.",
            )
        f = value.get("value")
        if (
            set(value) != {"value", "scale"}
            or value["scale"] != STABILITY_SCALE
            or not (isinstance(f, int | float) and not isinstance(f, bool) and 0 < f < math.inf)
        ):
            raise ConfigError(
                where,
                f"got {dict(value)!r}.",
                f'write {{"value": f, "scale": "{STABILITY_SCALE}"}} with f > 0 (a fraction of '
                "ε_max), or an absolute number.",
            )
        scaled[name] = hp[name] = float(f)
    return identity.resolve_hyperparams(method, hp), scaled


def _resolve_scaled(target, method: str, hp: dict, scaled: dict[str, float]) -> dict:
    """``{a_max, eps_max, converged, values}``: ε_max of ``method`` at the target's top
    eigenvalue, and each scaled step size as value · ε_max."""
    top = curvature.top_eigenvalue(target.post)
    eps_max = methods.step_limit(method, top.value, target.post.d)
    values = {name: f * eps_max for name, f in scaled.items()}
    return {"a_max": top.value, "eps_max": eps_max, "converged": top.converged, "values": values}
