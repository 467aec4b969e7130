"""Model families (MLP, deep linear network) over a flat parameter vector.

Every sampler works on one flat float vector ``w`` of length ``d``; :class:`Model` carries the
``unravel`` map back to layer weights and a pure ``apply(w, X)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

ACTIVATIONS: dict[str, Callable] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "identity": lambda x: x,
}


class Model(NamedTuple):
    """A network of fixed architecture; ``apply(w, X) -> (n, out)`` with ``w`` flat."""

    family: str
    layer_widths: tuple[int, ...]  # (H_0 input, hidden..., H_L output)
    activation: str
    bias: bool
    d: int
    unravel: Callable
    apply: Callable


def mlp_param_count(in_dim: int, hidden: list[int], out_dim: int, bias: bool) -> int:
    """Number of parameters of a dense network with the given hidden widths."""
    sizes = [in_dim, *hidden, out_dim]
    return sum(a * b + (b if bias else 0) for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def widths_for_budget(in_dim: int, out_dim: int, depth: int, target: int, bias: bool) -> list[int]:
    """Equal hidden widths h (depth of them), the largest whose count stays within ``target``."""
    h = 1
    while mlp_param_count(in_dim, [h + 1] * depth, out_dim, bias) <= target:
        h += 1
    return [h] * depth


def build_model(
    family: str, in_dim: int, hidden: list[int], out_dim: int, activation: str, bias: bool
) -> Model:
    """A :class:`Model` with the given architecture (``family`` 'dln' forces identity, no bias)."""
    if family == "dln":
        activation, bias = "identity", False
    sizes = (in_dim, *hidden, out_dim)
    act = ACTIVATIONS[activation]
    template = [
        {"W": jnp.zeros((a, b)), **({"b": jnp.zeros((b,))} if bias else {})}
        for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    flat, unravel = ravel_pytree(template)

    def apply(w: jax.Array, X: jax.Array) -> jax.Array:
        layers = unravel(w)
        h = X
        for i, layer in enumerate(layers):
            h = h @ layer["W"]
            if bias:
                h = h + layer["b"]
            if i < len(layers) - 1:
                h = act(h)
        return h

    return Model(family, sizes, activation, bias, int(flat.size), unravel, apply)


def init_params(model: Model, key: jax.Array, scale: float = 1.0, rank: int | None = None):
    """Flat weights with W ~ N(0, scale^2 / fan_in), zero biases.

    ``rank`` truncates the first weight matrix to that rank (for a deep linear network this
    bounds the rank of the whole product; ``0`` gives the zero map).
    """
    sizes = model.layer_widths
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        W = jax.random.normal(keys[i], (a, b)) * scale / jnp.sqrt(a)
        if i == 0 and rank is not None:
            U, s, Vt = jnp.linalg.svd(W, full_matrices=False)
            s = jnp.where(jnp.arange(s.size) < rank, s, 0.0)
            W = (U * s) @ Vt
        layer = {"W": W}
        if model.bias:
            layer["b"] = jnp.zeros((b,))
        layers.append(layer)
    flat, _ = ravel_pytree(layers)
    return flat


def product_matrix(model: Model, w: jax.Array) -> jax.Array:
    """The end-to-end matrix W_1 ... W_L of a deep linear network."""
    layers = model.unravel(w)
    M = layers[0]["W"]
    for layer in layers[1:]:
        M = M @ layer["W"]
    return M
