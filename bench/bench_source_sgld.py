"""SGLD steps/s on a network from user code (``source:``) against the same network written as a
preset, measured in one process (issue 21: target >= 0.85×).

The preset: a tanh MLP 8 → 32 → 32 → 1 (``model: small`` with widths [32, 32], d = 1,409) on
``data: base`` with n = 5,000, trained as usual. The same network from user code, with the
preset's data and trained w* (so every draw is the same computation): ``dict_net`` (a dict of
layers and a hand-written forward pass, per-example Gaussian NLL) and ``eqx_net`` (an Equinox
``eqx.nn.MLP`` vmapped over rows, ``predict`` + ``loss_kind: gaussian``), both defined in this
file and imported by module name from its folder, as a config's sources are. Each runs through
:func:`lambda_hat.trial.runner.run_method_trial` (SGLD, 4 chains, batch 256, float64; the
run's ``seconds.run``, compile excluded), in rounds that interleave the variants, best of
``--repeats`` kept. Prints steps/s and each source's ratio to the preset.

    python bench/bench_source_sgld.py [--steps 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

PRESET = {
    "model": "small",
    "data": "base",
    "seed": 0,
    "overrides": {
        "model": {"widths": [32, 32], "activation": "tanh", "train": {"steps": 500}},
        "data": {"input_dim": 8, "n": 5000},
    },
}
HP = {"chains": 4, "batch": 256, "eta0": 1e-6, "precond_type": "none"}


def _preset_problem(artifacts: str):
    from lambda_hat.problem.build import build_problem
    from lambda_hat.problem.spec import resolve_problem

    return build_problem(resolve_problem(PRESET), artifacts)


def _layers(artifacts: str):
    """The preset's data, noise and w* as a list of {W, b} layers."""
    p = _preset_problem(artifacts)
    layers = p.model.unravel(p.w_star)
    return p, [{"W": np.asarray(a["W"]), "b": np.asarray(a["b"])} for a in layers]


def dict_net(artifacts: str, seed: int = 0) -> dict:
    """The preset's network by hand: a dict of layers, the per-example Gaussian NLL."""
    p, layers = _layers(artifacts)
    sigma = p.spec.data.noise

    def rows(params, x, y):
        h = x
        for layer in params[:-1]:
            h = jnp.tanh(h @ layer["W"] + layer["b"])
        out = h @ params[-1]["W"] + params[-1]["b"]
        return 0.5 * jnp.sum((y - out) ** 2, axis=-1) / sigma**2

    return {"params": layers, "data": (np.asarray(p.X), np.asarray(p.y)), "loss": rows}


def eqx_net(artifacts: str, seed: int = 0):
    """The preset's network as an Equinox MLP (weights copied in), ``predict`` + gaussian."""
    import equinox as eqx

    from lambda_hat import SourceProblem

    p, layers = _layers(artifacts)
    mlp = eqx.nn.MLP(8, 1, 32, 2, activation=jnp.tanh, key=jax.random.PRNGKey(seed))
    for i, layer in enumerate(layers):
        mlp = eqx.tree_at(lambda m, i=i: m.layers[i].weight, mlp, jnp.asarray(layer["W"].T))
        mlp = eqx.tree_at(lambda m, i=i: m.layers[i].bias, mlp, jnp.asarray(layer["b"]))
    params, static = eqx.partition(mlp, eqx.is_inexact_array)

    def predict(q, x):
        return jax.vmap(eqx.combine(q, static))(x)

    data = (np.asarray(p.X), np.asarray(p.y))
    return SourceProblem(params, data, predict=predict, loss_kind="gaussian", noise=0.1)


def main() -> None:
    from lambda_hat.problem.build import build_problem
    from lambda_hat.problem.spec import resolve_problem
    from lambda_hat.trial.runner import run_method_trial

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_source_")
    folder = Path(__file__).resolve().parent
    problems = {"preset": _preset_problem(tmp)}
    for name in ("dict_net", "eqx_net"):
        entry = {"source": f"bench_source_sgld:{name}", "args": {"artifacts": tmp}}
        problems[name] = build_problem(resolve_problem(entry, name, folder=folder), tmp)
    d = problems["preset"].d
    assert all(p.d == d for p in problems.values()), {k: p.d for k, p in problems.items()}
    losses = {k: round(float(p.loss(p.w_star, p.X, p.y)), 12) for k, p in problems.items()}
    hp = {**HP, "steps": args.steps}
    best: dict[str, float] = {}
    for r in range(args.repeats + 1):  # round 0 compiles
        for name, problem in problems.items():
            m = run_method_trial(problem, "sgld", hp, None, r, artifacts=f"{tmp}/runs")
            if r > 0:
                best[name] = min(best.get(name, float("inf")), m["seconds"]["run"])
    print(f"d = {d}, n = {problems['preset'].n}, L_n(w*) = {losses}")
    print(f"SGLD {args.steps} steps × {HP['chains']} chains, batch {HP['batch']}, float64")
    print(f"{'variant':<10} {'seconds':>8} {'steps/s':>9} {'ratio':>6}")
    for name, sec in best.items():
        rate = args.steps * HP["chains"] / sec
        ratio = best["preset"] / sec
        print(f"{name:<10} {sec:8.3f} {rate:9.0f} {ratio:6.2f}")


if __name__ == "__main__":
    import lambda_hat

    lambda_hat.enable_x64()  # a process lambda_hat owns: compute in float64
    main()
