"""Modular addition, a + b mod p, learned by a small network that groks (issue 21 §4).

The data are every pair (a, b), a random ``frac`` of them the training set (the rest the test
set). The network embeds a and b (p × ``emb`` table, shared), concatenates them and applies one
ReLU hidden layer: logits = relu([E_a, E_b] W1 + b1) W2 + b2. AdamW with weight decay, full
batch: training accuracy reaches 100% early, test accuracy much later (grokking).

``python modadd.py`` trains and saves the checkpoints (``checkpoints.npz`` in the working directory, log-spaced
steps);
:func:`problem` is the ``source:`` of ``run.yaml``: it reads that file (training first when it
is missing) and returns the checkpoints, each a problem of ``lambda-hat run``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lambda_hat import Checkpoint, SourceProblem


def split(p: int, frac: float, seed: int):
    """(X_train, y_train, X_test, y_test): all pairs (a, b) as int rows, labels (a + b) % p."""
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    X = np.stack([a.ravel(), b.ravel()], axis=1).astype(np.int32)
    y = ((X[:, 0] + X[:, 1]) % p).astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(X))
    k = int(round(frac * len(X)))
    return X[order[:k]], y[order[:k]], X[order[k:]], y[order[k:]]


def init(p: int, emb: int, hidden: int, seed: int) -> dict:
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {
        "E": jax.random.normal(k[0], (p, emb)) / np.sqrt(emb),
        "W1": jax.random.normal(k[1], (2 * emb, hidden)) / np.sqrt(2 * emb),
        "b1": jnp.zeros(hidden),
        "W2": jax.random.normal(k[2], (hidden, p)) / np.sqrt(hidden),
        "b2": jnp.zeros(p),
    }


def predict(params: dict, X) -> jax.Array:
    """Logits (rows, p) of the pairs X (rows, 2)."""
    X = jnp.asarray(X).astype(jnp.int32)
    h = jnp.concatenate([params["E"][X[:, 0]], params["E"][X[:, 1]]], axis=1)
    h = jax.nn.relu(h @ params["W1"] + params["b1"])
    return h @ params["W2"] + params["b2"]


def _ce(params, X, y):
    logits = predict(params, X)
    return jnp.mean(
        jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, y[:, None], 1)[:, 0]
    )


def _acc(params, X, y):
    return jnp.mean(jnp.argmax(predict(params, X), axis=1) == y)


def train(
    p: int = 31,
    frac: float = 0.4,
    emb: int = 16,
    hidden: int = 128,
    steps: int = 30000,
    lr: float = 3e-3,
    wd: float = 3.0,
    n_checkpoints: int = 16,
    seed: int = 0,
    path: str | Path = "checkpoints.npz",
) -> Path:
    """Train full batch with AdamW and save ``n_checkpoints`` log-spaced checkpoints to ``path``."""
    Xtr, ytr, Xte, yte = split(p, frac, seed)
    params = init(p, emb, hidden, seed)
    opt = optax.adamw(lr, b1=0.9, b2=0.98, weight_decay=wd)
    marks = np.unique(np.geomspace(10, steps, n_checkpoints).round().astype(int))

    @jax.jit
    def run(params, state, k):
        def body(carry, _):
            q, s = carry
            u, s = opt.update(jax.grad(_ce)(q, Xtr, ytr), s, q)
            return (optax.apply_updates(q, u), s), None

        return jax.lax.fori_loop(0, k, lambda i, c: body(c, None)[0], (params, state))

    state, done, saved, t0 = opt.init(params), 0, {}, time.perf_counter()
    for m in marks:
        params, state = run(params, state, int(m - done))
        done = int(m)
        row = [float(f(params, X, y)) for f in (_ce, _acc) for X, y in ((Xtr, ytr), (Xte, yte))]
        print(
            f"step {done:6d}: train loss {row[0]:.4f} acc {row[2]:.3f} | test loss {row[1]:.4f} "
            f"acc {row[3]:.3f} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        saved[done] = (jax.tree_util.tree_map(np.asarray, params), row)
    arrays = {"steps": np.array(list(saved)), "split": np.array([p, frac, seed])}
    for i, (params_i, row) in enumerate(saved.values()):
        arrays.update({f"{i}/{k}": v for k, v in params_i.items()})
        arrays[f"{i}/metrics"] = np.array(row)
    np.savez(path, **arrays)
    return Path(path)


def problem(path: str = "checkpoints.npz", seed: int = 0) -> SourceProblem:
    """The ``source:``: every saved checkpoint (train and test loss with it), the training
    set as data, logits with cross-entropy. Trains first when ``path`` is missing."""
    file = Path(path)  # relative: to the working directory
    if not file.exists():
        train(seed=seed, path=file)
    z = np.load(file)
    p, frac, split_seed = z["split"]
    Xtr, ytr, _, _ = split(int(p), float(frac), int(split_seed))
    checkpoints = []
    for i, step in enumerate(z["steps"]):
        params = {k: z[f"{i}/{k}"].astype(np.float64) for k in ("E", "W1", "b1", "W2", "b2")}
        m = z[f"{i}/metrics"]
        checkpoints.append(Checkpoint(int(step), params, train_loss=m[0], test_loss=m[1]))
    return SourceProblem(
        checkpoints=checkpoints, data=(Xtr, ytr), predict=predict, loss_kind="cross_entropy"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--out", default="checkpoints.npz")
    args = ap.parse_args()
    train(steps=args.steps, path=args.out)
