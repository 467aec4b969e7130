"""scikit-learn's digits (bundled, no download) and a small MLP classifier (issue 21 §3).

The 1,797 8×8 images (pixels / 16) are split 70/30 into a training set (n = 1,258) and a test
set (``seed``) and reduced to their first ``components`` principal components (fitted on the
training set). The network is components → ``hidden`` tanh → 10 logits, cross-entropy, trained
full batch with Adam (no weight decay) and finished by saddle-free Newton steps on L_n, so the
parameters sit at a minimum of L_n (the gradient check passes). Few inputs keep the training
set inseparable, so that minimum exists (on 16 pooled pixels the network reaches 100% training
accuracy and L_n → 0 as its weights grow: no minimum, test loss 7).

:func:`problem` is the ``source:`` of ``tune.yaml``; ``python digits.py`` trains and prints d,
the accuracies and |∇L_n| without lambda_hat.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from lambda_hat import SourceProblem


def data(components: int = 8, seed: int = 0, frac: float = 0.7):
    """(X_train, y_train, X_test, y_test): the images' first ``components`` principal
    components (fitted on the training set, whitened there), integer labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X, y = d.data / 16.0, d.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(X))
    k = int(round(frac * len(X)))
    Xtr, ytr, Xte, yte = X[order[:k]], y[order[:k]], X[order[k:]], y[order[k:]]
    mu = Xtr.mean(axis=0)
    _, S, Vt = np.linalg.svd(Xtr - mu, full_matrices=False)
    P = Vt[:components].T / (S[:components] / np.sqrt(k))
    return (Xtr - mu) @ P, ytr, (Xte - mu) @ P, yte


def init(components: int, hidden: int, seed: int) -> dict:
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {
        "W1": jax.random.normal(k1, (components, hidden)) / np.sqrt(components),
        "b1": jnp.zeros(hidden),
        "W2": jax.random.normal(k2, (hidden, 10)) / np.sqrt(hidden),
        "b2": jnp.zeros(10),
    }


def predict(params: dict, X) -> jax.Array:
    """Logits (rows, 10) of inputs X (rows, components)."""
    return jnp.tanh(X @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]


def _ce(params, X, y):
    logits = predict(params, X)
    return jnp.mean(
        jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, y[:, None], 1)[:, 0]
    )


def _acc(params, X, y) -> float:
    return float(jnp.mean(jnp.argmax(predict(params, X), axis=1) == y))


def train(
    components: int = 8, hidden: int = 8, steps: int = 10000, newton: int = 30, seed: int = 0
) -> tuple[dict, dict]:
    """(params, info): Adam (lr 1e-2, full batch) for ``steps``, then ``newton`` saddle-free
    Newton steps on L_n; info has d, losses, accuracies, |∇L_n| and the seconds taken."""
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        Xtr, ytr, Xte, yte = (jnp.asarray(a) for a in data(components, seed))
        params = jax.tree_util.tree_map(
            lambda a: a.astype(jnp.float64), init(components, hidden, seed)
        )
        opt = optax.adam(1e-2)

        @jax.jit
        def adam(params, state):
            def body(_, c):
                u, s = opt.update(jax.grad(_ce)(c[0], Xtr, ytr), c[1], c[0])
                return optax.apply_updates(c[0], u), s

            return jax.lax.fori_loop(0, steps, body, (params, state))

        params, _ = adam(params, opt.init(params))
        w, unravel = ravel_pytree(params)
        f = jax.jit(lambda w: _ce(unravel(w), Xtr, ytr))
        g, H = jax.jit(jax.grad(f)), jax.jit(jax.hessian(f))
        for _ in range(newton):  # saddle-free Newton: |eigenvalues|, flat directions kept
            e, V = jnp.linalg.eigh(H(w))
            e = jnp.maximum(jnp.abs(e), 1e-6 * jnp.max(jnp.abs(e)))
            step, t = V @ ((V.T @ g(w)) / e), 1.0
            while f(w - t * step) > f(w) and t > 1e-4:
                t /= 2
            w = w - t * step
        params = unravel(w)
        info = {
            "d": int(w.size),
            "n_train": int(len(ytr)),
            "train_loss": float(f(w)),
            "test_loss": float(_ce(params, Xte, yte)),
            "train_acc": _acc(params, Xtr, ytr),
            "test_acc": _acc(params, Xte, yte),
            "grad_norm": float(jnp.linalg.norm(g(w))),
            "min_hessian_eig": float(jnp.linalg.eigvalsh(H(w))[0]),
            "seconds": time.perf_counter() - t0,
        }
        params = jax.tree_util.tree_map(np.asarray, params)
    return params, info


def problem(
    components: int = 8, hidden: int = 8, steps: int = 10000, newton: int = 30, seed: int = 0
) -> SourceProblem:
    """The ``source:``: the trained classifier at its minimum, the training set as data."""
    params, _ = train(components, hidden, steps, newton, seed)
    Xtr, ytr, _, _ = data(components, seed)
    return SourceProblem(params, data=(Xtr, ytr), predict=predict, loss_kind="cross_entropy")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--newton", type=int, default=30)
    a = ap.parse_args()
    print(json.dumps(train(a.components, a.hidden, a.steps, a.newton)[1], indent=1))
