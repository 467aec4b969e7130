"""Sources a user would write (``source: "user_models:<name>"``): tests copy this file next to
their config, so it is imported by module name from the config's folder, as a user's is."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lambda_hat import SourceProblem

NOT_CALLABLE = 3


def linear(n: int = 200, d_in: int = 3, noise: float = 0.5, seed: int = 0) -> SourceProblem:
    """Linear regression y = Xw + b + noise, fitted exactly (least squares): a regular model,
    λ = d/2 with d = d_in + 1; the gradient at the fit is zero to rounding."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d_in))
    y = X @ rng.normal(size=(d_in, 1)) + 0.3 + noise * rng.normal(size=(n, 1))
    A = np.hstack([X, np.ones((n, 1))])
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    params = {"w": coef[:-1], "b": coef[-1]}
    return SourceProblem(
        params,
        data=(X, y),
        predict=lambda p, x: x @ p["w"] + p["b"],
        loss_kind="gaussian",
        noise=noise,
    )


def _regression_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    y = np.tanh(X @ np.array([[1.0], [-0.5]])) + 0.1 * rng.normal(size=(n, 1))
    return X, y


def _fit(loss, params, X, y, steps: int):
    """Adam with a cosine decay, full batch: parameters near a minimum."""
    opt = optax.adam(optax.cosine_decay_schedule(0.02, steps, 0.001))

    @jax.jit
    def step(carry, _):
        p, s = carry
        g = jax.grad(lambda q: jnp.mean(loss(q, X, y)))(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params


def eqx_mlp(n: int = 128, width: int = 3, steps: int = 3000, seed: int = 0) -> SourceProblem:
    """An Equinox MLP (2 → width → 1, tanh) trained on tanh-teacher data; its prediction
    function with the Gaussian loss (σ = 0.1 as in the data)."""
    import equinox as eqx

    X, y = _regression_data(n, seed)
    model = eqx.nn.MLP(2, 1, width, 1, activation=jnp.tanh, key=jax.random.PRNGKey(seed))
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def predict(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    def rows(p, x, y):
        return 0.5 * jnp.sum((y - predict(p, x)) ** 2, axis=-1) / 0.1**2

    params = _fit(rows, params, jnp.asarray(X), jnp.asarray(y), steps)
    return SourceProblem(params, data=(X, y), predict=predict, loss_kind="gaussian", noise=0.1)


def nnx_mlp(n: int = 128, width: int = 3, steps: int = 3000, seed: int = 0) -> SourceProblem:
    """The same network in Flax NNX: its ``nnx.Param`` state as the parameters."""
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(2, width, rngs=rngs)
            self.out = nnx.Linear(width, 1, rngs=rngs)

        def __call__(self, x):
            return self.out(jnp.tanh(self.hidden(x)))

    X, y = _regression_data(n, seed)
    graphdef, params = nnx.split(MLP(nnx.Rngs(seed)), nnx.Param)

    def predict(p, x):
        return nnx.merge(graphdef, p)(x)

    def rows(p, x, y):
        return 0.5 * jnp.sum((y - predict(p, x)) ** 2, axis=-1) / 0.1**2

    params = _fit(rows, params, jnp.asarray(X), jnp.asarray(y), steps)
    return SourceProblem(params, data=(X, y), predict=predict, loss_kind="gaussian", noise=0.1)


def dict_mlp(n: int = 128, width: int = 3, steps: int = 3000, seed: int = 0) -> dict:
    """The same network as a dict pytree with its own per-example loss, returned as a mapping
    (the preset-equivalent written by hand)."""
    X, y = _regression_data(n, seed)
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = {
        "W1": jax.random.normal(k1, (2, width)) / np.sqrt(2),
        "b1": jnp.zeros(width),
        "W2": jax.random.normal(k2, (width, 1)) / np.sqrt(width),
        "b2": jnp.zeros(1),
    }

    def rows(p, x, y):
        out = jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
        return 0.5 * jnp.sum((y - out) ** 2, axis=-1) / 0.1**2

    params = _fit(rows, params, jnp.asarray(X), jnp.asarray(y), steps)
    return {"params": params, "data": (X, y), "loss": rows}


def from_file(path: str, seed: int = 0) -> SourceProblem:
    """Linear regression on data read from ``path`` (an .npy of shape (n, 2): x, y)."""
    xy = np.load(path)
    X, y = xy[:, :1], xy[:, 1:]
    A = np.hstack([X, np.ones_like(X)])
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    return SourceProblem(
        {"w": coef[:1], "b": coef[1]},
        data=(X, y),
        predict=lambda p, x: x @ p["w"] + p["b"],
        loss_kind="gaussian",
    )


# ------------------------------------------------------------------------- bad sources


def raises(seed: int = 0):
    raise RuntimeError("no checkpoint found")


def missing_data(seed: int = 0) -> dict:
    return {"params": {"w": np.zeros(2)}, "loss": lambda p, x, y: x[:, 0]}


def wrong_n(seed: int = 0) -> SourceProblem:
    sp = linear(seed=seed)
    return SourceProblem(
        sp.params, (sp.data[0], sp.data[1][:-1]), predict=sp.predict, loss_kind="gaussian"
    )


def wrong_output(seed: int = 0) -> SourceProblem:
    sp = linear(seed=seed)
    return SourceProblem(sp.params, sp.data, loss=lambda p, x, y: (x @ p["w"] + p["b"]) - y)


def cannot_apply(seed: int = 0) -> SourceProblem:
    sp = linear(seed=seed)
    return SourceProblem(
        {"w": np.zeros((5, 1)), "b": np.zeros(1)}, sp.data, predict=sp.predict, loss_kind="gaussian"
    )


def nan_params(seed: int = 0) -> SourceProblem:
    sp = linear(seed=seed)
    return SourceProblem(
        {**sp.params, "b": np.full(1, np.nan)}, sp.data, predict=sp.predict, loss_kind="gaussian"
    )


def untrained(seed: int = 0) -> SourceProblem:
    sp = linear(seed=seed)
    return SourceProblem(
        {**sp.params, "b": sp.params["b"] + 0.5},
        sp.data,
        predict=sp.predict,
        loss_kind="gaussian",
        noise=0.5,
    )


def checkpointed(steps=(2, 20, 400), bad: str | None = None, seed: int = 0) -> SourceProblem:
    """Linear regression (d = 4) trained by full-batch gradient descent from zero, a checkpoint
    after each of ``steps`` (train and test loss: mean squared errors). ``bad``: ``empty``,
    ``order`` (steps not increasing) or ``shape`` (the last checkpoint's w reshaped)."""
    from lambda_hat import Checkpoint

    sp = linear(seed=seed)
    X, y = sp.data
    Xt, yt = linear(seed=seed + 1).data
    A, At = (np.hstack([x, np.ones((len(x), 1))]) for x in (X, Xt))
    w, t, out = np.zeros((4, 1)), 0, []
    for target in steps:
        while t < target:
            w = w - 0.1 * A.T @ (A @ w - y) / len(X)
            t += 1
        mse = [float(np.mean((a @ w - b) ** 2)) for a, b in ((A, y), (At, yt))]
        out.append(Checkpoint(t, {"w": w[:-1].copy(), "b": w[-1].copy()}, *mse))
    if bad == "empty":
        out = []
    elif bad == "order":
        out[0], out[1] = out[1], out[0]
    elif bad == "shape":
        out[-1] = (out[-1].step, {"w": out[-1].params["w"].T, "b": out[-1].params["b"]})
    return SourceProblem(
        checkpoints=out, data=(X, y), predict=sp.predict, loss_kind="gaussian", noise=0.5
    )
