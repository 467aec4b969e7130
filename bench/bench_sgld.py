"""SGLD throughput of the trial runner against a bare compiled SGLD loop, measured in one run.

Problem: presets ``model: mlp10k`` (about 10k parameters), ``data: large`` (n = 20,000);
4 chains, batch 256. Three timings of execution (compile excluded everywhere):

- ``runner``: :func:`lambda_hat.runner.run_method_trial` — chunked scans with budget and
  divergence checks between chunks, the full-data L_n draw every ``eval_every`` steps, the
  MALA probe (one extra minibatch gradient per draw); its ``seconds.run``.
- ``bare+eval``: one ``jit(vmap(lax.scan))`` of the plain SGLD update that also evaluates the
  full-data L_n every ``eval_every`` steps — the least work an SGLD LLC estimate needs.
- ``bare``: the plain update alone (no loss trace; for context only).

Prints steps/s (per chain × chains), FGE/s (one step = batch/n) and the ratios
runner / bare+eval (target >= 0.8) and runner / bare.

    python bench/bench_sgld.py [--steps 2000] [--repeats 2] [--artifacts artifacts]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp

from lambda_hat.config import resolve_problem
from lambda_hat.problems import build_problem
from lambda_hat.runner import run_method_trial

CHAINS, BATCH, ETA = 4, 256, 1e-7


def bare_loop(post, steps: int, eval_every: int | None):
    """``run(keys (C,), w0 (C, d)) -> (w, losses)``: minimal SGLD, chains vmapped."""
    nbeta, gamma, w_star, n = post.nbeta, post.gamma, post.w_star, post.n
    grad = jax.grad(post.batch_loss)

    def update(w, key):
        k_b, k_n = jax.random.split(key)
        g = grad(w, jax.random.randint(k_b, (BATCH,), 0, n))
        noise = jax.random.normal(k_n, w.shape)
        return w - 0.5 * ETA * (nbeta * g + gamma * (w - w_star)) + jnp.sqrt(ETA) * noise

    def chain(key, w):
        if eval_every is None:
            w = jax.lax.fori_loop(0, steps, lambda i, w: update(w, jax.random.fold_in(key, i)), w)
            return w, jnp.zeros(())

        def block(w, b):
            w = jax.lax.fori_loop(
                0,
                eval_every,
                lambda i, w: update(w, jax.random.fold_in(key, b * eval_every + i)),
                w,
            )
            return w, post.loss(w)

        return jax.lax.scan(block, w, jnp.arange(steps // eval_every))

    return jax.vmap(chain)


def time_bare(post, steps, eval_every, repeats):
    run = bare_loop(post, steps, eval_every)
    keys = jax.random.split(jax.random.PRNGKey(1), CHAINS)
    w0 = jnp.broadcast_to(post.w_star, (CHAINS, post.d))
    compiled = jax.jit(run).lower(keys, w0).compile()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(keys, w0))
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000, help="SGLD steps per chain")
    p.add_argument("--repeats", type=int, default=2, help="timings per variant (best kept)")
    p.add_argument("--artifacts", default="artifacts", help="where the problem is cached")
    args = p.parse_args()

    problem = build_problem(resolve_problem({"model": "mlp10k", "data": "large"}), args.artifacts)
    post = problem.posterior()
    hp = {"eta0": ETA, "batch": BATCH, "steps": args.steps, "chains": CHAINS}
    runs_dir = tempfile.mkdtemp(prefix="bench_sgld_")
    ours, eval_every, compile_s = float("inf"), None, None
    for seed in range(args.repeats):
        m = run_method_trial(problem, "sgld", hp, None, seed, artifacts=runs_dir)
        if m["status"] != "ok":
            raise SystemExit(f"runner trial failed: {m['failure']}")
        ours = min(ours, m["seconds"]["run"])
        eval_every, compile_s = m["diagnostics"]["eval_every"], m["seconds"]["compile"]
    steps = m["work"]["steps"]  # whole blocks of eval_every steps
    bare_eval = time_bare(post, steps, eval_every, args.repeats)
    bare = time_bare(post, steps, None, args.repeats)

    fge_per_step = BATCH / post.n
    print(
        f"device: {jax.devices()[0].device_kind}  d = {post.d}  n = {post.n}  "
        f"batch = {BATCH}  chains = {CHAINS}  steps/chain = {steps}  eval_every = {eval_every}"
    )
    print(f"{'variant':<10} {'seconds':>9} {'steps/s':>12} {'FGE/s':>10}")
    for name, sec in (("runner", ours), ("bare+eval", bare_eval), ("bare", bare)):
        rate = CHAINS * steps / sec
        print(f"{name:<10} {sec:9.3f} {rate:12.1f} {rate * fge_per_step:10.2f}")
    print(f"runner compile: {compile_s:.2f}s (excluded above)")
    print(f"ratio runner / bare+eval = {bare_eval / ours:.3f}   (target >= 0.8)")
    print(f"ratio runner / bare      = {bare / ours:.3f}")


if __name__ == "__main__":
    main()
