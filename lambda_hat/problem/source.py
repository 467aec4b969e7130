"""Problems from your code: a config's ``source: "module:function"`` and what it returns.

The callable (imported by module name, the config file's folder first on ``sys.path``) is
called as ``function(**args, seed=seed)`` (``seed`` only when it takes one) and returns a
:class:`SourceProblem` or a mapping with its fields: the trained parameters as any pytree of
float arrays, the data ``(X, y)`` with a leading n, and a per-example NLL ``loss(params, X, y)
-> (n,)`` or a prediction function ``predict(params, X)`` with ``loss_kind`` gaussian |
cross_entropy (and ``noise``, σ of gaussian). The samplers move one flat float vector
(:func:`flatten_params`; its ``unravel`` keeps the vector's dtype, so a float32 or float64 run
computes in its own precision).

The source is called once per process that loads the config (cached here by its key); the
problem stored under its pid keeps the arrays (``data.npz``) and the functions pickled with
dill (``source.pkl``: functions of an importable module are stored by reference, so a worker
imports the module, with the folder from the spec on its path, but does not call the source).
:func:`array_digest` is what makes a retrained model or a changed data file a new pid.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from lambda_hat.hashing import canonical_json
from lambda_hat.llc.posterior import LOSSES, model_loss
from lambda_hat.schema import ConfigError, config_dataclass, field

__all__ = [
    "Checkpoint",
    "SourceConfig",
    "SourceProblem",
    "array_digest",
    "call_source",
    "flatten_params",
    "mean_loss",
]

#: SourceConfig.loss of a source that returns its own per-example NLL.
PER_EXAMPLE = "per_example"


@dataclass(frozen=True)
class SourceProblem:
    """What a ``source:`` callable returns (a mapping with these keys does as well).

    ``params``: the trained parameters, any pytree of float arrays (a dict, an Equinox
    module's arrays from ``eqx.partition``, a Flax NNX ``State``). ``data``: ``(X, y)`` with a
    leading n. Either ``loss(params, X, y) -> (n,)``, the per-example NLL (L_n is its mean), or
    ``predict(params, X)`` with ``loss_kind`` ``gaussian`` (σ = ``noise``) | ``cross_entropy``
    (logits, integer labels). Functions must be pure (JAX-traceable).

    ``checkpoints`` (instead of ``params``): several checkpoints of one training run, a list of
    :class:`Checkpoint` or ``(step, params)`` / ``(step, params, {"train_loss": .., "test_loss":
    ..})`` tuples, steps increasing; each becomes a problem (LLC over training).
    """

    params: Any = None
    data: tuple | None = None
    loss: Callable | None = None
    predict: Callable | None = None
    loss_kind: str | None = None
    noise: float = 1.0
    checkpoints: Sequence | None = None


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of a training run: its optimizer step, its parameters (the same pytree
    at every checkpoint) and, when known, the training and test loss at that step."""

    step: int
    params: Any
    train_loss: float | None = None
    test_loss: float | None = None


@config_dataclass
class SourceConfig:
    """A resolved ``source:`` problem as the spec carries it to every worker (not user-written:
    filled from the config entry and the source's return value)."""

    source: str = field(help="'module:function' of the callable")
    args: dict = field({}, "keyword arguments of the call")
    folder: str | None = field(None, "put first on sys.path to import the module (not hashed)")
    digest: str = field("", "sha256 of the data and parameter arrays (array_digest)")
    d: int = field(1, "number of parameters", ge=1)
    loss: Literal["gaussian", "cross_entropy", "per_example"] = field(
        "per_example", "the loss kind (per_example: the source's own per-example NLL)"
    )
    noise: float = field(1.0, "Gaussian σ (loss gaussian)", gt=0)
    checkpoint: int | None = field(None, "index into the source's checkpoints; None: params", ge=0)
    step: int | None = field(None, "the checkpoint's training step")
    train_loss: float | None = field(None, "training loss at that step, as the source gives it")
    test_loss: float | None = field(None, "test loss at that step, as the source gives it")
    shift_sd: float | None = field(
        None, "move of the posterior's mode along ∇L_n(w*), in its SDs (None: unbounded)"
    )


_CACHE: dict[str, SourceProblem] = {}


def call_source(
    source: str, args: Mapping, seed: int, folder: str | Path | None, where: str
) -> SourceProblem:
    """The checked-in-form return value of ``source`` (called once per process and key);
    a ConfigError at ``where.source`` if it cannot be imported, is not callable, raises, or
    returns something that is not a :class:`SourceProblem`-shaped value."""
    key = canonical_json([source, dict(args), seed, str(folder)])
    if key not in _CACHE:
        fn = import_source(source, folder, where)
        kwargs = dict(args)
        if _takes_seed(fn):
            kwargs["seed"] = seed
        try:
            out = fn(**kwargs)
        except Exception as exc:
            raise ConfigError(
                f"{where}.source",
                f"calling {source}(**args) raised {type(exc).__name__}: {exc}",
                "check the function and its args: (call it yourself in Python to see the "
                "traceback).",
            ) from exc
        _CACHE[key] = as_source_problem(out, f"{where}.source")
    return _CACHE[key]


def import_source(source: str, folder: str | Path | None, where: str) -> Callable:
    """The callable named ``module:function`` (``function`` may be dotted), ``folder`` first
    on ``sys.path``."""
    at = f"{where}.source"
    module_name, sep, attr = str(source).partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            at, f"got {source!r}.", "write 'module:function', e.g. 'my_models.digits:problem'."
        )
    add_to_path(folder)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(
            at,
            f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}",
            f"put {module_name.replace('.', '/')}.py in the config's folder ({folder}), install "
            "it, or add its folder to PYTHONPATH (on every worker too).",
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(
                at,
                f"module {module_name!r} has no attribute {attr!r}.",
                f"name a function defined in {module_name}.",
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(
            at,
            f"{source} is a {type(obj).__name__}, not callable.",
            "name a function that returns lambda_hat.SourceProblem(params, data, loss=...).",
        )
    return obj


def add_to_path(folder: str | Path | None) -> None:
    """Put ``folder`` first on ``sys.path`` (once): where a config's source modules live."""
    if folder is not None and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def _takes_seed(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "seed" or p.kind is p.VAR_KEYWORD for p in params)


def as_source_problem(out: Any, where: str) -> SourceProblem:
    """``out`` as a :class:`SourceProblem` (from a mapping too), its fields present."""
    names = [f.name for f in fields(SourceProblem)]
    fix = (
        "return lambda_hat.SourceProblem(params, data=(X, y), loss=...) or a dict with "
        "params, data and loss (or predict and loss_kind)."
    )
    if isinstance(out, Mapping):
        unknown = sorted(set(out) - set(names))
        if unknown:
            raise ConfigError(
                where, f"the returned mapping has unknown keys {unknown}.", f"use {names}."
            )
    elif not isinstance(out, SourceProblem):
        raise ConfigError(where, f"returned a {type(out).__name__}.", fix)
    missing = [n for n in ("params", "data") if _field(out, n) is None]
    if "params" in missing and _field(out, "checkpoints") is not None:
        missing.remove("params")
    elif _field(out, "checkpoints") is not None:
        raise ConfigError(
            where,
            "the return value has both params and checkpoints.",
            "return params (one problem) or checkpoints (one problem per checkpoint).",
        )
    if missing:
        raise ConfigError(where, f"the return value has no {' and no '.join(missing)}.", fix)
    if isinstance(out, Mapping):
        out = SourceProblem(**dict(out))
    if (out.loss is None) == (out.predict is None):
        raise ConfigError(
            where,
            "the return value needs exactly one of loss (per-example NLL) and predict; got "
            + ("both." if out.loss is not None else "neither."),
            "return loss=f(params, X, y) -> (n,), or predict=f(params, X) with loss_kind.",
        )
    if out.predict is not None and out.loss_kind not in LOSSES:
        raise ConfigError(
            where,
            f"predict is given with loss_kind {out.loss_kind!r}.",
            f"set loss_kind to one of {', '.join(LOSSES)}.",
        )
    for name in ("loss", "predict"):
        if getattr(out, name) is not None and not callable(getattr(out, name)):
            raise ConfigError(where, f"{name} is not callable.", f"return a function as {name}.")
    return out


def _field(out: Any, name: str) -> Any:
    return out.get(name) if isinstance(out, Mapping) else getattr(out, name, None)


def flatten_params(params: Any, where: str) -> tuple[np.ndarray, Callable]:
    """``(w, unravel)``: the float leaves of ``params`` as one float64 vector, and the map back
    to the pytree that keeps the vector's dtype (unlike ``ravel_pytree``'s, which restores
    each leaf's own dtype, so a float32 run and a float64 run each compute in their own)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    arrays = [np.asarray(a) for a in leaves]
    bad = [str(a.dtype) for a in arrays if not np.issubdtype(a.dtype, np.floating)]
    if not arrays or bad:
        raise ConfigError(
            f"{where}.params",
            "has no array leaves." if not arrays else f"has non-float leaves ({', '.join(bad)}).",
            "return only the trainable float arrays, e.g. eqx.partition(model, "
            "eqx.is_inexact_array)[0] or nnx.split(model, nnx.Param, ...)'s Param state.",
        )
    shapes = [a.shape for a in arrays]
    cuts = np.cumsum([a.size for a in arrays])[:-1].tolist()
    w = np.concatenate([a.ravel().astype(np.float64) for a in arrays])

    def unravel(flat):
        parts = jnp.split(flat, cuts) if cuts else [flat]
        return jax.tree_util.tree_unflatten(
            tree, [p.reshape(s) for p, s in zip(parts, shapes, strict=True)]
        )

    return w, unravel


def mean_loss(sp: SourceProblem, unravel: Callable) -> Callable:
    """L(w, X, y) on the flat vector: the mean per-example NLL of ``sp``."""
    if sp.predict is not None:
        predict = sp.predict
        return model_loss(lambda w, X: predict(unravel(w), X), sp.loss_kind, sp.noise)
    per_example = sp.loss
    return lambda w, X, y: jnp.mean(per_example(unravel(w), X, y))


def array_digest(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> str:
    """sha256 (hex) of the data and the flat parameters: shapes, dtypes and bytes, so a
    changed data file or a retrained model gives another pid."""
    h = hashlib.sha256()
    for a in (X, y, w):
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()
